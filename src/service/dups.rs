//! Near-duplicate photos (`qseek dups`, `GET /api/duplicates`): the threshold and its
//! default, which images a scan covers, the order of a group's members and of the
//! groups, byte-identical copies, paging, and the similarity distribution a user
//! calibrates the threshold on. The scan itself is `qseek_index::Index::near_duplicates`.
//! qseek never deletes photos: this lists them.

use std::path::PathBuf;

use qseek_index::{DupParams, ImageInfo, Index, TakenAt};
use serde::{Deserialize, Serialize};

use crate::error::{BadRequest, Param};
use crate::pipeline::walk::absolute;
use crate::{Error, Result};

/// The threshold without `--threshold`: two photos are near-duplicates when their
/// symmetric Chamfer similarity is at least this. Not calibrated on real photos (see
/// the README's "Near-duplicates"): set high, because a false group costs more than a
/// missed one (a user may delete a photo that was only similar), and measure your own
/// collection with `qseek dups --show-scores`.
pub const DEFAULT_THRESHOLD: f32 = 0.95;

/// Width of a bin of [`ScoreDistribution`].
const BIN: f32 = 0.01;

/// What to look for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DupsRequest {
    /// Near-duplicates at or above this similarity; `None`: [`DEFAULT_THRESHOLD`].
    pub threshold: Option<f32>,
    /// Only photos under this folder (or whose path starts with this prefix).
    pub under: Option<PathBuf>,
}

/// Every group a scan found, best member first, groups in the order of their first
/// member's path: what [`page`] cuts pages from (a server keeps it between pages).
#[derive(Debug, Clone, PartialEq)]
pub struct DupsFound {
    /// The threshold used.
    pub threshold: f32,
    /// Photos scanned (distinct contents).
    pub images: usize,
    /// Whether every pair was scored (a small collection or folder), else the graph's
    /// candidates were.
    pub exact: bool,
    /// The groups.
    pub groups: Vec<DupGroup>,
    /// Each scanned photo's best similarity to another, sorted.
    pub nearest: Vec<f32>,
}

/// Photos every two of which are near-duplicates (or one photo stored at several paths).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DupGroup {
    /// Best first: the most pixels, then the newest date taken, then the path.
    pub members: Vec<DupMember>,
}

/// One photo of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DupMember {
    /// Its id in the index.
    pub image_id: u64,
    /// Its path (the first under the folder asked for).
    pub path: String,
    /// The folder that holds it.
    pub folder: String,
    /// Other paths with the same bytes.
    pub copies: Vec<String>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// When it was taken (RFC 3339, or local time without an offset), if known.
    pub taken_at: Option<String>,
    /// Its symmetric Chamfer similarity to the group's first member (1 for the first).
    pub similarity: f32,
}

/// One page of groups (`qseek dups --json`, `GET /api/duplicates`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DupsResponse {
    /// The threshold used.
    pub threshold: f32,
    /// Photos scanned.
    pub images: usize,
    /// Whether every pair was scored, else the HNSW graph's candidates.
    pub exact: bool,
    /// Groups in all pages.
    pub total_groups: usize,
    /// Groups skipped before this page.
    pub offset: usize,
    /// This page's groups.
    pub groups: Vec<DupGroup>,
    /// The similarity distribution, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<ScoreDistribution>,
}

/// How similar each photo is to its nearest other photo: the distribution a threshold
/// is chosen on. Near-duplicates make a bump near 1, apart from the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoreDistribution {
    /// Photos with a nearest neighbour scored.
    pub photos: usize,
    /// Bins of 0.01, from the lowest score's up to 1.
    pub bins: Vec<ScoreBin>,
}

/// Photos whose nearest neighbour's similarity is in `[from, to)` (the last bin
/// includes 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoreBin {
    /// Lower bound.
    pub from: f32,
    /// Upper bound.
    pub to: f32,
    /// Photos.
    pub photos: usize,
}

/// The threshold asked for, checked: a number above 0, at most 1.
pub fn threshold(asked: Option<f32>) -> Result<f32> {
    let t = asked.unwrap_or(DEFAULT_THRESHOLD);
    if t.is_finite() && t > 0.0 && t <= 1.0 {
        Ok(t)
    } else {
        Err(BadRequest::OutOfRange {
            param: Param::Threshold,
            expected: "above 0 and at most 1",
        }
        .into())
    }
}

