//! `Index`: opening, the in-memory state readers search, and the read API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};

use rayon::prelude::*;

use crate::ann_graph::{graph_vectors, AnnGraph};
use crate::frozen_graph::{FrozenGraph, GraphKey};
use crate::index_writer::IndexWriter;
use crate::lexical_index::{DocKind, LexicalIndex};
use crate::manifest::{sync_dir, Manifest, ModelId, VectorDtype, FORMAT_VERSION, MANIFEST_FILE};
use crate::max_sim;
use crate::metadata_store::{
    CommitState, ImageEntry, ImageId, Loaded, MetadataStore, PathEntry, TextEntry, TextId,
};
use crate::search::{sort_hits, Filter, ImageHit, SearchParams, TextHit};
use crate::vector_store::{VectorFileWriter, VectorStoreReader};
use crate::verify_report::VerifyReport;
use crate::{io_err, Error, Result};

pub(crate) const METADATA_DIR: &str = "metadata.sled";
pub(crate) const LEXICAL_DIR: &str = "lexical";
/// The saved HNSW graphs (caches: rebuilt when missing, stale or damaged).
pub(crate) const IMAGE_GRAPH_FILE: &str = "images.graph";
pub(crate) const TEXT_GRAPH_FILE: &str = "texts.graph";

/// A multi-vector index of images and texts in one directory.
///
/// Cheap to clone (all clones share one index). Any number of threads may
/// search while one [`IndexWriter`] adds and removes items; readers see the
/// last completed commit.
#[derive(Clone)]
pub struct Index {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub meta: MetadataStore,
    pub state: RwLock<State>,
    pub files: Mutex<Files>,
    pub lexical: Mutex<LexicalIndex>,
    pub writer_taken: AtomicBool,
}

/// The append side of the three data files; only the writer touches it.
pub(crate) struct Files {
    pub images: VectorFileWriter,
    pub texts: VectorFileWriter,
    pub features: VectorFileWriter,
}

/// Everything a search reads, as of the last commit.
pub(crate) struct State {
    pub commit: CommitState,
    pub images: HashMap<ImageId, ImageEntry>,
    pub texts: HashMap<TextId, TextEntry>,
    /// Sorted, so that a path prefix is a range.
    pub paths: BTreeMap<String, ImageId>,
    pub hashes: HashMap<String, ImageId>,
    /// Vector row → its image; `None` is a tombstone (removed or replaced).
    pub image_rows: Vec<Option<ImageId>>,
    pub text_rows: Vec<Option<TextId>>,
    pub image_vectors: VectorStoreReader,
    pub text_vectors: VectorStoreReader,
    /// Built on the first search that needs it (see [`State::image_graph`]).
    pub image_graph: OnceLock<AnnGraph>,
    pub text_graph: OnceLock<AnnGraph>,
    /// Graph points per image (from the manifest).
    pub graph_points_per_image: usize,
    /// Read side of the features file.
    pub features: File,
    /// The index directory (where the graphs are saved).
    pub dir: PathBuf,
}

/// What the index knows about one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image.
    pub image_id: ImageId,
    /// Hash of its bytes.
    pub content_hash: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Every path with these bytes.
    pub paths: Vec<PathEntry>,
    /// Shape of its stored vision features, if stored.
    pub vision_features_shape: Option<Vec<usize>>,
}

/// One text as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextInfo {
    /// The text.
    pub text_id: TextId,
    /// Its string.
    pub text: String,
    /// The caller's id for it.
    pub external_id: Option<String>,
}

