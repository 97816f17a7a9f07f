use super::int8;
use super::pack::{advise_huge_pages, bf16_bits};
use super::table::KERNELS;
use super::*;
use crate::activations::{gelu_in_place, softmax_rows, softmax_rows_body};

#[test]
fn a_buffer_advised_huge_pages_keeps_its_capacity_and_what_is_written() {
    // 40 MiB (advised, wherever it starts) and 1 MiB (too small: left alone).
    for len in [10 << 20, 1 << 18] {
        let mut buffer: Vec<f32> = Vec::with_capacity(len);
        advise_huge_pages(&mut buffer);
        // The advice is on the mapping: `hg` in its flags (`madvise(MADV_HUGEPAGE)`)
        // where Linux has transparent huge pages at all. The middle of the buffer
        // lies in the advised range (its whole 2 MiB pages), wherever it starts.
        #[cfg(target_os = "linux")]
        {
            let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
            let middle = buffer.as_ptr() as usize + len * std::mem::size_of::<f32>() / 2;
            let flags = vm_flags(middle);
            let advised = len * std::mem::size_of::<f32>() >= 32 << 20;
            assert_eq!(
                flags.iter().any(|f| f == "hg"),
                thp && advised,
                "{len} floats, transparent huge pages {thp}: VmFlags {flags:?}"
            );
        }
        assert!(buffer.capacity() >= len);
        buffer.extend((0..len).map(|i| i as f32));
        assert!(buffer.iter().enumerate().all(|(i, &x)| x == i as f32));
    }
}

/// The `VmFlags` of this process's mapping that holds `address` (`/proc/self/smaps`).
#[cfg(target_os = "linux")]
fn vm_flags(address: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
    let mut holds = false;
    for line in smaps.lines() {
        // A mapping's first line starts with its range, `start-end` in hex.
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'))
            .and_then(|(start, end)| {
                let hex = |h| usize::from_str_radix(h, 16).ok();
                Some((hex(start)?, hex(end)?))
            });
        if let Some((start, end)) = range {
            holds = (start..end).contains(&address);
        } else if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| holds) {
            return flags.split_whitespace().map(String::from).collect();
        }
    }
    panic!("no mapping in /proc/self/smaps holds {address:#x}");
}

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// What a format's kernels multiply: `x` rounded to bf16, or `x` (int8's codes
/// depend on their row: its own tests).
fn input(format: Format, x: f32) -> f64 {
    match format {
        Format::Bf16 => half::bf16::from_f32(x).to_f64(),
        Format::F32 | Format::Int8 | Format::Int8Pairs | Format::Int7 => x as f64,
    }
}

/// Every kernel of the bf16 and f32 formats.
fn every_kernel() -> Vec<Kernel> {
    let mut kernels = Kernel::available(Format::Bf16);
    kernels.extend(Kernel::available(Format::F32));
    kernels
}

#[test]
fn rows_read_in_place_and_a_weight_packed_from_its_columns_give_the_same_bits() {
    // (rows, n, k): odd sizes, a k that is odd (a bf16 pair padded), several panels.
    for (rows, n, k) in [(1, 3, 1), (7, 19, 9), (13, 130, 88), (6, 64, 257)] {
        // x: columns 3..3 + k of a wider matrix; w and its transpose as they are.
        let stride = k + 5;
        let wide = values(rows * stride, 1);
        let x: Vec<f32> = (0..rows)
            .flat_map(|i| wide[i * stride + 3..i * stride + 3 + k].to_vec())
            .collect();
        let w = values(n * k, 2);
        let wt: Vec<f32> = (0..k)
            .flat_map(|p| (0..n).map(|c| w[c * k + p]).collect::<Vec<_>>())
            .collect();
        for kernel in every_kernel() {
            let format = kernel.format();
            let want = matmul_wt(
                kernel,
                &x,
                rows,
                &PackedWeight::new(format, &w, None, k),
                Epilogue::None,
            );
            let strided = Rows::strided(&wide[3..], rows, k, stride);
            let columns = PackedWeight::from_columns(format, Rows::new(&wt, k, n));
            let got = matmul_rows(kernel, strided, &columns, Epilogue::None);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{kernel:?} ({rows}, {n}, {k})");
        }
    }
}

