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
use crate::rerank::{itm_scores, ItmPair, ItmScore};
use crate::service::calls::ModelCalls;
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
    Search(Box<Search>, Reply<Found>),
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
            Job::Search(Box::new(search), reply)
        })
    }
}

fn work(c: &Collection, rx: &Receiver<Job>, itm_batch: usize) {
    let mut waves = Waves::default();
    // Jobs that came while the last round's model calls ran: they start the next one.
    let mut early: Vec<Job> = Vec::new();
    loop {
        let mut texts = Vec::new();
        let mut searches = Vec::new();
        let mut itm = Vec::new();
        let mut sort = |job| match job {
            Job::Text(t, reply) => texts.push((t, reply)),
            Job::Search(s, reply) => searches.push((*s, reply)),
            Job::Itm(p, reply) => itm.push((p, reply)),
        };
        if early.is_empty() {
            match rx.recv() {
                Ok(first) => early.push(first),
                Err(_) => return,
            }
        }
        let n = early.len();
        early.drain(..).for_each(&mut sort);
        let n = gather(
            rx,
            n,
            waves.expected(),
            waves.window(),
            GATHER_QUIET,
            &mut sort,
        );
        let start = Instant::now();
        if !texts.is_empty() || !searches.is_empty() {
            // One text-encoder batch for the plain texts and the searches' texts.
            let strings: Vec<String> = texts
                .iter()
                .map(|(t, _)| t.clone())
                .chain(searches.iter().map(|(s, _)| s.text.clone()))
                .collect();
            let embeds = embed_texts(c, &strings);
            take_queued(rx, &mut early);
            match embeds {
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
            take_queued(rx, &mut early);
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
        waves.record(n, early.len(), start.elapsed());
    }
}

/// What the last rounds tell the next one: how many jobs to expect and how long to wait
/// for them.
#[derive(Debug, Default)]
struct Waves {
    /// The waves of the last rounds, newest last: each round's jobs and those that came
    /// while its model calls ran (see [`gather`]).
    recent: [usize; RECENT_ROUNDS],
    /// What the last round cost.
    last_cost: Duration,
}

impl Waves {
    /// The jobs the next round expects: the largest recent wave.
    fn expected(&self) -> usize {
        self.recent.iter().copied().max().unwrap_or(0)
    }

    /// How long the next round may wait for them: a share of the last round's cost.
    fn window(&self) -> Duration {
        (self.last_cost / GATHER_SHARE).clamp(GATHER_MIN, GATHER_MAX)
    }

    /// A round of `jobs`, during whose model calls `early` more came, took `cost`.
    fn record(&mut self, jobs: usize, early: usize, cost: Duration) {
        self.recent.rotate_left(1);
        self.recent[RECENT_ROUNDS - 1] = jobs + early;
        self.last_cost = cost;
    }
}

/// Moves the jobs that came while a round's model call ran into `early`, before the
/// round answers: jobs sent after its answers may come from its own clients, who are
/// the next wave, not late members of this one.
fn take_queued(rx: &Receiver<Job>, early: &mut Vec<Job>) {
    while early.len() < MAX_JOBS_PER_ROUND {
        match rx.try_recv() {
            Ok(job) => early.push(job),
            Err(_) => break,
        }
    }
}

/// How long a round waits for the next job once one of the clients it expects is back:
/// under concurrent load they return close together (at 16 clients on two cores, which
/// also run the clients' HTTP, within ~5 ms).
const GATHER_QUIET: Duration = Duration::from_millis(3);
/// A round waits for its jobs at most this share of what the last round cost (a round
/// of 16 texts costs ~200–300 ms on two cores: up to ~25–40 ms)...
const GATHER_SHARE: u32 = 8;
/// ... but at least this long ...
const GATHER_MIN: Duration = Duration::from_millis(2);
/// ... and at most this long.
const GATHER_MAX: Duration = Duration::from_millis(50);
/// How many past rounds tell how many clients are concurrent (the largest wave).
const RECENT_ROUNDS: usize = 4;

/// Takes the round's other jobs (`n` are taken): everything queued; and when recent
/// waves had several jobs (clients are concurrent), also the jobs that arrive until
/// `expected` (the largest recent wave) are in, no further job came for `quiet` after
/// one did ([`GATHER_QUIET`]), or `window` passed. Returns the round's size.
///
/// A wave is a round's jobs plus those that came while it ran: clients that were
/// answered together come back together, but not all before a round starts. Without
/// the wait a round would start with the first client back and leave the rest to a
/// second round, paying the text encoder's weight reads twice; counting only a round's
/// own jobs, a wave split in two (12 + 4 at 16 clients on two cores) would stay split,
/// each part expecting no more than itself. A lone client never waits.
fn gather(
    rx: &Receiver<Job>,
    mut n: usize,
    expected: usize,
    window: Duration,
    quiet: Duration,
    sort: &mut impl FnMut(Job),
) -> usize {
    let start = Instant::now();
    // Whether a job came since the round began (the `n` taken may have come earlier).
    let mut arrived = false;
    while n < MAX_JOBS_PER_ROUND {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(_) if expected > 1 && n < expected => {
                let left = window.saturating_sub(start.elapsed());
                if left.is_zero() {
                    break;
                }
                // Until the first of them is back, the whole window; then a quiet gap.
                let wait = if arrived { quiet.min(left) } else { left };
                match rx.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(_) => break,
                }
            }
            Err(_) => break,
        };
        sort(job);
        arrived = true;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text_job() -> Job {
        // The reply's receiver is dropped: these jobs are only counted.
        Job::Text("a cat".into(), channel().0)
    }

    #[test]
    fn a_split_wave_is_expected_whole_by_the_next_rounds() {
        let ms = Duration::from_millis;
        // (rounds, then the next round's expected jobs and window)
        // A round: (jobs, early, cost in ms).
        type Round = (usize, usize, u64);
        let cases: [(&[Round], usize, Duration); 6] = [
            (&[], 0, GATHER_MIN),
            // A lone client: each round one job, none early.
            (&[(1, 0, 40), (1, 0, 40)], 1, ms(5)),
            (&[(1, 0, 8)], 1, GATHER_MIN),
            // 16 clients answered together, 4 of them back while the next round ran.
            (&[(12, 4, 300)], 16, ms(300) / GATHER_SHARE),
            // The largest of the last RECENT_ROUNDS waves, then forgotten.
            (
                &[(16, 0, 300), (2, 0, 40), (2, 0, 40), (2, 0, 40)],
                16,
                ms(5),
            ),
            (
                &[
                    (16, 0, 300),
                    (2, 0, 40),
                    (2, 0, 40),
                    (2, 0, 40),
                    (2, 0, 4000),
                ],
                2,
                GATHER_MAX,
            ),
        ];
        for (rounds, expected, window) in cases {
            let mut waves = Waves::default();
            for &(jobs, early, cost) in rounds {
                waves.record(jobs, early, ms(cost));
            }
            assert_eq!(
                (waves.expected(), waves.window()),
                (expected, window),
                "{rounds:?}"
            );
        }
    }

    #[test]
    fn gather_waits_for_the_expected_jobs_and_a_lone_client_never_waits() {
        let sort = &mut |_: Job| {};
        // Expected 4, one taken (say, early in the last round), the other three back
        // 5 ms later: all four, long before the (generous) window ends.
        let (tx, rx) = channel();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            for _ in 0..3 {
                tx.send(text_job()).unwrap();
            }
            tx
        });
        let (window, quiet) = (Duration::from_secs(20), Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(gather(&rx, 1, 4, window, quiet, sort), 4);
        assert!(start.elapsed() < Duration::from_secs(10));
        let tx = late.join().unwrap();
        // Expected 1 (a lone client): what is queued, and no wait for a job 200 ms away.
        tx.send(text_job()).unwrap();
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            tx.send(text_job()).unwrap();
        });
        assert_eq!(gather(&rx, 1, 1, window, quiet, sort), 2);
        later.join().unwrap();
        // The window ends the wait when the expected jobs never come.
        assert_eq!(gather(&rx, 1, 8, Duration::from_millis(1), quiet, sort), 2);
    }
}
