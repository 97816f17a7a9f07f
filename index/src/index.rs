//! `Index`: creating and opening an index, and its read API: lookups, the
//! three searches, stats and verify. The state it reads is in `state.rs`, the
//! search itself in `table.rs`, writing in `writer/`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::RwLockReadGuard;

use crate::dups::{DupParams, DupReport};
use crate::export::{ImageExport, TextExport};
use crate::graph::ann_graph::graph_vectors;
use crate::photo::{PhotoMeta, TakenAt};
use crate::search::max_sim::{self, debug_assert_unit};
use crate::search::{Filter, ImageHit, SearchParams, TextHit};
use crate::state::{Shared, State, TableKind, METADATA_DIR};
use crate::storage::lexical_index::DocKind;
use crate::storage::manifest::{Manifest, ModelId, VectorDtype, FORMAT_VERSION, MANIFEST_FILE};
use crate::storage::metadata_store::{CommitState, ImageId, MetadataStore, PathEntry, TextId};
use crate::table::{wants_graph, Scored};
use crate::verify::VerifyReport;
use crate::writer::IndexWriter;
use crate::{io_err, Error, Result};

/// A multi-vector index of images and texts in one directory.
///
/// Cheap to clone (all clones share one index). Any number of threads may
/// search while one [`IndexWriter`] adds and removes items; readers see the
/// last completed commit.
#[derive(Clone)]
pub struct Index {
    pub(crate) shared: Arc<Shared>,
}

/// What the index knows about one image.
#[derive(Debug, Clone, PartialEq)]
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
    /// What its metadata says; `None` until it was read (indexes written before
    /// qseek read metadata get it at the next `qseek index`).
    pub photo: Option<PhotoMeta>,
}

/// What [`Index::photo_stats`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhotoStats {
    /// Images with a date taken.
    pub dated: usize,
    /// Images with a camera make or model.
    pub with_camera: usize,
    /// Images with a place.
    pub with_place: usize,
    /// Images whose metadata was never read (indexed before qseek read it).
    pub unread: usize,
    /// The earliest date taken.
    pub first: Option<TakenAt>,
    /// The latest date taken.
    pub last: Option<TakenAt>,
}

