//! The core every handle of an open index shares: the committed [`State`]
//! that readers search, the append side of the data files, and the graph
//! builds. `Index` reads through it, `IndexWriter` publishes into it.
//!
//! Locks: `state` is held only for as long as one search, one lookup or one
//! publish takes — never for a graph build (see [`Shared::ensure_graph`]).
//! `files` is the writer's; `lexical` is taken alone.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};

use parking_lot::{RwLock, RwLockReadGuard};

use crate::graph::graph_cache::GraphSource;
use crate::storage::feature_store::{FeatureStoreReader, FeatureStoreWriter};
use crate::storage::lexical_index::LexicalIndex;
use crate::storage::manifest::{sync_dir, Manifest};
use crate::storage::metadata_store::{
    CommitState, ImageEntry, ImageId, Loaded, MetadataStore, TextEntry,
};
use crate::storage::vector_store::{VectorFileWriter, VectorStoreReader};
use crate::table::{Rows, Table, TableEntry};
use crate::{io_err, Error, Result};

pub(crate) const METADATA_DIR: &str = "metadata.sled";
pub(crate) const LEXICAL_DIR: &str = "lexical";
/// The saved HNSW graphs (caches: rebuilt when missing, stale or damaged).
pub(crate) const IMAGE_GRAPH_FILE: &str = "images.graph";
pub(crate) const TEXT_GRAPH_FILE: &str = "texts.graph";

impl TableEntry for ImageEntry {
    fn row(&self) -> u64 {
        self.row
    }
    fn set_row(&mut self, row: u64) {
        self.row = row;
    }
}

impl TableEntry for TextEntry {
    fn row(&self) -> u64 {
        self.row
    }
    fn set_row(&mut self, row: u64) {
        self.row = row;
    }
}

/// What every clone of an `Index` and its writer share.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub meta: MetadataStore,
    /// parking_lot's lock, read with `read_recursive`: see [`Shared::state`].
    pub state: RwLock<State>,
    pub files: Mutex<Files>,
    pub lexical: Mutex<LexicalIndex>,
    pub writer_taken: AtomicBool,
    /// One per [`TableKind`]: whether a graph build is running.
    graph_builds: [GraphBuild; 2],
    /// One per [`TableKind`]: held while rows are added to the graph, one
    /// extension at a time.
    graph_extends: [Mutex<()>; 2],
    /// Called by a graph build once it has its snapshot and holds no lock.
    #[cfg(test)]
    pub graph_build_hook: Mutex<Option<GraphBuildHook>>,
    /// Called by a graph extension once it has its snapshot and holds no lock.
    #[cfg(test)]
    pub graph_extend_hook: Mutex<Option<GraphBuildHook>>,
}

/// What a test runs in the middle of a graph build or extension.
#[cfg(test)]
pub(crate) type GraphBuildHook = Box<dyn Fn(TableKind) + Send>;

/// Whether a thread is building a table's graph; waiters wait on `done`.
#[derive(Default)]
struct GraphBuild {
    running: Mutex<bool>,
    done: Condvar,
}

/// The append side of the three data files; only the writer touches it.
pub(crate) struct Files {
    pub images: VectorFileWriter,
    pub texts: VectorFileWriter,
    pub features: FeatureStoreWriter,
}

/// Everything a search reads, as of the last commit.
pub(crate) struct State {
    pub commit: CommitState,
    pub images: Table<ImageEntry>,
    pub texts: Table<TextEntry>,
    /// Sorted, so that a path prefix is a range.
    pub paths: BTreeMap<String, ImageId>,
    pub hashes: HashMap<String, ImageId>,
    pub features: FeatureStoreReader,
}

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableKind {
    Images,
    Texts,
}

impl State {
    /// Live items of `kind`.
    pub(crate) fn live(&self, kind: TableKind) -> usize {
        match kind {
            TableKind::Images => self.images.entries.len(),
            TableKind::Texts => self.texts.entries.len(),
        }
    }

    pub(crate) fn rows(&self, kind: TableKind) -> &Rows {
        match kind {
            TableKind::Images => &self.images.rows,
            TableKind::Texts => &self.texts.rows,
        }
    }

    fn rows_mut(&mut self, kind: TableKind) -> &mut Rows {
        match kind {
            TableKind::Images => &mut self.images.rows,
            TableKind::Texts => &mut self.texts.rows,
        }
    }
}