#[test]
fn softmax_rows_is_a_softmax_in_the_same_bits_on_every_kernel_and_padding_adds_nothing() {
    for (rows, len) in [(1, 1), (3, 5), (4, 16), (2, 17), (5, 257), (3, 44)] {
        let x: Vec<f32> = values(rows * len, 7).iter().map(|v| v * 8.0).collect();
        let mask: Vec<f32> = values(rows * len, 8)
            .iter()
            .enumerate()
            .map(|(j, v)| {
                if j % len == 0 || *v > -0.5 {
                    0.0
                } else {
                    -1e30
                }
            })
            .collect();
        for mask in [None, Some(&mask[..])] {
            let mut base = x.clone();
            softmax_rows_body(&mut base, len, 0.3, mask);
            for (i, row) in base.chunks_exact(len).enumerate() {
                // A float64 reference.
                let z: Vec<f64> = (0..len)
                    .map(|j| {
                        let m = mask.map_or(0.0, |m| m[i * len + j]);
                        (x[i * len + j] * 0.3 + m) as f64
                    })
                    .collect();
                let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = z.iter().map(|z| (z - max).exp()).sum();
                for (j, &p) in row.iter().enumerate() {
                    let want = (z[j] - max).exp() / sum;
                    assert!((p as f64 - want).abs() < 1e-6, "({rows}, {len}) {j}");
                }
            }
            // Every kernel of every format (attention takes the bf16 one too).
            let kernels = [
                Format::Bf16,
                Format::F32,
                Format::Int8,
                Format::Int8Pairs,
                Format::Int7,
            ]
            .into_iter()
            .flat_map(Kernel::available);
            for kernel in kernels {
                let mut y = x.clone();
                softmax_rows(kernel, &mut y, len, 0.3, mask);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y), bits(&base), "{kernel:?}");
            }
            // The same rows with 3 masked values of padding appended.
            let padded_len = len + 3;
            let mut padded = vec![0f32; rows * padded_len];
            let mut padded_mask = vec![-1e30f32; rows * padded_len];
            for i in 0..rows {
                padded[i * padded_len..][..len].copy_from_slice(&x[i * len..][..len]);
                let m = mask.map_or(vec![0.0; len], |m| m[i * len..][..len].to_vec());
                padded_mask[i * padded_len..][..len].copy_from_slice(&m);
            }
            softmax_rows_body(&mut padded, padded_len, 0.3, Some(&padded_mask));
            for i in 0..rows {
                let (row, pad) = padded[i * padded_len..][..padded_len].split_at(len);
                let want = &base[i * len..][..len];
                assert!(row
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
                assert!(pad.iter().all(|&p| p == 0.0));
            }
        }
    }
}