/// One term of [`Index::search_images_combined`], with its weight (negative: subtracts).
#[derive(Debug, Clone, Copy)]
pub enum QueryTerm<'a> {
    /// A text's vector (`D` values, L2-normalised): max over the image's slots.
    Text {
        /// The vector.
        vector: &'a [f32],
        /// Its weight.
        weight: f32,
    },
    /// An image's `Q × D` vectors: symmetric Chamfer similarity.
    Image {
        /// The vectors.
        vectors: &'a [f32],
        /// Its weight.
        weight: f32,
    },
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
        Ok(Index {
            shared: Arc::new(Shared::open(dir, manifest, meta)?),
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
        self.shared.state()
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
        self.state().images.vectors_of(image_id)
    }

    /// The text with this id.
    pub fn text(&self, text_id: TextId) -> Option<TextInfo> {
        let state = self.state();
        state.texts.entries.get(&text_id).map(|e| TextInfo {
            text_id,
            text: e.text.clone(),
            external_id: e.external_id.clone(),
        })
    }

    /// The stored vector of a text (`D` values, decoded to f32).
    pub fn text_vector(&self, text_id: TextId) -> Option<Vec<f32>> {
        self.state().texts.vectors_of(text_id)
    }

    /// Every text, by id.
    pub fn texts(&self) -> Vec<TextInfo> {
        let state = self.state();
        let mut out: Vec<TextInfo> = state
            .texts
            .entries
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

    /// The folders and files the collection was built from, as recorded by
    /// [`IndexWriter::add_roots`] (empty for an index made before roots were kept).
    pub fn roots(&self) -> Vec<String> {
        self.state().commit.roots.clone()
    }

    /// Every live path, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.state().paths.keys().cloned().collect()
    }

    /// Every committed image with its paths and vectors, in id order, as of
    /// the last commit when called (see [`ImageExport`]).
    pub fn export_images(&self) -> ImageExport {
        ImageExport::new(&self.state())
    }

    /// Every committed text with its vector, in id order, as of the last
    /// commit when called (see [`TextExport`]).
    pub fn export_texts(&self) -> TextExport {
        TextExport::new(&self.state())
    }

    /// The image's stored vision features (as f32, whatever
    /// [`Manifest::vision_feature_dtype`] stores them in) and their shape.
    pub fn vision_features(&self, image_id: ImageId) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let state = self.state();
        let Some(fref) = state
            .images
            .entries
            .get(&image_id)
            .and_then(|e| e.features.as_ref())
        else {
            return Ok(None);
        };
        Ok(Some((state.features.read(fref)?, fref.shape.clone())))
    }

    /// Counts and sizes.
    pub fn stats(&self) -> IndexStats {
        let state = self.state();
        let m = &self.shared.manifest;
        let (images, texts) = (&state.images, &state.texts);
        IndexStats {
            generation: state.commit.generation,
            images: images.entries.len(),
            paths: state.paths.len(),
            texts: texts.entries.len(),
            dead_image_rows: images.dead_rows(),
            dead_text_rows: texts.dead_rows(),
            // Without building the graph: `qseek info` must stay instant.
            image_graph_points: images
                .rows
                .graph
                .as_ref()
                .map_or(images.entries.len() * m.graph_points_per_image, |g| {
                    g.points().len()
                }),
            num_query_tokens: m.num_query_tokens,
            dim: m.dim,
            vector_dtype: m.vector_dtype,
            graph_points_per_image: m.graph_points_per_image,
            store_vision_features: m.store_vision_features,
            vision_features_bytes: state.commit.features_len,
            vector_bytes: state.commit.image_vectors_len + state.commit.text_vectors_len,
            vector_bytes_in_memory: (images.rows.vectors.memory_bytes()
                + texts.rows.vectors.memory_bytes()) as u64,
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
        let allowed = self.allowed(TableKind::Images, params.filter.as_ref())?;
        let state = self.searchable(TableKind::Images, k, params, allowed.as_ref());
        let vectors = &state.images.rows.vectors;
        let scored = state
            .images
            .search(&[query], k, params, allowed.as_ref(), |row, scratch| {
                vectors.max_sim(row, query, scratch)
            });
        Ok(state.image_hits(scored))
    }

    /// [`Index::search_images`] for several query vectors with the same `k` and
    /// parameters: the same results, one list per query, in order. An exact search
    /// reads each image's vectors once for all the queries, so a batch costs about
    /// one pass over the collection (a server merges concurrent text searches so).
    pub fn search_images_many(
        &self,
        queries: &[&[f32]],
        k: usize,
        params: &SearchParams,
    ) -> Result<Vec<Vec<ImageHit>>> {
        let dim = self.shared.manifest.dim;
        for query in queries {
            check_len(query, dim)?;
            debug_assert_unit(query, dim);
        }
        let allowed = self.allowed(TableKind::Images, params.filter.as_ref())?;
        let state = self.searchable(TableKind::Images, k, params, allowed.as_ref());
        let scored = state
            .images
            .max_sim_search_many(queries, k, params, allowed.as_ref());
        Ok(scored
            .into_iter()
            .map(|scored| state.image_hits(scored))
            .collect())
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
        let allowed = self.allowed(TableKind::Images, params.filter.as_ref())?;
        let probes = graph_vectors(image_vectors, m.dim, m.graph_points_per_image);
        let probes: Vec<&[f32]> = probes.chunks_exact(m.dim).collect();
        let state = self.searchable(TableKind::Images, k, params, allowed.as_ref());
        let vectors = &state.images.rows.vectors;
        let scored = state
            .images
            .search(&probes, k, params, allowed.as_ref(), |row, _| {
                let other = vectors.row_f32(row);
                (max_sim::chamfer(image_vectors, &other, m.dim), 0)
            });
        Ok(state.image_hits(scored))
    }

    /// Groups of near-duplicate images: every two members of a group have a symmetric
    /// Chamfer similarity of at least `params.threshold` (see [`crate::DupParams`] and
    /// the rule in `dups.rs`). Candidates come from the graph (built first if it is
    /// not ready: this waits for it), or from every pair when few images are scanned.
    pub fn near_duplicates(&self, params: &DupParams) -> Result<DupReport> {
        let filter = params.path_prefix.clone().map(|p| Filter {
            path_prefix: Some(p),
            ..Filter::default()
        });
        let allowed = self.allowed(TableKind::Images, filter.as_ref())?;
        let mut exact = params.exact || {
            let state = self.state();
            let n = allowed
                .as_ref()
                .map_or(state.images.entries.len(), |a| a.len());
            n <= params.exact_below
        };
        if !exact {
            self.shared.ensure_graph(TableKind::Images, true);
        }
        let state = self.state();
        exact |= state.images.rows.graph.is_none();
        let mut ids: Vec<u64> = match allowed {
            Some(a) => a.into_iter().collect(),
            None => state.images.entries.keys().copied().collect(),
        };
        ids.sort_unstable();
        let ef = params.ef.unwrap_or(DupParams::DEFAULT_EF);
        Ok(crate::dups::near_duplicates(
            &state.images,
            &ids,
            params,
            (!exact).then_some(ef),
            self.shared.manifest.graph_points_per_image,
        ))
    }

    /// What the images' metadata holds: how many have a date, a camera, a place, or
    /// were never read, and the first and last dates.
    pub fn photo_stats(&self) -> PhotoStats {
        let state = self.state();
        let mut stats = PhotoStats::default();
        for e in state.images.entries.values() {
            let Some(photo) = &e.photo else {
                stats.unread += 1;
                continue;
            };
            if let Some(t) = photo.taken {
                stats.dated += 1;
                stats.first =
                    Some(
                        stats
                            .first
                            .map_or(t, |f| if t.cmp_time(&f).is_lt() { t } else { f }),
                    );
                stats.last = Some(
                    stats
                        .last
                        .map_or(t, |l| if t.cmp_time(&l).is_gt() { t } else { l }),
                );
            }
            stats.with_camera += usize::from(photo.camera().is_some());
            stats.with_place += usize::from(photo.gps.is_some());
        }
        stats
    }

    /// Top-`k` images for a combined query: the weighted sum of each term's
    /// similarity, a text's max-over-slots score ([`Index::search_images`]) or an
    /// image's symmetric Chamfer similarity ([`Index::similar_images`]); a negative
    /// weight subtracts. The graph, when the search walks it, is probed with the
    /// positive terms' vectors; every candidate is scored exactly. `best_slot` is 0.
    pub fn search_images_combined(
        &self,
        terms: &[QueryTerm<'_>],
        k: usize,
        params: &SearchParams,
    ) -> Result<Vec<ImageHit>> {
        let m = &self.shared.manifest;
        let mut probes = Vec::new();
        for term in terms {
            match *term {
                QueryTerm::Text { vector, weight } => {
                    check_len(vector, m.dim)?;
                    debug_assert_unit(vector, m.dim);
                    if weight > 0.0 {
                        probes.push(vector.to_vec());
                    }
                }
                QueryTerm::Image { vectors, weight } => {
                    check_len(vectors, m.num_query_tokens * m.dim)?;
                    if weight > 0.0 {
                        let points = graph_vectors(vectors, m.dim, m.graph_points_per_image);
                        probes.extend(points.chunks_exact(m.dim).map(<[f32]>::to_vec));
                    }
                }
            }
        }
        if probes.is_empty() {
            return Err(Error::NoPositiveTerm);
        }
        let probes: Vec<&[f32]> = probes.iter().map(Vec::as_slice).collect();
        let allowed = self.allowed(TableKind::Images, params.filter.as_ref())?;
        let state = self.searchable(TableKind::Images, k, params, allowed.as_ref());
        let vectors = &state.images.rows.vectors;
        let scored = state
            .images
            .search(&probes, k, params, allowed.as_ref(), |row, scratch| {
                let mut other = None;
                let mut sum = 0.0f32;
                for term in terms {
                    sum += match *term {
                        QueryTerm::Text { vector, weight } => {
                            weight * vectors.max_sim(row, vector, scratch).0
                        }
                        QueryTerm::Image {
                            vectors: image,
                            weight,
                        } => {
                            let other = other.get_or_insert_with(|| vectors.row_f32(row));
                            weight * max_sim::chamfer(image, other, m.dim)
                        }
                    };
                }
                (sum, 0)
            });
        Ok(state.image_hits(scored))
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
        if queries.is_empty() || !queries.len().is_multiple_of(dim) {
            return Err(Error::WrongVectorDimension {
                expected: self.shared.manifest.num_query_tokens * dim,
                received: queries.len(),
            });
        }
        let allowed = self.allowed(TableKind::Texts, params.filter.as_ref())?;
        let probes: Vec<&[f32]> = queries.chunks_exact(dim).collect();
        let state = self.searchable(TableKind::Texts, k, params, allowed.as_ref());
        let vectors = &state.texts.rows.vectors;
        let scored = state
            .texts
            .search(&probes, k, params, allowed.as_ref(), |row, scratch| {
                let mut best = (f32::NEG_INFINITY, 0);
                for (slot, q) in probes.iter().enumerate() {
                    let s = vectors.max_sim(row, q, scratch).0;
                    if s > best.0 {
                        best = (s, slot);
                    }
                }
                best
            });
        Ok(scored
            .into_iter()
            .map(|(score, id, slot)| {
                let e = &state.texts.entries[&id];
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

    /// Loads or builds the HNSW graphs now rather than at the first search
    /// that needs them, and returns once they are ready (a benchmark calls
    /// this before timing searches). Commits and searches go on meanwhile.
    pub fn build_graphs(&self) {
        self.shared.ensure_graph(TableKind::Images, true);
        self.shared.ensure_graph(TableKind::Texts, true);
    }

    /// Starts loading or building the HNSW graphs on a background thread and
    /// returns at once (a server calls this at start). Until a graph is
    /// ready, searches score every allowed item exactly.
    pub fn build_graphs_in_background(&self) -> std::thread::JoinHandle<()> {
        let index = self.clone();
        std::thread::spawn(move || index.build_graphs())
    }

    /// Checks every invariant (manifest, counts, mappings, file lengths,
    /// vectors, graph, lexical index) against what is on disk.
    pub fn verify(&self) -> VerifyReport {
        crate::verify::verify(&self.shared)
    }

    /// The state to search `kind` in. When the search would walk the graph
    /// and it is not ready, this thread loads or builds it first (holding no
    /// lock meanwhile) — unless another thread already is: then the search
    /// goes on exactly rather than wait.
    fn searchable(
        &self,
        kind: TableKind,
        k: usize,
        params: &SearchParams,
        allowed: Option<&HashSet<u64>>,
    ) -> RwLockReadGuard<'_, State> {
        let state = self.state();
        let n_allowed = allowed.map_or(state.live(kind), |a| a.len());
        if state.rows(kind).graph.is_some() || !wants_graph(k, params, n_allowed) {
            return state;
        }
        drop(state);
        self.shared.ensure_graph(kind, false);
        self.state()
    }

    /// The items of `kind` a filter allows, `None` for all. Texts have no
    /// path, so a path prefix only restricts images.
    fn allowed(&self, kind: TableKind, filter: Option<&Filter>) -> Result<Option<HashSet<u64>>> {
        let Some(filter) = filter else {
            return Ok(None);
        };
        let mut allowed: Option<HashSet<u64>> = None;
        if let Some(q) = filter.query.as_deref() {
            let doc_kind = match kind {
                TableKind::Images => DocKind::Image,
                TableKind::Texts => DocKind::Text,
            };
            let lexical = self
                .shared
                .lexical
                .lock()
                .expect("lexical index lock poisoned");
            allowed = Some(lexical.matching(q, doc_kind)?);
        }
        if let (TableKind::Images, true) = (kind, filter.photo.is_active()) {
            let state = self.state();
            let by_photo: HashSet<u64> = state
                .images
                .entries
                .iter()
                .filter(|(_, e)| filter.photo.allows(e.photo.as_ref()))
                .map(|(id, _)| *id)
                .collect();
            allowed = Some(match allowed {
                Some(a) => a.intersection(&by_photo).copied().collect(),
                None => by_photo,
            });
        }
        if let (TableKind::Images, Some(prefix)) = (kind, filter.path_prefix.as_deref()) {
            let state = self.state();
            let by_prefix: HashSet<u64> = state
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
        let e = self.images.entries.get(&id)?;
        Some(ImageInfo {
            image_id: id,
            content_hash: e.content_hash.clone(),
            width: e.width,
            height: e.height,
            paths: e.paths.clone(),
            vision_features_shape: e.features.as_ref().map(|f| f.shape.clone()),
            photo: e.photo.clone(),
        })
    }

    /// Scored images (best first) as hits.
    fn image_hits(&self, scored: Scored) -> Vec<ImageHit> {
        scored
            .into_iter()
            .map(|(score, id, best_slot)| {
                let mut paths: Vec<String> = self.images.entries[&id]
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
            })
            .collect()
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