impl Shared {
    /// Loads the committed state of the index in `dir` (whose manifest and
    /// metadata store are open) and rebuilds the lexical index if it lags.
    pub(crate) fn open(dir: PathBuf, manifest: Manifest, meta: MetadataStore) -> Result<Shared> {
        let (state, files) = load_state(&dir, &manifest, &meta)?;
        let (mut lexical, lexical_generation) = LexicalIndex::open(&dir.join(LEXICAL_DIR))?;
        if lexical_generation != Some(state.commit.generation) {
            rebuild_lexical(&mut lexical, &state)?;
        }
        Ok(Shared {
            dir,
            manifest,
            meta,
            state: RwLock::new(state),
            files: Mutex::new(files),
            lexical: Mutex::new(lexical),
            writer_taken: AtomicBool::new(false),
            graph_builds: Default::default(),
            graph_extends: Default::default(),
            #[cfg(test)]
            graph_build_hook: Mutex::new(None),
            #[cfg(test)]
            graph_extend_hook: Mutex::new(None),
        })
    }

    /// The committed state, read-locked while the guard lives.
    ///
    /// A search holds this guard while rayon scores its rows, and a rayon worker
    /// waiting inside that search may meanwhile run another task that reads the
    /// state too (an indexing batch looking up hashes). A plain read lock blocks
    /// behind a commit waiting to write, which waits for the search to release
    /// its guard, which waits for that task: a deadlock (seen in `qseek serve`'s
    /// index-while-searching test). `read_recursive` does not queue behind a
    /// waiting writer, so readers always finish; the writer gets the lock once no
    /// search holds it.
    pub(crate) fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read_recursive()
    }

    /// Makes sure the graph of `kind` is loaded or built, without holding the
    /// state lock while it is: the build works on a snapshot of the rows
    /// (shared vector chunks), then adds the rows committed meanwhile, and
    /// installs the graph under a short write lock. Commits and searches go
    /// on during the build; searches score exactly until the graph is in.
    ///
    /// When another thread is already building it, returns at once unless
    /// `wait`. A compaction during the build makes its graph useless: it is
    /// dropped, and the next search builds again.
    pub(crate) fn ensure_graph(&self, kind: TableKind, wait: bool) {
        let build = &self.graph_builds[kind as usize];
        {
            let mut running = build.running.lock().expect("graph build lock poisoned");
            loop {
                if self.state().rows(kind).graph.is_some() {
                    return;
                }
                if !*running {
                    break;
                }
                if !wait {
                    return;
                }
                running = build.done.wait(running).expect("graph build lock poisoned");
            }
            *running = true;
        }
        // Clears `running` and wakes waiters however the build ends, panics included.
        struct Finish<'a>(&'a GraphBuild);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                if let Ok(mut running) = self.0.running.lock() {
                    *running = false;
                }
                self.0.done.notify_all();
            }
        }
        let _finish = Finish(build);
        self.build_graph(kind);
    }

    fn build_graph(&self, kind: TableKind) {
        let source: GraphSource = self.state().rows(kind).graph_source(&self.dir);
        #[cfg(test)]
        if let Some(hook) = self.graph_build_hook.lock().unwrap().as_ref() {
            hook(kind);
        }
        let graph = source.load_or_build();
        {
            let mut state = self.state.write();
            let rows = state.rows_mut(kind);
            // A compaction during the build: other rows, a useless graph.
            if rows.vectors_file != source.vectors_file || rows.graph.is_some() {
                return;
            }
            rows.graph = Some(Arc::new(graph));
            rows.graph_rows = source.live.len();
        }
        // The rows committed during the build.
        self.extend_graph(kind);
    }

    /// Adds the rows committed since the graph was built or last extended to
    /// it, holding no state lock while they go in (searches score them exactly
    /// meanwhile); then marks them as in the graph under a short write lock.
    /// The writer calls it after each commit. Does nothing without a graph;
    /// gives up when a compaction replaced the rows meanwhile.
    pub(crate) fn extend_graph(&self, kind: TableKind) {
        let _one_at_a_time = self.graph_extends[kind as usize]
            .lock()
            .expect("graph extension lock poisoned");
        loop {
            let (graph, source, from) = {
                let state = self.state();
                let rows = state.rows(kind);
                let Some(graph) = rows.graph.clone() else {
                    return;
                };
                if rows.graph_rows >= rows.owners.len() {
                    return;
                }
                (graph, rows.graph_source(&self.dir), rows.graph_rows)
            };
            #[cfg(test)]
            if let Some(hook) = self.graph_extend_hook.lock().unwrap().as_ref() {
                hook(kind);
            }
            graph.insert(&source.live_from(from), source.vectors.dim());
            let mut state = self.state.write();
            let rows = state.rows_mut(kind);
            match &rows.graph {
                Some(g) if Arc::ptr_eq(g, &graph) && rows.graph_rows == from => {
                    rows.graph_rows = source.live.len();
                }
                _ => return,
            }
        }
    }
}

