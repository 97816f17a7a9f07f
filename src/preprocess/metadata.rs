//! What a photo's EXIF says about it — when, with which camera and lens, where, and which
//! way up — for the index's date, place and camera filters (issue 30).
//!
//! EXIF is written by thousands of cameras, phones and editors, many of them wrong, and a
//! photo folder may hold files made to hurt a parser. So [`read_photo_meta`] never fails:
//! each field is checked on its own; a missing one is left out silently; a broken, mistyped
//! or absurd one is left out with a note that names it and says why; and one bad field never
//! costs the others.
//!
//! The containers (JPEG APP1, TIFF, PNG `eXIf`, WebP `EXIF`, HEIF) and the TIFF structure
//! are parsed by kamadak-exif with `continue_on_error`. What it does with hostile structure
//! (checked in its 0.6.2 source):
//! - Every IFD's offset is remembered, and one reached a second time is refused ("Already
//!   visited IFD detected"): IFD0's next-IFD pointer back to itself, or an Exif or GPS
//!   pointer back to IFD0, ends that chain or that sub-IFD, and everything read before is
//!   kept. At most 8 IFDs are followed in the chain.
//! - A value whose offset or count points past the end ("Truncated field value", huge
//!   counts included: the length is checked before anything is allocated) drops only that
//!   field. A truncated IFD or next-IFD pointer ends the parse, keeping the fields read.
//! - Allocations are bounded by the input's size; the JPEG, PNG and WebP scans are linear.
//!
//! So a parse is linear in the input, and every structural error comes back as one `exif:`
//! note next to the fields that survived it. A header it cannot read at all (not TIFF, bad
//! byte order, a JPEG cut inside its APP1) gives an empty [`PhotoMeta`] and one note.

use std::fmt::Write as _;
use std::io::Cursor;

use exif::{Exif, In, Rational, Reader, Tag, Value};
use qseek_index::{days_from_civil, Gps, PhotoMeta, TakenAt};

/// A photo's metadata, and what was wrong with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// The fields that were present and sound.
    pub meta: PhotoMeta,
    /// One line per field left out because it was broken or absurd (and per structural
    /// error), starting with the field's name in [`PhotoMeta`] (`taken:`, `make:`,
    /// `model:`, `lens:`, `gps:`, `orientation:`) or `exif:` for the structure, then the
    /// EXIF tag and why. Empty for a photo without EXIF or with sound EXIF: these are for
    /// a log, not errors.
    pub notes: Vec<String>,
}

/// Reads what a photo's EXIF says (any container kamadak-exif reads: JPEG APP1, TIFF, PNG
/// eXIf, WebP EXIF chunk, HEIF). Never fails: a field that is missing, broken or absurd is
/// left out, with a note naming the field and why.
///
/// The date is never the file's modification time: a copied or restored file has a new
/// one, and a filter by date would silently lie. Cost: a few microseconds for a JPEG
/// whose EXIF is at its start; a JPEG without EXIF is scanned to its end for it.
pub fn read_photo_meta(bytes: &[u8]) -> Metadata {
    let mut notes = Vec::new();
    let Some(exif) = read_exif(bytes, &mut notes) else {
        return Metadata {
            meta: PhotoMeta::default(),
            notes,
        };
    };
    let meta = PhotoMeta {
        taken: taken(&exif, &mut notes),
        make: text(&exif, Tag::Make, "make", &mut notes),
        model: text(&exif, Tag::Model, "model", &mut notes),
        lens: text(&exif, Tag::LensModel, "lens", &mut notes)
            .or_else(|| text(&exif, Tag::LensMake, "lens", &mut notes)),
        gps: gps(&exif, &mut notes),
        orientation: orientation(&exif, &mut notes),
    };
    Metadata { meta, notes }
}

/// The EXIF fields kamadak-exif could read, keeping those read before a structural error
/// (each error becomes a note). `None` when there is no EXIF (silently: most PNGs, GIFs
/// and BMPs have none) or its header is unreadable (with a note).
fn read_exif(bytes: &[u8], notes: &mut Vec<String>) -> Option<Exif> {
    match Reader::new()
        .continue_on_error(true)
        .read_from_container(&mut Cursor::new(bytes))
    {
        Ok(exif) => Some(exif),
        Err(exif::Error::PartialResult(partial)) => {
            let (exif, errors) = partial.into_inner();
            for e in errors {
                notes.push(format!(
                    "exif: damaged structure ({e}): what it hid is lost, the rest is kept"
                ));
            }
            Some(exif)
        }
        // No EXIF in a format that has it, or a format that has none: nothing to say.
        Err(exif::Error::NotFound(_) | exif::Error::InvalidFormat("Unknown image format")) => None,
        Err(e) => {
            notes.push(format!("exif: unreadable ({e}): no field kept"));
            None
        }
    }
}

/// The tags that make up one of the two dates a photo may carry.
struct DateTags {
    /// The date's tag name, for notes.
    name: &'static str,
    date: Tag,
    offset: Tag,
    subsec: Tag,
}

/// When the shutter fired.
const ORIGINAL: DateTags = DateTags {
    name: "DateTimeOriginal",
    date: Tag::DateTimeOriginal,
    offset: Tag::OffsetTimeOriginal,
    subsec: Tag::SubSecTimeOriginal,
};

/// When the image was stored digitally: the same instant for a digital camera, the scan
/// for a scanned film photo, so only a fallback.
const DIGITIZED: DateTags = DateTags {
    name: "DateTimeDigitized",
    date: Tag::DateTimeDigitized,
    offset: Tag::OffsetTimeDigitized,
    subsec: Tag::SubSecTimeDigitized,
};

/// The earliest and latest years believed: a camera whose clock was never set may write
/// year 0000 or 9999 (or its own epoch, 1970 or 2000, which no range can tell from a real
/// date); photography began in the 1820s, so a year outside this range is a broken clock,
/// not a date a search should file the photo under.
const YEARS: std::ops::RangeInclusive<i64> = 1800..=2200;

/// The largest UTC offset in use (UTC+14, Line Islands; UTC−12 is the smallest).
const MAX_OFFSET_MINUTES: i32 = 14 * 60;

/// When the photo was taken: `DateTimeOriginal` with its offset and sub-seconds, else
/// `DateTimeDigitized` with its own. An absurd `DateTimeOriginal` falls back to a sound
/// `DateTimeDigitized` (with a note), since a digital camera writes them both at once.
fn taken(exif: &Exif, notes: &mut Vec<String>) -> Option<TakenAt> {
    for tags in [ORIGINAL, DIGITIZED] {
        let Some(field) = exif.get_field(tags.date, In::PRIMARY) else {
            continue;
        };
        match ascii(&field.value).and_then(parse_datetime) {
            Ok(local) => {
                return Some(TakenAt {
                    local,
                    nanos: subsec(exif, &tags, notes),
                    offset_minutes: offset(exif, &tags, notes),
                })
            }
            Err(why) => notes.push(format!("taken: {} {why}", tags.name)),
        }
    }
    None
}

