//! Image decoding and pixel pre-processing (PIL-compatible).
//!
//! The reference (Hugging Face `BlipImageProcessor` on its PIL path, and LAVIS) does
//! `PIL.Image.open(p).convert("RGB").resize((W, H), BICUBIC)`, then rescales by 1/255 and
//! normalises with a per-channel mean and std. Each step here reproduces PIL's, so the
//! model sees the pixels it was trained on:
//!
//! - decoding: JPEG goes through libjpeg-turbo's decoder (as mozjpeg) with its defaults,
//!   which is what Pillow uses: the same pixels bit for bit (integer IDCT, "fancy" chroma
//!   upsampling). [`load_rgb`] / [`decode_rgb`] convert every pixel format the way
//!   `convert("RGB")` does (alpha dropped, not composited; 16-bit grey clipped to 255,
//!   16-bit colour reduced to its high byte; CMYK inverted Adobe-style). One deliberate
//!   difference: the EXIF orientation is applied, so that phone photos stand upright,
//!   unless [`LoadOptions::exif_orientation`] is off (`qseek eval`, which follows the
//!   reference: LAVIS and transformers never rotate).
//! - resizing: [`ImagePreprocessor::resize`] is Pillow's 8-bit convolution resampling
//!   (antialiased when shrinking), ported bit for bit in [`super::pil_resize`].
//! - [`ImagePreprocessor::pixel_values`] rescales and normalises in the same floating-point
//!   order as `transformers`, through a 256-entry table per channel.
//!
//! Images larger than [`LoadOptions::max_megapixels`] are refused from their header,
//! before any pixel buffer is allocated.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use serde::Deserialize;

use super::{formats, pil_resize};
use crate::{Error, Result};

/// Options for decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    /// Images with more pixels than this (in millions) are refused before decoding: a
    /// small file can declare a huge image (a "decompression bomb") and exhaust memory.
    pub max_megapixels: f64,
    /// Rotate/flip as the EXIF orientation tag says (what a photo viewer shows). The
    /// reference (`Image.open(p).convert("RGB")`) does not: evaluation turns it off.
    pub exif_orientation: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_megapixels: 100.0,
            exif_orientation: true,
        }
    }
}

impl LoadOptions {
    /// The pixel limit as an integer count (saturating for absurd limits).
    fn max_pixels(&self) -> u64 {
        // `as` saturates on overflow and maps NaN to 0, which refuses everything: safe.
        (self.max_megapixels * 1e6) as u64
    }
}

/// Reads and decodes the image file at `path` into 8-bit RGB, as PIL's
/// `Image.open(path).convert("RGB")` does, with the EXIF orientation applied unless
/// `opts.exif_orientation` is off.
///
/// Errors: [`Error::Io`] if the file cannot be read, [`Error::ImageTooLarge`] if its header
/// declares more than `opts.max_megapixels`, [`Error::ImageDecode`] for anything that is
/// not a complete JPEG, PNG, WebP, GIF, BMP or TIFF image.
pub fn load_rgb(path: &Path, opts: &LoadOptions) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_rgb(&bytes, path, opts)
}

/// Decodes an image held in memory, like [`load_rgb`]; `path_for_errors` only names the
/// image in error messages.
pub fn decode_rgb(bytes: &[u8], path_for_errors: &Path, opts: &LoadOptions) -> Result<RgbImage> {
    let fail = |reason: String| Error::ImageDecode {
        path: path_for_errors.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(fail("the file is empty (0 bytes)".into()));
    }
    let format = image::guess_format(bytes).map_err(|_| fail(not_an_image_reason(bytes)))?;
    if formats::by_format(format).is_none() {
        return Err(fail(format!(
            "{} images are not supported (only {})",
            format_name(format),
            formats::names("and")
        )));
    }
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // PIL refuses these too ("image file is truncated"); the decoder would otherwise
        // fill the missing part with grey and index half a photo.
        return Err(fail(
            "the JPEG data is truncated (the file ends before the image does)".into(),
        ));
    }
    if format == ImageFormat::Jpeg {
        let rgb = decode_jpeg(bytes, path_for_errors, opts)?;
        return Ok(apply_exif_orientation(rgb, bytes, opts));
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits(opts));
    // Only the header is read here; no pixel buffer exists yet.
    let decoder = reader
        .into_decoder()
        .map_err(|e| decode_error(e, format, path_for_errors, opts))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, path_for_errors, opts)?;
    if width == 0 || height == 0 {
        return Err(fail(format!("the image has no pixels ({width}x{height})")));
    }
    // A decoder bug must not take down a whole indexing run: treat a panic as bad data.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        DynamicImage::from_decoder(decoder)
    }))
    .map_err(|_| {
        fail(format!(
            "the {} decoder crashed on this file",
            format_name(format)
        ))
    })?
    .map_err(|e| decode_error(e, format, path_for_errors, opts))?;
    let rgb = to_rgb_like_pil(decoded);
    Ok(apply_exif_orientation(rgb, bytes, opts))
}