/// Loads the committed state: cuts data files to their committed length,
/// deletes files no commit refers to and decodes the vectors. The graphs are
/// built later (see [`Shared::ensure_graph`]).
pub(crate) fn load_state(
    dir: &Path,
    manifest: &Manifest,
    meta: &MetadataStore,
) -> Result<(State, Files)> {
    let Loaded {
        state: commit,
        images,
        texts,
        paths,
        hashes,
    } = meta.load()?;
    remove_stray_files(dir, &commit)?;
    let (q, dim) = (manifest.num_query_tokens, manifest.dim);
    let residual = manifest.format_version >= 2;
    let mut image_vectors = VectorStoreReader::new(manifest.vector_dtype, dim, q, residual);
    let mut text_vectors = VectorStoreReader::new(manifest.vector_dtype, dim, 1, residual);
    let images_file = VectorFileWriter::open(
        &dir.join(&commit.image_vectors_file),
        commit.image_vectors_len,
        Some(&mut image_vectors),
    )?;
    let texts_file = VectorFileWriter::open(
        &dir.join(&commit.text_vectors_file),
        commit.text_vectors_len,
        Some(&mut text_vectors),
    )?;
    let features_path = dir.join(&commit.features_file);
    let features_file = FeatureStoreWriter::open(&features_path, commit.features_len, manifest)?;
    let features = FeatureStoreReader::open(&features_path, manifest)?;

    let corrupt = |reason: String| Error::Corrupt {
        path: dir.join(METADATA_DIR),
        reason,
    };
    let images = Table::new(
        images,
        image_vectors,
        commit.image_vectors_file.clone(),
        manifest.graph_points_per_image,
        IMAGE_GRAPH_FILE,
    )
    .map_err(corrupt)?;
    let texts = Table::new(
        texts,
        text_vectors,
        commit.text_vectors_file.clone(),
        1,
        TEXT_GRAPH_FILE,
    )
    .map_err(corrupt)?;
    let state = State {
        commit,
        images,
        texts,
        paths: paths.into_iter().collect(),
        hashes,
        features,
    };
    let files = Files {
        images: images_file,
        texts: texts_file,
        features: features_file,
    };
    Ok((state, files))
}