/// Counts and sizes, for `qseek info`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IndexStats {
    /// Commit generation.
    pub generation: u64,
    /// Live images (distinct contents).
    pub images: usize,
    /// Live paths (≥ images: copies share vectors).
    pub paths: usize,
    /// Live texts.
    pub texts: usize,
    /// Vector rows of removed or replaced images still in the file and graph.
    pub dead_image_rows: usize,
    /// Vector rows of removed texts still in the file and graph.
    pub dead_text_rows: usize,
    /// Points in the image graph (once built: until then, the points it will have).
    pub image_graph_points: usize,
    /// `Q`.
    pub num_query_tokens: usize,
    /// `D`.
    pub dim: usize,
    /// How vectors are stored.
    pub vector_dtype: VectorDtype,
    /// Graph points per image.
    pub graph_points_per_image: usize,
    /// Whether vision features are stored.
    pub store_vision_features: bool,
    /// Bytes of stored vision features (including removed images' until `compact`).
    pub vision_features_bytes: u64,
    /// Bytes of the image and text vector files.
    pub vector_bytes: u64,
    /// Bytes the decoded vectors take in memory.
    pub vector_bytes_in_memory: u64,
    /// Bytes of the sled database.
    pub metadata_bytes: u64,
}

/// Fraction of dead rows past which `commit` compacts.
pub(crate) const COMPACT_DEAD_FRACTION: f64 = 0.3;
/// Fewer dead rows than this never trigger a compaction.
pub(crate) const COMPACT_MIN_DEAD: usize = 64;

impl Index {
    /// Creates an empty index in `path` (created if missing) for `manifest`.
    pub fn create(path: impl AsRef<Path>, manifest: Manifest) -> Result<Index> {
        let dir = path.as_ref();
        manifest.validate()?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(Error::InvalidManifest {
                reason: format!("format_version must be {FORMAT_VERSION}"),
            });
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        if dir.join(MANIFEST_FILE).exists() {
            return Err(Error::AlreadyExists {
                path: dir.to_path_buf(),
            });
        }
        let meta = MetadataStore::open(&dir.join(METADATA_DIR))?;
        if !meta.has_state()? {
            meta.commit(&[], &CommitState::default().with_files_for(0))?;
        }
        // The manifest goes last: a directory without one holds no index yet.
        manifest.write(dir)?;
        Index::open_with(dir.to_path_buf(), manifest, meta)
    }

    /// Opens the index in `path`. With `expected_model`, fails unless the index
    /// was built with that model and config.
    ///
    /// Reopening restores exactly the last completed commit: bytes written
    /// after it are cut off, files of an interrupted compaction are deleted,
    /// and the graphs and the lexical index are rebuilt as needed.
    pub fn open(path: impl AsRef<Path>, expected_model: Option<&ModelId>) -> Result<Index> {
        let dir = path.as_ref().to_path_buf();
        let manifest = Manifest::read(&dir)?;
        if let Some(expected) = expected_model {
            if *expected != manifest.model() {
                return Err(Error::ModelMismatch {
                    path: dir,
                    expected: expected.to_string(),
                    found: manifest.model().to_string(),
                });
            }
        }
        let meta = MetadataStore::open(&dir.join(METADATA_DIR))?;
        Index::open_with(dir, manifest, meta)
    }

