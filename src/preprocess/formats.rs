//! The image formats qseek reads: one list, from which the decoder's formats, the folder
//! walk's extensions, the served MIME types and the messages all derive.

use image::ImageFormat;

/// One format qseek reads.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    /// The decoder's format.
    pub format: ImageFormat,
    /// Its name in messages.
    pub name: &'static str,
    /// File name extensions (lower case) the walk takes as this format.
    pub extensions: &'static [&'static str],
    /// Its MIME type, for serving the file.
    pub mime: &'static str,
}

/// Every format qseek reads, in the order messages name them.
pub const FORMATS: [Format; 6] = [
    Format {
        format: ImageFormat::Jpeg,
        name: "JPEG",
        extensions: &["jpg", "jpeg", "jpe", "jfif"],
        mime: "image/jpeg",
    },
    Format {
        format: ImageFormat::Png,
        name: "PNG",
        extensions: &["png"],
        mime: "image/png",
    },
    Format {
        format: ImageFormat::WebP,
        name: "WebP",
        extensions: &["webp"],
        mime: "image/webp",
    },
    Format {
        format: ImageFormat::Gif,
        name: "GIF",
        extensions: &["gif"],
        mime: "image/gif",
    },
    Format {
        format: ImageFormat::Bmp,
        name: "BMP",
        extensions: &["bmp"],
        mime: "image/bmp",
    },
    Format {
        format: ImageFormat::Tiff,
        name: "TIFF",
        extensions: &["tif", "tiff"],
        mime: "image/tiff",
    },
];

/// The format of a decoder format, if qseek reads it.
pub fn by_format(format: ImageFormat) -> Option<&'static Format> {
    FORMATS.iter().find(|f| f.format == format)
}

/// Whether a file name extension (any case) is one of a format qseek reads.
pub fn is_image_extension(ext: &str) -> bool {
    let ext = ext.to_ascii_lowercase();
    FORMATS.iter().any(|f| f.extensions.contains(&ext.as_str()))
}

/// The formats' names as a list in words, joined by `last` before the final one:
/// "JPEG, PNG, WebP, GIF, BMP and TIFF".
pub fn names(last: &str) -> String {
    let names: Vec<&str> = FORMATS.iter().map(|f| f.name).collect();
    match names.split_last() {
        Some((tail, head)) if !head.is_empty() => format!("{} {last} {tail}", head.join(", ")),
        Some((tail, _)) => tail.to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_gives_extensions_names_and_mime_types() {
        let cases = [
            ("jpg", true),
            ("JPEG", true),
            ("jfif", true),
            ("png", true),
            ("webp", true),
            ("gif", true),
            ("bmp", true),
            ("tif", true),
            ("tiff", true),
            ("heic", false),
            ("cr2", false),
            ("", false),
        ];
        for (ext, read) in cases {
            assert_eq!(is_image_extension(ext), read, "{ext}");
        }
        assert_eq!(names("and"), "JPEG, PNG, WebP, GIF, BMP and TIFF");
        assert_eq!(names("or"), "JPEG, PNG, WebP, GIF, BMP or TIFF");
        assert_eq!(
            by_format(ImageFormat::Png).map(|f| f.mime),
            Some("image/png")
        );
        assert!(by_format(ImageFormat::Avif).is_none());
    }
}
