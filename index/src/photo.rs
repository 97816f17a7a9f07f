//! What a photo says about itself (its EXIF): when it was taken, with which camera and
//! lens, and where. Stored with the image; read by the filters of a search
//! ([`crate::Filter`]).
//!
//! The index does not parse EXIF: the caller fills a [`PhotoMeta`] (qseek's
//! `preprocess::metadata`), and every field is optional, since a photo may lack it or
//! carry a broken one.

use serde::{Deserialize, Serialize};

/// What a photo's metadata says about it. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhotoMeta {
    /// When it was taken (`DateTimeOriginal`, else `DateTimeDigitized`): never the
    /// file's modification time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken: Option<TakenAt>,
    /// The camera's maker (`Make`), trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make: Option<String>,
    /// The camera's model (`Model`), trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The lens (`LensModel`, else `LensMake`), trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lens: Option<String>,
    /// Where (WGS 84), when the latitude and longitude are both present and in range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gps: Option<Gps>,
    /// The EXIF orientation, 1–8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<u16>,
}

/// When a photo was taken, as its camera recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenAt {
    /// The local wall-clock time the camera showed, as seconds from
    /// 1970-01-01T00:00:00 of that same clock (no time zone applied).
    pub local: i64,
    /// Nanoseconds past `local` (from `SubSecTimeOriginal`), 0 when not given.
    #[serde(default)]
    pub nanos: u32,
    /// The clock's offset from UTC in minutes (`OffsetTimeOriginal`), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_minutes: Option<i32>,
}

/// A place on Earth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gps {
    /// Degrees north, −90 to 90.
    pub lat: f64,
    /// Degrees east, −180 to 180.
    pub lon: f64,
    /// Metres above sea level, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<f64>,
}

impl TakenAt {
    /// The instant, in seconds since the Unix epoch, when the offset is known.
    pub fn utc(&self) -> Option<i64> {
        self.offset_minutes.map(|m| self.local - 60 * i64::from(m))
    }

    /// The order of two times: as instants when both know their offset, else as the
    /// wall-clock times they show (a time without an offset is in its photo's local time).
    pub fn cmp_time(&self, other: &TakenAt) -> std::cmp::Ordering {
        match (self.utc(), other.utc()) {
            (Some(a), Some(b)) => (a, self.nanos).cmp(&(b, other.nanos)),
            _ => (self.local, self.nanos).cmp(&(other.local, other.nanos)),
        }
    }

    /// RFC 3339 (`2023-06-14T10:22:05.12+02:00`) when the offset is known; without it,
    /// the same form with no offset (`2023-06-14T10:22:05`): local time, zone unknown.
    pub fn to_rfc3339(&self) -> String {
        let days = self.local.div_euclid(86_400);
        let secs = self.local.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let mut s = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        if self.nanos > 0 {
            let frac = format!("{:09}", self.nanos);
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        if let Some(m) = self.offset_minutes {
            if m == 0 {
                s.push('Z');
            } else {
                let sign = if m < 0 { '-' } else { '+' };
                s.push_str(&format!("{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60));
            }
        }
        s
    }
}

/// Which photos a search keeps, by their metadata ([`crate::Filter::photo`]). The
/// default keeps every photo; each set field narrows, and they combine (all must hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhotoFilter {
    /// Only photos taken at or after this time.
    pub taken_from: Option<TakenAt>,
    /// Only photos taken before this time (exclusive).
    pub taken_until: Option<TakenAt>,
    /// Only photos whose `make + " " + model` contains this, ignoring case.
    pub camera: Option<String>,
    /// Only photos within `km` kilometres (great-circle) of a place.
    pub near: Option<Near>,
    /// Only photos with no date taken (including those whose metadata was never read).
    pub undated: bool,
}

/// A place and a radius.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Near {
    /// Degrees north.
    pub lat: f64,
    /// Degrees east.
    pub lon: f64,
    /// The radius, in kilometres.
    pub km: f64,
}

/// The mean Earth radius (IUGG), in kilometres.
const EARTH_RADIUS_KM: f64 = 6371.0088;

impl PhotoFilter {
    /// Whether the filter narrows at all.
    pub fn is_active(&self) -> bool {
        *self != PhotoFilter::default()
    }

