//! Photos for a combined query: weighted sentences and photos, and sentences that must
//! not match ([`combined_to_images`]).

use super::*;

/// A term of a combined query, embedded.
pub(super) enum Embedded {
    Text {
        text: String,
        vector: Vec<f32>,
        ids: Vec<u32>,
        weight: f32,
    },
    Image {
        name: String,
        query: QueryImage,
        weight: f32,
    },
}

/// What [`combined_to_images`] found, and the query it ran.
pub(super) struct Combined {
    pub(super) hits: Vec<Hit>,
    pub(super) terms: Vec<TermEcho>,
    pub(super) not: Vec<String>,
}

/// Photos for a combined query: the request's query (with its weight) and its terms.
///
/// A candidate's score is the weighted sum of each term's similarity: a text's ITC
/// (max over the image's query vectors), a photo's symmetric Chamfer similarity; a
/// negative weight subtracts. The query photos are not results. The top `rerank`
/// candidates are then rescored: each text term with a positive weight adds its weight
/// × its ITM match logit (and `itm_prob` is the least of their match probabilities,
/// which `min_prob` is compared with); each negative text term is a classifier: a
/// candidate whose match probability for it reaches `not_prob` is dropped. Without a
/// text term, the candidate score alone ranks, as image → images does.
pub(super) fn combined_to_images(
    c: &Collection,
    model: &dyn ModelCalls,
    settings: &SearchSettings,
    req: &SearchRequest,
    opts: &Options,
    notes: &mut Vec<String>,
) -> Result<Combined> {
    let rest = req
        .terms
        .iter()
        .map(|t| (QueryInput::from(t.input.clone()), t.weight));
    let mut embedded = Vec::new();
    for (input, weight) in std::iter::once((req.query.clone(), req.weight)).chain(rest) {
        embedded.push(match input {
            QueryInput::Text(text) => {
                check_sentence(&text, settings)?;
                let (vector, ids) = model.embed_text(&text)?;
                Embedded::Text {
                    text,
                    vector,
                    ids,
                    weight,
                }
            }
            input => {
                let (name, query) = query_image(c, &input, settings)?;
                Embedded::Image {
                    name,
                    query,
                    weight,
                }
            }
        });
    }
    let weight = |e: &Embedded| match e {
        Embedded::Text { weight, .. } | Embedded::Image { weight, .. } => *weight,
    };
    if embedded.iter().all(|e| weight(e) < 0.0) {
        return Err(qseek_index::Error::NoPositiveTerm.into());
    }
    let terms: Vec<QueryTerm> = embedded
        .iter()
        .map(|e| match e {
            Embedded::Text { vector, weight, .. } => QueryTerm::Text {
                vector,
                weight: *weight,
            },
            Embedded::Image { query, weight, .. } => QueryTerm::Image {
                vectors: &query.vectors,
                weight: *weight,
            },
        })
        .collect();
    // The query photos are not results: ask for as many more.
    let exclude: HashSet<ImageId> = embedded
        .iter()
        .filter_map(|e| match e {
            Embedded::Image { query, .. } => query.image_id,
            Embedded::Text { .. } => None,
        })
        .collect();
    let want = opts.want().max(opts.rerank);
    let ask = want + exclude.len();
    let found = c
        .index
        .search_images_combined(&terms, ask, &opts.params(ask, true))?;
    let mut candidates: Vec<Candidate> = found
        .into_iter()
        .filter(|h| !exclude.contains(&h.image_id))
        .take(want)
        .map(|h| {
            let (path, copies) = split_paths(h.paths, opts.under.as_deref());
            Candidate {
                fields: PhotoFields::of(c, Some(h.image_id)),
                image_id: Some(h.image_id),
                path,
                copies,
                text: None,
                id: None,
                itc: h.score,
                itm: None,
                not_probs: None,
            }
        })
        .collect();
    // The rerank: every text term with every candidate that has vision features.
    let texts: Vec<(f32, &Vec<u32>)> = embedded
        .iter()
        .filter_map(|e| match e {
            Embedded::Text { ids, weight, .. } => Some((*weight, ids)),
            Embedded::Image { .. } => None,
        })
        .collect();
    if !texts.is_empty() {
        let n = opts.rerank.min(candidates.len());
        let visions = rerank_vision(c, settings, &candidates[..n], notes)?;
        let pairs = visions
            .iter()
            .flat_map(|(_, vision)| {
                texts.iter().map(|(_, ids)| ItmPair {
                    vision: vision.clone(),
                    ids: (*ids).clone(),
                })
            })
            .collect();
        let scores = model.itm(pairs)?;
        for ((i, _), scores) in visions.iter().zip(scores.chunks(texts.len())) {
            let mut positive = None::<Reranked>;
            let mut not_probs = Vec::new();
            for (&(weight, _), score) in texts.iter().zip(scores) {
                let prob = score.probability();
                if weight > 0.0 {
                    let r = positive.get_or_insert(Reranked {
                        logit: 0.0,
                        prob: 1.0,
                    });
                    r.logit += weight * score.yes;
                    r.prob = r.prob.min(prob);
                } else {
                    not_probs.push(prob);
                }
            }
            candidates[*i].itm = positive;
            candidates[*i].not_probs = Some(not_probs);
        }
    }
    let not: Vec<String> = embedded
        .iter()
        .filter_map(|e| match e {
            Embedded::Text { text, weight, .. } if *weight < 0.0 => Some(text.clone()),
            _ => None,
        })
        .collect();
    if !not.is_empty() && opts.rerank == 0 {
        notes.push(
            "without reranking, a term after --not only subtracts its similarity: nothing is dropped for matching it".into(),
        );
    }
    let echo = embedded
        .iter()
        .filter(|e| !matches!(e, Embedded::Text { weight, .. } if *weight < 0.0))
        .map(|e| match e {
            Embedded::Text { text, weight, .. } => TermEcho {
                text: Some(text.clone()),
                image: None,
                image_id: None,
                weight: *weight,
            },
            Embedded::Image {
                name,
                query,
                weight,
            } => TermEcho {
                text: None,
                image: Some(name.clone()),
                image_id: query.image_id,
                weight: *weight,
            },
        })
        .collect();
    Ok(Combined {
        hits: rank(candidates, opts),
        terms: echo,
        not,
    })
}
