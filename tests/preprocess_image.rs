//! Image decoding and pre-processing, checked against what PIL and `transformers` make of
//! the same files. The fixtures and their references come from
//! `tests/fixtures/make_image_fixtures.py`; see its docstring for the file layout.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use qseek::preprocess::image::{decode_rgb, load_rgb, ImagePreprocessor, LoadOptions, Resample};
use qseek::Error;

/// Decodable fixtures: (file, max |ours - PIL| after `convert("RGB")`, max |ours - PIL|
/// after `convert("RGB").resize(..., BICUBIC)`). The second column is the acceptance
/// criterion: within one 8-bit step of the reference.
const GOOD: &[(&str, u8, u8)] = &[
    // JPEG: decoded by libjpeg-turbo's code (mozjpeg), as Pillow does: exact.
    ("chelsea_420.jpg", 0, 0),
    ("chelsea_422.jpg", 0, 0),
    ("coffee_444.jpg", 0, 0),
    ("astronaut_progressive.jpg", 0, 0),
    ("chelsea_full_420.jpg", 0, 0),
    ("rocket.jpg", 0, 0),
    ("coffee_cmyk.jpg", 0, 0),
    ("chelsea_gray.jpg", 0, 0),
    ("tiny_13x9.jpg", 0, 0),
    ("exif6.jpg", 0, 0),
    ("exif3.jpg", 0, 0),
    ("exif8.jpg", 0, 0),
    // Lossless formats: exact too.
    ("exif6.png", 0, 0),
    ("rgb.png", 0, 0),
    ("gray.png", 0, 0),
    ("bilevel.png", 0, 0),
    ("palette.png", 0, 0),
    ("palette_transparent.png", 0, 0),
    ("rgba.png", 0, 0),
    ("la.png", 0, 0),
    ("gray16.png", 0, 0),
    ("rgb16.png", 0, 0),
    ("rgba16.png", 0, 0),
    ("tiny_7x5.png", 0, 0),
    ("lossless.webp", 0, 0),
    ("lossy.webp", 2, 1),
    ("animated.gif", 0, 0),
    ("rgb.bmp", 0, 0),
    ("rgb_lzw.tiff", 0, 0),
];

/// Fixtures whose shape makes Pillow 13 resize vertically first (see
/// `resize_of_portrait_pil_pixels_matches_pillow_13`).
const PILLOW13_VERTICAL_FIRST: &[&str] = &["exif6.jpg", "exif8.jpg", "exif6.png"];

/// A file that must be refused: (file, expected error, words the reason must contain).
type BadCase = (&'static str, fn(&Error) -> bool, &'static str);

const BAD: &[BadCase] = &[
    ("empty.jpg", is_decode_error, "empty"),
    ("truncated.jpg", is_decode_error, "truncated"),
    ("text.jpg", is_decode_error, "text file"),
    ("bomb.png", is_too_large, "20000x20000"),
];

fn is_decode_error(e: &Error) -> bool {
    matches!(e, Error::ImageDecode { .. })
}

fn is_too_large(e: &Error) -> bool {
    matches!(e, Error::ImageTooLarge { .. })
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name)
}

/// A PIL reference, if the generator wrote one (it skips some for large images).
fn reference(name: &str) -> Option<Vec<u8>> {
    std::fs::read(fixture("ref").join(name)).ok()
}

/// (width, height) PIL reports for each decodable fixture.
fn pil_dimensions(name: &str) -> (u32, u32) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("index.json")).unwrap()).unwrap();
    let entry = &index[name];
    let dim = |key: &str| {
        entry[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: no {key} in index")) as u32
    };
    (dim("width"), dim("height"))
}

fn max_abs_diff(ours: &[u8], pil: &[u8]) -> u8 {
    assert_eq!(ours.len(), pil.len(), "buffer lengths differ");
    ours.iter()
        .zip(pil)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0)
}

