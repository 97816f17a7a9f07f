//! The model worker: one thread that owns the text encoder and the ITM head for the
//! server, and merges what concurrent requests ask of them into one model call each.
//!
//! A request sends its work down a channel and waits for its answer. The worker takes
//! the first job, then everything else already queued (under concurrent load also what
//! arrives within a few milliseconds: see [`gather`]), and runs all the sentences as
//! one text-encoder batch and all the ITM pairs as few batches, so 16 concurrent
//! searches cost about one batched forward pass instead of 16 small ones. Text searches
//! with the same parameters then scan the index together
//! ([`qseek_index::Index::search_images_many`]): one pass over the vectors, not one
//! each. No request waits on a lock: a search that needs no model call (an image by id,
//! paging) never touches the worker.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qseek_index::{ImageHit, Index, SearchParams};

use crate::pipeline::Collection;
use crate::rerank::{itm_scores, ItmPair, ItmScore, ModelCalls};
use crate::{Error, Result};

/// Most jobs merged into one round.
const MAX_JOBS_PER_ROUND: usize = 64;

type Reply<T> = Sender<Result<T>>;

/// A text's embedding and token ids.
type Embedded = (Vec<f32>, Vec<u32>);

/// What a text search answers: the text's token ids and the images found.
type Found = (Vec<u32>, Vec<ImageHit>);

enum Job {
    Text(String, Reply<(Vec<f32>, Vec<u32>)>),
    Search(Search, Reply<Found>),
    Itm(Vec<ItmPair>, Reply<Vec<ItmScore>>),
}

/// A text → images search of the collection's index.
struct Search {
    text: String,
    k: usize,
    params: SearchParams,
}

/// The handle requests use; cheap to share (`&Batcher` is [`ModelCalls`]).
pub struct Batcher {
    jobs: Sender<Job>,
    collection: Arc<Collection>,
}

impl Batcher {
    /// Starts the worker thread over the collection's model; `itm_batch` pairs per ITM call.
    pub fn start(collection: Arc<Collection>, itm_batch: usize) -> Self {
        // The vision model is read at its first use; a server reads it now, beside the
        // worker, so that text searches answer at once and the first image search does
        // not wait for it (nor, on a small machine, for seconds of disk).
        let c = collection.clone();
        std::thread::Builder::new()
            .name("qseek-vision-load".into())
            .spawn(move || {
                if let Err(e) = c.embedder.model().load_vision() {
                    eprintln!("qseek: reading the vision model: {e}");
                }
            })
            .expect("spawn the vision loader");
        let (jobs, rx) = channel();
        let c = collection.clone();
        std::thread::Builder::new()
            .name("qseek-model".into())
            .spawn(move || work(&c, &rx, itm_batch))
            .expect("spawn the model worker");
        Self { jobs, collection }
    }