    /// Opens the index in `dir` whose manifest and metadata store are read.
    fn open_with(dir: PathBuf, manifest: Manifest, meta: MetadataStore) -> Result<Index> {
        let (state, files) = load_state(&dir, &manifest, &meta)?;
        let (mut lexical, lexical_generation) = LexicalIndex::open(&dir.join(LEXICAL_DIR))?;
        if lexical_generation != Some(state.commit.generation) {
            rebuild_lexical(&mut lexical, &state)?;
        }
        Ok(Index {
            shared: Arc::new(Shared {
                dir,
                manifest,
                meta,
                state: RwLock::new(state),
                files: Mutex::new(files),
                lexical: Mutex::new(lexical),
                writer_taken: AtomicBool::new(false),
            }),
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.shared.manifest
    }

    /// The index directory.
    pub fn path(&self) -> &Path {
        &self.shared.dir
    }

    /// The writer; fails with [`Error::WriterBusy`] while another one is alive.
    pub fn writer(&self) -> Result<IndexWriter> {
        if self.shared.writer_taken.swap(true, Ordering::AcqRel) {
            return Err(Error::WriterBusy);
        }
        Ok(IndexWriter::new(self.shared.clone()))
    }

    /// Rewrites the data files without dead rows and rebuilds the graphs.
    /// Takes the writer for its duration.
    pub fn compact(&self) -> Result<()> {
        self.writer()?.compact()
    }

    pub(crate) fn state(&self) -> RwLockReadGuard<'_, State> {
        self.shared.state.read().expect("index state lock poisoned")
    }

    /// The image with this path.
    pub fn image_by_path(&self, path: &str) -> Option<ImageInfo> {
        let state = self.state();
        let id = *state.paths.get(path)?;
        state.image_info(id)
    }

    /// The image with this content hash.
    pub fn image_by_hash(&self, content_hash: &str) -> Option<ImageInfo> {
        let state = self.state();
        let id = *state.hashes.get(content_hash)?;
        state.image_info(id)
    }

    /// The image with this id.
    pub fn image(&self, image_id: ImageId) -> Option<ImageInfo> {
        self.state().image_info(image_id)
    }

    /// The image's `Q × D` vectors as stored (decoded to f32).
    pub fn image_vectors(&self, image_id: ImageId) -> Option<Vec<f32>> {
        let state = self.state();
        let entry = state.images.get(&image_id)?;
        Some(state.image_vectors.row_f32(entry.row as usize))
    }

    /// The text with this id.
    pub fn text(&self, text_id: TextId) -> Option<TextInfo> {
        let state = self.state();
        state.texts.get(&text_id).map(|e| TextInfo {
            text_id,
            text: e.text.clone(),
            external_id: e.external_id.clone(),
        })
    }

    /// The stored vector of a text (`D` values, decoded to f32).
    pub fn text_vector(&self, text_id: TextId) -> Option<Vec<f32>> {
        let state = self.state();
        let row = state.texts.get(&text_id)?.row as usize;
        Some(state.text_vectors.row_f32(row))
    }

    /// Every text, by id.
    pub fn texts(&self) -> Vec<TextInfo> {
        let state = self.state();
        let mut out: Vec<TextInfo> = state
            .texts
            .iter()
            .map(|(id, e)| TextInfo {
                text_id: *id,
                text: e.text.clone(),
                external_id: e.external_id.clone(),
            })
            .collect();
        out.sort_by_key(|t| t.text_id);
        out
    }

    /// Every live path, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.state().paths.keys().cloned().collect()
    }

