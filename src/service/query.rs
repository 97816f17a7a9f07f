//! The typed parts of a search request that the command line and the server parse the
//! same way: which photos a search keeps by their metadata ([`PhotoFilterText`] →
//! [`PhotoFilter`]), and the order of the results ([`Sort`]).
//!
//! Dates: `2023`, `2023-06`, `2023-06-14`, or RFC 3339 (`2023-06-14T18:30:00+02:00`,
//! also without the offset or the seconds). `--after D` keeps photos taken from the
//! start of `D` on and `--before D` those taken up to the end of `D`, both ends
//! included at the precision written: `--after 2023-06 --before 2023-08` is June, July
//! and August 2023. A date without an offset is read in each photo's local time (the
//! time its camera showed); one with an offset is an instant, compared with the photos
//! that record their offset as instants and with the others by the clock it shows.

use std::str::FromStr;

use qseek_index::{days_from_civil, Near, PhotoFilter, TakenAt};
use serde::{Deserialize, Serialize};

use crate::error::BadRequest;

/// The default radius of `near`, in kilometres.
pub const DEFAULT_NEAR_KM: f64 = 1.0;

/// Metadata filters as the user wrote them (command-line flags, query parameters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhotoFilterText {
    /// Taken on or after this date.
    pub after: Option<String>,
    /// Taken on or before this date.
    pub before: Option<String>,
    /// The camera's make and model contain this, ignoring case.
    pub camera: Option<String>,
    /// `LAT,LON[,KM]`: taken within KM kilometres (default 1) of a place.
    pub near: Option<String>,
    /// Only photos with no date taken.
    pub undated: bool,
}

impl PhotoFilterText {
    /// The filter, or what is wrong with the text.
    pub fn parse(&self) -> Result<PhotoFilter, BadRequest> {
        let after = given(&self.after)
            .map(|s| DateSpan::parse("after", s))
            .transpose()?;
        let before = given(&self.before)
            .map(|s| DateSpan::parse("before", s))
            .transpose()?;
        if self.undated && (after.is_some() || before.is_some()) {
            return Err(BadRequest::Filter {
                param: "undated",
                value: "true".into(),
                reason: "keeps only photos without a date, so it cannot be combined with after or before".into(),
            });
        }
        if let (Some(a), Some(b)) = (&after, &before) {
            if a.start.cmp_time(&b.end).is_ge() {
                return Err(BadRequest::Filter {
                    param: "before",
                    value: self.before.clone().unwrap_or_default(),
                    reason: format!(
                        "ends before {} begins: no photo can be in both",
                        self.after.as_deref().unwrap_or_default()
                    ),
                });
            }
        }
        let near = given(&self.near).map(parse_near).transpose()?;
        Ok(PhotoFilter {
            taken_from: after.map(|a| a.start),
            taken_until: before.map(|b| b.end),
            camera: given(&self.camera).map(str::to_string),
            near,
            undated: self.undated,
        })
    }
}