fn format_name(format: ImageFormat) -> String {
    format
        .extensions_str()
        .first()
        .map_or_else(|| format!("{format:?}"), |ext| ext.to_uppercase())
}

/// Why bytes with no known image signature are not an image, in words.
fn not_an_image_reason(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(512)];
    let looks_like_text = head
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace() || b >= 0x80);
    if looks_like_text {
        format!(
            "this is a text file, not an image ({})",
            formats::names("or")
        )
    } else {
        format!(
            "not an image in a supported format ({})",
            formats::names("or")
        )
    }
}

/// Refuses images over the pixel limit, from their declared dimensions.
fn check_size(width: u32, height: u32, path: &Path, opts: &LoadOptions) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > opts.max_pixels() {
        return Err(Error::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
            megapixels: pixels as f64 / 1e6,
            limit: opts.max_megapixels,
        });
    }
    Ok(())
}

/// The decoder's own limits: a second net under [`check_size`], for decoders whose
/// buffers do not follow from the header (e.g. animation frames).
fn decoder_limits(opts: &LoadOptions) -> Limits {
    // 8 bytes per pixel holds the widest buffer we accept (16-bit RGBA), 25% spare for
    // the decoders' working memory.
    let bytes_per_pixel = 8 * 5 / 4;
    let mut limits = Limits::default();
    limits.max_alloc = Some(opts.max_pixels().saturating_mul(bytes_per_pixel));
    limits
}

fn decode_error(
    e: image::ImageError,
    format: ImageFormat,
    path: &Path,
    opts: &LoadOptions,
) -> Error {
    let path: PathBuf = path.to_path_buf();
    match e {
        image::ImageError::Limits(_) => Error::ImageDecode {
            path,
            reason: format!(
                "decoding would need more memory than allowed for {} megapixels ({e})",
                opts.max_megapixels
            ),
        },
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::ImageDecode {
                path,
                reason: format!(
                    "the {} data is truncated (the file ends before the image does)",
                    format_name(format)
                ),
            }
        }
        e => Error::ImageDecode {
            path,
            reason: format!("invalid {} data: {e}", format_name(format)),
        },
    }
}

/// Decodes a JPEG as Pillow does: with libjpeg-turbo's code (mozjpeg) and its default
/// settings (`JDCT_ISLOW` integer IDCT, fancy upsampling), which Pillow keeps. Grey
/// images are replicated to three channels; CMYK and YCCK ones are read as inverted
/// ("Adobe") CMYK and converted the way PIL's `convert("RGB")` does.
///
/// The size limit is checked from the header, before any pixel buffer is allocated.
fn decode_jpeg(bytes: &[u8], path: &Path, opts: &LoadOptions) -> Result<RgbImage> {
    use mozjpeg::ColorSpace;

    let fail = |reason: String| Error::ImageDecode {
        path: path.to_path_buf(),
        reason,
    };
    // libjpeg reports fatal errors by unwinding out of the decoder (mozjpeg's error
    // manager); catching that, and any other panic, turns bad data into an error.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let decompress = mozjpeg::Decompress::new_mem(bytes)
            .map_err(|e| fail(format!("invalid JPEG data: {e}")))?;
        let (width, height) = decompress.size();
        let width = u32::try_from(width).unwrap_or(u32::MAX);
        let height = u32::try_from(height).unwrap_or(u32::MAX);
        check_size(width, height, path, opts)?;
        if width == 0 || height == 0 {
            return Err(fail(format!("the image has no pixels ({width}x{height})")));
        }
        let read_error = |e: std::io::Error| fail(format!("invalid JPEG data: {e}"));
        let samples = match decompress.color_space() {
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
                let cmyk =
                    read_all(decompress.to_colorspace(ColorSpace::JCS_CMYK)).map_err(read_error)?;
                // PIL opens these as "CMYK;I" (inverted) and `convert("RGB")` computes
                // (255 - C) * (255 - K) / 255, i.e. stored C * stored K / 255, rounded.
                cmyk.chunks_exact(4)
                    .flat_map(|p| [p[0], p[1], p[2]].map(|c| mul_div_255(c, p[3])))
                    .collect()
            }
            ColorSpace::JCS_GRAYSCALE => read_all(decompress.grayscale())
                .map_err(read_error)?
                .iter()
                .flat_map(|&v| [v; 3])
                .collect(),
            _ => read_all(decompress.rgb()).map_err(read_error)?,
        };
        RgbImage::from_raw(width, height, samples)
            .ok_or_else(|| fail("the JPEG decoder returned fewer pixels than the image has".into()))
    }));
    outcome.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("the JPEG decoder crashed on this file");
        Err(fail(format!("invalid JPEG data: {message}")))
    })
}

