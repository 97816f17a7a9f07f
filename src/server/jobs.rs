//! The server's indexing run: one at a time, on its own thread, while searches go on
//! (they read the index's last commit, and see new photos after each commit). Only
//! folders under `--allow` or under the collection's recorded roots (the folders
//! `qseek index` was given; a file root allows only itself, so no folder) may be
//! indexed, and a run does not follow links out of its folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::BadRequest;
use crate::pipeline::indexer::{index_folders_observed, IndexOptions, IndexProgress};
use crate::pipeline::walk::absolute;
use crate::pipeline::Collection;
use crate::Result;

/// What an indexing run is doing, or did (`GET /api/index`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IndexStatus {
    /// `idle` (never ran), `running`, `done`, `cancelled` or `failed`.
    pub state: &'static str,
    /// The folder.
    pub folder: Option<String>,
    /// Files handled.
    pub done: usize,
    /// Files to handle.
    pub total: usize,
    /// Files that could not be read or decoded.
    pub failures: usize,
    /// Files per second so far.
    pub images_per_second: f64,
    /// Seconds left at that rate.
    pub eta_seconds: Option<f64>,
    /// Seconds since it started.
    pub elapsed_seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone)]
struct Finished {
    state: &'static str,
    error: Option<String>,
    elapsed: Duration,
}

struct Run {
    folder: String,
    started: Instant,
    progress: Arc<IndexProgress>,
    stop: Arc<AtomicBool>,
    /// `None` while running.
    finished: Arc<Mutex<Option<Finished>>>,
}

/// Starts, reports and cancels indexing runs.
pub struct Indexing {
    allow: Vec<PathBuf>,
    opts: IndexOptions,
    run: Mutex<Option<Run>>,
}

impl Indexing {
    /// Runs may index folders under `allow` (and under the collection's roots).
    pub fn new(allow: &[PathBuf], opts: IndexOptions) -> Self {
        Self {
            allow: allow.to_vec(),
            opts,
            run: Mutex::new(None),
        }
    }

    /// Checks the folder and starts indexing it on a thread.
    pub fn start(&self, collection: &Arc<Collection>, folder: &str) -> Result<IndexStatus> {
        let folder_path = self.check(collection, folder)?;
        let mut slot = self.run.lock().expect("indexing lock");
        if slot
            .as_ref()
            .is_some_and(|r| r.finished.lock().expect("lock").is_none())
        {
            return Err(BadRequest::AlreadyIndexing.into());
        }
        let run = Run {
            folder: folder_path.display().to_string(),
            started: Instant::now(),
            progress: Arc::new(IndexProgress::default()),
            stop: Arc::new(AtomicBool::new(false)),
            finished: Arc::new(Mutex::new(None)),
        };
        let (c, opts) = (collection.clone(), self.opts.clone());
        let (progress, stop, finished) =
            (run.progress.clone(), run.stop.clone(), run.finished.clone());
        let started = run.started;
        std::thread::spawn(move || {
            let result = index_folders_observed(&c, &[folder_path], &opts, &stop, &progress);
            let (state, error) = match result {
                Ok(s) if s.interrupted => ("cancelled", None),
                Ok(_) => ("done", None),
                Err(e) => ("failed", Some(e.to_string())),
            };
            *finished.lock().expect("lock") = Some(Finished {
                state,
                error,
                elapsed: started.elapsed(),
            });
        });
        *slot = Some(run);
        drop(slot);
        Ok(self.status())
    }

    /// The folder, canonical, if it may be indexed. Every refusal is the same 400
    /// (`FolderNotAllowed`), whether the folder exists or not: first the path as given
    /// must lie under a root (no file system call yet), then its canonical path too.
    fn check(&self, c: &Collection, folder: &str) -> Result<PathBuf> {
        let not_allowed = || BadRequest::FolderNotAllowed {
            path: folder.to_string(),
        };
        let given = Path::new(folder);
        if !given.is_absolute() {
            return Err(not_allowed().into());
        }
        let lexical = absolute(given).map_err(|_| not_allowed())?;
        // Each root as recorded and as canonical: the folder may be named either way.
        let recorded = c.index.roots().into_iter().map(PathBuf::from);
        let roots: Vec<PathBuf> = self
            .allow
            .iter()
            .cloned()
            .chain(recorded)
            .flat_map(|r| {
                let canonical = r.canonicalize().ok();
                [Some(r), canonical]
            })
            .flatten()
            .collect();
        let inside = |p: &Path| roots.iter().any(|root| p.starts_with(root));
        if !inside(&lexical) {
            return Err(not_allowed().into());
        }
        match given.canonicalize() {
            Ok(path) if path.is_dir() && inside(&path) => Ok(path),
            _ => Err(not_allowed().into()),
        }
    }

    /// Asks the run to stop after its current batch (what it did stays committed).
    pub fn cancel(&self) -> IndexStatus {
        if let Some(run) = self.run.lock().expect("indexing lock").as_ref() {
            run.stop.store(true, Ordering::Relaxed);
        }
        self.status()
    }

    /// Where the current (or last) run is.
    pub fn status(&self) -> IndexStatus {
        let slot = self.run.lock().expect("indexing lock");
        let Some(run) = slot.as_ref() else {
            return IndexStatus {
                state: "idle",
                folder: None,
                done: 0,
                total: 0,
                failures: 0,
                images_per_second: 0.0,
                eta_seconds: None,
                elapsed_seconds: 0.0,
                error: None,
            };
        };
        let done = run.progress.done.load(Ordering::Relaxed);
        let total = run.progress.total.load(Ordering::Relaxed);
        let finished = run.finished.lock().expect("lock").clone();
        let elapsed = finished
            .as_ref()
            .map_or(run.started.elapsed(), |f| f.elapsed);
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        IndexStatus {
            state: finished.as_ref().map_or("running", |f| f.state),
            folder: Some(run.folder.clone()),
            done,
            total,
            failures: run.progress.failed.load(Ordering::Relaxed),
            images_per_second: rate,
            eta_seconds: (finished.is_none() && rate > 0.0)
                .then(|| total.saturating_sub(done) as f64 / rate),
            elapsed_seconds: elapsed.as_secs_f64(),
            error: finished.and_then(|f| f.error),
        }
    }
}