/// The text of an optional field, trimmed; `None` when empty.
fn given(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A date as written, as the times it covers: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DateSpan {
    start: TakenAt,
    end: TakenAt,
}

impl DateSpan {
    fn parse(param: &'static str, text: &str) -> Result<Self, BadRequest> {
        let bad = |reason: &str| BadRequest::Filter {
            param,
            value: text.to_string(),
            reason: format!(
                "{reason}; write 2023, 2023-06, 2023-06-14 or 2023-06-14T18:30:00+02:00"
            ),
        };
        let number = |s: &str, digits: usize, what: &str| {
            if s.len() == digits && s.bytes().all(|b| b.is_ascii_digit()) {
                Ok(s.parse::<u32>().expect("digits"))
            } else {
                Err(bad(&format!("the {what} is not {digits} digits")))
            }
        };
        let (date, time) = match text.split_once(['T', 't', ' ']) {
            Some((d, t)) => (d, Some(t)),
            None => (text, None),
        };
        let mut parts = date.split('-');
        let year = number(parts.next().unwrap_or_default(), 4, "year")?;
        let month = parts.next().map(|m| number(m, 2, "month")).transpose()?;
        let day = parts.next().map(|d| number(d, 2, "day")).transpose()?;
        if parts.next().is_some() {
            return Err(bad("too many parts"));
        }
        if month.is_some_and(|m| !(1..=12).contains(&m)) {
            return Err(bad("there is no such month"));
        }
        if let (Some(m), Some(d)) = (month, day) {
            if d == 0 || d > days_in_month(i64::from(year), m) {
                return Err(bad("there is no such day"));
            }
        }
        let y = i64::from(year);
        let at = |days: i64, secs: i64, offset: Option<i32>| TakenAt {
            local: days * 86_400 + secs,
            nanos: 0,
            offset_minutes: offset,
        };
        let Some(time) = time else {
            let (start, end) = match (month, day) {
                (None, _) => (days_from_civil(y, 1, 1), days_from_civil(y + 1, 1, 1)),
                (Some(m), None) => {
                    let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                    (days_from_civil(y, m, 1), days_from_civil(next.0, next.1, 1))
                }
                (Some(m), Some(d)) => {
                    let day = days_from_civil(y, m, d);
                    (day, day + 1)
                }
            };
            return Ok(DateSpan {
                start: at(start, 0, None),
                end: at(end, 0, None),
            });
        };
        let (Some(m), Some(d)) = (month, day) else {
            return Err(bad("a time needs a full date before it"));
        };
        // The offset: Z, or ±HH:MM at the end.
        let (clock, offset) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
            (c, Some(0))
        } else if let Some(i) = time.rfind(['+', '-']) {
            let (c, o) = time.split_at(i);
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (h, mm) = o[1..]
                .split_once(':')
                .ok_or_else(|| bad("the offset is not ±HH:MM"))?;
            let (h, mm) = (
                number(h, 2, "offset's hour")?,
                number(mm, 2, "offset's minute")?,
            );
            if h > 14 || mm > 59 {
                return Err(bad("the offset is beyond ±14:00"));
            }
            (c, Some(sign * (h * 60 + mm) as i32))
        } else {
            (time, None)
        };
        let mut fields = clock.split(':');
        let hour = number(fields.next().unwrap_or_default(), 2, "hour")?;
        let minute = number(fields.next().unwrap_or_default(), 2, "minute")?;
        let (second, precise) = match fields.next() {
            Some(s) => {
                let whole = s.split_once('.').map_or(s, |(w, _)| w);
                (number(whole, 2, "second")?, 1)
            }
            None => (0, 60),
        };
        if fields.next().is_some() || hour > 23 || minute > 59 || second > 60 {
            return Err(bad("there is no such time"));
        }
        let secs = i64::from(hour * 3600 + minute * 60 + second.min(59));
        let day = days_from_civil(y, m, d);
        Ok(DateSpan {
            start: at(day, secs, offset),
            end: at(day, secs + precise, offset),
        })
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    let next = if month == 12 {
        days_from_civil(year + 1, 1, 1)
    } else {
        days_from_civil(year, month + 1, 1)
    };
    (next - days_from_civil(year, month, 1)) as u32
}

/// `LAT,LON[,KM]`.
fn parse_near(text: &str) -> Result<Near, BadRequest> {
    let bad = |reason: &str| BadRequest::Filter {
        param: "near",
        value: text.to_string(),
        reason: format!("{reason}; write LAT,LON or LAT,LON,KM in degrees, e.g. 48.8584,2.2945,5"),
    };
    let numbers: Vec<f64> = text
        .split(',')
        .map(|s| s.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("not numbers"))?;
    let (lat, lon, km) = match numbers[..] {
        [lat, lon] => (lat, lon, DEFAULT_NEAR_KM),
        [lat, lon, km] => (lat, lon, km),
        _ => return Err(bad("not two or three numbers")),
    };
    if !(-90.0..=90.0).contains(&lat) {
        return Err(bad("the latitude is not between -90 and 90"));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(bad("the longitude is not between -180 and 180"));
    }
    if !(km.is_finite() && km > 0.0) {
        return Err(bad("the distance is not a positive number of kilometres"));
    }
    Ok(Near { lat, lon, km })
}

/// The order of a search's results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Best match first.
    #[default]
    Score,
    /// The results that pass the minimum probability, by date taken, oldest first; those
    /// without a date last.
    Date,
}

impl FromStr for Sort {
    type Err = BadRequest;