/// All scanlines of a started decompression, then its end.
fn read_all<R: std::io::BufRead>(
    started: std::io::Result<mozjpeg::decompress::DecompressStarted<R>>,
) -> std::io::Result<Vec<u8>> {
    let mut started = started?;
    let samples = started.read_scanlines::<u8>()?;
    started.finish()?;
    Ok(samples)
}

/// PIL's `MULDIV255`: `a * b / 255`, rounded.
fn mul_div_255(a: u8, b: u8) -> u8 {
    let t = u32::from(a) * u32::from(b) + 128;
    ((t + (t >> 8)) >> 8) as u8
}

/// Whether a JPEG stream reaches its end-of-image marker.
///
/// Walks the marker segments; inside entropy-coded data a 0xFF byte is always followed by
/// 0x00 (stuffing) or a restart marker, so the first other marker there is real.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            // Entropy-coded data (after SOS) or garbage: scan for the next marker.
            i += 1;
            continue;
        }
        let marker = bytes[i + 1];
        match marker {
            0xD9 => return true,
            // Fill bytes, stuffed zero, restart markers, standalone markers: no length.
            0xFF => i += 1,
            0x00 | 0xD0..=0xD7 | 0x01 => i += 2,
            _ => {
                let Some(len) = bytes.get(i + 2..i + 4) else {
                    return false;
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                i += 2 + len;
            }
        }
    }
    false
}

/// 8-bit RGB the way PIL's `convert("RGB")` makes it.
fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    let (width, height) = (img.width(), img.height());
    let from_samples = |samples: Vec<u8>| {
        RgbImage::from_raw(width, height, samples).expect("3 samples per pixel by construction")
    };
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        // Alpha is dropped, not composited over a background: `convert("RGB")` does that.
        DynamicImage::ImageRgba8(rgba) => from_samples(
            rgba.as_raw()
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        ),
        DynamicImage::ImageLuma8(l) => {
            from_samples(l.as_raw().iter().flat_map(|&v| [v; 3]).collect())
        }
        DynamicImage::ImageLumaA8(la) => from_samples(
            la.as_raw()
                .chunks_exact(2)
                .flat_map(|p| [p[0]; 3])
                .collect(),
        ),
        // PIL opens 16-bit grey as mode "I;16", and "I;16" -> "RGB" clips at 255: a
        // 16-bit grey photo comes out nearly white. That is what the reference sees.
        DynamicImage::ImageLuma16(l) => from_samples(
            l.as_raw()
                .iter()
                .flat_map(|&v| [v.min(255) as u8; 3])
                .collect(),
        ),
        // 16-bit colour (and grey+alpha, which PIL opens as "RGBA") is unpacked to its
        // high byte when PIL opens the file.
        DynamicImage::ImageLumaA16(la) => from_samples(
            la.as_raw()
                .chunks_exact(2)
                .flat_map(|p| [(p[0] >> 8) as u8; 3])
                .collect(),
        ),
        DynamicImage::ImageRgb16(rgb) => {
            from_samples(rgb.as_raw().iter().map(|&v| (v >> 8) as u8).collect())
        }
        DynamicImage::ImageRgba16(rgba) => from_samples(
            rgba.as_raw()
                .chunks_exact(4)
                .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
                .collect(),
        ),
        // Float images (some TIFFs) have no PIL "RGB" counterpart; clamp and round.
        other => other.to_rgb8(),
    }
}

