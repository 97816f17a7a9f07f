//! Searches by a photo: the query photo embedded (a file, an upload or an indexed
//! photo), photos like it (symmetric Chamfer similarity), and sentences for it.

use super::*;

/// A query image: its id when the index holds it, its vision features (1, tokens,
/// hidden) and query vectors (Q × D, flat).
pub(super) struct QueryImage {
    pub(super) image_id: Option<ImageId>,
    pub(super) content_hash: String,
    pub(super) vision: Tensor,
    pub(super) vectors: Vec<f32>,
}

/// Embeds the query image; returns how to name it in the response too. An indexed
/// image is read from its own (indexed) file only.
pub(super) fn query_image(
    c: &Collection,
    input: &QueryInput,
    settings: &SearchSettings,
) -> Result<(String, QueryImage)> {
    let (name, bytes, path, load) = match input {
        QueryInput::ImageFile(path) => {
            let bytes = std::fs::read(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            (
                path.display().to_string(),
                Bytes::from(bytes),
                path.clone(),
                &settings.load,
            )
        }
        QueryInput::ImageBytes(bytes) => (
            "(uploaded)".to_string(),
            bytes.clone(),
            PathBuf::from("(uploaded)"),
            &settings.upload,
        ),
        QueryInput::IndexedImage(id) => {
            let info = c.index.image(*id).ok_or(NotFound::Image { id: *id })?;
            let (path, bytes) = read_indexed(&info, read_roots(c, settings).as_deref())?;
            (format!("id:{id}"), Bytes::from(bytes), path, &settings.load)
        }
        QueryInput::Text(_) => unreachable!("text queries take no image"),
    };
    let img = decode_rgb(&bytes, &path, load)?;
    let pixels = c.embedder.image_preprocessor().pixel_values(&img);
    let (vision, embeds) = c
        .embedder
        .embed_pixels(&c.embedder.pixel_batch(&[pixels])?)?;
    let hash = content_hash(&bytes);
    let image_id = c.index.image_by_hash(&hash).map(|i| i.image_id);
    Ok((
        name,
        QueryImage {
            image_id,
            content_hash: hash,
            vision,
            vectors: rows3(&embeds)?.remove(0),
        },
    ))
}

pub(super) fn image_to_images(
    c: &Collection,
    settings: &SearchSettings,
    query: &QueryImage,
    opts: &Options,
    notes: &mut Vec<String>,
) -> Result<Vec<Hit>> {
    let want = opts.want();
    let found: Vec<(Option<ImageId>, Vec<String>, f32)> = match &settings.engine {
        Some(engine) => {
            let m = c.index.manifest();
            let similar = similar_through_engine(
                engine.as_ref(),
                &query.vectors,
                m.dim,
                want,
                &query.content_hash,
                Some(&EngineFilter {
                    under: opts.under.clone(),
                    photo: opts.photo.clone(),
                }),
            )?;
            if !similar.exact {
                notes.push(format!(
                    "image → images through the engine: the best of {} candidates, not proven to be the exact top {want} (see the README)",
                    similar.scored
                ));
            }
            similar
                .hits
                .into_iter()
                .map(|(hash, paths, score)| {
                    let image_id = c.index.image_by_hash(&hash).map(|i| i.image_id);
                    (image_id, paths, score)
                })
                .collect()
        }
        None => {
            let params = opts.params(want, true);
            let hits = match query.image_id {
                Some(id) => c.index.similar_to_image(id, want, &params)?,
                None => c.index.similar_images(&query.vectors, want, &params)?,
            };
            hits.into_iter()
                .map(|h| (Some(h.image_id), h.paths, h.score))
                .collect()
        }
    };
    let mut found: Vec<_> = found
        .into_iter()
        .map(|(image_id, paths, score)| (PhotoFields::of(c, image_id), image_id, paths, score))
        .collect();
    if opts.sort == Sort::Date {
        sort_by_date(&mut found, |f| &f.0);
    }
    Ok(found
        .into_iter()
        .enumerate()
        .skip(opts.offset)
        .map(|(i, (fields, image_id, paths, score))| {
            let (path, copies) = split_paths(paths, opts.under.as_deref());
            fields.into_hit(Hit {
                rank: i + 1,
                image_id,
                path,
                copies,
                score,
                ..Hit::default()
            })
        })
        .collect())
}

pub(super) fn image_to_texts(
    c: &Collection,
    model: &dyn ModelCalls,
    settings: &SearchSettings,
    query: &QueryImage,
    opts: &Options,
) -> Result<Vec<Hit>> {
    let want = opts.want().max(opts.rerank);
    let found: Vec<(String, Option<String>, f32)> = match &settings.engine {
        Some(engine) => engine
            .search_texts(&query.vectors, c.index.manifest().dim, want)?
            .into_iter()
            .map(|h| (h.text, h.external_id, h.itc))
            .collect(),
        None => {
            if c.index.stats().texts == 0 {
                return Err(BadRequest::NoTexts.into());
            }
            c.index
                .search_texts(&query.vectors, want, &opts.params(want, false))?
                .into_iter()
                .map(|h| (h.text, h.external_id, h.score))
                .collect()
        }
    };
    let mut candidates: Vec<Candidate> = found
        .into_iter()
        .map(|(text, id, itc)| Candidate {
            fields: PhotoFields::default(),
            image_id: None,
            path: None,
            copies: Vec::new(),
            text: Some(text),
            id,
            itc,
            itm: None,
            not_probs: None,
        })
        .collect();
    let n = opts.rerank.min(candidates.len());
    let texts: Vec<String> = candidates[..n]
        .iter()
        .map(|c| c.text.clone().unwrap_or_default())
        .collect();
    let vision = query.vision.squeeze(0)?;
    let pairs = c
        .embedder
        .tokenize(&texts)?
        .into_iter()
        .map(|ids| ItmPair {
            vision: vision.clone(),
            ids,
        })
        .collect();
    for (cand, score) in candidates.iter_mut().zip(model.itm(pairs)?) {
        cand.itm = Some(score.into());
    }
    Ok(rank(candidates, opts))
}