    fn from_str(s: &str) -> Result<Self, BadRequest> {
        match s {
            "score" => Ok(Sort::Score),
            "date" => Ok(Sort::Date),
            _ => Err(BadRequest::Filter {
                param: "sort",
                value: s.to_string(),
                reason: "is not score or date".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: u32, d: u32, secs: i64, offset: Option<i32>) -> TakenAt {
        TakenAt {
            local: days_from_civil(y, m, d) * 86_400 + secs,
            nanos: 0,
            offset_minutes: offset,
        }
    }

    #[test]
    fn dates_cover_the_span_they_name() {
        for (text, start, end) in [
            ("2023", at(2023, 1, 1, 0, None), at(2024, 1, 1, 0, None)),
            ("2023-12", at(2023, 12, 1, 0, None), at(2024, 1, 1, 0, None)),
            ("2024-02", at(2024, 2, 1, 0, None), at(2024, 3, 1, 0, None)),
            (
                "2024-02-29",
                at(2024, 2, 29, 0, None),
                at(2024, 3, 1, 0, None),
            ),
            (
                "2023-06-14T18:30",
                at(2023, 6, 14, 66_600, None),
                at(2023, 6, 14, 66_660, None),
            ),
            (
                "2023-06-14T18:30:05+02:00",
                at(2023, 6, 14, 66_605, Some(120)),
                at(2023, 6, 14, 66_606, Some(120)),
            ),
            (
                "2023-06-14 18:30:05.250Z",
                at(2023, 6, 14, 66_605, Some(0)),
                at(2023, 6, 14, 66_606, Some(0)),
            ),
            (
                "2023-06-14T18:30:05-05:30",
                at(2023, 6, 14, 66_605, Some(-330)),
                at(2023, 6, 14, 66_606, Some(-330)),
            ),
        ] {
            let span = DateSpan::parse("after", text).unwrap();
            assert_eq!((span.start, span.end), (start, end), "{text}");
        }
    }

    #[test]
    fn a_bad_date_says_what_is_wrong_and_how_to_write_one() {
        for (text, why) in [
            ("23", "year is not 4 digits"),
            ("2023-13", "no such month"),
            ("2023-02-29", "no such day"),
            ("2023-6-1", "month is not 2 digits"),
            ("2023-06-14T25:00", "no such time"),
            ("2023-06T10:00", "needs a full date"),
            ("2023-06-14T10:00+15:00", "beyond ±14:00"),
            ("yesterday", "year is not 4 digits"),
            ("2023-01-01-01", "too many parts"),
        ] {
            let e = DateSpan::parse("after", text).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("2023-06-14T18:30:00+02:00"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn filters_combine_and_contradictions_are_refused() {
        let text = PhotoFilterText {
            after: Some("2023-06".into()),
            before: Some("2023-08".into()),
            camera: Some(" canon ".into()),
            near: Some("48.8584, 2.2945".into()),
            undated: false,
        };
        let f = text.parse().unwrap();
        assert_eq!(f.taken_from, Some(at(2023, 6, 1, 0, None)));
        assert_eq!(f.taken_until, Some(at(2023, 9, 1, 0, None)));
        assert_eq!(f.camera.as_deref(), Some("canon"));
        assert_eq!(
            f.near,
            Some(Near {
                lat: 48.8584,
                lon: 2.2945,
                km: 1.0
            })
        );
        for (text, why) in [
            (
                PhotoFilterText {
                    after: Some("2023".into()),
                    undated: true,
                    ..Default::default()
                },
                "cannot be combined",
            ),
            (
                PhotoFilterText {
                    after: Some("2023-06".into()),
                    before: Some("2023-05".into()),
                    ..Default::default()
                },
                "no photo can be in both",
            ),
            (
                PhotoFilterText {
                    near: Some("91,0".into()),
                    ..Default::default()
                },
                "latitude",
            ),
            (
                PhotoFilterText {
                    near: Some("1,2,-3".into()),
                    ..Default::default()
                },
                "positive number",
            ),
            (
                PhotoFilterText {
                    near: Some("1".into()),
                    ..Default::default()
                },
                "two or three",
            ),
        ] {
            let e = text.parse().unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // One day, both ends included.
        let day = PhotoFilterText {
            after: Some("2023-06-14".into()),
            before: Some("2023-06-14".into()),
            ..Default::default()
        };
        let f = day.parse().unwrap();
        assert_eq!(f.taken_from, Some(at(2023, 6, 14, 0, None)));
        assert_eq!(f.taken_until, Some(at(2023, 6, 15, 0, None)));
        assert!(!PhotoFilterText::default().parse().unwrap().is_active());
    }
}

/// What a term of a combined query is ([`Term`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TermInput {
    /// A sentence.
    Text(String),
    /// An image file the user names (the command line).
    ImageFile(std::path::PathBuf),
    /// An image of the index, by id.
    IndexedImage(qseek_index::ImageId),
}

/// A term of a combined query and its weight: a text's ITC or a photo's Chamfer
/// similarity adds `weight ×` itself to a candidate's score; a negative weight
/// subtracts, and a negative text is also a classifier at the rerank (`not_prob`).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// The text or photo.
    pub input: TermInput,
    /// Its weight, never 0.
    pub weight: f32,
}

/// Splits an rclip-style weight prefix off a term: `2:golden retriever` is
/// `(2, "golden retriever")`, `-0.5:photo.jpg` is `(-0.5, "photo.jpg")`. A term
/// without one has weight 1; so does one whose colon is followed by a digit (`10:30
/// meeting` is a sentence). A weight of 0, or one that is not finite, is refused.
pub fn split_weight<'a>(param: &'static str, term: &'a str) -> Result<(f32, &'a str), BadRequest> {
    let Some((number, rest)) = term.split_once(':') else {
        return Ok((1.0, term));
    };
    let numeric = !number.is_empty()
        && number
            .trim_start_matches(['+', '-'])
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().any(|b| b.is_ascii_digit());
    if !numeric || rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_digit()) {
        return Ok((1.0, term));
    }
    match number.parse::<f32>() {
        Ok(w) if w.is_finite() && w != 0.0 => Ok((w, rest)),
        _ => Err(BadRequest::Filter {
            param,
            value: term.to_string(),
            reason: "has a weight that is 0 or not a number: write e.g. 2:golden retriever".into(),
        }),
    }
}

/// `--like`'s value, or the API's `like=`: an indexed image (`id:N`, or a bare id in
/// the API) or a file, with its weight.
pub fn like_term(param: &'static str, text: &str, ids_only: bool) -> Result<Term, BadRequest> {
    let (weight, rest) = split_weight(param, text)?;
    let id = rest.strip_prefix("id:").or(ids_only.then_some(rest));
    let input = match id {
        Some(id) => TermInput::IndexedImage(id.trim().parse().map_err(|_| BadRequest::Filter {
            param,
            value: text.to_string(),
            reason: "is not an indexed image's id (a number)".into(),
        })?),
        None => TermInput::ImageFile(rest.into()),
    };
    Ok(Term { input, weight })
}

/// A text term with its weight (`--also`, `also=`), or, `negative`, a term that must
/// not match (`--not`, `not=`: its weight made negative).
pub fn text_term(param: &'static str, text: &str, negative: bool) -> Result<Term, BadRequest> {
    let (weight, rest) = split_weight(param, text)?;
    let weight = if negative { -weight.abs() } else { weight };
    Ok(Term {
        input: TermInput::Text(rest.to_string()),
        weight,
    })
}

#[cfg(test)]
mod term_tests {
    use super::*;

    #[test]
    fn weights_are_split_off_as_rclip_writes_them() {
        for (text, weight, rest) in [
            ("golden retriever", 1.0, "golden retriever"),
            ("2:golden retriever", 2.0, "golden retriever"),
            ("0.5:photo.jpg", 0.5, "photo.jpg"),
            ("-1.5:people", -1.5, "people"),
            ("10:30 meeting", 1.0, "10:30 meeting"),
            ("note: a cat", 1.0, "note: a cat"),
            ("2:", 1.0, "2:"),
            (":cat", 1.0, ":cat"),
        ] {
            assert_eq!(
                split_weight("also", text).unwrap(),
                (weight, rest),
                "{text}"
            );
        }
        for text in ["0:cat", "-0:cat", "0.0:cat"] {
            assert!(split_weight("also", text).is_err(), "{text}");
        }
        assert!(split_weight("also", "0:cat")
            .unwrap_err()
            .to_string()
            .contains("weight"));
    }

    #[test]
    fn like_terms_are_files_or_ids_and_not_terms_are_negative() {
        assert_eq!(
            like_term("like", "0.5:id:7", false).unwrap(),
            Term {
                input: TermInput::IndexedImage(7),
                weight: 0.5
            }
        );
        assert_eq!(
            like_term("like", "7", true).unwrap().input,
            TermInput::IndexedImage(7)
        );
        assert_eq!(
            like_term("like", "a/b.jpg", false).unwrap().input,
            TermInput::ImageFile("a/b.jpg".into())
        );
        assert!(like_term("like", "seven", true).is_err());
        assert_eq!(text_term("not", "people", true).unwrap().weight, -1.0);
        assert_eq!(text_term("not", "2:people", true).unwrap().weight, -2.0);
        assert_eq!(text_term("also", "-2:people", false).unwrap().weight, -2.0);
    }
}