/// Rotates/flips as the EXIF orientation tag asks (what `ImageOps.exif_transpose` does).
///
/// The reference does not do this; we do, so that phone photos are seen upright, unless
/// `opts.exif_orientation` is off. Missing or unreadable EXIF data means "as stored".
fn apply_exif_orientation(rgb: RgbImage, bytes: &[u8], opts: &LoadOptions) -> RgbImage {
    if !opts.exif_orientation {
        return rgb;
    }
    let orientation = exif::Reader::new()
        .read_from_container(&mut Cursor::new(bytes))
        .ok()
        .and_then(|exif| {
            exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
                .and_then(|field| field.value.get_uint(0))
        })
        .and_then(|v| u8::try_from(v).ok())
        .and_then(image::metadata::Orientation::from_exif);
    match orientation {
        None | Some(image::metadata::Orientation::NoTransforms) => rgb,
        Some(orientation) => {
            let mut img = DynamicImage::ImageRgb8(rgb);
            img.apply_orientation(orientation);
            img.into_rgb8()
        }
    }
}

/// Pre-processing settings, read from `preprocessor_config.json` (Hugging Face
/// `BlipImageProcessor` format). Missing keys take `BlipImageProcessor`'s defaults;
/// unknown keys (`image_processor_type`, `processor_class`, ...) are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ImagePreprocessor {
    /// Resize to [`Self::size`] (otherwise images are used at their own size).
    pub do_resize: bool,
    /// Target size; `{"height": H, "width": W}` or a bare number for a square.
    pub size: ImageSize,
    /// PIL resampling filter: 3 = bicubic (BLIP-2's), 2 = bilinear.
    pub resample: Resample,
    /// Multiply 8-bit values by [`Self::rescale_factor`].
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Subtract [`Self::image_mean`] and divide by [`Self::image_std`], per channel.
    pub do_normalize: bool,
    /// Per-channel mean (R, G, B); a single number applies to all three.
    #[serde(deserialize_with = "per_channel")]
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B); a single number applies to all three.
    #[serde(deserialize_with = "per_channel")]
    pub image_std: [f32; 3],
    /// Accepted for compatibility; images are always converted to RGB.
    pub do_convert_rgb: bool,
}

/// OpenAI CLIP's normalisation, `BlipImageProcessor`'s default.
const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

impl Default for ImagePreprocessor {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: ImageSize {
                height: 384,
                width: 384,
            },
            resample: Resample::Bicubic,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
        }
    }
}

/// The output size of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct HeightWidth {
            height: u32,
            width: u32,
        }
        let value = serde_json::Value::deserialize(deserializer)?;
        let invalid = |what: &str| {
            serde::de::Error::custom(format!(
                "{what}; expected {{\"height\": H, \"width\": W}} (or one number for a square)"
            ))
        };
        if let Some(side) = value.as_u64() {
            let side = u32::try_from(side).map_err(|_| invalid("size too large"))?;
            return Ok(Self {
                height: side,
                width: side,
            });
        }
        let Some(map) = value.as_object() else {
            return Err(invalid(&format!("got {value}")));
        };
        if map.contains_key("shortest_edge") || map.contains_key("longest_edge") {
            return Err(invalid(&format!(
                "got {value}, which keeps the aspect ratio; BLIP-2 resizes straight to a fixed size"
            )));
        }
        let hw: HeightWidth = serde_json::from_value(value.clone())
            .map_err(|e| invalid(&format!("got {value} ({e})")))?;
        Ok(Self {
            height: hw.height,
            width: hw.width,
        })
    }
}

/// A PIL resampling filter, by its number in `PIL.Image.Resampling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// `Resampling.BILINEAR` (2).
    Bilinear,
    /// `Resampling.BICUBIC` (3), Keys' cubic with a = -0.5 (Catmull-Rom).
    Bicubic,
}

impl<'de> Deserialize<'de> for Resample {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match u64::deserialize(deserializer)? {
            2 => Ok(Self::Bilinear),
            3 => Ok(Self::Bicubic),
            other => Err(serde::de::Error::custom(format!(
                "PIL resampling filter {other} is not supported; use 3 (bicubic) or 2 (bilinear)"
            ))),
        }
    }
}

impl Resample {
    fn filter(self) -> pil_resize::Filter {
        match self {
            Self::Bilinear => pil_resize::Filter::Bilinear,
            Self::Bicubic => pil_resize::Filter::Bicubic,
        }
    }
}