    fn ask<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T> {
        let (tx, rx) = channel();
        self.jobs
            .send(job(tx))
            .map_err(|_| Error::Internal("the model worker stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Internal("the model worker stopped".into()))?
    }
}

impl ModelCalls for Batcher {
    fn embed_text(&self, text: &str) -> Result<(Vec<f32>, Vec<u32>)> {
        self.ask(|reply| Job::Text(text.to_string(), reply))
    }

    fn itm(&self, pairs: Vec<ItmPair>) -> Result<Vec<ItmScore>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        self.ask(|reply| Job::Itm(pairs, reply))
    }

    fn search_text(
        &self,
        index: &Index,
        text: &str,
        k: usize,
        params: &SearchParams,
    ) -> Result<(Vec<u32>, Vec<ImageHit>)> {
        if !std::ptr::eq(index, &self.collection.index) {
            // Not the index the worker scans: embed through the worker, search here.
            let (embed, ids) = self.embed_text(text)?;
            return Ok((ids, index.search_images(&embed, k, params)?));
        }
        self.ask(|reply| {
            let search = Search {
                text: text.to_string(),
                k,
                params: params.clone(),
            };
            Job::Search(search, reply)
        })
    }
}

fn work(c: &Collection, rx: &Receiver<Job>, itm_batch: usize) {
    // The sizes of the last rounds, newest last.
    let mut recent = [0; RECENT_ROUNDS];
    while let Ok(first) = rx.recv() {
        let mut texts = Vec::new();
        let mut searches = Vec::new();
        let mut itm = Vec::new();
        let mut sort = |job| match job {
            Job::Text(t, reply) => texts.push((t, reply)),
            Job::Search(s, reply) => searches.push((s, reply)),
            Job::Itm(p, reply) => itm.push((p, reply)),
        };
        sort(first);
        let expected = recent.iter().copied().max().unwrap_or(0);
        recent.rotate_left(1);
        recent[RECENT_ROUNDS - 1] = gather(rx, expected, &mut sort);
        if !texts.is_empty() || !searches.is_empty() {
            // One text-encoder batch for the plain texts and the searches' texts.
            let strings: Vec<String> = texts
                .iter()
                .map(|(t, _)| t.clone())
                .chain(searches.iter().map(|(s, _)| s.text.clone()))
                .collect();
            match embed_texts(c, &strings) {
                Ok(mut embeds) => {
                    let for_searches = embeds.split_off(texts.len());
                    answer(texts, Ok(embeds));
                    search_together(c, searches, for_searches);
                }
                Err(e) => {
                    let message = e.to_string();
                    answer(texts, Err(Error::Internal(message.clone())));
                    answer::<_, Found>(searches, Err(Error::Internal(message)));
                }
            }
        }
        if !itm.is_empty() {
            let all: Vec<ItmPair> = itm.iter().flat_map(|(p, _)| p.iter().cloned()).collect();
            let scores = itm_scores(&c.embedder, &all, itm_batch);
            let sizes: Vec<usize> = itm.iter().map(|(p, _)| p.len()).collect();
            let split = scores.map(|scores| {
                let mut rest = scores.into_iter();
                sizes
                    .iter()
                    .map(|&n| rest.by_ref().take(n).collect::<Vec<ItmScore>>())
                    .collect::<Vec<_>>()
            });
            answer(itm, split);
        }
    }
}

/// How long a round waits for the next job once one of the clients it expects is back:
/// under concurrent load they return close together (at 16 clients within ~3 ms).
const GATHER_QUIET: Duration = Duration::from_millis(1);
/// The most a round waits after its first job, against a round of 16 texts that costs
/// ~220 ms of model time on two cores (one text ~20 ms).
const GATHER_MAX: Duration = Duration::from_millis(5);
/// How many past rounds tell how many clients are concurrent (the largest of them).
const RECENT_ROUNDS: usize = 4;

/// Takes the round's other jobs (the first is taken): everything queued; and when
/// recent rounds had several jobs (clients are concurrent), also the jobs that arrive
/// until `expected` (the largest recent round) are in, no further job came for
/// [`GATHER_QUIET`] after one did, or [`GATHER_MAX`] passed. Without the wait a round
/// would start with the first client back and leave the rest to a second round, paying
/// the text encoder's weight reads twice. A lone client never waits. Returns the
/// round's size.
fn gather(rx: &Receiver<Job>, expected: usize, sort: &mut impl FnMut(Job)) -> usize {
    let start = Instant::now();
    let mut n = 1;
    while n < MAX_JOBS_PER_ROUND {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(_) if expected > 1 && n < expected => {
                let left = GATHER_MAX.saturating_sub(start.elapsed());
                if left.is_zero() {
                    break;
                }
                // Until the first of them is back, the whole window; then a quiet gap.
                let wait = if n > 1 { GATHER_QUIET.min(left) } else { left };
                match rx.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(_) => break,
                }
            }
            Err(_) => break,
        };
        sort(job);
        n += 1;
    }
    n
}

/// Answers the searches: those with the same `k` and parameters scan the index
/// together. A group whose batch fails (e.g. a bad filter query) is run one search at a
/// time, so that each request gets its own error, typed as the index gave it.
fn search_together(c: &Collection, searches: Vec<(Search, Reply<Found>)>, embeds: Vec<Embedded>) {
    let mut groups: Vec<Vec<(Search, Reply<Found>, Embedded)>> = Vec::new();
    for ((search, reply), embed) in searches.into_iter().zip(embeds) {
        match groups
            .iter_mut()
            .find(|g| g[0].0.k == search.k && g[0].0.params == search.params)
        {
            Some(group) => group.push((search, reply, embed)),
            None => groups.push(vec![(search, reply, embed)]),
        }
    }
    for group in groups {
        let (k, params) = (group[0].0.k, group[0].0.params.clone());
        let queries: Vec<&[f32]> = group.iter().map(|(_, _, (e, _))| e.as_slice()).collect();
        match c.index.search_images_many(&queries, k, &params) {
            Ok(hits) => {
                for ((_, reply, (_, ids)), hits) in group.into_iter().zip(hits) {
                    let _ = reply.send(Ok((ids, hits)));
                }
            }
            Err(_) => {
                for (_, reply, (embed, ids)) in group {
                    let hits = c.index.search_images(&embed, k, &params);
                    let _ = reply.send(hits.map(|h| (ids, h)).map_err(Error::from));
                }
            }
        }
    }
}

fn embed_texts(c: &Collection, texts: &[String]) -> Result<Vec<(Vec<f32>, Vec<u32>)>> {
    let ids = c.embedder.tokenize(texts)?;
    let embeds = c.embedder.embed_token_ids(&ids)?.to_vec2::<f32>()?;
    Ok(embeds.into_iter().zip(ids).collect())
}

/// Sends each job its part of a batch's result (or the batch's error, as text: every
/// job of a failed batch fails the same way).
fn answer<J, T>(jobs: Vec<(J, Reply<T>)>, result: Result<Vec<T>>) {
    match result {
        Ok(values) => {
            for ((_, reply), value) in jobs.into_iter().zip(values) {
                // The requester may have gone (a timeout): nothing to do.
                let _ = reply.send(Ok(value));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for (_, reply) in jobs {
                let _ = reply.send(Err(Error::Internal(message.clone())));
            }
        }
    }
}