    /// The image's stored vision features (as f32, whatever
    /// [`Manifest::vision_feature_dtype`] stores them in) and their shape.
    pub fn vision_features(&self, image_id: ImageId) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let state = self.state();
        let Some(fref) = state.images.get(&image_id).and_then(|e| e.features.clone()) else {
            return Ok(None);
        };
        let n: usize = fref.shape.iter().product();
        let dtype = self.shared.manifest.vision_feature_dtype;
        let mut bytes = vec![0u8; dtype.bytes(n)];
        let path = self.shared.dir.join(&state.commit.features_file);
        state
            .features
            .read_exact_at(&mut bytes, fref.offset)
            .map_err(io_err(path))?;
        Ok(Some((dtype.decode(&bytes), fref.shape)))
    }

    /// Counts and sizes.
    pub fn stats(&self) -> IndexStats {
        let state = self.state();
        let m = &self.shared.manifest;
        IndexStats {
            generation: state.commit.generation,
            images: state.images.len(),
            paths: state.paths.len(),
            texts: state.texts.len(),
            dead_image_rows: state.image_rows.iter().filter(|r| r.is_none()).count(),
            dead_text_rows: state.text_rows.iter().filter(|r| r.is_none()).count(),
            // Without building the graph: `qseek info` must stay instant.
            image_graph_points: state
                .image_graph
                .get()
                .map_or(state.images.len() * m.graph_points_per_image, |g| {
                    g.points().len()
                }),
            num_query_tokens: m.num_query_tokens,
            dim: m.dim,
            vector_dtype: m.vector_dtype,
            graph_points_per_image: m.graph_points_per_image,
            store_vision_features: m.store_vision_features,
            vision_features_bytes: state.commit.features_len,
            vector_bytes: state.commit.image_vectors_len + state.commit.text_vectors_len,
            vector_bytes_in_memory: (state.image_vectors.memory_bytes()
                + state.text_vectors.memory_bytes()) as u64,
            metadata_bytes: self.shared.meta.size_on_disk(),
        }
    }

    /// Top-`k` images for one query vector (`D` values, L2-normalised) by
    /// BLIP-2's max-over-slots score, highest first.
    ///
    /// ANN search proposes images (grouped from graph points), then every
    /// candidate is re-scored exactly from its stored vectors, so the scores are
    /// exact ITC scores. With a filter, the graph is searched deeper until
    /// enough allowed images are found; a selective filter goes exact.
    pub fn search_images(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
    ) -> Result<Vec<ImageHit>> {
        let dim = self.shared.manifest.dim;
        check_len(query, dim)?;
        debug_assert_unit(query, dim);
        let allowed = self.allowed_images(params.filter.as_ref())?;
        let state = self.state();
        let score_row =
            |row: usize, scratch: &mut Vec<f32>| state.image_vectors.max_sim(row, query, scratch);
        let candidates = state.image_candidates(
            std::slice::from_ref(&query.to_vec()),
            k,
            params,
            allowed.as_ref(),
        );
        let scored: Vec<(f32, ImageId, usize)> = candidates
            .par_iter()
            .map_init(
                || vec![0f32; dim],
                |scratch, &id| {
                    let (score, slot) = score_row(state.images[&id].row as usize, scratch);
                    (score, id, slot)
                },
            )
            .collect();
        Ok(state.top_image_hits(scored, k))
    }

    /// Top-`k` images similar to an image given by its `Q × D` vectors, by
    /// symmetric Chamfer similarity ([`max_sim::chamfer`]). An image of the
    /// index finds itself first; use [`Index::similar_to_image`] to skip it.
    pub fn similar_images(
        &self,
        image_vectors: &[f32],
        k: usize,
        params: &SearchParams,
    ) -> Result<Vec<ImageHit>> {
        let m = &self.shared.manifest;
        check_len(image_vectors, m.num_query_tokens * m.dim)?;
        let allowed = self.allowed_images(params.filter.as_ref())?;
        let state = self.state();
        let probes: Vec<Vec<f32>> = graph_vectors(image_vectors, m.dim, m.graph_points_per_image)
            .chunks_exact(m.dim)
            .map(|v| v.to_vec())
            .collect();
        let candidates = state.image_candidates(&probes, k, params, allowed.as_ref());
        let scored: Vec<(f32, ImageId, usize)> = candidates
            .par_iter()
            .map(|&id| {
                let other = state.image_vectors.row_f32(state.images[&id].row as usize);
                (max_sim::chamfer(image_vectors, &other, m.dim), id, 0)
            })
            .collect();
        Ok(state.top_image_hits(scored, k))
    }

    /// Top-`k` images similar to `image_id`, without itself.
    pub fn similar_to_image(
        &self,
        image_id: ImageId,
        k: usize,
        params: &SearchParams,
    ) -> Result<Vec<ImageHit>> {
        let Some(vectors) = self.image_vectors(image_id) else {
            return Ok(Vec::new());
        };
        let mut hits = self.similar_images(&vectors, k + 1, params)?;
        hits.retain(|h| h.image_id != image_id);
        hits.truncate(k);
        Ok(hits)
    }

    /// Top-`k` texts for an image's `Q × D` query vectors: a text scores the
    /// max over the Q vectors of its dot product with them.
    pub fn search_texts(
        &self,
        queries: &[f32],
        k: usize,
        params: &SearchParams,
    ) -> Result<Vec<TextHit>> {
        let dim = self.shared.manifest.dim;
        if queries.is_empty() || queries.len() % dim != 0 {
            return Err(Error::WrongVectorDimension {
                expected: self.shared.manifest.num_query_tokens * dim,
                received: queries.len(),
            });
        }
        let allowed: Option<HashSet<TextId>> =
            match params.filter.as_ref().and_then(|f| f.query.as_deref()) {
                Some(q) => Some(self.lexical().matching(q, DocKind::Text)?),
                None => None,
            };
        let state = self.state();
        let is_allowed = |id: &TextId| allowed.as_ref().is_none_or(|a| a.contains(id));
        let n_allowed = allowed.as_ref().map_or(state.texts.len(), |a| a.len());
        let want = params.candidates.max(k);
        let candidates: Vec<TextId> = if params.exact || n_allowed <= params.exact_below.max(want) {
            state
                .texts
                .keys()
                .copied()
                .filter(|id| is_allowed(id))
                .collect()
        } else {
            let mut found: HashSet<TextId> = HashSet::new();
            for q in queries.chunks_exact(dim) {
                for (target, _) in state.text_graph().search(q, want, params.ef) {
                    if let Some(Some(id)) = state.text_rows.get(target.row as usize) {
                        if is_allowed(id) {
                            found.insert(*id);
                        }
                    }
                }
            }
            found.into_iter().collect()
        };
        let mut scored: Vec<(f32, u64, usize)> = candidates
            .par_iter()
            .map_init(
                || vec![0f32; dim],
                |scratch, &id| {
                    let row = state.texts[&id].row as usize;
                    let mut best = (f32::NEG_INFINITY, 0);
                    for (slot, q) in queries.chunks_exact(dim).enumerate() {
                        let s = state.text_vectors.max_sim(row, q, scratch).0;
                        if s > best.0 {
                            best = (s, slot);
                        }
                    }
                    (best.0, id, best.1)
                },
            )
            .collect();
        sort_hits(&mut scored);
        Ok(scored
            .into_iter()
            .take(k)
            .map(|(score, id, slot)| {
                let e = &state.texts[&id];
                TextHit {
                    text_id: id,
                    text: e.text.clone(),
                    external_id: e.external_id.clone(),
                    score,
                    best_slot: slot,
                }
            })
            .collect())
    }

    /// Builds the HNSW graphs now rather than at the first search that needs
    /// them (a server does this at start; a benchmark, before timing searches).
    pub fn build_graphs(&self) {
        let state = self.state();
        state.image_graph();
        state.text_graph();
    }

    /// Checks every invariant (manifest, counts, mappings, file lengths,
    /// vectors, graph, lexical index) against what is on disk.
    pub fn verify(&self) -> VerifyReport {
        crate::verify_report::verify(self)
    }

    pub(crate) fn lexical(&self) -> std::sync::MutexGuard<'_, LexicalIndex> {
        self.shared
            .lexical
            .lock()
            .expect("lexical index lock poisoned")
    }

    /// The images a filter allows, `None` for all.
    fn allowed_images(&self, filter: Option<&Filter>) -> Result<Option<HashSet<ImageId>>> {
        let Some(filter) = filter else {
            return Ok(None);
        };
        let mut allowed: Option<HashSet<ImageId>> = None;
        if let Some(q) = filter.query.as_deref() {
            allowed = Some(self.lexical().matching(q, DocKind::Image)?);
        }
        if let Some(prefix) = filter.path_prefix.as_deref() {
            let state = self.state();
            let by_prefix: HashSet<ImageId> = state
                .paths
                .range(prefix.to_string()..)
                .take_while(|(p, _)| p.starts_with(prefix))
                .map(|(_, id)| *id)
                .collect();
            allowed = Some(match allowed {
                Some(a) => a.intersection(&by_prefix).copied().collect(),
                None => by_prefix,
            });
        }
        Ok(allowed)
    }
}