    /// Whether a photo with this metadata (`None`: never read) passes.
    pub fn allows(&self, photo: Option<&PhotoMeta>) -> bool {
        let taken = photo.and_then(|p| p.taken.as_ref());
        if self.undated && taken.is_some() {
            return false;
        }
        if self.taken_from.is_some() || self.taken_until.is_some() {
            let Some(t) = taken else { return false };
            if self
                .taken_from
                .is_some_and(|from| t.cmp_time(&from).is_lt())
            {
                return false;
            }
            if self
                .taken_until
                .is_some_and(|until| t.cmp_time(&until).is_ge())
            {
                return false;
            }
        }
        if let Some(camera) = &self.camera {
            let Some(name) = photo.and_then(PhotoMeta::camera) else {
                return false;
            };
            if !name.to_lowercase().contains(&camera.to_lowercase()) {
                return false;
            }
        }
        if let Some(near) = &self.near {
            let Some(gps) = photo.and_then(|p| p.gps) else {
                return false;
            };
            if gps.distance_km(near.lat, near.lon) > near.km {
                return false;
            }
        }
        true
    }
}

impl PhotoMeta {
    /// `make model`, either alone when the other is missing; a model that already
    /// starts with its make (`Canon` + `Canon EOS R5`) is not repeated.
    pub fn camera(&self) -> Option<String> {
        match (self.make.as_deref(), self.model.as_deref()) {
            (Some(make), Some(model)) if model.to_lowercase().starts_with(&make.to_lowercase()) => {
                Some(model.to_string())
            }
            (Some(make), Some(model)) => Some(format!("{make} {model}")),
            (Some(one), None) | (None, Some(one)) => Some(one.to_string()),
            (None, None) => None,
        }
    }
}

impl Gps {
    /// Great-circle (haversine) distance to a place, in kilometres.
    pub fn distance_km(&self, lat: f64, lon: f64) -> f64 {
        let (p1, p2) = (self.lat.to_radians(), lat.to_radians());
        let dp = p2 - p1;
        let dl = (lon - self.lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_round_trip_and_known_dates() {
        for (y, m, d, days) in [
            (1970, 1, 1, 0),
            (2000, 3, 1, 11_017),
            (1969, 12, 31, -1),
            (2024, 2, 29, 19_782),
        ] {
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            assert_eq!(civil_from_days(days), (y, m, d));
        }
        for days in -800_000..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn taken_at_prints_rfc3339_with_its_offset_or_none() {
        let local = days_from_civil(2023, 6, 14) * 86_400 + 10 * 3600 + 22 * 60 + 5;
        for (nanos, offset, text) in [
            (0, None, "2023-06-14T10:22:05"),
            (120_000_000, Some(120), "2023-06-14T10:22:05.12+02:00"),
            (0, Some(0), "2023-06-14T10:22:05Z"),
            (0, Some(-330), "2023-06-14T10:22:05-05:30"),
        ] {
            let t = TakenAt {
                local,
                nanos,
                offset_minutes: offset,
            };
            assert_eq!(t.to_rfc3339(), text);
        }
    }

    #[test]
    fn a_camera_name_is_make_and_model_without_the_make_twice() {
        for (make, model, name) in [
            (Some("Canon"), Some("Canon EOS R5"), Some("Canon EOS R5")),
            (
                Some("NIKON CORPORATION"),
                Some("NIKON D850"),
                Some("NIKON CORPORATION NIKON D850"),
            ),
            (Some("Apple"), Some("iPhone 15"), Some("Apple iPhone 15")),
            (None, Some("X100V"), Some("X100V")),
            (Some("FUJIFILM"), None, Some("FUJIFILM")),
            (None, None, None),
        ] {
            let meta = PhotoMeta {
                make: make.map(String::from),
                model: model.map(String::from),
                ..PhotoMeta::default()
            };
            assert_eq!(meta.camera().as_deref(), name);
        }
    }

    #[test]
    fn distances_are_great_circle_kilometres() {
        let paris = Gps {
            lat: 48.8566,
            lon: 2.3522,
            alt: None,
        };
        for (lat, lon, km) in [
            (48.8566, 2.3522, 0.0),
            (51.5074, -0.1278, 343.6),
            (-48.8566, -177.6478, 20_015.1),
        ] {
            let d = paris.distance_km(lat, lon);
            assert!((d - km).abs() < 0.5, "{lat},{lon}: {d} km, not {km}");
        }
    }

    #[test]
    fn times_compare_as_instants_when_both_have_offsets_else_as_clocks() {
        let at = |local: i64, offset: Option<i32>| TakenAt {
            local,
            nanos: 0,
            offset_minutes: offset,
        };
        use std::cmp::Ordering::*;
        for (a, b, order) in [
            // 12:00+02:00 is 10:00Z, before 11:00Z.
            (at(12 * 3600, Some(120)), at(11 * 3600, Some(0)), Less),
            // Without an offset on either side, the clocks.
            (at(12 * 3600, None), at(11 * 3600, Some(0)), Greater),
            (at(12 * 3600, Some(120)), at(12 * 3600, None), Equal),
        ] {
            assert_eq!(a.cmp_time(&b), order, "{a:?} {b:?}");
        }
    }
}