/// Seconds from 1970-01-01T00:00:00 of the camera's own clock, from
/// `YYYY:MM:DD HH:MM:SS` (trailing NULs and spaces ignored; `-` between the date's parts
/// tolerated, as some editors write it). Anything else, or a date that is not one, is an
/// error saying why.
fn parse_datetime(raw: &[u8]) -> Result<i64, String> {
    let s = trim_end(raw);
    if s.iter().all(|&b| b == b' ' || b == b':') {
        return Err(format!("{} is blank (unknown)", shown(raw)));
    }
    let layout_ok = s.len() == 19
        && matches!(s[4], b':' | b'-')
        && s[7] == s[4]
        && s[10] == b' '
        && s[13] == b':'
        && s[16] == b':';
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        part.iter().try_fold(0i64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let fields = (
        layout_ok,
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    );
    let (true, Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = fields
    else {
        return Err(format!("{} is not YYYY:MM:DD HH:MM:SS", shown(raw)));
    };
    if year == 0 && month == 0 && day == 0 {
        return Err(format!("{} is all zeros (clock never set)", shown(raw)));
    }
    let why = if !YEARS.contains(&year) {
        "a year outside 1800–2200"
    } else if !(1..=12).contains(&month) {
        "no such month"
    } else if day < 1 || day > days_in_month(year, month) {
        "no such day in that month"
    } else if hour > 23 || minute > 59 {
        "no such time of day"
    } else if second > 60 {
        // 60 is a leap second, counted as the next minute's :00 (as Unix time does).
        "no such second"
    } else {
        let days = days_from_civil(year, month as u32, day as u32);
        return Ok(days * 86_400 + hour * 3600 + minute * 60 + second);
    };
    Err(format!("{} has {why}", shown(raw)))
}

/// The number of days in a month of the proleptic Gregorian calendar.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Nanoseconds from the date's `SubSecTime…` digits ("12" is 0.12 s), 0 when absent,
/// blank or broken (with a note: the date itself stands). Digits past the ninth are
/// dropped.
fn subsec(exif: &Exif, tags: &DateTags, notes: &mut Vec<String>) -> u32 {
    let Some(field) = exif.get_field(tags.subsec, In::PRIMARY) else {
        return 0;
    };
    let parsed = ascii(&field.value).and_then(|raw| {
        let digits = trim(raw);
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(format!("{} is not digits", shown(raw)));
        }
        let mut nanos = 0u32;
        for i in 0..9 {
            let d = digits.get(i).map_or(0, |&b| u32::from(b - b'0'));
            nanos = nanos * 10 + d;
        }
        Ok(nanos)
    });
    parsed.unwrap_or_else(|why| {
        notes.push(format!("taken: {} {why}: ignored", tags.subsec));
        0
    })
}

/// The date's clock offset from UTC in minutes, from its `OffsetTime…` (`±HH:MM`).
/// `None` when absent or blank (unknown, as EXIF says), or when broken or beyond
/// ±14:00 (with a note: the local date itself stands).
fn offset(exif: &Exif, tags: &DateTags, notes: &mut Vec<String>) -> Option<i32> {
    let field = exif.get_field(tags.offset, In::PRIMARY)?;
    let parsed = ascii(&field.value).and_then(|raw| {
        let s = trim(raw);
        if s.iter().all(|&b| b == b' ' || b == b':') {
            return Ok(None);
        }
        let two = |at: usize| -> Option<i32> {
            let (a, b) = (*s.get(at)?, *s.get(at + 1)?);
            (a.is_ascii_digit() && b.is_ascii_digit())
                .then(|| i32::from(a - b'0') * 10 + i32::from(b - b'0'))
        };
        let sign = match s.first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => 0,
        };
        match (sign, two(1), s.get(3), two(4), s.len()) {
            (1 | -1, Some(h), Some(b':'), Some(m), 6) if m < 60 => {
                let minutes = sign * (h * 60 + m);
                if minutes.abs() > MAX_OFFSET_MINUTES {
                    Err(format!("{} is beyond ±14:00", shown(raw)))
                } else {
                    Ok(Some(minutes))
                }
            }
            _ => Err(format!("{} is not ±HH:MM", shown(raw))),
        }
    });
    parsed.unwrap_or_else(|why| {
        notes.push(format!("taken: {} {why}: offset ignored", tags.offset));
        None
    })
}

/// The longest text kept: makes, models and lenses are short names; a longer one is
/// garbage or an attack on the index's size.
const MAX_TEXT_BYTES: usize = 255;

/// An ASCII field as text: its first non-blank string, trimmed of spaces. Empty → `None`
/// silently (cameras write blank `LensMake`s). Bytes that are not UTF-8 are read as
/// Latin-1 (what pre-Unicode software meant), with a note; control characters, a
/// mistyped field or one over [`MAX_TEXT_BYTES`] → `None` with a note.
fn text(exif: &Exif, tag: Tag, name: &str, notes: &mut Vec<String>) -> Option<String> {
    let field = exif.get_field(tag, In::PRIMARY)?;
    let Value::Ascii(strings) = &field.value else {
        notes.push(format!(
            "{name}: {tag} is {}, not ASCII: ignored",
            type_name(&field.value)
        ));
        return None;
    };
    let s = strings.iter().map(|s| trim(s)).find(|s| !s.is_empty())?;
    if s.len() > MAX_TEXT_BYTES {
        notes.push(format!(
            "{name}: {tag} is {} bytes long, over {MAX_TEXT_BYTES}: ignored",
            s.len()
        ));
        return None;
    }
    let text: String = match std::str::from_utf8(s) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            notes.push(format!("{name}: {tag} is not UTF-8: read as Latin-1"));
            s.iter().map(|&b| char::from(b)).collect()
        }
    };
    if text.chars().any(char::is_control) {
        // Escape sequences or line breaks in a camera's name are garbage, and would
        // reach logs and pages that show it.
        notes.push(format!(
            "{name}: {tag} {} has control characters: ignored",
            shown(s)
        ));
        return None;
    }
    Some(text)
}

/// Where: latitude and longitude (both, in range), with the altitude when it is sound.
/// A broken latitude or longitude loses the place (with a note); a broken altitude only
/// itself.
fn gps(exif: &Exif, notes: &mut Vec<String>) -> Option<Gps> {
    let field = |tag| exif.get_field(tag, In::PRIMARY);
    let (lat, lon) = match (field(Tag::GPSLatitude), field(Tag::GPSLongitude)) {
        (None, None) => return None,
        (Some(lat), Some(lon)) => (lat, lon),
        (lat, _) => {
            let (has, lacks) = if lat.is_some() {
                ("GPSLatitude", "GPSLongitude")
            } else {
                ("GPSLongitude", "GPSLatitude")
            };
            notes.push(format!("gps: {has} without {lacks}: ignored"));
            return None;
        }
    };
    let lat = coordinate(&lat.value, field(Tag::GPSLatitudeRef), [b'N', b'S'], 90.0);
    let lon = coordinate(&lon.value, field(Tag::GPSLongitudeRef), [b'E', b'W'], 180.0);
    let ((lat, lat_ref), (lon, lon_ref)) = match (lat, lon) {
        (Ok(lat), Ok(lon)) => (lat, lon),
        (Err(why), _) => {
            notes.push(format!("gps: GPSLatitude {why}: place ignored"));
            return None;
        }
        (_, Err(why)) => {
            notes.push(format!("gps: GPSLongitude {why}: place ignored"));
            return None;
        }
    };
    if lat == 0.0 && lon == 0.0 && !lat_ref && !lon_ref {
        // Null Island with no hemisphere: often a placeholder from a phone without a fix,
        // but it is a place, and refusing it would be a guess.
        notes.push(
            "gps: exactly 0°, 0° with no N/S or E/W reference: kept, but likely a placeholder"
                .into(),
        );
    }
    Some(Gps {
        lat,
        lon,
        alt: altitude(exif, notes),
    })
}

/// Degrees from a GPS coordinate (degrees, minutes, seconds as RATIONALs; fewer parts
/// are taken as the leading ones) and its reference letter (`hemispheres[1]` is
/// negative; absent means positive, as most readers assume). Returns whether a
/// reference was given.
fn coordinate(
    value: &Value,
    reference: Option<&exif::Field>,
    hemispheres: [u8; 2],
    max: f64,
) -> Result<(f64, bool), String> {
    let Value::Rational(parts) = value else {
        return Err(format!("is {}, not RATIONAL", type_name(value)));
    };
    if parts.is_empty() || parts.len() > 3 {
        return Err(format!("has {} parts, not 3", parts.len()));
    }
    if parts.iter().any(|r| r.denom == 0) {
        return Err(format!("({}) has a zero denominator", rationals(parts)));
    }
    let part = |i: usize| parts.get(i).map_or(0.0, Rational::to_f64);
    let (deg, min, sec) = (part(0), part(1), part(2));
    if min >= 60.0 || sec >= 60.0 {
        return Err(format!(
            "({}) has minutes or seconds ≥ 60",
            rationals(parts)
        ));
    }
    let degrees = deg + min / 60.0 + sec / 3600.0;
    if !degrees.is_finite() || degrees > max {
        return Err(format!("({}) is beyond {max}°", rationals(parts)));
    }
    let Some(reference) = reference else {
        return Ok((degrees, false));
    };
    let letter = match &reference.value {
        Value::Ascii(s) => s.first().map(|s| trim(s)).unwrap_or_default(),
        other => return Err(format!("reference is {}, not ASCII", type_name(other))),
    };
    match letter {
        [] => Ok((degrees, false)),
        [c] if c.eq_ignore_ascii_case(&hemispheres[0]) => Ok((degrees, true)),
        [c] if c.eq_ignore_ascii_case(&hemispheres[1]) => Ok((-degrees, true)),
        _ => Err(format!(
            "reference {} is neither {} nor {}",
            shown(letter),
            char::from(hemispheres[0]),
            char::from(hemispheres[1])
        )),
    }
}

/// The deepest and highest altitudes believed, in metres: the ocean's floor (about
/// −11 km) to the edge of space (100 km); beyond is a broken field.
const ALTITUDES: std::ops::RangeInclusive<f64> = -11_000.0..=100_000.0;

