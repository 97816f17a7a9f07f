//! Photos with EXIF metadata, made in the test: a JPEG with an APP1 segment holding a
//! little-endian TIFF structure (IFD0 → Exif IFD and GPS IFD) of the fields given.

/// The metadata to write; each field optional.
#[derive(Debug, Clone, Default)]
pub struct Exif {
    /// `YYYY:MM:DD HH:MM:SS`.
    pub date: Option<&'static str>,
    /// `+02:00`.
    pub offset: Option<&'static str>,
    pub make: Option<&'static str>,
    pub model: Option<&'static str>,
    /// Degrees, signed.
    pub gps: Option<(f64, f64)>,
}

/// One IFD entry: tag, type, count, and its value bytes.
struct Entry(u16, u16, u32, Vec<u8>);

fn ascii(tag: u16, s: &str) -> Entry {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    Entry(tag, 2, v.len() as u32, v)
}

fn long(tag: u16, value: u32) -> Entry {
    Entry(tag, 4, 1, value.to_le_bytes().to_vec())
}

/// Degrees as three rationals: degrees, minutes, seconds × 1000.
fn dms(tag: u16, degrees: f64) -> Entry {
    let d = degrees.abs();
    let whole = d.trunc();
    let minutes = ((d - whole) * 60.0).trunc();
    let millis = (((d - whole) * 60.0 - minutes) * 60_000.0).round();
    let mut v = Vec::new();
    for (num, den) in [
        (whole as u32, 1u32),
        (minutes as u32, 1),
        (millis as u32, 1000),
    ] {
        v.extend(num.to_le_bytes());
        v.extend(den.to_le_bytes());
    }
    Entry(tag, 5, 3, v)
}

/// Writes an IFD at `at` (bytes from the TIFF header), its out-of-line values after
/// it; returns the bytes.
fn ifd(at: usize, mut entries: Vec<Entry>) -> Vec<u8> {
    entries.sort_by_key(|e| e.0);
    let mut data_at = at + 2 + 12 * entries.len() + 4;
    let mut head = (entries.len() as u16).to_le_bytes().to_vec();
    let mut data = Vec::new();
    for Entry(tag, kind, count, value) in entries {
        head.extend(tag.to_le_bytes());
        head.extend(kind.to_le_bytes());
        head.extend(count.to_le_bytes());
        if value.len() <= 4 {
            let mut v = value.clone();
            v.resize(4, 0);
            head.extend(v);
        } else {
            head.extend((data_at as u32).to_le_bytes());
            data_at += value.len();
            data.extend(value);
        }
    }
    head.extend(0u32.to_le_bytes());
    head.extend(data);
    head
}

/// The TIFF structure for `exif`.
fn tiff(exif: &Exif) -> Vec<u8> {
    let mut exif_entries = Vec::new();
    if let Some(d) = exif.date {
        exif_entries.push(ascii(0x9003, d));
    }
    if let Some(o) = exif.offset {
        exif_entries.push(ascii(0x9011, o));
    }
    let mut gps_entries = Vec::new();
    if let Some((lat, lon)) = exif.gps {
        gps_entries.push(ascii(1, if lat < 0.0 { "S" } else { "N" }));
        gps_entries.push(dms(2, lat));
        gps_entries.push(ascii(3, if lon < 0.0 { "W" } else { "E" }));
        gps_entries.push(dms(4, lon));
    }
    let mut ifd0 = Vec::new();
    if let Some(m) = exif.make {
        ifd0.push(ascii(0x010f, m));
    }
    if let Some(m) = exif.model {
        ifd0.push(ascii(0x0110, m));
    }
    // Sizes first, with placeholder pointers, to know where the sub-IFDs go.
    let (has_exif, has_gps) = (!exif_entries.is_empty(), !gps_entries.is_empty());
    let pointers = usize::from(has_exif) + usize::from(has_gps);
    let probe = ifd(
        8,
        ifd0.iter()
            .map(|e| Entry(e.0, e.1, e.2, e.3.clone()))
            .collect(),
    );
    let ifd0_len = probe.len() + 12 * pointers;
    let exif_at = 8 + ifd0_len;
    let exif_bytes = ifd(exif_at, exif_entries);
    let gps_at = exif_at + if has_exif { exif_bytes.len() } else { 0 };
    let gps_bytes = ifd(gps_at, gps_entries);
    if has_exif {
        ifd0.push(long(0x8769, exif_at as u32));
    }
    if has_gps {
        ifd0.push(long(0x8825, gps_at as u32));
    }
    let mut out = b"II*\0".to_vec();
    out.extend(8u32.to_le_bytes());
    out.extend(ifd(8, ifd0));
    assert_eq!(out.len(), exif_at);
    if has_exif {
        out.extend(exif_bytes);
    }
    if has_gps {
        out.extend(gps_bytes);
    }
    out
}

/// `jpeg` with an APP1 EXIF segment of `exif` right after its SOI marker.
pub fn jpeg_with_exif(jpeg: &[u8], exif: &Exif) -> Vec<u8> {
    assert_eq!(&jpeg[..2], &[0xff, 0xd8], "not a JPEG");
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff(exif));
    let mut out = jpeg[..2].to_vec();
    out.extend([0xff, 0xe1]);
    out.extend(((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend(&jpeg[2..]);
    out
}