/// The resize targets the generator wrote for `name`, as (width, height).
fn resize_targets(name: &str) -> Vec<(u32, u32)> {
    let mut targets: Vec<(u32, u32)> = std::fs::read_dir(fixture("ref"))
        .unwrap()
        .filter_map(|entry| {
            let file = entry.unwrap().file_name().into_string().unwrap();
            let size = file
                .strip_prefix(name)?
                .strip_prefix('.')?
                .strip_suffix(".rgb")?;
            let (w, h) = size.split_once('x')?;
            Some((w.parse().ok()?, h.parse().ok()?))
        })
        .collect();
    targets.sort_unstable();
    assert!(!targets.is_empty(), "{name}: no resize reference");
    targets
}

fn preprocessor(width: u32, height: u32, resample: Resample) -> ImagePreprocessor {
    let mut p = ImagePreprocessor::default();
    p.size.width = width;
    p.size.height = height;
    p.resample = resample;
    p
}

/// Lossless formats and JPEG (libjpeg-turbo's decoder, like Pillow): bit for bit.
#[test]
fn lossless_fixtures_decode_exactly_like_pil_convert_rgb() {
    decode_like_pil(|tolerance| tolerance == 0);
}

/// Lossy WebP: the `image` crate's decoder, not libwebp; within the table's tolerance.
#[test]
fn lossy_fixtures_decode_like_pil() {
    decode_like_pil(|tolerance| tolerance > 0);
}

