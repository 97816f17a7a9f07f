//! Photos for a sentence: candidates by ITC from the index (or an engine), the top
//! `rerank` rescored with ITM, as LAVIS's `compute_sim_matrix` does.

use super::*;

pub(super) fn text_to_images(
    c: &Collection,
    model: &dyn ModelCalls,
    settings: &SearchSettings,
    query: &str,
    opts: &Options,
    notes: &mut Vec<String>,
) -> Result<Vec<Hit>> {
    let want = opts.want().max(opts.rerank);
    let (ids, found) = match &settings.engine {
        // The engine knows an image by its bytes' hash; the local index, when it holds
        // the same bytes, gives its id (and so its stored vision features).
        Some(engine) => {
            let (embed, ids) = model.embed_text(query)?;
            let under = opts.under.as_deref();
            let filter = EngineFilter {
                under: opts.under.clone(),
                photo: opts.photo.clone(),
            };
            let found = engine.search_images(&embed, want, Some(&filter))?;
            let found = found
                .into_iter()
                .filter(|h| under_it(&h.paths, under))
                .map(|h| {
                    let image_id = c.index.image_by_hash(&h.content_hash).map(|i| i.image_id);
                    (image_id, h.paths, h.itc)
                });
            (ids, found.collect::<Vec<_>>())
        }
        None => {
            let (ids, found) =
                model.search_text(&c.index, query, want, &opts.params(want, true))?;
            let found = found
                .into_iter()
                .map(|h| (Some(h.image_id), h.paths, h.score));
            (ids, found.collect())
        }
    };
    let mut candidates: Vec<Candidate> = found
        .into_iter()
        .map(|(image_id, paths, itc)| {
            let (path, copies) = split_paths(paths, opts.under.as_deref());
            Candidate {
                fields: PhotoFields::of(c, image_id),
                image_id,
                path,
                copies,
                text: None,
                id: None,
                itc,
                itm: None,
                not_probs: None,
            }
        })
        .collect();
    let n = opts.rerank.min(candidates.len());
    let (which, pairs): (Vec<usize>, Vec<ItmPair>) =
        rerank_vision(c, settings, &candidates[..n], notes)?
            .into_iter()
            .map(|(i, vision)| {
                let ids = ids.clone();
                (i, ItmPair { vision, ids })
            })
            .unzip();
    for (i, score) in which.into_iter().zip(model.itm(pairs)?) {
        candidates[i].itm = Some(score.into());
    }
    Ok(rank(candidates, opts))
}