impl State {
    fn image_info(&self, id: ImageId) -> Option<ImageInfo> {
        let e = self.images.get(&id)?;
        Some(ImageInfo {
            image_id: id,
            content_hash: e.content_hash.clone(),
            width: e.width,
            height: e.height,
            paths: e.paths.clone(),
            vision_features_shape: e.features.as_ref().map(|f| f.shape.clone()),
        })
    }

    /// The best `k` of exactly scored `(score, image, slot)` triples, as hits.
    fn top_image_hits(&self, mut scored: Vec<(f32, ImageId, usize)>, k: usize) -> Vec<ImageHit> {
        sort_hits(&mut scored);
        scored
            .into_iter()
            .take(k)
            .map(|(score, id, slot)| self.image_hit(id, score, slot))
            .collect()
    }

    fn image_hit(&self, id: ImageId, score: f32, best_slot: usize) -> ImageHit {
        let mut paths: Vec<String> = self.images[&id]
            .paths
            .iter()
            .map(|p| p.path.clone())
            .collect();
        paths.sort();
        ImageHit {
            image_id: id,
            paths,
            score,
            best_slot,
        }
    }

    /// The images to score exactly for `probes` (graph-space query vectors).
    ///
    /// Exact (every allowed image) when asked, or when few images are allowed.
    /// Otherwise the graph is asked for `candidates × graph_points_per_image`
    /// points per probe, grouped by image; dead and filtered-out images are
    /// dropped, and while fewer than `candidates` images remain the search
    /// goes four times deeper, up to the whole graph, so a filter never costs recall.
    fn image_candidates(
        &self,
        probes: &[Vec<f32>],
        k: usize,
        params: &SearchParams,
        allowed: Option<&HashSet<ImageId>>,
    ) -> Vec<ImageId> {
        let n_allowed = allowed.map_or(self.images.len(), |a| a.len());
        let want = params.candidates.max(k).min(n_allowed);
        if params.exact || n_allowed <= params.exact_below.max(want) {
            return match allowed {
                Some(a) => a
                    .iter()
                    .copied()
                    .filter(|id| self.images.contains_key(id))
                    .collect(),
                None => self.images.keys().copied().collect(),
            };
        }
        let graph = self.image_graph();
        let per_image = graph.points().len() / self.image_rows.len().max(1);
        let total_points = graph.points().len();
        let mut depth = want * per_image.max(1);
        loop {
            let mut best: HashMap<ImageId, f32> = HashMap::new();
            for probe in probes {
                for (target, sim) in graph.search(probe, depth, params.ef.max(depth)) {
                    let Some(Some(id)) = self.image_rows.get(target.row as usize) else {
                        continue;
                    };
                    if allowed.is_some_and(|a| !a.contains(id)) {
                        continue;
                    }
                    let e = best.entry(*id).or_insert(f32::NEG_INFINITY);
                    *e = e.max(sim);
                }
            }
            if best.len() >= want || depth >= total_points {
                let mut ranked: Vec<(ImageId, f32)> = best.into_iter().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                // Keep a little more than asked: re-scoring is cheap next to the
                // graph walk, and ANN similarity of a centroid is only a proxy.
                return ranked
                    .into_iter()
                    .take(want * 2)
                    .map(|(id, _)| id)
                    .collect();
            }
            depth = (depth * 4).min(total_points);
        }
    }
}

