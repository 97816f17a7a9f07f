//! Ranking the candidates of a search: the reranked first (ITM match logit + ITC), the
//! minimum probability and the negative terms, the order by date, the photo fields of a
//! result, and the vision features a rerank reads (stored, or from the file).

use super::*;

/// What a result shows of its photo: the metadata and size fields of [`Hit`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct PhotoFields {
    pub(super) photo: Option<PhotoMeta>,
    pub(super) width: Option<u32>,
    pub(super) height: Option<u32>,
}

impl PhotoFields {
    pub(super) fn of(c: &Collection, image_id: Option<ImageId>) -> Self {
        match image_id.and_then(|id| c.index.image(id)) {
            Some(info) => Self {
                photo: info.photo,
                width: Some(info.width),
                height: Some(info.height),
            },
            None => Self::default(),
        }
    }

    pub(super) fn taken(&self) -> Option<&qseek_index::TakenAt> {
        self.photo.as_ref()?.taken.as_ref()
    }

    pub(super) fn into_hit(self, hit: Hit) -> Hit {
        let photo = self.photo.unwrap_or_default();
        Hit {
            taken_at: photo.taken.map(|t| t.to_rfc3339()),
            camera: photo.camera(),
            lens: photo.lens,
            gps: photo.gps.map(|g| [g.lat, g.lon]),
            width: self.width,
            height: self.height,
            ..hit
        }
    }
}

/// A stable sort by date taken, oldest first, those without a date last.
pub(super) fn sort_by_date<T>(items: &mut [T], fields: impl Fn(&T) -> &PhotoFields) {
    items.sort_by(|a, b| match (fields(a).taken(), fields(b).taken()) {
        (Some(x), Some(y)) => x.cmp_time(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
}

/// The path to show for an image (the first under the filter, if any) and its copies.
pub(super) fn split_paths(
    mut paths: Vec<String>,
    under: Option<&str>,
) -> (Option<String>, Vec<String>) {
    if paths.is_empty() {
        return (None, paths);
    }
    let first = under
        .and_then(|u| paths.iter().position(|p| p.starts_with(u)))
        .unwrap_or(0);
    let path = paths.remove(first);
    (Some(path), paths)
}

/// A candidate on its way to becoming a [`Hit`].
pub(super) struct Candidate {
    pub(super) image_id: Option<ImageId>,
    pub(super) path: Option<String>,
    pub(super) copies: Vec<String>,
    pub(super) text: Option<String>,
    pub(super) id: Option<String>,
    pub(super) itc: f32,
    pub(super) itm: Option<Reranked>,
    /// The ITM match probability for each negative text term, when reranked.
    pub(super) not_probs: Option<Vec<f32>>,
    pub(super) fields: PhotoFields,
}

/// What the ITM head said of a reranked candidate: the (weighted) match logit its
/// score adds to the ITC, and the match probability `min_prob` is compared with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reranked {
    pub(super) logit: f32,
    pub(super) prob: f32,
}

impl From<ItmScore> for Reranked {
    fn from(itm: ItmScore) -> Self {
        Reranked {
            logit: itm.yes,
            prob: itm.probability(),
        }
    }
}

/// The vision-encoder output of each candidate to rerank, by its position: stored, or
/// recomputed from a file; a candidate with neither is left out (with a note).
pub(super) fn rerank_vision(
    c: &Collection,
    settings: &SearchSettings,
    candidates: &[Candidate],
    notes: &mut Vec<String>,
) -> Result<Vec<(usize, Tensor)>> {
    let roots = read_roots(c, settings);
    let mut out = Vec::new();
    for (i, cand) in candidates.iter().enumerate() {
        let stored = match cand.image_id {
            Some(image_id) => c.index.vision_features(image_id)?,
            None => None,
        };
        let vision = match stored {
            Some((values, shape)) => Some(Tensor::from_vec(
                values,
                shape,
                c.embedder.model().device(),
            )?),
            None => recompute_vision(c, cand, &settings.load, roots.as_deref(), notes)?,
        };
        if let Some(vision) = vision {
            out.push((i, vision));
        }
    }
    Ok(out)
}

/// The vision-encoder output of a candidate, from the first of its files that still
/// decodes; `None` (with a note) when none does.
pub(super) fn recompute_vision(
    c: &Collection,
    cand: &Candidate,
    load: &LoadOptions,
    roots: Option<&[PathBuf]>,
    notes: &mut Vec<String>,
) -> Result<Option<Tensor>> {
    let mut last_error = None;
    for path in cand.path.iter().chain(&cand.copies) {
        let pixels =
            confined(Path::new(path), roots).and_then(|at| c.embedder.pixel_values(&at, load));
        match pixels {
            Ok(pixels) => {
                let batch = c.embedder.pixel_batch(&[pixels])?;
                let vision = c.embedder.model().vision_features(&batch)?;
                return Ok(Some(vision.squeeze(0)?));
            }
            Err(e) => last_error = Some(e),
        }
    }
    let why = last_error.map_or_else(|| "no path".to_string(), |e| e.to_string());
    notes.push(format!(
        "{}: not reranked: the index holds no vision features for it and its file cannot be read ({why}); index its folder again to bring the index up to date",
        cand.path.as_deref().unwrap_or("?")
    ));
    Ok(None)
}

/// Reranked candidates first (ITM logit + ITC), then the rest by ITC, as LAVIS's
/// protocol ranks them; then the minimum probability, the order by date if asked (of
/// every candidate that passes the minimum probability, else of the first `offset + k`),
/// the offset and `k`.
pub(super) fn rank(candidates: Vec<Candidate>, opts: &Options) -> Vec<Hit> {
    // The reranked: ITM match logit + ITC (`ItmScore::rerank_score`; weighted sums of
    // both for a combined query).
    let score = |c: &Candidate| c.itm.map_or(c.itc, |itm| itm.logit + c.itc);
    let mut all: Vec<Candidate> = candidates;
    // Stable: ties keep the index's order (ITC, then id).
    all.sort_by(|a, b| {
        b.itm
            .is_some()
            .cmp(&a.itm.is_some())
            .then(score(b).total_cmp(&score(a)))
    });
    all.retain(|c| match opts.min_prob {
        Some(p) => c.itm.is_some_and(|itm| itm.prob >= p),
        None => true,
    });
    all.retain(|c| {
        let not = c.not_probs.as_deref().unwrap_or_default();
        not.iter().all(|&p| p < opts.not_prob)
    });
    if opts.sort == Sort::Date {
        if opts.min_prob.is_none() {
            all.truncate(opts.want());
        }
        sort_by_date(&mut all, |c| &c.fields);
    }
    all.into_iter()
        .enumerate()
        .skip(opts.offset)
        .take(opts.k)
        .map(|(i, c)| {
            let hit = Hit {
                rank: i + 1,
                score: score(&c),
                itc: Some(c.itc),
                itm_logit: c.itm.map(|itm| itm.logit),
                itm_prob: c.itm.map(|itm| itm.prob),
                not_probs: c.not_probs,
                image_id: c.image_id,
                path: c.path,
                copies: c.copies,
                text: c.text,
                id: c.id,
                ..Hit::default()
            };
            c.fields.into_hit(hit)
        })
        .collect()
}