fn per_channel<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<[f32; 3], D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrThree {
        One(f32),
        Three([f32; 3]),
    }
    match OneOrThree::deserialize(deserializer) {
        Ok(OneOrThree::One(v)) => Ok([v; 3]),
        Ok(OneOrThree::Three(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "expected a list of 3 numbers (R, G, B) or one number",
        )),
    }
}

impl ImagePreprocessor {
    /// Reads a `preprocessor_config.json`. Errors name the file and, for a bad value, the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config_error = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| config_error(format!("not valid JSON: {e}")))?;
        let Some(map) = value.as_object() else {
            return Err(config_error("expected a JSON object of settings".into()));
        };
        let config: Self = match serde_json::from_value(value.clone()) {
            Ok(config) => config,
            Err(e) => {
                // serde's message does not say which key; try them one at a time.
                let culprit = map.iter().find_map(|(key, v)| {
                    let alone =
                        serde_json::Value::Object([(key.clone(), v.clone())].into_iter().collect());
                    serde_json::from_value::<Self>(alone)
                        .err()
                        .map(|e| (key, e))
                });
                return Err(config_error(match culprit {
                    Some((key, e)) => format!("key `{key}`: {e}"),
                    None => e.to_string(),
                }));
            }
        };
        config.validate().map_err(config_error)?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.size.height == 0 || self.size.width == 0 {
            return Err(format!(
                "key `size`: {}x{} has no pixels",
                self.size.height, self.size.width
            ));
        }
        if !(self.rescale_factor.is_finite() && self.rescale_factor > 0.0) {
            return Err(format!(
                "key `rescale_factor`: {} is not a positive number",
                self.rescale_factor
            ));
        }
        if let Some(std) = self
            .image_std
            .iter()
            .find(|s| !(s.is_finite() && **s > 0.0))
        {
            return Err(format!("key `image_std`: {std} is not a positive number"));
        }
        if let Some(mean) = self.image_mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("key `image_mean`: {mean} is not a number"));
        }
        Ok(())
    }

    /// The resize target, `(height, width)`.
    pub fn image_size(&self) -> (u32, u32) {
        (self.size.height, self.size.width)
    }

    /// Resizes to `(width, height)` = [`Self::size`] as PIL's
    /// `Image.resize((width, height), resample)` does: 8-bit, separable convolution,
    /// antialiased when shrinking. An image already at that size is returned as is.
    pub fn resize(&self, img: &RgbImage) -> RgbImage {
        let (width, height) = (self.size.width, self.size.height);
        if img.dimensions() == (width, height) {
            return img.clone();
        }
        if img.width() == 0 || img.height() == 0 || width == 0 || height == 0 {
            // Nothing to sample from (decode_rgb never returns such an image).
            return RgbImage::new(width, height);
        }
        pil_resize::resize(img, width, height, self.resample.filter())
    }

    /// The model input for `img`: resized (if `do_resize`), rescaled and normalised, in
    /// CHW layout (all R, then all G, then all B), `3 * height * width` values.
    pub fn pixel_values(&self, img: &RgbImage) -> Vec<f32> {
        let resized;
        let img = if self.do_resize {
            resized = self.resize(img);
            &resized
        } else {
            img
        };
        let table = self.value_table();
        let plane = img.width() as usize * img.height() as usize;
        let mut out = vec![0.0f32; 3 * plane];
        let (red, rest) = out.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            red[i] = table[0][usize::from(px[0])];
            green[i] = table[1][usize::from(px[1])];
            blue[i] = table[2][usize::from(px[2])];
        }
        out
    }

    /// Every 8-bit value's output, per channel, computed as `transformers` does:
    /// `(f32(f64(v) * rescale_factor) - f32(mean)) / f32(std)` in `f32`.
    fn value_table(&self) -> [[f32; 256]; 3] {
        let mut table = [[0.0f32; 256]; 3];
        for (c, channel) in table.iter_mut().enumerate() {
            for (v, out) in channel.iter_mut().enumerate() {
                let mut x = if self.do_rescale {
                    (v as f64 * self.rescale_factor) as f32
                } else {
                    v as f32
                };
                if self.do_normalize {
                    x = (x - self.image_mean[c]) / self.image_std[c];
                }
                *out = x;
            }
        }
        table
    }

    /// [`load_rgb`] then [`Self::pixel_values`].
    pub fn load(&self, path: &Path, opts: &LoadOptions) -> Result<Vec<f32>> {
        Ok(self.pixel_values(&load_rgb(path, opts)?))
    }
}