impl State {
    /// The HNSW graph over the live images' graph vectors, loaded or built on
    /// first use (see [`State::graph`]).
    pub(crate) fn image_graph(&self) -> &AnnGraph {
        self.image_graph.get_or_init(|| {
            let (dim, k) = (self.image_vectors.dim(), self.graph_points_per_image);
            self.graph(
                IMAGE_GRAPH_FILE,
                &self.commit.image_vectors_file,
                &self.image_rows,
                k,
                |row| graph_vectors(&self.image_vectors.row_f32(row), dim, k),
                dim,
            )
        })
    }

    /// The HNSW graph over the live texts' vectors, loaded or built on first use.
    pub(crate) fn text_graph(&self) -> &AnnGraph {
        self.text_graph.get_or_init(|| {
            self.graph(
                TEXT_GRAPH_FILE,
                &self.commit.text_vectors_file,
                &self.text_rows,
                1,
                |row| self.text_vectors.row_f32(row),
                self.text_vectors.dim(),
            )
        })
    }

    /// A graph over the live `rows`: the saved graph `file` when it was built
    /// over (a prefix of) the same vector file, extended with the rows added
    /// since; otherwise — or when those added rows would be more than a
    /// quarter of the graph — built afresh (hnsw_rs, ~0.3 ms per point on
    /// 2 cores) and saved. Saving is best effort: a read-only index still
    /// searches, it just rebuilds at the next open.
    fn graph<I: Copy + Send + Sync>(
        &self,
        file: &str,
        vectors_file: &str,
        rows: &[Option<I>],
        points_per_row: usize,
        vectors_of: impl Fn(usize) -> Vec<f32> + Sync,
        dim: usize,
    ) -> AnnGraph {
        let live_from = |start: usize| -> Vec<(u64, Vec<f32>)> {
            rows[start..]
                .par_iter()
                .enumerate()
                .filter(|(_, id)| id.is_some())
                .map(|(i, _)| ((start + i) as u64, vectors_of(start + i)))
                .collect()
        };
        let path = self.dir.join(file);
        let key = |rows_covered: u64| GraphKey {
            vectors_file: vectors_file.to_string(),
            rows_covered,
            dim,
            points_per_row,
        };
        if let Some((saved, points, covered)) = FrozenGraph::load(&path, |k| {
            k.rows_covered <= rows.len() as u64 && *k == key(k.rows_covered)
        }) {
            let added = rows[covered as usize..].iter().flatten().count();
            if added * points_per_row <= (saved.len() / 4).max(1024) {
                let mut graph = AnnGraph::from_saved(saved, points);
                graph.insert(&live_from(covered as usize), dim);
                return graph;
            }
        }
        let graph = AnnGraph::build(&live_from(0), dim);
        let _ = graph.save(&path, &key(rows.len() as u64));
        graph
    }
}