/// Metres above sea level (`GPSAltitude`, negative when `GPSAltitudeRef` is 1); `None`
/// when absent, broken or absurd (with a note).
fn altitude(exif: &Exif, notes: &mut Vec<String>) -> Option<f64> {
    let field = exif.get_field(Tag::GPSAltitude, In::PRIMARY)?;
    let metres = match &field.value {
        Value::Rational(r) if r.len() == 1 && r[0].denom != 0 => r[0].to_f64(),
        Value::Rational(r) => {
            notes.push(format!(
                "gps: GPSAltitude ({}) is not one rational with a denominator: altitude ignored",
                rationals(r)
            ));
            return None;
        }
        other => {
            notes.push(format!(
                "gps: GPSAltitude is {}, not RATIONAL: altitude ignored",
                type_name(other)
            ));
            return None;
        }
    };
    let below = match exif.get_field(Tag::GPSAltitudeRef, In::PRIMARY) {
        None => false,
        Some(f) => match f.value.get_uint(0) {
            Some(0) => false,
            Some(1) => true,
            _ => {
                let why = "is neither 0 (above) nor 1 (below sea level)";
                notes.push(format!("gps: GPSAltitudeRef {why}: altitude ignored"));
                return None;
            }
        },
    };
    let metres = if below { -metres } else { metres };
    if !ALTITUDES.contains(&metres) {
        notes.push(format!(
            "gps: GPSAltitude {metres} m is outside −11 km to 100 km: altitude ignored"
        ));
        return None;
    }
    Some(metres)
}

/// The EXIF orientation, 1–8 (any unsigned integer type, as readers accept); anything else
/// is left out with a note, and the photo is shown as stored.
fn orientation(exif: &Exif, notes: &mut Vec<String>) -> Option<u16> {
    let field = exif.get_field(Tag::Orientation, In::PRIMARY)?;
    match field.value.get_uint(0) {
        Some(n @ 1..=8) => Some(n as u16),
        Some(n) => {
            notes.push(format!("orientation: Orientation {n} is not 1–8: ignored"));
            None
        }
        None => {
            notes.push(format!(
                "orientation: Orientation is {}, not SHORT: ignored",
                type_name(&field.value)
            ));
            None
        }
    }
}

/// The first string of an ASCII field (kamadak-exif has split it at NULs), or why not.
fn ascii(value: &Value) -> Result<&[u8], String> {
    match value {
        Value::Ascii(strings) => Ok(strings.first().map_or(&[][..], Vec::as_slice)),
        other => Err(format!("is {}, not ASCII", type_name(other))),
    }
}

/// Without trailing NULs and spaces.
fn trim_end(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|&b| b != 0 && b != b' ')
        .map_or(0, |i| i + 1);
    &s[..end]
}

/// Without leading and trailing NULs and spaces.
fn trim(s: &[u8]) -> &[u8] {
    let s = trim_end(s);
    let start = s
        .iter()
        .position(|&b| b != 0 && b != b' ')
        .unwrap_or(s.len());
    &s[start..]
}

/// A raw value, quoted and escaped, cut at 40 bytes: enough to recognise it in a log
/// without letting a hostile 64 KB field into it.
fn shown(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(40)];
    let mut s = format!("{:?}", String::from_utf8_lossy(cut));
    if raw.len() > cut.len() {
        s.push('…');
    }
    s
}

/// Up to three rationals as `n/d, n/d, n/d`, for notes.
fn rationals(parts: &[Rational]) -> String {
    let mut s = String::new();
    for (i, r) in parts.iter().take(3).enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(s, "{sep}{}/{}", r.num, r.denom);
    }
    if parts.len() > 3 {
        s.push_str(", …");
    }
    s
}