/// A bf16 or f32 kernel within f32 rounding (1e-6 per product of k) of a float64
/// reference of its inputs (rounded to bf16 for bf16).
fn matches_a_float64_reference_of_its_inputs(kernel: Kernel) {
    // (rows, k, n): the ViT-g and Q-Former shapes' widths at a few rows, and sizes
    // that leave tails of rows (MR), columns (NR, and the AVX2 kernel's 16 and 8), an
    // odd k and several k blocks (KC: k = 6144 in bf16, 3072 in f32).
    let shapes = [
        (1, 1, 1),
        (6, 2, 64),
        (7, 3, 65),
        (13, 37, 130),
        (5, 300, 129),
        (12, 588, 70),
        (9, 1408, 200),
        (3, 768, 9),
        (2, 3072, 23),
        (2, 6144, 17),
    ];
    let format = kernel.format();
    {
        for (rows, k, n) in shapes {
            for with_bias in [false, true] {
                let (x, w, b) = (values(rows * k, 1), values(n * k, 2), values(n, 3));
                let packed = PackedWeight::new(format, &w, with_bias.then_some(&b[..]), k);
                assert_eq!((packed.n(), packed.k(), packed.format()), (n, k, format));
                let y = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
                assert_eq!(y.len(), rows * n);
                for i in 0..rows {
                    for j in 0..n {
                        let dot: f64 = (0..k)
                            .map(|p| input(format, x[i * k + p]) * input(format, w[j * k + p]))
                            .sum();
                        let exact = dot + if with_bias { b[j] as f64 } else { 0.0 };
                        let got = y[i * n + j] as f64;
                        // f32 accumulation over k products of size <= 1.
                        let tolerance = 1e-6 * k as f64;
                        assert!(
                            (got - exact).abs() <= tolerance,
                            "{kernel:?} {rows}x{k}x{n} bias {with_bias} [{i},{j}]: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_int8_family_is_every_int8_kernel_once_the_simd_ones_first() {
    let family = Kernel::int8_family();
    let mut every: Vec<Kernel> = [Format::Int8, Format::Int8Pairs, Format::Int7]
        .into_iter()
        .flat_map(Kernel::available)
        .collect();
    assert_eq!(family.len(), every.len(), "{family:?}");
    every.retain(|k| !family.contains(k));
    assert!(every.is_empty(), "{every:?}");
    let portable = [Kernel::PortableInt8, Kernel::PortableInt7];
    assert_eq!(&family[family.len() - 2..], &portable);
}

#[test]
fn the_environment_picks_a_kernel_of_the_format() {
    // What each value of a format's variable picks (`None`: not set), whatever this
    // CPU runs. The default is the fastest SIMD kernel this CPU runs (none: candle's
    // GEMM); a kernel's name gives that kernel where it runs here, else the default.
    #[derive(Clone, Copy)]
    enum Pick {
        Default,
        Off,
        Exactly(Kernel),
        IfItRuns(Kernel),
        /// The first of the two that runs here, else the default.
        FirstThatRuns(Kernel, Kernel),
    }
    use Kernel::*;
    use Pick::*;
    let default = |format: Format| {
        let fastest_first: &[Kernel] = match format {
            Format::Bf16 => &[Avx512Bf16],
            Format::F32 => &[Avx512F32, Avx2F32],
            Format::Int8 | Format::Int8Pairs | Format::Int7 => {
                &[Avx512Vnni, Avx2Vnni, Avx2VnniEvex, Avx2Maddubs, Avx2Madd]
            }
        };
        fastest_first.iter().copied().find(|k| k.runs_here())
    };
    let int8 = [
        (None, Default),
        (Some("off"), Off),
        (Some("portable"), Exactly(PortableInt8)),
        (Some("portable7"), Exactly(PortableInt7)),
        (Some("avx512"), IfItRuns(Avx512Vnni)),
        // The 8-lane VNNI kernel in the encoding this CPU has.
        (Some("avx2"), FirstThatRuns(Avx2Vnni, Avx2VnniEvex)),
        (Some("maddubs"), IfItRuns(Avx2Maddubs)),
        (Some("madd"), IfItRuns(Avx2Madd)),
        (Some("avx"), Default),
        (Some(""), Default),
    ];
    let table: Vec<(Format, Option<&str>, Pick)> = [
        (Format::Bf16, None, Default),
        (Format::Bf16, Some("off"), Off),
        (Format::Bf16, Some("portable"), Exactly(Portable)),
        (Format::Bf16, Some("avx512"), IfItRuns(Avx512Bf16)),
        // Names of other formats' kernels: not bf16's.
        (Format::Bf16, Some("avx2"), Default),
        (Format::Bf16, Some("maddubs"), Default),
        (Format::Bf16, Some("portable7"), Default),
        (Format::Bf16, Some("AVX512"), Default),
        (Format::F32, None, Default),
        (Format::F32, Some("off"), Off),
        (Format::F32, Some("portable"), Exactly(PortableF32)),
        (Format::F32, Some("avx512"), IfItRuns(Avx512F32)),
        (Format::F32, Some("avx2"), IfItRuns(Avx2F32)),
        (Format::F32, Some("madd"), Default),
        (Format::F32, Some("portable7"), Default),
        (Format::F32, Some("fast"), Default),
    ]
    .into_iter()
    // int8's one choice, whichever of its formats asks.
    .chain(
        [Format::Int8, Format::Int8Pairs, Format::Int7]
            .into_iter()
            .flat_map(|format| int8.map(|(value, pick)| (format, value, pick))),
    )
    .collect();
    for (format, value, pick) in table {
        let expected = match pick {
            Default => default(format),
            Off => None,
            Exactly(kernel) => Some(kernel),
            IfItRuns(kernel) => Some(kernel).filter(|k| k.runs_here()).or(default(format)),
            FirstThatRuns(a, b) => [a, b]
                .into_iter()
                .find(|k| k.runs_here())
                .or(default(format)),
        };
        assert_eq!(
            choose_from(format, value),
            expected,
            "{format:?} with {value:?}"
        );
    }

    for format in [
        Format::Bf16,
        Format::F32,
        Format::Int8,
        Format::Int8Pairs,
        Format::Int7,
    ] {
        // `chosen` is this choice for the variable's value in this process.
        let value = std::env::var(variable(format)).ok();
        assert_eq!(
            Kernels::chosen().get(format),
            choose_from(format, value.as_deref()),
            "{format:?}"
        );
        if let Some(kernel) = Kernels::chosen().get(format) {
            // int8's one choice may be of any of its formats.
            let int8 = [Format::Int8, Format::Int8Pairs, Format::Int7];
            if int8.contains(&format) {
                assert!(int8.contains(&kernel.format()), "{kernel:?}");
                assert_eq!(Kernels::chosen().int8, Some(kernel));
            } else {
                assert_eq!(kernel.format(), format);
            }
            assert!(kernel.runs_here());
        }
        // Each format's kernels (int8's of both layouts) have names of their own, which
        // `chosen` looks up; the 8-lane VNNI kernel's two encodings share one, which
        // picks the first.
        let mut kernels = match format {
            Format::Int8 | Format::Int8Pairs | Format::Int7 => Kernel::int8_family(),
            _ => Kernel::available(format),
        };
        if kernels.contains(&Avx2Vnni) {
            kernels.retain(|&k| k != Avx2VnniEvex);
        }
        let names: Vec<_> = kernels.iter().map(|k| k.name()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "{format:?}: {names:?}");
    }
}

#[test]
fn the_gelu_epilogue_is_gelu_of_the_product() {
    let (rows, k, n) = (13, 300, 130);
    let (x, w, b) = (values(rows * k, 4), values(n * k, 5), values(n, 6));
    for kernel in every_kernel() {
        let packed = PackedWeight::new(kernel.format(), &w, Some(&b), k);
        let mut expected = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
        gelu_in_place(kernel, &mut expected);
        let got = matmul_wt(kernel, &x, rows, &packed, Epilogue::Gelu);
        assert_eq!(got, expected, "{kernel:?}");
    }
}

#[test]
fn the_residual_epilogue_gives_the_bits_of_adding_it_afterwards() {
    // Tails of rows and columns, and several k blocks in f32 (k = 3072).
    for (rows, k, n) in [(13, 300, 130), (7, 3072, 65)] {
        let (x, w, b) = (values(rows * k, 4), values(n * k, 5), values(n, 6));
        let residual = values(rows * n, 7);
        for kernel in every_kernel() {
            let packed = PackedWeight::new(kernel.format(), &w, Some(&b), k);
            let mut expected = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
            expected
                .iter_mut()
                .zip(&residual)
                .for_each(|(y, r)| *y += r);
            let got = matmul_wt(kernel, &x, rows, &packed, Epilogue::Residual(&residual));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&expected), "{kernel:?}");
        }
    }
}

/// One loop over the table: every kernel this CPU runs against a float64 reference, with
/// its format's bounds; the others are listed as not run (their CPU features missing).
#[test]
fn every_kernel_in_the_table_matches_a_float64_reference() {
    let (mut ran, mut not_run) = (Vec::new(), Vec::new());
    for kernel in Kernel::all() {
        if !kernel.runs_here() {
            not_run.push(kernel);
            continue;
        }
        match kernel.format() {
            Format::Bf16 | Format::F32 => matches_a_float64_reference_of_its_inputs(kernel),
            Format::Int8 | Format::Int8Pairs | Format::Int7 => {
                matches_a_float64_reference_of_its_codes(kernel)
            }
        }
        ran.push(kernel);
    }
    eprintln!(
        "ran {ran:?}; not run (this CPU lacks their features: it has {}): {not_run:?}",
        Features::get().names().join(", ")
    );
    // Every format has its portable kernel at least.
    for format in [
        Format::Bf16,
        Format::F32,
        Format::Int8,
        Format::Int8Pairs,
        Format::Int7,
    ] {
        assert!(
            ran.iter().any(|k| k.format() == format) || format == Format::Int8Pairs,
            "{format:?}"
        );
    }
    assert_eq!(ran.len() + not_run.len(), KERNELS.len());
}

#[test]
fn each_kernels_entry_needs_what_its_activations_need() {
    // Every combination of the features: where a kernel runs, its build of GELU and
    // softmax runs too (`activations` calls it on the kernel's `runs_here`).
    for bits in 0u32..1 << 7 {
        let bit = |i: u32| bits & (1 << i) != 0;
        let f = Features {
            avx2: bit(0),
            fma: bit(1),
            avx512f: bit(2),
            avx512vl: bit(3),
            avx512bf16: bit(4),
            avx512vnni: bit(5),
            avxvnni: bit(6),
        };
        for info in &KERNELS {
            if (info.needs)(&f) {
                assert!((info.vectors.needs)(&f), "{:?} with {f:?}", info.kernel);
            }
        }
    }
    // The portable kernels need nothing.
    for kernel in Kernel::all().filter(|k| k.is_portable()) {
        assert!((kernel.info().needs)(&Features::default()), "{kernel:?}");
    }
}

/// An int8-family kernel within float rounding (1e-5 of the products' size) of a float64
/// reference of its codes, and within the two roundings of the inputs as they are.
fn matches_a_float64_reference_of_its_codes(kernel: Kernel) {
    // (rows, n, k): one quad, a k not a multiple of 4, several panels, two k blocks,
    // and a panel's tail of columns over several of the 256-bit kernel's passes of k.
    for (rows, n, k) in [
        (1, 1, 4),
        (7, 19, 9),
        (13, 130, 88),
        (6, 64, 4100),
        (5, 70, 2100),
    ] {
        let x: Vec<f32> = values(rows * k, 1).iter().map(|v| v * 3.0).collect();
        let w_rows = values(n * k, 2);
        let b = values(n, 3);
        {
            // The codes of the kernel's format: int8's (both of its layouts hold them)
            // or int7's.
            let (quads, levels) = match kernel.format() {
                Format::Int7 => (Format::Int7, int8::WEIGHT_LEVELS_INT7),
                _ => (Format::Int8, int8::LEVELS),
            };
            let quads = PackedWeight::new(quads, &w_rows, Some(&b), k);
            let (Data::Int8(codes) | Data::Int7(codes)) = &quads.data else {
                unreachable!()
            };
            let wq = int8::dequantized_weight(codes, n, k);
            let packed = PackedWeight::new(kernel.format(), &w_rows, Some(&b), k);
            let y = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
            for r in 0..rows {
                let xq = int8::dequantized_row(&x[r * k..(r + 1) * k], &[]);
                for c in 0..n {
                    let w = &wq[c * k..(c + 1) * k];
                    let want: f64 =
                        xq.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + f64::from(b[c]);
                    let size: f64 = xq.iter().zip(w).map(|(a, b)| (a * b).abs()).sum();
                    let err = (f64::from(y[r * n + c]) - want).abs();
                    assert!(
                        err <= 1e-5 * size.max(1.0),
                        "{kernel:?} ({rows}, {n}, {k}) [{r}, {c}]: {} vs {want}",
                        y[r * n + c]
                    );
                    // And within the two roundings (half a step each: of the row's
                    // largest value over 127, of the column's over `levels`) of the
                    // product of the inputs as they are.
                    let (xr, wr) = (&x[r * k..(r + 1) * k], &w_rows[c * k..(c + 1) * k]);
                    let exact: f64 = xr
                        .iter()
                        .zip(wr)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum::<f64>()
                        + f64::from(b[c]);
                    let max = |v: &[f32]| v.iter().fold(0f64, |m, x| m.max(f64::from(x.abs())));
                    let bound = k as f64
                        * max(xr)
                        * max(wr)
                        * (0.5 / f64::from(levels) + 0.5 / f64::from(int8::LEVELS));
                    assert!(
                        (f64::from(y[r * n + c]) - exact).abs() <= bound,
                        "{kernel:?} ({rows}, {n}, {k}) [{r}, {c}]: {} vs exact {exact}",
                        y[r * n + c]
                    );
                }
            }
        }
    }
}

#[test]
fn int8_kernels_of_the_same_codes_give_the_same_bits_within_a_block() {
    // Within one k block of the pairs (1024 units: k ≤ 2048) and of the quads, every
    // SIMD kernel of int8's codes (both layouts) sums the same integers, converted and
    // scaled alike; so do int7's. The portable kernels round their running sums to
    // f32 at each unit, which is exact only while the sums stay below 2²⁴ (k · 255 ·
    // 127 < 2²⁴: k ≤ 518; int7's k · 255 · 64: k ≤ 1028), so they join only there.
    let int8 = |k: &Kernel| k.format() != Format::Int7;
    for (rows, n, k, same_codes) in [
        (7, 19, 9, int8 as fn(&Kernel) -> bool),
        (13, 130, 301, int8),
        (6, 70, 2048, int8),
        (7, 19, 9, |k| k.format() == Format::Int7),
        (13, 130, 1028, |k| k.format() == Format::Int7),
        (6, 70, 4096, |k| k.format() == Format::Int7),
    ] {
        let (x, w, b) = (values(rows * k, 8), values(n * k, 9), values(n, 10));
        let x: Vec<f32> = x.iter().map(|v| v * 5.0).collect();
        let kernels: Vec<Kernel> = Kernel::int8_family()
            .into_iter()
            .filter(same_codes)
            .filter(|kernel| match kernel {
                Kernel::PortableInt8 => k <= 518,
                Kernel::PortableInt7 => k <= 1028,
                _ => true,
            })
            .collect();
        let outputs: Vec<Vec<u32>> = kernels
            .iter()
            .map(|&kernel| {
                let packed = PackedWeight::new(kernel.format(), &w, Some(&b), k);
                let y = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
                y.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        for (kernel, y) in kernels.iter().zip(&outputs) {
            assert_eq!(
                y, &outputs[0],
                "{kernel:?} vs {:?} ({rows}, {n}, {k})",
                kernels[0]
            );
        }
    }
}

#[test]
fn int8_epilogues_give_the_bits_of_applying_them_afterwards() {
    let (rows, n, k) = (7, 70, 40);
    let (x, w, b) = (values(rows * k, 4), values(n * k, 5), values(n, 6));
    let residual = values(rows * n, 7);
    for kernel in Kernel::int8_family() {
        let packed = PackedWeight::new(kernel.format(), &w, Some(&b), k);
        let plain = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
        let mut gelu = plain.clone();
        gelu_in_place(kernel, &mut gelu);
        let added: Vec<f32> = plain.iter().zip(&residual).map(|(y, r)| y + r).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let fused = matmul_wt(kernel, &x, rows, &packed, Epilogue::Gelu);
        assert_eq!(bits(&fused), bits(&gelu), "{kernel:?}");
        let fused = matmul_wt(kernel, &x, rows, &packed, Epilogue::Residual(&residual));
        assert_eq!(bits(&fused), bits(&added), "{kernel:?}");
    }
}

#[test]
fn bf16_bits_are_halfs() {
    let specials = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7F80_0001), // a signalling NaN
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(1), // the smallest denormal
        f32::from_bits(0x7F7F_8000),
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
    ];
    let random = values(100_000, 3)
        .into_iter()
        .enumerate()
        .map(|(i, v)| f32::from_bits(v.to_bits().rotate_left(i as u32 % 32)));
    for x in specials.into_iter().chain(random) {
        let want = u32::from(half::bf16::from_f32(x).to_bits());
        assert_eq!(bf16_bits(x), want, "{x:e} ({:#010x})", x.to_bits());
    }
}

#[test]
fn every_kernel_rounds_inputs_to_nearest_even() {
    // (f32, its bf16 bits): exact, halfway down to even, halfway up to even, above
    // halfway, negative, and 0x3F80_8000 + 1 (just past halfway).
    let table: [(f32, u32); 6] = [
        (1.0, 0x3F80),
        (f32::from_bits(0x3F80_8000), 0x3F80),
        (f32::from_bits(0x3F81_8000), 0x3F82),
        (f32::from_bits(0x3F80_C000), 0x3F81),
        (-2.5, 0xC020),
        (f32::from_bits(0x3F80_8001), 0x3F81),
    ];
    // 40 values: a SIMD part and a tail, the table repeated.
    let x: Vec<f32> = table.iter().cycle().take(40).map(|(v, _)| *v).collect();
    let bits: Vec<u32> = table.iter().cycle().take(40).map(|(_, b)| *b).collect();
    for kernel in Kernel::available(Format::Bf16) {
        let mut a = vec![0; x.len() / 2];
        to_bf16_pairs(kernel, &x, &mut a);
        let got: Vec<u32> = a.iter().flat_map(|p| [p & 0xffff, p >> 16]).collect();
        assert_eq!(got, bits, "{kernel:?}");
    }
}

/// `split_row`, a table: what a row gives up to the f32 path, and its step.
#[test]
fn a_row_gives_its_outliers_and_exact_inputs_to_f32_and_keeps_its_step_otherwise() {
    let plain = values(1408, 11);
    // 4 channels at 50× the rest (a layer norm's weight times 50 there).
    let mut fifty = plain.clone();
    for (i, c) in [165, 501, 696, 1026].into_iter().enumerate() {
        fifty[c] = if i % 2 == 0 { 50.0 } else { -45.0 };
    }
    // 40 large values in 6 144: more than MAX_OUTLIERS, all found (40 < 6144 / 36).
    let mut many = values(6144, 12);
    for i in 0..40 {
        many[7 + 31 * i] = if i % 2 == 0 {
            100.0 + i as f32
        } else {
            -100.0 - i as f32
        };
    }
    let max = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let rest_max = |v: &[f32], taken: &[usize]| {
        v.iter()
            .enumerate()
            .filter(|(c, _)| !taken.contains(c))
            .fold(0f32, |m, (_, x)| m.max(x.abs()))
    };
    let many_kept: Vec<usize> = {
        let mut by_size: Vec<usize> = (0..40).map(|i| 7 + 31 * i).collect();
        by_size.sort_by(|&a, &b| many[b].abs().total_cmp(&many[a].abs()));
        let mut kept = by_size[..int8::MAX_OUTLIERS].to_vec();
        kept.sort_unstable();
        kept
    };
    let zeros = vec![0f32; 64];
    let mut one = vec![0f32; 64];
    one[9] = -3.0;
    /// (name, row, exact inputs, channels taken, step)
    type Case<'a> = (&'a str, &'a [f32], &'a [usize], Vec<usize>, f32);
    let cases: [Case; 7] = [
        ("no outliers", &plain, &[], vec![], max(&plain) / 127.0),
        (
            "4 × 50",
            &fifty,
            &[],
            vec![165, 501, 696, 1026],
            rest_max(&fifty, &[165, 501, 696, 1026]) / 127.0,
        ),
        (
            "4 × 50 as exact inputs",
            &fifty,
            &[165, 501, 696, 1026],
            vec![165, 501, 696, 1026],
            rest_max(&fifty, &[165, 501, 696, 1026]) / 127.0,
        ),
        (
            "an exact input that is small",
            &plain,
            &[3],
            vec![3],
            rest_max(&plain, &[3]) / 127.0,
        ),
        (
            "40 outliers: the 32 largest",
            &many,
            &[],
            many_kept.clone(),
            rest_max(&many, &many_kept) / 127.0,
        ),
        ("zeros", &zeros, &[], vec![], 1.0),
        ("one value: exact, step 1", &one, &[], vec![9], 1.0),
    ];
    for (name, row, exact, taken, step) in cases {
        let split = int8::split_row(row, exact);
        let mut got: Vec<usize> = split.outliers.iter().map(|o| o.channel()).collect();
        got.sort_unstable();
        assert_eq!(got, taken, "{name}");
        assert_eq!(split.step.to_bits(), step.to_bits(), "{name}");
    }
}

/// Rows with outlier channels, through every int8 kernel this CPU runs: within the
/// roundings of what is left of each row (its step set by the rest), never of the
/// outliers; exact inputs within f32 rounding of their products; the same bits for a
/// row alone and in a batch.
#[test]
fn int8_kernels_keep_their_precision_on_rows_with_outlier_channels() {
    let (rows, n, k) = (13, 70, 1408);
    let channels = [165, 501, 696, 1026];
    let mut x = values(rows * k, 21);
    for r in 0..rows {
        for (i, c) in channels.iter().enumerate() {
            let sign = if (r + i) % 2 == 0 { 1.0 } else { -1.0 };
            x[r * k + c] = sign * (40.0 + 10.0 * i as f32);
        }
    }
    let w = values(n * k, 22);
    let b = values(n, 23);
    let mut ran = Vec::new();
    for kernel in Kernel::int8_family() {
        let levels = match kernel.format() {
            Format::Int7 => int8::WEIGHT_LEVELS_INT7,
            _ => int8::LEVELS,
        };
        for exact in [&[][..], &channels[..]] {
            let packed = PackedWeight::with_exact_inputs(kernel.format(), &w, Some(&b), k, exact);
            let y = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
            for r in 0..rows {
                let xr = &x[r * k..(r + 1) * k];
                let rest: f64 = xr
                    .iter()
                    .enumerate()
                    .filter(|(c, _)| !channels.contains(c))
                    .fold(0f64, |m, (_, v)| m.max(f64::from(v.abs())));
                let outliers: f64 = channels.iter().map(|&c| f64::from(xr[c].abs())).sum();
                for c in 0..n {
                    let wr = &w[c * k..(c + 1) * k];
                    let max_w = wr.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
                    let want: f64 = xr
                        .iter()
                        .zip(wr)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum::<f64>()
                        + f64::from(b[c]);
                    // The rest: two roundings, with the row's step set by the rest; the
                    // outliers: the weight's rounding alone, or none as exact inputs.
                    let weight_rounding = 0.5 / f64::from(levels);
                    let bound = k as f64 * rest * max_w * (weight_rounding + 0.5 / 127.0)
                        + if exact.is_empty() {
                            outliers * max_w * weight_rounding
                        } else {
                            0.0
                        }
                        + 1e-5 * (outliers + rest * k as f64) * max_w;
                    let err = (f64::from(y[r * n + c]) - want).abs();
                    assert!(
                        err <= bound,
                        "{kernel:?}, exact {exact:?}, [{r}, {c}]: {} vs {want} (error {err}, bound {bound})",
                        y[r * n + c]
                    );
                }
                // A row's result is its own: alone, the same bits.
                let alone = matmul_wt(kernel, xr, 1, &packed, Epilogue::None);
                assert_eq!(
                    alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    y[r * n..(r + 1) * n]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    "{kernel:?}, exact {exact:?}: row {r} alone"
                );
            }
        }
        ran.push(kernel);
    }
    eprintln!("ran {ran:?}");
    assert!(ran.iter().any(|k| k.is_portable()));
}