/// Deletes data files that the commit does not name: what an interrupted
/// compaction wrote, or what a finished one left behind.
fn remove_stray_files(dir: &Path, commit: &CommitState) -> Result<()> {
    let keep = [
        &commit.image_vectors_file,
        &commit.text_vectors_file,
        &commit.features_file,
    ];
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `*.graph.<pid>.tmp`: a graph save cut short.
        let stray_graph = name.ends_with(".tmp") && name.contains(".graph.");
        if stray_graph || (name.ends_with(".bin") && !keep.iter().any(|k| **k == name)) {
            std::fs::remove_file(entry.path()).map_err(io_err(entry.path()))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Re-adds every path and text from the committed state.
pub(crate) fn rebuild_lexical(lexical: &mut LexicalIndex, state: &State) -> Result<()> {
    lexical.clear()?;
    for (path, id) in &state.paths {
        lexical.add_path(*id, path)?;
    }
    for (id, e) in &state.texts.entries {
        lexical.add_text(*id, &e.text)?;
    }
    lexical.commit(state.commit.generation)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::{GraphBuildHook, TableKind};
    use crate::{ImageRecord, Index, Manifest, ModelId, SearchParams};

    const Q: usize = 4;
    const D: usize = 16;

    fn unit_vectors(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..n)
            .flat_map(|_| {
                let v: Vec<f32> = (0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(move |x| x / norm)
            })
            .collect()
    }

    /// A hook that stops the images' graph build or extension (`what`) until the test
    /// sends on the returned sender; it tells the test on the receiver once stopped.
    /// Were the test to wait on the stopped work, the hook would time out and fail.
    fn pause(what: &'static str) -> (GraphBuildHook, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let hook: GraphBuildHook = Box::new(move |kind| {
            if kind == TableKind::Images {
                started_tx.send(()).unwrap();
                let released = release_rx.recv_timeout(Duration::from_secs(60));
                assert!(released.is_ok(), "the test never got past {what}");
            }
        });
        (hook, started_rx, release_tx)
    }

    /// Adds images `range` in one commit; returns the last one's id.
    fn add_images(index: &Index, range: std::ops::Range<u64>) -> u64 {
        let mut w = index.writer().unwrap();
        let mut last = 0;
        for i in range {
            let record = ImageRecord {
                path: format!("img/{i}.jpg"),
                size: 1,
                mtime: 0,
                content_hash: format!("h{i}"),
                width: 1,
                height: 1,
                photo: None,
            };
            last = w.add_image(record, &unit_vectors(i, Q), None).unwrap();
        }
        w.commit().unwrap();
        last
    }

    /// Issue 14: a graph build must not hold the state lock. The build is
    /// stopped (by the test hook) after it took its snapshot; a commit and an
    /// ANN search must then complete before it is let go. Were either to wait
    /// for the build, the hook would time out and the builder thread fail.
    #[test]
    fn a_commit_and_a_search_do_not_wait_for_a_running_graph_build() {
        let dir = tempfile::tempdir().unwrap();
        let model = ModelId {
            model_id: "test".into(),
            config_hash: "cfg".into(),
        };
        let index = Index::create(dir.path(), Manifest::new(&model, Q, D)).unwrap();
        add_images(&index, 0..300);
        let (hook, started_rx, release_tx) = pause("the build");
        *index.shared.graph_build_hook.lock().unwrap() = Some(hook);
        let builder = {
            let index = index.clone();
            std::thread::spawn(move || index.build_graphs())
        };
        started_rx.recv_timeout(Duration::from_secs(60)).unwrap();

        let late = add_images(&index, 300..301);
        let ann = SearchParams {
            exact_below: 0,
            candidates: 10,
            ..SearchParams::default()
        };
        let query = &unit_vectors(300, Q)[..D];
        let hits = index.search_images(query, 1, &ann).unwrap();
        assert_eq!(hits[0].image_id, late, "exact while the graph is built");
        assert!(index.state().images.rows.graph.is_none());

        release_tx.send(()).unwrap();
        builder.join().expect("the graph build failed");
        // The graph holds the image committed during its build.
        let state = index.state();
        let graph = state.images.rows.graph.as_ref().expect("graph installed");
        let late_row = state.images.entries[&late].row;
        assert!(graph.points().iter().any(|(_, t)| t.row == late_row));
        drop(state);
        let hits = index.search_images(query, 1, &ann).unwrap();
        assert_eq!(hits[0].image_id, late, "found through the graph");
        assert!(index.verify().is_ok(), "{}", index.verify());
    }

    /// A commit's rows go into an existing graph without the state lock: the
    /// extension is stopped (by the test hook) after its snapshot; an ANN
    /// search must then complete, and find the new image by scoring the rows
    /// not yet in the graph exactly.
    #[test]
    fn a_search_does_not_wait_for_a_commits_rows_to_enter_the_graph() {
        let dir = tempfile::tempdir().unwrap();
        let model = ModelId {
            model_id: "test".into(),
            config_hash: "cfg".into(),
        };
        let index = Index::create(dir.path(), Manifest::new(&model, Q, D)).unwrap();
        add_images(&index, 0..300);
        index.build_graphs();
        let (hook, started_rx, release_tx) = pause("the extension");
        *index.shared.graph_extend_hook.lock().unwrap() = Some(hook);
        let committer = {
            let index = index.clone();
            std::thread::spawn(move || add_images(&index, 300..301))
        };
        started_rx.recv_timeout(Duration::from_secs(60)).unwrap();

        let ann = SearchParams {
            exact_below: 0,
            candidates: 10,
            ..SearchParams::default()
        };
        let query = &unit_vectors(300, Q)[..D];
        let hits = index.search_images(query, 1, &ann).unwrap();
        let late = index.image_by_path("img/300.jpg").unwrap().image_id;
        assert_eq!(hits[0].image_id, late, "scored exactly while it goes in");
        {
            let state = index.state();
            let rows = &state.images.rows;
            assert!(rows.graph.is_some());
            assert!(rows.graph_rows < rows.owners.len(), "not in the graph yet");
        }
        assert!(index.verify().is_ok(), "{}", index.verify());

        release_tx.send(()).unwrap();
        assert_eq!(committer.join().expect("the commit failed"), late);
        let state = index.state();
        let rows = &state.images.rows;
        assert_eq!(rows.graph_rows, rows.owners.len());
        let late_row = state.images.entries[&late].row;
        let graph = rows.graph.as_ref().unwrap();
        assert!(graph.points().iter().any(|(_, t)| t.row == late_row));
        drop(state);
        let hits = index.search_images(query, 1, &ann).unwrap();
        assert_eq!(hits[0].image_id, late, "found through the graph");
        assert!(index.verify().is_ok(), "{}", index.verify());
    }
}
