//! Pillow's `Image.resize` for 8-bit RGB, bit for bit (`libImaging/Resample.c`).
//!
//! General-purpose resizers (fast_image_resize included) use the same filters but other
//! rounding: Pillow's fixed-point coefficients (22 fractional bits), its order of the two
//! passes and its clipping to 8 bits between the passes all change pixels by a
//! level or two. BLIP-2 was trained and is evaluated on Pillow's output, so qseek
//! reproduces it exactly.

use image::RgbImage;
use rayon::prelude::*;

/// A Pillow resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Resampling.BILINEAR`: triangle, support 1.
    Bilinear,
    /// `Resampling.BICUBIC`: Keys' cubic with a = -0.5, support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output pixel: the first input pixel and the fixed-point weights.
struct Coefficients {
    /// (first input index, number of taps) per output pixel.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output pixel.
    weights: Vec<i32>,
    ksize: usize,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the box [0, in_size).
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let taps = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, slot) in k.iter_mut().enumerate().take(taps) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *slot = w;
            total += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (x, out) in row.iter_mut().enumerate().take(taps) {
            let w = if total != 0.0 { k[x] / total } else { k[x] };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            *out = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, taps));
    }
    Coefficients {
        bounds,
        weights,
        ksize,
    }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `img` to `width` × `height` exactly as `img.resize((width, height), filter)`
/// does in Pillow for an RGB image.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if in_w == 0 || in_h == 0 || out_w == 0 || out_h == 0 {
        return RgbImage::new(width, height);
    }
    let horizontal = coefficients(in_w, out_w, filter);
    let mut vertical = coefficients(in_h, out_h, filter);
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    let src = img.as_raw();

    if need_horizontal && need_vertical && vertical_first(in_w, in_h, out_w, out_h) {
        // Pillow 13: the vertical pass over every column, then the horizontal pass.
        let tmp = vertical_pass(src, in_w, out_h, &vertical);
        let data = horizontal_pass(&tmp, in_w, 0, out_h, out_w, &horizontal);
        return RgbImage::from_raw(width, height, data).expect("width*height*3 bytes");
    }

    // The horizontal pass only runs over the rows the vertical pass will read.
    let first_row = vertical.bounds[0].0;
    let last_row = vertical.bounds[out_h - 1].0 + vertical.bounds[out_h - 1].1;
    let (mut data, mut cur_w, mut cur_h) = (src.clone(), in_w, in_h);
    if need_horizontal {
        for b in &mut vertical.bounds {
            b.0 -= first_row;
        }
        let rows = last_row - first_row;
        data = horizontal_pass(src, in_w, first_row, rows, out_w, &horizontal);
        cur_w = out_w;
        cur_h = rows;
    }
    if need_vertical {
        data = vertical_pass(&data, cur_w, out_h, &vertical);
        cur_h = out_h;
    }
    debug_assert_eq!((cur_w, cur_h), (out_w, out_h));
    RgbImage::from_raw(width, height, data).expect("width*height*3 bytes")
}

/// Pillow 13's choice of pass order (`ImagingResampleInner`): the vertical pass runs
/// first when the image loses more than twice as many rows as columns.
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let rows_lost = in_h as i64 - out_h as i64;
    let columns_lost = in_w as i64 - out_w as i64;
    rows_lost > 0 && rows_lost > 2 * columns_lost
}

/// Resamples rows `first_row..first_row + rows` of `src` (`in_w` pixels wide) to `out_w`.
fn horizontal_pass(
    src: &[u8],
    in_w: usize,
    first_row: usize,
    rows: usize,
    out_w: usize,
    horizontal: &Coefficients,
) -> Vec<u8> {
    let mut out = vec![0u8; rows * out_w * 3];
    out.par_chunks_mut(out_w * 3)
        .enumerate()
        .for_each(|(y, line)| {
            let input = &src[(y + first_row) * in_w * 3..(y + first_row + 1) * in_w * 3];
            for (xx, px) in line.chunks_exact_mut(3).enumerate() {
                let (xmin, taps) = horizontal.bounds[xx];
                let k = &horizontal.weights[xx * horizontal.ksize..];
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (x, &w) in k.iter().enumerate().take(taps) {
                    let p = &input[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += i64::from(p[c]) * i64::from(w);
                    }
                }
                for c in 0..3 {
                    px[c] = clip8(acc[c]);
                }
            }
        });
    out
}

/// Resamples the columns of `input` (`width` pixels wide) to `out_h` rows.
fn vertical_pass(input: &[u8], width: usize, out_h: usize, vertical: &Coefficients) -> Vec<u8> {
    let mut out = vec![0u8; out_h * width * 3];
    out.par_chunks_mut(width * 3)
        .enumerate()
        .for_each(|(yy, line)| {
            let (ymin, taps) = vertical.bounds[yy];
            let k = &vertical.weights[yy * vertical.ksize..];
            for (i, v) in line.iter_mut().enumerate() {
                let mut acc = 1i64 << (PRECISION_BITS - 1);
                for (y, &w) in k.iter().enumerate().take(taps) {
                    acc += i64::from(input[(ymin + y) * width * 3 + i]) * i64::from(w);
                }
                *v = clip8(acc);
            }
        });
    out
}