/// The TIFF name of a value's type, for notes on mistyped fields.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Byte(_) => "BYTE",
        Value::Ascii(_) => "ASCII",
        Value::Short(_) => "SHORT",
        Value::Long(_) => "LONG",
        Value::Rational(_) => "RATIONAL",
        Value::SByte(_) => "SBYTE",
        Value::Undefined(..) => "UNDEFINED",
        Value::SShort(_) => "SSHORT",
        Value::SLong(_) => "SLONG",
        Value::SRational(_) => "SRATIONAL",
        Value::Float(_) => "FLOAT",
        Value::Double(_) => "DOUBLE",
        Value::Unknown(..) => "of an unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    // ---- A small TIFF writer: IFDs first, then the values that do not fit in an entry. ----

    /// A value as written, in the TIFF type its variant names.
    #[derive(Clone)]
    enum V {
        /// ASCII, written with one terminating NUL.
        Ascii(Vec<u8>),
        Byte(Vec<u8>),
        Short(Vec<u16>),
        Long(Vec<u32>),
        Rational(Vec<(u32, u32)>),
        SRational(Vec<(i32, i32)>),
        /// A LONG holding the offset of the IFD at this index of the list written.
        Ptr(usize),
        /// An entry written as is: type, count, and the 4 value-or-offset bytes.
        Raw(u16, u32, u32),
    }

    fn ascii_v(s: &str) -> V {
        V::Ascii(s.as_bytes().to_vec())
    }

    /// One IFD: its entries, and the raw next-IFD offset (0: none).
    #[derive(Clone, Default)]
    struct Ifd {
        entries: Vec<(u16, V)>,
        next: u32,
    }

    /// A TIFF blob in either byte order; the first IFD is IFD0.
    fn tiff(le: bool, ifds: &[Ifd]) -> Vec<u8> {
        let u16b = |v: u16| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let u32b = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let mut at = vec![];
        let mut end = 8;
        for ifd in ifds {
            at.push(end as u32);
            end += 2 + 12 * ifd.entries.len() + 4;
        }
        let mut out = if le { b"II".to_vec() } else { b"MM".to_vec() };
        out.extend(u16b(42));
        out.extend(u32b(8));
        let mut data: Vec<u8> = vec![];
        for ifd in ifds {
            out.extend(u16b(ifd.entries.len() as u16));
            for (tag, v) in &ifd.entries {
                let (typ, count, bytes): (u16, u32, Vec<u8>) = match v {
                    V::Ascii(s) => (2, s.len() as u32 + 1, [&s[..], b"\0"].concat()),
                    V::Byte(b) => (1, b.len() as u32, b.clone()),
                    V::Short(s) => (3, s.len() as u32, s.iter().flat_map(|&x| u16b(x)).collect()),
                    V::Long(l) => (4, l.len() as u32, l.iter().flat_map(|&x| u32b(x)).collect()),
                    V::Rational(r) => (
                        5,
                        r.len() as u32,
                        r.iter()
                            .flat_map(|&(n, d)| [u32b(n), u32b(d)].concat())
                            .collect(),
                    ),
                    V::SRational(r) => (
                        10,
                        r.len() as u32,
                        r.iter()
                            .flat_map(|&(n, d)| [u32b(n as u32), u32b(d as u32)].concat())
                            .collect(),
                    ),
                    V::Ptr(i) => (4, 1, u32b(at[*i]).to_vec()),
                    V::Raw(typ, count, inline) => (*typ, *count, u32b(*inline).to_vec()),
                };
                out.extend(u16b(*tag));
                out.extend(u16b(typ));
                out.extend(u32b(count));
                if bytes.len() <= 4 {
                    let mut inline = bytes;
                    inline.resize(4, 0);
                    out.extend(inline);
                } else {
                    out.extend(u32b((end + data.len()) as u32));
                    data.extend(bytes);
                    if data.len() % 2 == 1 {
                        data.push(0);
                    }
                }
            }
            out.extend(u32b(ifd.next));
        }
        out.extend(data);
        out
    }

    /// The usual layout: IFD0, then (when given) the Exif IFD and the GPS IFD it points to.
    fn blob(le: bool, ifd0: &[(Tag, V)], exif: &[(Tag, V)], gps: &[(Tag, V)]) -> Vec<u8> {
        let entries = |fields: &[(Tag, V)]| -> Vec<(u16, V)> {
            fields
                .iter()
                .map(|(t, v)| (t.number(), v.clone()))
                .collect()
        };
        let mut ifds = vec![Ifd {
            entries: entries(ifd0),
            next: 0,
        }];
        for (fields, pointer) in [(exif, Tag::ExifIFDPointer), (gps, Tag::GPSInfoIFDPointer)] {
            if !fields.is_empty() {
                let at = ifds.len();
                ifds[0].entries.push((pointer.number(), V::Ptr(at)));
                ifds.push(Ifd {
                    entries: entries(fields),
                    next: 0,
                });
            }
        }
        tiff(le, &ifds)
    }

    /// A JPEG that is nothing but an APP1 EXIF segment holding `tiff`.
    fn jpeg(tiff: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
        out.extend(((2 + 6 + tiff.len()) as u16).to_be_bytes());
        out.extend(b"Exif\0\0");
        out.extend(tiff);
        out.extend([0xFF, 0xD9]);
        out
    }

    // ---- The sound photo every row starts from. ----

    fn ifd0() -> Vec<(Tag, V)> {
        vec![
            (Tag::Make, ascii_v("Canon")),
            (Tag::Model, ascii_v("Canon EOS R5 ")),
            (Tag::Orientation, V::Short(vec![6])),
        ]
    }

    fn exif_ifd() -> Vec<(Tag, V)> {
        vec![
            (Tag::DateTimeOriginal, ascii_v("2023:06:14 10:22:05")),
            (Tag::OffsetTimeOriginal, ascii_v("+02:00")),
            (Tag::SubSecTimeOriginal, ascii_v("12")),
            (Tag::LensModel, ascii_v("RF24-105mm F4 L IS USM")),
        ]
    }

    /// 48°30'0" N, 2°15'0" E, 35 m: exact in binary, so the result compares with `==`.
    fn gps_ifd() -> Vec<(Tag, V)> {
        vec![
            (Tag::GPSLatitudeRef, ascii_v("N")),
            (
                Tag::GPSLatitude,
                V::Rational(vec![(48, 1), (30, 1), (0, 1)]),
            ),
            (Tag::GPSLongitudeRef, ascii_v("E")),
            (
                Tag::GPSLongitude,
                V::Rational(vec![(2, 1), (15, 1), (0, 1)]),
            ),
            (Tag::GPSAltitudeRef, V::Byte(vec![0])),
            (Tag::GPSAltitude, V::Rational(vec![(35, 1)])),
        ]
    }

    fn full_meta() -> PhotoMeta {
        PhotoMeta {
            taken: Some(TakenAt {
                local: days_from_civil(2023, 6, 14) * 86_400 + 10 * 3600 + 22 * 60 + 5,
                nanos: 120_000_000,
                offset_minutes: Some(120),
            }),
            make: Some("Canon".into()),
            model: Some("Canon EOS R5".into()),
            lens: Some("RF24-105mm F4 L IS USM".into()),
            gps: Some(Gps {
                lat: 48.5,
                lon: 2.25,
                alt: Some(35.0),
            }),
            orientation: Some(6),
        }
    }

    /// `fields` with `tag` replaced by `value` (or added), or removed when `value` is None.
    fn with(fields: Vec<(Tag, V)>, tag: Tag, value: Option<V>) -> Vec<(Tag, V)> {
        let mut out: Vec<_> = fields.into_iter().filter(|(t, _)| *t != tag).collect();
        if let Some(v) = value {
            out.push((tag, v));
        }
        out
    }

    /// Reads a photo, failing the test if it takes absurdly long (a loop would never end).
    fn read(bytes: &[u8]) -> Metadata {
        let start = Instant::now();
        let m = read_photo_meta(bytes);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "took {:?}",
            start.elapsed()
        );
        m
    }

    fn has_note(m: &Metadata, words: &[&str]) -> bool {
        m.notes.iter().any(|n| words.iter().all(|w| n.contains(w)))
    }

    #[test]
    fn a_sound_photo_gives_every_field_in_either_byte_order() {
        for le in [true, false] {
            let m = read(&jpeg(&blob(le, &ifd0(), &exif_ifd(), &gps_ifd())));
            assert_eq!(m.meta, full_meta(), "le={le}");
            assert!(m.notes.is_empty(), "{:?}", m.notes);
            assert_eq!(
                m.meta.taken.unwrap().to_rfc3339(),
                "2023-06-14T10:22:05.12+02:00"
            );
        }
    }

    #[test]
    fn south_and_west_are_negative_and_altitude_ref_1_is_below_sea_level() {
        let gps = vec![
            (Tag::GPSLatitudeRef, ascii_v("S")),
            (
                Tag::GPSLatitude,
                V::Rational(vec![(33, 1), (45, 1), (0, 1)]),
            ),
            (Tag::GPSLongitudeRef, ascii_v("W")),
            (
                Tag::GPSLongitude,
                V::Rational(vec![(151, 1), (15, 1), (0, 1)]),
            ),
            (Tag::GPSAltitudeRef, V::Byte(vec![1])),
            (Tag::GPSAltitude, V::Rational(vec![(15, 1)])),
        ];
        for le in [true, false] {
            let m = read(&jpeg(&blob(le, &ifd0(), &exif_ifd(), &gps)));
            let want = Gps {
                lat: -33.75,
                lon: -151.25,
                alt: Some(-15.0),
            };
            assert_eq!(m.meta.gps, Some(want));
            assert!(m.notes.is_empty(), "{:?}", m.notes);
        }
    }

    #[test]
    fn gps_seconds_with_fractions_give_decimal_degrees() {
        // The Eiffel Tower: 48°51'29.5" N, 2°17'40.2" E.
        let gps = vec![
            (Tag::GPSLatitudeRef, ascii_v("N")),
            (
                Tag::GPSLatitude,
                V::Rational(vec![(48, 1), (51, 1), (295, 10)]),
            ),
            (Tag::GPSLongitudeRef, ascii_v("E")),
            (
                Tag::GPSLongitude,
                V::Rational(vec![(2, 1), (17, 1), (402, 10)]),
            ),
        ];
        let m = read(&jpeg(&blob(true, &ifd0(), &exif_ifd(), &gps)));
        let g = m.meta.gps.unwrap();
        assert!((g.lat - 48.858_194_444).abs() < 1e-8, "{}", g.lat);
        assert!((g.lon - 2.294_5).abs() < 1e-8, "{}", g.lon);
        assert_eq!(g.alt, None);
    }

    #[test]
    fn without_date_time_original_the_digitized_date_is_used_with_its_own_offset() {
        let exif = vec![
            (Tag::DateTimeDigitized, ascii_v("2021-12-31 23:59:59  ")),
            (Tag::OffsetTimeDigitized, ascii_v("-05:30")),
            (Tag::SubSecTimeDigitized, ascii_v("5")),
            // The original's offset belongs to the original's date: not used.
            (Tag::OffsetTimeOriginal, ascii_v("+09:00")),
        ];
        let m = read(&jpeg(&blob(true, &ifd0(), &exif, &gps_ifd())));
        let t = m.meta.taken.unwrap();
        assert_eq!(t.to_rfc3339(), "2021-12-31T23:59:59.5-05:30");
        assert!(m.notes.is_empty(), "{:?}", m.notes);
    }

    #[test]
    fn an_absurd_original_date_falls_back_to_a_sound_digitized_one_with_a_note() {
        let exif = vec![
            (Tag::DateTimeOriginal, ascii_v("0000:00:00 00:00:00")),
            (Tag::DateTimeDigitized, ascii_v("2020:01:02 03:04:05")),
        ];
        let m = read(&jpeg(&blob(true, &ifd0(), &exif, &[])));
        assert_eq!(m.meta.taken.unwrap().to_rfc3339(), "2020-01-02T03:04:05");
        assert!(
            has_note(&m, &["taken:", "DateTimeOriginal", "zeros"]),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn a_photo_without_any_date_has_none_and_no_note() {
        let m = read(&jpeg(&blob(true, &ifd0(), &[], &[])));
        assert_eq!(m.meta.taken, None);
        assert_eq!(m.meta.make.as_deref(), Some("Canon"));
        assert!(m.notes.is_empty(), "{:?}", m.notes);
    }

    /// Checks that a photo whose `DateTimeOriginal` is `raw` has no date, a note about it,
    /// and every other field.
    fn assert_date_refused(raw: &[u8], why: &str) {
        let exif = with(
            exif_ifd(),
            Tag::DateTimeOriginal,
            Some(V::Ascii(raw.to_vec())),
        );
        let m = read(&jpeg(&blob(true, &ifd0(), &exif, &gps_ifd())));
        let label = String::from_utf8_lossy(raw);
        assert_eq!(m.meta.taken, None, "{label:?}");
        assert!(
            has_note(&m, &["taken:", "DateTimeOriginal", why]),
            "{label:?}: {:?}",
            m.notes
        );
        assert_eq!(
            PhotoMeta {
                taken: None,
                ..m.meta
            },
            PhotoMeta {
                taken: None,
                ..full_meta()
            },
            "{label:?}"
        );
    }

    #[test]
    fn absurd_or_malformed_dates_are_left_out_with_a_note_and_the_rest_kept() {
        let cases: &[(&[u8], &str)] = &[
            (b"0000:00:00 00:00:00", "zeros"),
            (b"    :  :     :  :  ", "blank"),
            (b"                   ", "blank"),
            (b"", "blank"),
            (b"9999:12:31 23:59:59", "year"),
            (b"0000:06:14 10:22:05", "year"),
            (b"1799:12:31 23:59:59", "year"),
            (b"2201:01:01 00:00:00", "year"),
            (b"2023:00:14 10:22:05", "month"),
            (b"2023:13:01 00:00:00", "month"),
            (b"2023:06:00 10:22:05", "day"),
            (b"2023:02:29 10:22:05", "day"),
            (b"2023:02:30 10:22:05", "day"),
            (b"1900:02:29 10:22:05", "day"),
            (b"2023:04:31 10:22:05", "day"),
            (b"2023:06:14 24:00:00", "time"),
            (b"2023:06:14 10:60:00", "time"),
            (b"2023:06:14 10:22:61", "second"),
            (b"2023/06/14 10:22:05", "YYYY"),
            (b"2023:06-14 10:22:05", "YYYY"),
            (b"2023:06:14T10:22:05", "YYYY"),
            (b"2023:06:14 10:22", "YYYY"),
            (b"2023:06:14 10:22:05 extra", "YYYY"),
            (b"2023:06:14 10:22:05Z", "YYYY"),
            (b" 2023:06:14 10:22:05", "YYYY"),
            (b"+023:06:14 10:22:05", "YYYY"),
            (b"2023:06:14 1a:22:05", "YYYY"),
            (b"20230614 102205", "YYYY"),
            ("２０２３:06:14 10:22:05".as_bytes(), "YYYY"),
            (b"\xff\xfe23:06:14 10:22:05", "YYYY"),
        ];
        for (raw, why) in cases {
            assert_date_refused(raw, why);
        }
    }

    #[test]
    fn a_date_of_the_wrong_type_is_left_out_with_a_note() {
        for v in [
            V::Long(vec![1_686_738_125]),
            V::Short(vec![2023, 6, 14]),
            V::Byte(vec![]),
        ] {
            let exif = with(exif_ifd(), Tag::DateTimeOriginal, Some(v));
            let m = read(&jpeg(&blob(false, &ifd0(), &exif, &gps_ifd())));
            assert_eq!(m.meta.taken, None);
            assert!(
                has_note(&m, &["taken:", "DateTimeOriginal", "not ASCII"]),
                "{:?}",
                m.notes
            );
            assert_eq!(m.meta.make.as_deref(), Some("Canon"));
            assert!(m.meta.gps.is_some());
        }
    }

    #[test]
    fn dates_at_the_edges_of_the_calendar_are_kept() {
        for (raw, y, mo, d, h, mi, s) in [
            ("2024:02:29 00:00:00", 2024, 2, 29, 0, 0, 0),
            ("2000:02:29 12:00:00", 2000, 2, 29, 12, 0, 0),
            ("1800:01:01 00:00:00", 1800, 1, 1, 0, 0, 0),
            ("2200:12:31 23:59:59", 2200, 12, 31, 23, 59, 59),
            ("1969:12:31 23:59:59", 1969, 12, 31, 23, 59, 59),
            ("2023-06-14 10:22:05", 2023, 6, 14, 10, 22, 5),
            ("2023:06:14 10:22:05 ", 2023, 6, 14, 10, 22, 5),
            // A leap second: the next minute's :00, as Unix time counts it.
            ("2016:12:31 23:59:60", 2017, 1, 1, 0, 0, 0),
        ] {
            let exif = vec![(Tag::DateTimeOriginal, ascii_v(raw))];
            let m = read(&jpeg(&blob(true, &ifd0(), &exif, &[])));
            let local = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
            assert_eq!(m.meta.taken.map(|t| t.local), Some(local), "{raw}");
            assert!(m.notes.is_empty(), "{raw}: {:?}", m.notes);
        }
    }

    #[test]
    fn a_date_padded_with_nuls_inside_its_count_is_kept() {
        let exif = vec![(
            Tag::DateTimeOriginal,
            V::Ascii(b"2023:06:14 10:22:05\0\0\0\0".to_vec()),
        )];
        let m = read(&jpeg(&blob(true, &ifd0(), &exif, &[])));
        assert_eq!(m.meta.taken.unwrap().to_rfc3339(), "2023-06-14T10:22:05");
    }

    #[test]
    fn offsets_beyond_14_hours_or_malformed_are_ignored_with_a_note_and_the_date_kept() {
        let cases: &[(&str, Option<i32>, Option<&str>)] = &[
            ("+14:00", Some(840), None),
            ("-12:00", Some(-720), None),
            ("-00:00", Some(0), None),
            ("+05:45", Some(345), None),
            ("+14:01", None, Some("beyond")),
            ("-15:00", None, Some("beyond")),
            ("+99:00", None, Some("beyond")),
            ("+02:60", None, Some("±HH:MM")),
            ("02:00", None, Some("±HH:MM")),
            ("+2:00", None, Some("±HH:MM")),
            ("+0200", None, Some("±HH:MM")),
            ("Z", None, Some("±HH:MM")),
            ("+02:00:00", None, Some("±HH:MM")),
            ("   :  ", None, None),
            ("", None, None),
        ];
        for &(raw, want, note) in cases {
            let exif = with(exif_ifd(), Tag::OffsetTimeOriginal, Some(ascii_v(raw)));
            let m = read(&jpeg(&blob(true, &ifd0(), &exif, &[])));
            let t = m.meta.taken.unwrap_or_else(|| panic!("{raw}: date lost"));
            assert_eq!(t.offset_minutes, want, "{raw}");
            assert_eq!(t.nanos, 120_000_000, "{raw}");
            match note {
                Some(why) => assert!(
                    has_note(&m, &["taken:", "OffsetTimeOriginal", why]),
                    "{raw}: {:?}",
                    m.notes
                ),
                None => assert!(m.notes.is_empty(), "{raw}: {:?}", m.notes),
            }
        }
    }

    #[test]
    fn sub_seconds_are_read_as_a_decimal_fraction_and_junk_is_ignored_with_a_note() {
        for (raw, nanos, noted) in [
            ("12", 120_000_000, false),
            ("5", 500_000_000, false),
            ("000", 0, false),
            ("123456789", 123_456_789, false),
            ("1234567891", 123_456_789, false),
            (" 7 ", 700_000_000, false),
            ("", 0, false),
            ("ab", 0, true),
            ("-5", 0, true),
            ("1.5", 0, true),
        ] {
            let exif = with(exif_ifd(), Tag::SubSecTimeOriginal, Some(ascii_v(raw)));
            let m = read(&jpeg(&blob(true, &ifd0(), &exif, &[])));
            let t = m.meta.taken.unwrap();
            assert_eq!(t.nanos, nanos, "{raw:?}");
            assert_eq!(t.offset_minutes, Some(120), "{raw:?}");
            assert_eq!(
                has_note(&m, &["taken:", "SubSecTimeOriginal"]),
                noted,
                "{raw:?}: {:?}",
                m.notes
            );
        }
    }

    #[test]
    fn camera_text_is_trimmed_and_blank_or_mistyped_text_is_left_out() {
        // (field value, what `make` becomes, words of a note or none)
        let cases: Vec<(V, Option<&str>, Option<&str>)> = vec![
            (
                ascii_v("  NIKON CORPORATION  "),
                Some("NIKON CORPORATION"),
                None,
            ),
            (V::Ascii(b"SONY\0\0\0\0\0\0".to_vec()), Some("SONY"), None),
            (V::Ascii(b"\0Leica".to_vec()), Some("Leica"), None),
            (ascii_v("    "), None, None),
            (ascii_v(""), None, None),
            (V::Ascii(b"Caf\xe9".to_vec()), Some("Café"), Some("Latin-1")),
            (ascii_v("Fujifilm 富士"), Some("Fujifilm 富士"), None),
            (V::Ascii(vec![b'x'; 300]), None, Some("300 bytes")),
            (ascii_v("Canon\x1b[2J"), None, Some("control characters")),
            (ascii_v("Can\non"), None, Some("control characters")),
            (
                V::Ascii(b"Caf\x85".to_vec()),
                None,
                Some("control characters"),
            ),
            (V::Short(vec![1, 2, 3]), None, Some("SHORT, not ASCII")),
            (V::Long(vec![7]), None, Some("LONG, not ASCII")),
            (V::Raw(99, 4, 0x4141_4141), None, Some("unknown type")),
        ];
        for (v, want, note) in cases {
            let fields = with(ifd0(), Tag::Make, Some(v));
            let m = read(&jpeg(&blob(true, &fields, &exif_ifd(), &gps_ifd())));
            assert_eq!(m.meta.make.as_deref(), want);
            assert_eq!(m.meta.model.as_deref(), Some("Canon EOS R5"));
            assert_eq!(m.meta.taken, full_meta().taken);
            match note {
                Some(why) => assert!(has_note(&m, &["make:", "Make", why]), "{:?}", m.notes),
                None => assert!(m.notes.is_empty(), "{want:?}: {:?}", m.notes),
            }
        }
    }

    #[test]
    fn the_lens_is_its_model_else_its_maker() {
        let exif = with(exif_ifd(), Tag::LensModel, None);
        let only_make = with(exif.clone(), Tag::LensMake, Some(ascii_v("SIGMA")));
        let m = read(&jpeg(&blob(true, &ifd0(), &only_make, &[])));
        assert_eq!(m.meta.lens.as_deref(), Some("SIGMA"));
        let both = with(exif_ifd(), Tag::LensMake, Some(ascii_v("Canon")));
        let m = read(&jpeg(&blob(true, &ifd0(), &both, &[])));
        assert_eq!(m.meta.lens.as_deref(), Some("RF24-105mm F4 L IS USM"));
        let blank_model = with(only_make, Tag::LensModel, Some(ascii_v(" ")));
        let m = read(&jpeg(&blob(true, &ifd0(), &blank_model, &[])));
        assert_eq!(m.meta.lens.as_deref(), Some("SIGMA"));
        let neither = read(&jpeg(&blob(true, &ifd0(), &exif, &[])));
        assert_eq!(neither.meta.lens, None);
    }

    #[test]
    fn gps_out_of_range_or_broken_loses_the_place_with_a_note_and_keeps_the_rest() {
        let r = |v: &[(u32, u32)]| Some(V::Rational(v.to_vec()));
        let cases: Vec<(Tag, Option<V>, &str)> = vec![
            (Tag::GPSLatitude, r(&[(91, 1), (0, 1), (0, 1)]), "beyond 90"),
            (Tag::GPSLatitude, r(&[(90, 1), (0, 1), (1, 1)]), "beyond 90"),
            (
                Tag::GPSLongitude,
                r(&[(181, 1), (0, 1), (0, 1)]),
                "beyond 180",
            ),
            (
                Tag::GPSLongitude,
                r(&[(u32::MAX, 1), (0, 1), (0, 1)]),
                "beyond 180",
            ),
            (
                Tag::GPSLatitude,
                r(&[(48, 0), (30, 1), (0, 1)]),
                "zero denominator",
            ),
            (
                Tag::GPSLatitude,
                r(&[(0, 0), (0, 0), (0, 0)]),
                "zero denominator",
            ),
            (
                Tag::GPSLongitude,
                r(&[(2, 1), (15, 1), (1, 0)]),
                "zero denominator",
            ),
            (Tag::GPSLatitude, r(&[(48, 1), (60, 1), (0, 1)]), "≥ 60"),
            (Tag::GPSLongitude, r(&[(2, 1), (15, 1), (600, 10)]), "≥ 60"),
            (Tag::GPSLatitude, r(&[]), "0 parts"),
            (Tag::GPSLatitude, r(&[(1, 1); 4]), "4 parts"),
            (
                Tag::GPSLatitude,
                Some(V::SRational(vec![(-48, 1), (30, 1), (0, 1)])),
                "SRATIONAL",
            ),
            (Tag::GPSLongitude, Some(V::Short(vec![2, 15, 0])), "SHORT"),
            (Tag::GPSLatitudeRef, Some(ascii_v("X")), "neither N nor S"),
            (
                Tag::GPSLongitudeRef,
                Some(ascii_v("North")),
                "neither E nor W",
            ),
            (
                Tag::GPSLongitudeRef,
                Some(V::Byte(vec![b'E'])),
                "BYTE, not ASCII",
            ),
            (Tag::GPSLongitude, None, "GPSLatitude without GPSLongitude"),
            (Tag::GPSLatitude, None, "GPSLongitude without GPSLatitude"),
        ];
        for (tag, v, why) in cases {
            let gps = with(gps_ifd(), tag, v);
            for le in [true, false] {
                let m = read(&jpeg(&blob(le, &ifd0(), &exif_ifd(), &gps)));
                assert_eq!(m.meta.gps, None, "{tag} {why}");
                assert!(has_note(&m, &["gps:", why]), "{tag} {why}: {:?}", m.notes);
                assert_eq!(
                    PhotoMeta {
                        gps: None,
                        ..full_meta()
                    },
                    m.meta,
                    "{why}"
                );
            }
        }
    }

    #[test]
    fn gps_edges_of_the_globe_and_lowercase_references_are_kept() {
        let r = |v: &[(u32, u32)]| V::Rational(v.to_vec());
        for (lat, lat_ref, lon, lon_ref, want) in [
            (
                r(&[(90, 1), (0, 1), (0, 1)]),
                "S",
                r(&[(180, 1), (0, 1), (0, 1)]),
                "W",
                (-90.0, -180.0),
            ),
            (
                r(&[(45, 2)]),
                "n",
                r(&[(10, 1), (30, 1)]),
                "e",
                (22.5, 10.5),
            ),
            (
                r(&[(10, 1), (0, 1), (0, 1)]),
                "",
                r(&[(10, 1), (0, 1), (0, 1)]),
                " ",
                (10.0, 10.0),
            ),
        ] {
            let gps = vec![
                (Tag::GPSLatitude, lat),
                (Tag::GPSLatitudeRef, ascii_v(lat_ref)),
                (Tag::GPSLongitude, lon),
                (Tag::GPSLongitudeRef, ascii_v(lon_ref)),
            ];
            let m = read(&jpeg(&blob(true, &ifd0(), &exif_ifd(), &gps)));
            let g = m.meta.gps.unwrap();
            assert_eq!((g.lat, g.lon), want);
            assert!(m.notes.is_empty(), "{:?}", m.notes);
        }
    }

    #[test]
    fn null_island_without_references_is_kept_with_a_note() {
        let zero = V::Rational(vec![(0, 1), (0, 1), (0, 1)]);
        let gps = vec![(Tag::GPSLatitude, zero.clone()), (Tag::GPSLongitude, zero)];
        let m = read(&jpeg(&blob(true, &ifd0(), &exif_ifd(), &gps)));
        assert_eq!(
            m.meta.gps,
            Some(Gps {
                lat: 0.0,
                lon: 0.0,
                alt: None
            })
        );
        assert!(has_note(&m, &["gps:", "placeholder"]), "{:?}", m.notes);
    }

    #[test]
    fn a_broken_altitude_is_left_out_with_a_note_and_the_place_kept() {
        let rat = |v: &[(u32, u32)]| V::Rational(v.to_vec());
        // (GPSAltitude, GPSAltitudeRef, words of the note)
        let cases: Vec<(V, V, &str)> = vec![
            (rat(&[(35, 0)]), V::Byte(vec![0]), "denominator"),
            (
                rat(&[(35, 1), (36, 1)]),
                V::Byte(vec![0]),
                "not one rational",
            ),
            (V::Short(vec![35]), V::Byte(vec![0]), "SHORT"),
            (rat(&[(u32::MAX, 1)]), V::Byte(vec![0]), "outside"),
            (rat(&[(100_001, 1)]), V::Byte(vec![0]), "outside"),
            (rat(&[(12_000, 1)]), V::Byte(vec![1]), "outside"),
            (rat(&[(35, 1)]), V::Byte(vec![2]), "neither 0"),
            (rat(&[(35, 1)]), ascii_v("1"), "neither 0"),
        ];
        for (alt, alt_ref, why) in cases {
            let gps = with(gps_ifd(), Tag::GPSAltitude, Some(alt));
            let gps = with(gps, Tag::GPSAltitudeRef, Some(alt_ref));
            let m = read(&jpeg(&blob(true, &ifd0(), &exif_ifd(), &gps)));
            let g = m.meta.gps.unwrap_or_else(|| panic!("{why}: place lost"));
            assert_eq!((g.lat, g.lon, g.alt), (48.5, 2.25, None), "{why}");
            assert!(
                has_note(&m, &["gps:", "GPSAltitude", why]),
                "{why}: {:?}",
                m.notes
            );
        }
        // No reference means above sea level.
        let gps = with(gps_ifd(), Tag::GPSAltitudeRef, None);
        let m = read(&jpeg(&blob(true, &ifd0(), &exif_ifd(), &gps)));
        assert_eq!(m.meta.gps.unwrap().alt, Some(35.0));
    }

    #[test]
    fn orientation_outside_1_to_8_or_mistyped_is_left_out_with_a_note() {
        for (v, want, why) in [
            (V::Short(vec![1]), Some(1), None),
            (V::Short(vec![8]), Some(8), None),
            (V::Long(vec![3]), Some(3), None),
            (V::Short(vec![0]), None, Some("0 is not 1–8")),
            (V::Short(vec![9]), None, Some("9 is not 1–8")),
            (V::Short(vec![u16::MAX]), None, Some("65535 is not 1–8")),
            (V::Long(vec![u32::MAX]), None, Some("not 1–8")),
            (V::Short(vec![]), None, Some("not SHORT")),
            (ascii_v("6"), None, Some("ASCII, not SHORT")),
        ] {
            let fields = with(ifd0(), Tag::Orientation, Some(v));
            let m = read(&jpeg(&blob(true, &fields, &exif_ifd(), &gps_ifd())));
            assert_eq!(m.meta.orientation, want);
            assert_eq!(
                PhotoMeta {
                    orientation: None,
                    ..m.meta.clone()
                },
                PhotoMeta {
                    orientation: None,
                    ..full_meta()
                }
            );
            match why {
                Some(why) => assert!(has_note(&m, &["orientation:", why]), "{:?}", m.notes),
                None => assert!(m.notes.is_empty(), "{:?}", m.notes),
            }
        }
    }

    // ---- Hostile structure. ----

    /// IFD0 (Make, Model, Orientation, Exif and GPS pointers), the Exif IFD, the GPS IFD,
    /// as writable IFDs for tests that break the links between them.
    fn ifds() -> Vec<Ifd> {
        let entries = |fields: Vec<(Tag, V)>| -> Vec<(u16, V)> {
            fields.into_iter().map(|(t, v)| (t.number(), v)).collect()
        };
        let mut zero = entries(ifd0());
        zero.push((Tag::ExifIFDPointer.number(), V::Ptr(1)));
        zero.push((Tag::GPSInfoIFDPointer.number(), V::Ptr(2)));
        vec![
            Ifd {
                entries: zero,
                next: 0,
            },
            Ifd {
                entries: entries(exif_ifd()),
                next: 0,
            },
            Ifd {
                entries: entries(gps_ifd()),
                next: 0,
            },
        ]
    }

    /// Sets the value of the entry `tag` of IFD `i` to `v`.
    fn set(ifds: &mut [Ifd], i: usize, tag: Tag, v: V) {
        let entry = ifds[i]
            .entries
            .iter_mut()
            .find(|(t, _)| *t == tag.number())
            .unwrap();
        entry.1 = v;
    }

    /// A hostile structure: its blob, what should survive, and words of a note.
    struct Attack {
        name: &'static str,
        tiff: Vec<u8>,
        want: PhotoMeta,
        note: &'static str,
    }

    fn attacks(le: bool) -> Vec<Attack> {
        let full = full_meta();
        let ifd0_only = PhotoMeta {
            make: full.make.clone(),
            model: full.model.clone(),
            orientation: full.orientation,
            ..PhotoMeta::default()
        };
        let mut out = vec![];
        let mut add = |name, tiff, want, note| {
            out.push(Attack {
                name,
                tiff,
                want,
                note,
            })
        };

        let mut x = ifds();
        x[0].next = 8;
        add(
            "IFD0's next pointer to itself",
            tiff(le, &x),
            full.clone(),
            "Already visited IFD",
        );

        let mut x = ifds();
        x[1].next = 8;
        add(
            "the Exif IFD's next pointer to IFD0",
            tiff(le, &x),
            full.clone(),
            "Unexpected next IFD",
        );

        let mut x = ifds();
        set(&mut x, 0, Tag::ExifIFDPointer, V::Ptr(0));
        let want = PhotoMeta {
            gps: full.gps,
            ..ifd0_only.clone()
        };
        add(
            "the Exif pointer to IFD0",
            tiff(le, &x),
            want,
            "Already visited IFD",
        );

        let mut x = ifds();
        set(&mut x, 0, Tag::GPSInfoIFDPointer, V::Ptr(0));
        let want = PhotoMeta {
            gps: None,
            ..full.clone()
        };
        add(
            "the GPS pointer to IFD0",
            tiff(le, &x),
            want,
            "Already visited IFD",
        );

        let mut x = ifds();
        set(&mut x, 0, Tag::GPSInfoIFDPointer, V::Ptr(1));
        let want = PhotoMeta {
            gps: None,
            ..full.clone()
        };
        add(
            "the GPS pointer to the Exif IFD",
            tiff(le, &x),
            want,
            "Already visited IFD",
        );

        let mut x = ifds();
        x[1].entries
            .push((Tag::InteropIFDPointer.number(), V::Ptr(1)));
        add(
            "the Interop pointer to its own Exif IFD",
            tiff(le, &x),
            full.clone(),
            "Already visited IFD",
        );

        // A chain of 20 IFDs (IFD0 → IFD1 → …): at most 8 are read.
        let mut x = ifds();
        for _ in 0..20 {
            x.push(Ifd {
                entries: vec![(Tag::ImageDescription.number(), ascii_v("thumbnail"))],
                next: 0,
            });
        }
        x[0].next = ifd_offset(&x, 3);
        for i in 3..x.len() - 1 {
            let next = ifd_offset(&x, i + 1);
            x[i].next = next;
        }
        add(
            "a chain of 20 IFDs",
            tiff(le, &x),
            full.clone(),
            "IFD count",
        );

        let mut x = ifds();
        x[0].next = 0xFFFF_FFF0;
        add(
            "a next pointer past the end",
            tiff(le, &x),
            full.clone(),
            "Truncated IFD count",
        );

        let mut x = ifds();
        set(&mut x, 0, Tag::ExifIFDPointer, V::Raw(4, 1, 0xFFFF_FFF0));
        let want = PhotoMeta {
            gps: full.gps,
            ..ifd0_only.clone()
        };
        add(
            "the Exif pointer past the end",
            tiff(le, &x),
            want,
            "Truncated IFD count",
        );

        let mut x = ifds();
        set(&mut x, 0, Tag::ExifIFDPointer, V::Raw(2, 1, 0));
        let want = PhotoMeta {
            gps: full.gps,
            ..ifd0_only.clone()
        };
        add(
            "the Exif pointer as ASCII",
            tiff(le, &x),
            want,
            "Invalid pointer",
        );

        let mut x = ifds();
        set(&mut x, 0, Tag::Make, V::Raw(2, 50, 0xFFFF_FF00));
        let want = PhotoMeta {
            make: None,
            ..full.clone()
        };
        add(
            "Make's value past the end",
            tiff(le, &x),
            want,
            "Truncated field value",
        );

        let mut x = ifds();
        set(&mut x, 1, Tag::DateTimeOriginal, V::Raw(2, u32::MAX, 8));
        let want = PhotoMeta {
            taken: None,
            ..full.clone()
        };
        add(
            "a date with a count of 4 billion",
            tiff(le, &x),
            want,
            "Truncated field value",
        );

        let mut x = ifds();
        set(&mut x, 2, Tag::GPSLatitude, V::Raw(5, 0x1FFF_FFFF, 8));
        let want = PhotoMeta {
            gps: None,
            ..full.clone()
        };
        add(
            "a latitude with a count of 500 million",
            tiff(le, &x),
            want,
            "Truncated field value",
        );

        let mut x = ifds();
        set(&mut x, 2, Tag::GPSLatitude, V::Raw(5, 3, u32::MAX - 4));
        let want = PhotoMeta {
            gps: None,
            ..full.clone()
        };
        add(
            "a latitude whose offset wraps around",
            tiff(le, &x),
            want,
            "Truncated field value",
        );

        // A copy of the GPS IFD at the end of the blob, cut in its third entry, and the
        // GPS pointer to it: the latitude is read, the longitude is lost.
        let mut x = ifds();
        set(&mut x, 0, Tag::GPSInfoIFDPointer, V::Raw(4, 1, 0));
        let end = tiff(le, &x).len();
        set(&mut x, 0, Tag::GPSInfoIFDPointer, V::Raw(4, 1, end as u32));
        let mut t = tiff(le, &x);
        let gps_at = ifd_offset(&x, 2) as usize;
        t.extend_from_within(gps_at..gps_at + 2 + 12 * 2 + 5);
        let want = PhotoMeta {
            gps: None,
            ..full.clone()
        };
        add("a GPS IFD cut in its third entry", t, want, "Truncated IFD");

        // IFD0 claims 0xFFFF entries: the five real ones, then whatever follows, read as
        // entries until the data runs out.
        let mut t = tiff(le, &ifds());
        t[8..10].copy_from_slice(&[0xFF, 0xFF]);
        add("an IFD count of 65535", t, full.clone(), "");

        // Values of up to 4 bytes sit in their entries, so the first two survive the cut.
        let mut x = ifds();
        set(&mut x, 0, Tag::Make, ascii_v("LG"));
        set(&mut x, 0, Tag::Model, ascii_v("G6"));
        let t = tiff(le, &x);
        let cut = 8 + 2 + 12 * 2 + 7;
        let want = PhotoMeta {
            make: Some("LG".into()),
            model: Some("G6".into()),
            ..PhotoMeta::default()
        };
        add(
            "IFD0 cut in its third entry",
            t[..cut].to_vec(),
            want,
            "Truncated IFD",
        );

        let mut x = ifds();
        set(&mut x, 0, Tag::Make, V::Short(vec![0x4341, 0x4e4f]));
        set(
            &mut x,
            1,
            Tag::DateTimeOriginal,
            V::Long(vec![1_686_738_125]),
        );
        let want = PhotoMeta {
            make: None,
            taken: None,
            ..full.clone()
        };
        add(
            "Make as SHORT and DateTimeOriginal as LONG",
            tiff(le, &x),
            want,
            "not ASCII",
        );

        let mut x = ifds();
        set(&mut x, 0, Tag::Make, V::Raw(0xFFFF, u32::MAX, 0));
        let want = PhotoMeta {
            make: None,
            ..full.clone()
        };
        add(
            "Make of type 65535 with a count of 4 billion",
            tiff(le, &x),
            want,
            "unknown type",
        );

        let mut t = tiff(le, &ifds());
        if le {
            t[4..8].copy_from_slice(&0xFFFF_FFF8u32.to_le_bytes());
        } else {
            t[4..8].copy_from_slice(&0xFFFF_FFF8u32.to_be_bytes());
        }
        add(
            "the first IFD past the end",
            t,
            PhotoMeta::default(),
            "Truncated IFD count",
        );

        let mut t = tiff(le, &ifds());
        t[2] = 43;
        t[3] = 43;
        add("a header without 42", t, PhotoMeta::default(), "unreadable");

        add("an empty TIFF", vec![], PhotoMeta::default(), "unreadable");
        add(
            "a TIFF header alone",
            tiff(le, &[])[..8].to_vec(),
            PhotoMeta::default(),
            "",
        );
        add(
            "garbage",
            b"not a TIFF at all, just text".to_vec(),
            PhotoMeta::default(),
            "byte order",
        );
        out
    }

    /// The offset `tiff` gives IFD `i` of `ifds`.
    fn ifd_offset(ifds: &[Ifd], i: usize) -> u32 {
        (8 + ifds[..i]
            .iter()
            .map(|f| 2 + 12 * f.entries.len() + 4)
            .sum::<usize>()) as u32
    }

    #[test]
    fn hostile_structures_never_panic_or_hang_and_keep_what_is_readable() {
        for le in [true, false] {
            for a in attacks(le) {
                let m = read(&jpeg(&a.tiff));
                assert_eq!(m.meta, a.want, "{} (le={le}): {:?}", a.name, m.notes);
                if !a.note.is_empty() {
                    assert!(
                        has_note(&m, &[a.note]),
                        "{} (le={le}): {:?}",
                        a.name,
                        m.notes
                    );
                }
            }
        }
    }

    #[test]
    fn every_truncation_and_many_corruptions_of_a_sound_photo_never_panic() {
        for le in [true, false] {
            let sound = jpeg(&blob(le, &ifd0(), &exif_ifd(), &gps_ifd()));
            for len in 0..sound.len() {
                // Cut before the end of its APP1: nothing, and a note once it is a JPEG.
                let m = read(&sound[..len]);
                if len < sound.len() - 2 {
                    assert_eq!(m.meta, PhotoMeta::default(), "cut at {len}");
                    assert_eq!(m.notes.is_empty(), len < 2, "cut at {len}: {:?}", m.notes);
                } else {
                    assert_eq!(m.meta, full_meta(), "cut at {len}");
                }
            }
            // A fixed xorshift: the same corruptions on every run.
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            for _ in 0..20_000 {
                let mut bytes = sound.clone();
                for _ in 0..1 + next() % 4 {
                    let at = 12 + (next() as usize) % (bytes.len() - 12);
                    bytes[at] = next() as u8;
                }
                let m = read(&bytes);
                if let Some(o) = m.meta.orientation {
                    assert!((1..=8).contains(&o));
                }
                if let Some(g) = m.meta.gps {
                    assert!(g.lat.abs() <= 90.0 && g.lon.abs() <= 180.0);
                }
            }
        }
    }

    #[test]
    fn a_photo_without_exif_gives_nothing_and_no_note() {
        let cases: &[&[u8]] = &[
            b"",
            b"\xff\xd8\xff\xd9",
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
            b"BM\0\0\0\0",
            b"\x89PNG\r\n\x1a\n\0\0\0\0IEND\xaeB`\x82",
            b"RIFF\x04\0\0\0WEBP",
            b"plain text",
        ];
        for bytes in cases {
            let m = read(bytes);
            assert_eq!(
                m,
                Metadata::default(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_jpeg_cut_inside_its_exif_segment_gives_nothing_with_a_note() {
        let sound = jpeg(&blob(true, &ifd0(), &exif_ifd(), &gps_ifd()));
        let m = read(&sound[..sound.len() / 2]);
        assert_eq!(m.meta, PhotoMeta::default());
        assert!(
            has_note(&m, &["exif:", "unreadable", "Broken JPEG"]),
            "{:?}",
            m.notes
        );
        // An APP1 that says Exif but holds no TIFF.
        let m = read(&jpeg(b""));
        assert!(
            has_note(&m, &["exif:", "unreadable", "TIFF header"]),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn tiff_png_and_webp_containers_are_read_like_jpeg() {
        let t = blob(false, &ifd0(), &exif_ifd(), &gps_ifd());
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(b"\0\0\0\x0dIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\0\0\0\0");
        png.extend((t.len() as u32).to_be_bytes());
        png.extend(b"eXIf");
        png.extend(&t);
        png.extend([0; 4]);
        png.extend(b"\0\0\0\0IEND\xaeB`\x82");
        let mut webp = b"RIFF".to_vec();
        let padded = t.len() + t.len() % 2;
        webp.extend(((4 + 8 + padded) as u32).to_le_bytes());
        webp.extend(b"WEBPEXIF");
        webp.extend((t.len() as u32).to_le_bytes());
        webp.extend(&t);
        webp.resize(8 + 4 + 8 + padded, 0);
        for (name, bytes) in [("tiff", t.clone()), ("png", png), ("webp", webp)] {
            let m = read(&bytes);
            assert_eq!(m.meta, full_meta(), "{name}");
            assert!(m.notes.is_empty(), "{name}: {:?}", m.notes);
        }
    }

    // ---- The committed fixtures (tests/fixtures/make_exif_fixtures.py). ----

    fn fixture(name: &str) -> Vec<u8> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images/");
        std::fs::read(format!("{dir}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn the_exif_fixtures_give_their_sound_fields_and_a_note_for_the_broken_one() {
        let full = PhotoMeta {
            model: Some("Canon EOS R5".into()),
            orientation: Some(1),
            ..full_meta()
        };
        let cases: Vec<(&str, PhotoMeta, &[&str])> = vec![
            ("exif_full.jpg", full.clone(), &[]),
            (
                "exif_truncated_ifd.jpg",
                PhotoMeta {
                    taken: None,
                    lens: None,
                    ..full.clone()
                },
                &["exif:", "Truncated IFD"],
            ),
            (
                "exif_bad_dates.jpg",
                PhotoMeta {
                    taken: None,
                    ..full.clone()
                },
                &["taken:", "DateTimeOriginal", "zeros"],
            ),
            (
                "exif_gps_out_of_range.jpg",
                PhotoMeta {
                    gps: None,
                    ..full.clone()
                },
                &["gps:", "GPSLatitude", "beyond 90"],
            ),
            (
                "exif_offset_loop.jpg",
                PhotoMeta {
                    gps: None,
                    ..full.clone()
                },
                &["exif:", "Already visited IFD"],
            ),
            (
                "exif_wrong_types.jpg",
                PhotoMeta {
                    make: None,
                    taken: None,
                    ..full.clone()
                },
                &["make:", "SHORT, not ASCII"],
            ),
            (
                "exif_huge_count.jpg",
                PhotoMeta {
                    model: None,
                    gps: None,
                    ..full.clone()
                },
                &["exif:", "Truncated field value"],
            ),
        ];
        for (name, want, note) in cases {
            let m = read(&fixture(name));
            assert_eq!(m.meta, want, "{name}: {:?}", m.notes);
            if note.is_empty() {
                assert!(m.notes.is_empty(), "{name}: {:?}", m.notes);
            } else {
                assert!(has_note(&m, note), "{name}: {:?}", m.notes);
            }
        }
        let bad_dates = read(&fixture("exif_bad_dates.jpg"));
        assert!(has_note(
            &bad_dates,
            &["taken:", "DateTimeDigitized", "year"]
        ));
        let wrong_types = read(&fixture("exif_wrong_types.jpg"));
        assert!(has_note(
            &wrong_types,
            &["taken:", "DateTimeOriginal", "LONG, not ASCII"]
        ));
    }

    #[test]
    fn the_orientation_fixtures_give_their_orientation() {
        for (name, want) in [
            ("exif3.jpg", 3),
            ("exif6.jpg", 6),
            ("exif6.png", 6),
            ("exif8.jpg", 8),
        ] {
            let m = read(&fixture(name));
            assert_eq!(m.meta.orientation, Some(want), "{name}: {:?}", m.notes);
            assert!(m.notes.is_empty(), "{name}: {:?}", m.notes);
        }
    }

    /// The cost per photo, over every JPEG fixture:
    /// `cargo test --release metadata::tests::read_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn read_cost_per_photo_over_the_jpeg_fixtures() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images");
        let mut photos: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        photos.sort();
        for (name, bytes) in &photos {
            let rounds = 2000;
            let start = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(read_photo_meta(std::hint::black_box(bytes)));
            }
            let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
            println!("{name:28} {:>8} bytes {us:>9.2} µs", bytes.len());
        }
        let rounds = 200;
        let start = Instant::now();
        for _ in 0..rounds {
            for (_, bytes) in &photos {
                std::hint::black_box(read_photo_meta(std::hint::black_box(bytes)));
            }
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / (rounds as f64 * photos.len() as f64);
        println!("mean over {} JPEGs: {us:.2} µs per photo", photos.len());
    }
}
