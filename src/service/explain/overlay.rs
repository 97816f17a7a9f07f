//! The heat map drawn over the photo, as a PNG.
//!
//! BLIP-2 sees the photo squashed to a square (S × S, no crop), so the map's grid
//! covers the whole photo: cell (r, c) is rows r/grid … (r+1)/grid of its height and
//! columns c/grid … (c+1)/grid of its width. The map is scaled by its max,
//! interpolated bilinearly between the cells' centres, coloured (blue → red) and blended
//! over the photo with an opacity of 0.7 · value², so cold patches show the photo as it
//! is and hot ones stand out.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{ImageFormat, RgbImage};

use crate::{Error, Result};

/// The longer side of the overlay, at most (a larger photo is scaled down first).
pub const MAX_SIDE: u32 = 768;

/// The photo with `map` (grid × grid, row-major) blended over it, as PNG bytes.
pub fn overlay_png(photo: &RgbImage, map: &[f32], grid: usize) -> Result<Vec<u8>> {
    let img = blend(photo, map, grid);
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| Error::Internal(format!("encoding the overlay: {e}")))?;
    Ok(png)
}

/// The photo (scaled to [`MAX_SIDE`] at most) with the map blended over it.
pub fn blend(photo: &RgbImage, map: &[f32], grid: usize) -> RgbImage {
    let (w, h) = photo.dimensions();
    let scale = (MAX_SIDE as f32 / w.max(h) as f32).min(1.0);
    let (ow, oh) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    let mut img = if (ow, oh) == (w, h) {
        photo.clone()
    } else {
        image::imageops::resize(photo, ow, oh, FilterType::Triangle)
    };
    let max = map.iter().copied().fold(0f32, f32::max);
    if grid == 0 || map.len() != grid * grid || max <= 0.0 {
        return img;
    }
    let at = |r: usize, c: usize| map[r * grid + c] / max;
    // A pixel's position in cell units, clamped to the outer cells' centres.
    let cell = |p: u32, side: u32| -> (usize, usize, f32) {
        let x = ((p as f32 + 0.5) / side as f32 * grid as f32 - 0.5).clamp(0.0, (grid - 1) as f32);
        let i = x.floor() as usize;
        (i, (i + 1).min(grid - 1), x - i as f32)
    };
    for y in 0..oh {
        let (r0, r1, fy) = cell(y, oh);
        for x in 0..ow {
            let (c0, c1, fx) = cell(x, ow);
            let top = at(r0, c0) * (1.0 - fx) + at(r0, c1) * fx;
            let bottom = at(r1, c0) * (1.0 - fx) + at(r1, c1) * fx;
            let t = top * (1.0 - fy) + bottom * fy;
            let colour = colormap(t);
            // Squared: the middle of the scale tints, the hot patches colour.
            let alpha = 0.7 * t * t;
            let px = img.get_pixel_mut(x, y);
            for (ch, col) in px.0.iter_mut().zip(colour) {
                *ch = (*ch as f32 * (1.0 - alpha) + col * alpha).round() as u8;
            }
        }
    }
    img
}

/// t in [0, 1] → blue, cyan, green, yellow, red: jet's ramps (LAVIS's demo draws jet),
/// with its ends at full blue and full red rather than dark, so the hottest patch is
/// the brightest.
fn colormap(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let ramp = |centre: f32| (1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0) * 255.0;
    [ramp(3.5), ramp(2.0), ramp(0.5)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_cell_is_red_and_a_cold_one_shows_the_photo() {
        let photo = RgbImage::from_pixel(64, 32, image::Rgb([128, 128, 128]));
        // 2 × 2: only the top-right cell is hot.
        let img = blend(&photo, &[0.0, 2.0, 0.0, 0.0], 2);
        assert_eq!(img.dimensions(), (64, 32));
        let hot = img.get_pixel(63, 0).0;
        assert!(hot[0] > 200 && hot[2] < 100, "{hot:?}");
        assert_eq!(img.get_pixel(0, 31).0, [128, 128, 128]);
        let png = overlay_png(&photo, &[0.0, 2.0, 0.0, 0.0], 2).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }

    #[test]
    fn a_large_photo_is_scaled_down_and_an_empty_map_leaves_it() {
        let photo = RgbImage::from_pixel(2000, 1000, image::Rgb([10, 20, 30]));
        let img = blend(&photo, &[0.0; 4], 2);
        assert_eq!(img.dimensions(), (MAX_SIDE, MAX_SIDE / 2));
        assert_eq!(img.get_pixel(5, 5).0, [10, 20, 30]);
    }
}