/// The folder prefix of `under`, as indexed paths start: absolute, a folder with its
/// trailing `/`.
fn prefix(under: &std::path::Path) -> Result<String> {
    let abs = absolute(under).map_err(|source| Error::Io {
        path: under.to_path_buf(),
        source,
    })?;
    let mut s = abs.to_string_lossy().into_owned();
    if abs.is_dir() && !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

/// Scans the index for near-duplicate groups and orders them.
pub fn find(index: &Index, req: &DupsRequest) -> Result<DupsFound> {
    let threshold = threshold(req.threshold)?;
    let under = req.under.as_deref().map(prefix).transpose()?;
    let report = index.near_duplicates(&DupParams {
        threshold,
        path_prefix: under.clone(),
        ..DupParams::default()
    })?;
    let info = |id| {
        index
            .image(id)
            .ok_or_else(|| Error::Internal(format!("image {id} of a group is gone")))
    };
    let mut groups = Vec::with_capacity(report.groups.len());
    let mut grouped = std::collections::HashSet::new();
    for g in &report.groups {
        let infos: Vec<ImageInfo> = g
            .members
            .iter()
            .map(|&id| info(id))
            .collect::<Result<_>>()?;
        grouped.extend(g.members.iter().copied());
        let members: Vec<(DupMember, Option<TakenAt>)> = infos
            .into_iter()
            .map(|i| member(i, under.as_deref()))
            .collect();
        groups.push(ordered(members, |i, j| g.similarity(i, j)));
    }
    // A photo at several paths is a group of its own when no near-duplicate has it.
    for &id in report
        .with_copies
        .iter()
        .filter(|id| !grouped.contains(*id))
    {
        let (m, _) = member(info(id)?, under.as_deref());
        groups.push(DupGroup { members: vec![m] });
    }
    groups.sort_by(|a, b| a.members[0].path.cmp(&b.members[0].path));
    Ok(DupsFound {
        threshold,
        images: report.images,
        exact: report.exact,
        groups,
        nearest: report.nearest,
    })
}

/// A group's members best first — the most pixels, then the newest date taken (a
/// dated photo before an undated one), then the path — each with its similarity to
/// the first. `similarity(i, j)` is between members `i` and `j` as given.
fn ordered(
    members: Vec<(DupMember, Option<TakenAt>)>,
    similarity: impl Fn(usize, usize) -> f32,
) -> DupGroup {
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by(|&i, &j| {
        let ((a, ta), (b, tb)) = (&members[i], &members[j]);
        let pixels = |m: &DupMember| u64::from(m.width) * u64::from(m.height);
        pixels(b)
            .cmp(&pixels(a))
            .then_with(|| match (ta, tb) {
                (Some(x), Some(y)) => y.cmp_time(x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then_with(|| a.path.cmp(&b.path))
    });
    let first = order[0];
    let mut slots: Vec<Option<DupMember>> = members.into_iter().map(|(m, _)| Some(m)).collect();
    let members = order
        .iter()
        .map(|&i| {
            let mut m = slots[i].take().expect("each member once");
            m.similarity = if i == first {
                1.0
            } else {
                similarity(first, i)
            };
            m
        })
        .collect();
    DupGroup { members }
}

/// A group member from what the index knows of it (similarity set by [`ordered`]), and
/// when it was taken.
fn member(info: ImageInfo, under: Option<&str>) -> (DupMember, Option<TakenAt>) {
    let mut paths: Vec<String> = info.paths.into_iter().map(|p| p.path).collect();
    paths.sort();
    let shown = under
        .and_then(|u| paths.iter().position(|p| p.starts_with(u)))
        .unwrap_or(0);
    let path = paths.remove(shown);
    let folder = std::path::Path::new(&path)
        .parent()
        .map_or_else(String::new, |p| p.to_string_lossy().into_owned());
    let taken = info.photo.and_then(|p| p.taken);
    let m = DupMember {
        image_id: info.image_id,
        path,
        folder,
        copies: paths,
        width: info.width,
        height: info.height,
        taken_at: taken.map(|t| t.to_rfc3339()),
        similarity: 1.0,
    };
    (m, taken)
}

/// The groups `offset..offset + limit` (all from `offset` without a limit), and the
/// similarity distribution when `scores` is set.
pub fn page(
    found: &DupsFound,
    offset: usize,
    limit: Option<usize>,
    scores: bool,
) -> Result<DupsResponse> {
    if limit == Some(0) {
        return Err(BadRequest::OutOfRange {
            param: Param::Limit,
            expected: "at least 1",
        }
        .into());
    }
    Ok(DupsResponse {
        threshold: found.threshold,
        images: found.images,
        exact: found.exact,
        total_groups: found.groups.len(),
        offset,
        groups: found
            .groups
            .iter()
            .skip(offset)
            .take(limit.unwrap_or(usize::MAX))
            .cloned()
            .collect(),
        scores: scores.then(|| distribution(&found.nearest)),
    })
}

/// Bins of [`BIN`] of sorted scores, from the lowest score's bin up to 1.
fn distribution(sorted: &[f32]) -> ScoreDistribution {
    let bin_of =
        |s: f32| ((s.clamp(0.0, 1.0) / BIN).floor() as usize).min((1.0 / BIN) as usize - 1);
    let mut bins = Vec::new();
    if let Some(&low) = sorted.first() {
        let (first, last) = (bin_of(low), bin_of(1.0));
        let mut counts = vec![0usize; last - first + 1];
        for &s in sorted {
            counts[bin_of(s) - first] += 1;
        }
        bins = counts
            .into_iter()
            .enumerate()
            .map(|(i, photos)| ScoreBin {
                from: ((first + i) as f32 * BIN * 100.0).round() / 100.0,
                to: ((first + i + 1) as f32 * BIN * 100.0).round() / 100.0,
                photos,
            })
            .collect();
    }
    ScoreDistribution {
        photos: sorted.len(),
        bins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member; `taken`: (year, offset minutes).
    fn m(
        path: &str,
        w: u32,
        h: u32,
        taken: Option<(i64, Option<i32>)>,
    ) -> (DupMember, Option<TakenAt>) {
        let taken = taken.map(|(year, offset_minutes)| TakenAt {
            local: qseek_index::days_from_civil(year, 1, 1) * 86_400,
            nanos: 0,
            offset_minutes,
        });
        let member = DupMember {
            image_id: 0,
            path: path.into(),
            folder: String::new(),
            copies: Vec::new(),
            width: w,
            height: h,
            taken_at: None,
            similarity: 0.0,
        };
        (member, taken)
    }

    #[test]
    fn members_are_ordered_by_pixels_then_newest_date_then_path() {
        let members = vec![
            m("/p/small.jpg", 320, 200, Some((2024, None))),
            m("/p/b_old.jpg", 640, 400, Some((2020, None))),
            m("/p/c_undated.jpg", 640, 400, None),
            m("/p/a_new.jpg", 640, 400, Some((2023, Some(120)))),
            m("/p/z_undated.jpg", 640, 400, None),
        ];
        // Similarity of i and j (as given): (i + j) / 8.
        let g = ordered(members, |i, j| (i + j) as f32 / 8.0);
        let paths: Vec<&str> = g.members.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/p/a_new.jpg",
                "/p/b_old.jpg",
                "/p/c_undated.jpg",
                "/p/z_undated.jpg",
                "/p/small.jpg"
            ]
        );
        // Each member's similarity is to the first (given as member 3).
        let sims: Vec<f32> = g.members.iter().map(|m| m.similarity).collect();
        assert_eq!(sims, [1.0, 0.5, 0.625, 0.875, 0.375]);
    }

    #[test]
    fn thresholds_outside_zero_to_one_are_refused() {
        for bad in [0.0, -0.5, 1.01, f32::NAN, f32::INFINITY] {
            assert!(threshold(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(threshold(None).unwrap(), DEFAULT_THRESHOLD);
        assert_eq!(threshold(Some(1.0)).unwrap(), 1.0);
    }

    #[test]
    fn the_distribution_bins_scores_by_hundredths_up_to_one() {
        let d = distribution(&[0.955, 0.97, 0.971, 1.0]);
        assert_eq!(d.photos, 4);
        let bins: Vec<(f32, usize)> = d.bins.iter().map(|b| (b.from, b.photos)).collect();
        assert_eq!(
            bins,
            [(0.95, 1), (0.96, 0), (0.97, 2), (0.98, 0), (0.99, 1)]
        );
        assert!(distribution(&[]).bins.is_empty());
    }
}