fn check_len(v: &[f32], expected: usize) -> Result<()> {
    if v.len() != expected {
        return Err(Error::WrongVectorDimension {
            expected,
            received: v.len(),
        });
    }
    Ok(())
}

/// Vectors must be L2-normalised: dot products are cosine similarities only then.
pub(crate) fn debug_assert_unit(vectors: &[f32], dim: usize) {
    if cfg!(debug_assertions) {
        for v in vectors.chunks_exact(dim) {
            let n = max_sim::norm(v);
            debug_assert!(
                (n - 1.0).abs() < 1e-2,
                "vector is not L2-normalised (norm {n})"
            );
        }
    }
}

/// Loads the committed state: cuts data files to their committed length,
/// deletes files no commit refers to and decodes the vectors. The graphs are
/// built later, when a search first needs them.
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
    let features_file = VectorFileWriter::open(&features_path, commit.features_len, None)?;
    let features = File::open(&features_path).map_err(io_err(&features_path))?;

    let corrupt = |reason: String| Error::Corrupt {
        path: dir.join(METADATA_DIR),
        reason,
    };
    let mut image_rows = vec![None; image_vectors.rows()];
    for (id, e) in &images {
        match image_rows.get_mut(e.row as usize) {
            Some(slot @ None) => *slot = Some(*id),
            Some(Some(other)) => {
                return Err(corrupt(format!(
                    "images {other} and {id} share vector row {}",
                    e.row
                )))
            }
            None => {
                return Err(corrupt(format!(
                    "image {id} points at vector row {} but {} holds {} rows",
                    e.row,
                    commit.image_vectors_file,
                    image_vectors.rows()
                )))
            }
        }
    }
    let mut text_rows = vec![None; text_vectors.rows()];
    for (id, e) in &texts {
        match text_rows.get_mut(e.row as usize) {
            Some(slot @ None) => *slot = Some(*id),
            _ => {
                return Err(corrupt(format!(
                    "text {id} has a missing or shared vector row {}",
                    e.row
                )))
            }
        }
    }

    let state = State {
        commit,
        images,
        texts,
        paths: paths.into_iter().collect(),
        hashes,
        image_rows,
        text_rows,
        image_vectors,
        text_vectors,
        image_graph: OnceLock::new(),
        text_graph: OnceLock::new(),
        graph_points_per_image: manifest.graph_points_per_image,
        features,
        dir: dir.to_path_buf(),
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
    for (id, e) in &state.texts {
        lexical.add_text(*id, &e.text)?;
    }
    lexical.commit(state.commit.generation)
}