fn decode_like_pil(select: fn(u8) -> bool) {
    let mut failures = Vec::new();
    for &(name, tolerance, _) in GOOD.iter().filter(|g| select(g.1)) {
        let ours = load_rgb(&fixture(name), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            ours.dimensions(),
            pil_dimensions(name),
            "{name}: dimensions"
        );
        let Some(pil) = reference(&format!("{name}.rgb")) else {
            continue;
        };
        let diff = max_abs_diff(ours.as_raw(), &pil);
        eprintln!("decode  {name:28} max |ours - PIL| = {diff}");
        if diff > tolerance {
            failures.push(format!(
                "{name}: decoded pixels differ from PIL's by {diff} > {tolerance}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn resize_of_pil_pixels_matches_pil_bicubic_exactly() {
    resize_pil_pixels(|name| !PILLOW13_VERTICAL_FIRST.contains(&name));
}

/// For these portrait shapes Pillow 13 runs the vertical pass before the horizontal one
/// (Pillow up to 12 always ran horizontal first): it does when the image loses more than
/// twice as many rows as columns.
#[test]
fn resize_of_portrait_pil_pixels_matches_pillow_13() {
    resize_pil_pixels(|name| PILLOW13_VERTICAL_FIRST.contains(&name));
}

fn resize_pil_pixels(select: fn(&str) -> bool) {
    let mut failures = Vec::new();
    for &(name, _, _) in GOOD.iter().filter(|g| select(g.0)) {
        let Some(pil_rgb) = reference(&format!("{name}.rgb")) else {
            continue;
        };
        let (w, h) = pil_dimensions(name);
        let src = image::RgbImage::from_raw(w, h, pil_rgb).unwrap();
        for (tw, th) in resize_targets(name) {
            let ours = preprocessor(tw, th, Resample::Bicubic).resize(&src);
            let pil = reference(&format!("{name}.{tw}x{th}.rgb")).unwrap();
            let diff = max_abs_diff(ours.as_raw(), &pil);
            if diff != 0 {
                failures.push(format!("{name} -> {tw}x{th}: {diff}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Lossless formats and JPEG: bit for bit after the resize too.
#[test]
fn lossless_fixtures_resize_exactly_like_pil() {
    resize_like_pil(|g| g.1 == 0 && !PILLOW13_VERTICAL_FIRST.contains(&g.0));
}

#[test]
fn lossy_and_portrait_fixtures_resize_within_one_step_of_pil() {
    resize_like_pil(|g| g.1 > 0 || PILLOW13_VERTICAL_FIRST.contains(&g.0));
}

fn resize_like_pil(select: fn(&(&str, u8, u8)) -> bool) {
    let mut failures = Vec::new();
    for &(name, _, tolerance) in GOOD.iter().filter(|g| select(g)) {
        let decoded = load_rgb(&fixture(name), &LoadOptions::default()).unwrap();
        for (tw, th) in resize_targets(name) {
            let ours = preprocessor(tw, th, Resample::Bicubic).resize(&decoded);
            assert_eq!(ours.dimensions(), (tw, th));
            let pil = reference(&format!("{name}.{tw}x{th}.rgb")).unwrap();
            let diff = max_abs_diff(ours.as_raw(), &pil);
            eprintln!("resize  {name:28} -> {tw}x{th}: max |ours - PIL| = {diff}");
            if diff > tolerance {
                failures.push(format!(
                    "{name} -> {tw}x{th}: differs from PIL by {diff} > {tolerance}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn bilinear_resize_matches_pil() {
    let pil_rgb = reference("chelsea_420.jpg.rgb").unwrap();
    let (w, h) = pil_dimensions("chelsea_420.jpg");
    let src = image::RgbImage::from_raw(w, h, pil_rgb).unwrap();
    let ours = preprocessor(56, 40, Resample::Bilinear).resize(&src);
    let pil = reference("chelsea_420.jpg.56x40.bilinear.rgb").unwrap();
    assert_eq!(max_abs_diff(ours.as_raw(), &pil), 0);
}

#[test]
fn pixel_values_match_transformers_blip_image_processor() {
    let config = ImagePreprocessor::from_file(&fixture("preprocessor_small.json")).unwrap();
    assert_eq!(config.image_size(), (24, 32));
    // (file, tolerance in 8-bit steps): PNG decodes exactly, so its values should be
    // bit-identical up to float rounding; JPEG may be one step off.
    pixel_values_like_transformers(&[("rgb.png", 0.0)]);
}

#[test]
fn jpeg_pixel_values_match_transformers_within_one_step() {
    pixel_values_like_transformers(&[("chelsea_420.jpg", 1.0)]);
}

fn pixel_values_like_transformers(cases: &[(&str, f32)]) {
    let config = ImagePreprocessor::from_file(&fixture("preprocessor_small.json")).unwrap();
    for &(name, steps) in cases {
        let ours = config
            .load(&fixture(name), &LoadOptions::default())
            .unwrap();
        let theirs: Vec<f32> = reference(&format!("{name}.pixel_values.f32"))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(ours.len(), 3 * 24 * 32);
        assert_eq!(ours.len(), theirs.len());
        let plane = 24 * 32;
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let std = config.image_std[i / plane];
            let tolerance = steps / 255.0 / std + 1e-6;
            assert!((a - b).abs() <= tolerance, "{name}[{i}]: {a} vs {b}");
        }
    }
}

#[test]
fn bad_files_are_refused_with_the_path_in_the_message() {
    for &(name, is_expected, words) in BAD {
        let path = fixture(name);
        let err = load_rgb(&path, &LoadOptions::default()).expect_err(name);
        let message = err.to_string();
        assert!(is_expected(&err), "{name}: wrong error: {message}");
        assert!(
            message.contains(path.to_str().unwrap()),
            "{name}: no path in: {message}"
        );
        assert!(
            message.contains(words),
            "{name}: `{words}` not in: {message}"
        );
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let err = load_rgb(&fixture("no_such_file.jpg"), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("no_such_file.jpg"), "{err}");
}

#[test]
fn bomb_is_refused_without_allocating_its_pixels() {
    let bytes = std::fs::read(fixture("bomb.png")).unwrap();
    let peak = peak_allocation_during(|| {
        let err = decode_rgb(&bytes, Path::new("bomb.png"), &LoadOptions::default()).unwrap_err();
        assert!(is_too_large(&err), "{err}");
    });
    // The bomb would need 400 MB; reading its header needs next to nothing.
    assert!(peak < 4 << 20, "peak allocation {peak} bytes");
}

#[test]
fn megapixel_limit_applies_to_normal_images_too() {
    // chelsea_420.jpg is 97x65 = 6305 pixels.
    let path = fixture("chelsea_420.jpg");
    let tight = LoadOptions {
        max_megapixels: 0.006,
        ..LoadOptions::default()
    };
    let err = load_rgb(&path, &tight).unwrap_err();
    let Error::ImageTooLarge {
        width,
        height,
        limit,
        ..
    } = err
    else {
        panic!("{err}")
    };
    assert_eq!((width, height, limit), (97, 65, 0.006));
    assert!(load_rgb(
        &path,
        &LoadOptions {
            max_megapixels: 0.0064,
            ..LoadOptions::default()
        }
    )
    .is_ok());
}

#[test]
fn damaged_files_give_errors_not_panics() {
    // Cuts and byte flips of every good fixture: each must decode or fail cleanly, with
    // an error of its own, never by a panic. `decode_rgb` catches a decoder's panic and
    // says "the ... decoder crashed on this file": no message may say that, and no
    // panic may start while decoding (libjpeg's errors leave its decoder by
    // `resume_unwind`, which the panic hook does not see; a panic does).
    thread_local! {
        static PANICS: Cell<usize> = const { Cell::new(0) };
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.with(|p| p.set(p.get() + 1));
        previous(info);
    }));
    let decode = |bytes: &[u8]| decode_rgb(bytes, Path::new("damaged"), &LoadOptions::default());
    let mut seed = 0x2545_f491_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as usize
    };
    let mut wrong = Vec::new();
    // What `bytes` decode to, if anything; a panic or a crashed decoder put on `wrong`.
    let check = |what: &str, bytes: &[u8], wrong: &mut Vec<String>| {
        let panics = PANICS.with(Cell::get);
        let result = decode(bytes);
        if PANICS.with(Cell::get) != panics {
            wrong.push(format!("{what}: panicked"));
        }
        match result {
            Err(e) if e.to_string().contains("decoder crashed") => {
                wrong.push(format!("{what}: {e}"));
                None
            }
            result => result.ok(),
        }
    };
    for &(name, _, _) in GOOD {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let whole = decode(&bytes).unwrap();
        // A file cut short is an error: it ends before the image does. Only an
        // animation cut after its first frame, which is all that is decoded, still
        // holds the image: then it is exactly the whole file's.
        for cut in (1..8).map(|k| bytes.len() * k / 8) {
            let what = format!("{name} cut at {cut} of {} bytes", bytes.len());
            if let Some(image) = check(&what, &bytes[..cut], &mut wrong) {
                if image != whole {
                    wrong.push(format!("{what}: decoded, not as the whole file"));
                }
            }
        }
        // Flipped bytes may still make an image (in pixel data, say): either is fine.
        for flips in 0..8 {
            let mut damaged = bytes.clone();
            for _ in 0..4 {
                let i = next() % damaged.len();
                damaged[i] = next() as u8;
            }
            check(&format!("{name} with flips #{flips}"), &damaged, &mut wrong);
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn blip2_preprocessor_config_is_read() {
    let config = ImagePreprocessor::from_file(&fixture("preprocessor_blip2.json")).unwrap();
    assert_eq!(config.image_size(), (224, 224));
    assert_eq!(config.resample, Resample::Bicubic);
    assert_eq!(config.image_mean, [0.481_454_66, 0.457_827_5, 0.408_210_73]);
    assert_eq!(config.image_std, [0.268_629_54, 0.261_302_6, 0.275_777_1]);
    assert!((config.rescale_factor - 1.0 / 255.0).abs() < 1e-12);
}

/// (config text, what `from_file` must say: `Ok(height, width)` or words of the error).
type ConfigCase = (&'static str, Result<(u32, u32), &'static str>);

const CONFIGS: &[ConfigCase] = &[
    ("{}", Ok((384, 384))),
    (r#"{"size": 336}"#, Ok((336, 336))),
    (r#"{"size": {"height": 96, "width": 128}}"#, Ok((96, 128))),
    (r#"{"size": {"shortest_edge": 224}}"#, Err("key `size`")),
    (r#"{"image_mean": "abc"}"#, Err("key `image_mean`")),
    (r#"{"image_std": [0.5, 0.5]}"#, Err("key `image_std`")),
    (r#"{"image_std": [0.5, 0.0, 0.5]}"#, Err("key `image_std`")),
    (r#"{"resample": 0}"#, Err("key `resample`")),
    (
        r#"{"do_resize": "yes", "size": 224}"#,
        Err("key `do_resize`"),
    ),
    (
        r#"{"size": {"height": 0, "width": 224}}"#,
        Err("key `size`"),
    ),
    ("{\"size\": ", Err("not valid JSON")),
    ("[1, 2]", Err("JSON object")),
];

#[test]
fn preprocessor_configs_parse_or_name_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocessor_config.json");
    for &(text, expected) in CONFIGS {
        std::fs::write(&path, text).unwrap();
        match (ImagePreprocessor::from_file(&path), expected) {
            (Ok(config), Ok(size)) => assert_eq!(config.image_size(), size, "{text}"),
            (Err(err), Err(words)) => {
                assert!(matches!(err, Error::Config { .. }), "{text}: {err}");
                let message = err.to_string();
                assert!(
                    message.contains(words),
                    "{text}: `{words}` not in: {message}"
                );
                assert!(message.contains("preprocessor_config.json"), "{message}");
            }
            (got, _) => panic!("{text}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn missing_preprocessor_config_is_an_io_error() {
    let err = ImagePreprocessor::from_file(&fixture("no_such_config.json")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

/// Counts this thread's allocations, so a test can bound the memory a call takes.
struct CountingAllocator;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every allocation and deallocation is the system allocator's, with the caller's
// layout and pointer unchanged, so `GlobalAlloc`'s contract holds as it does for `System`.
// The counting touches only const-initialised thread-local `Cell`s (no allocation, no
// destructor), and `try_with` skips it where they are gone (thread teardown): it neither
// allocates nor panics.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = CURRENT.try_with(|current| {
            current.set(current.get() + layout.size());
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(current.get())));
        });
        // SAFETY: `layout` is the caller's, non-zero-sized by `alloc`'s contract, forwarded
        // unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ =
            CURRENT.try_with(|current| current.set(current.get().saturating_sub(layout.size())));
        // SAFETY: by `dealloc`'s contract `ptr` came from this allocator's `alloc` with this
        // layout, that is from `System.alloc` with it.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The most memory this thread held at once while `f` ran, above what it held before.
fn peak_allocation_during(f: impl FnOnce()) -> usize {
    let before = CURRENT.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    f();
    PEAK.with(Cell::get) - before
}

#[test]
fn exif_orientation_can_be_left_unapplied_as_the_reference_does() {
    // (file, what its EXIF orientation asks for, applied to the stored pixels)
    type Turn = fn(&image::RgbImage) -> image::RgbImage;
    let cases: [(&str, Turn); 4] = [
        ("exif6.jpg", |i| image::imageops::rotate90(i)),
        ("exif3.jpg", |i| image::imageops::rotate180(i)),
        ("exif8.jpg", |i| image::imageops::rotate270(i)),
        ("exif6.png", |i| image::imageops::rotate90(i)),
    ];
    let stored = LoadOptions {
        exif_orientation: false,
        ..LoadOptions::default()
    };
    for (name, turn) in cases {
        let upright = load_rgb(&fixture(name), &LoadOptions::default()).unwrap();
        let as_stored = load_rgb(&fixture(name), &stored).unwrap();
        assert_eq!(upright, turn(&as_stored), "{name}");
        if name.starts_with("exif6") || name.starts_with("exif8") {
            assert_eq!(
                as_stored.dimensions(),
                (upright.height(), upright.width()),
                "{name}"
            );
        }
    }
}
