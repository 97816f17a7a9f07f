//! `IndexWriter`: the one writer, its pending changes, commit and compaction.
//!
//! Commit protocol (what makes a crash at any point recover to the last
//! completed commit):
//! 1. append new vector rows and vision features to the data files, fsync;
//! 2. one sled batch with the new entries and the new committed file lengths
//!    and generation, then sled `flush` — this is the commit point;
//! 3. publish to readers in memory, then update tantivy tagged with the generation.
//!
//! A crash before 2 leaves bytes past the committed lengths: `open` cuts them
//! off. A crash after 2 leaves tantivy behind: `open` rebuilds it. Compaction
//! writes new files under new names, switches to them in one sled batch, and
//! only then deletes the old ones; `open` deletes files no commit names.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::ann_graph::graph_vectors;
use crate::index::{
    debug_assert_unit, load_state, Shared, State, COMPACT_DEAD_FRACTION, COMPACT_MIN_DEAD,
};
use crate::manifest::sync_dir;
use crate::metadata_store::{
    FeatureRef, ImageEntry, ImageId, ImageRecord, MetaOp, PathEntry, TextEntry, TextId,
};
use crate::vector_store::VectorFileWriter;
use crate::{Error, Result};

/// Adds, replaces and removes items; nothing is visible or durable until
/// [`IndexWriter::commit`]. One per index at a time; dropping it without
/// committing discards its changes.
pub struct IndexWriter {
    shared: Arc<Shared>,
    pending: Pending,
}

/// Changes since the last commit, as a working copy over the committed state:
/// a key present here overrides the committed value (`None` = deleted).
#[derive(Default)]
struct Pending {
    images: HashMap<ImageId, Option<ImageEntry>>,
    texts: HashMap<TextId, Option<TextEntry>>,
    paths: HashMap<String, Option<ImageId>>,
    hashes: HashMap<String, Option<ImageId>>,
    /// Encoded rows to append, in row order, with the id that owned them when added.
    image_rows: Vec<(ImageId, Vec<u8>)>,
    text_rows: Vec<(TextId, Vec<u8>)>,
    features: Vec<u8>,
    lexical: Vec<LexOp>,
    next_image_id: Option<ImageId>,
    next_text_id: Option<TextId>,
}

enum LexOp {
    AddPath(ImageId, String),
    RemovePath(String),
    AddText(TextId, String),
    RemoveText(TextId),
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.images.is_empty()
            && self.texts.is_empty()
            && self.paths.is_empty()
            && self.lexical.is_empty()
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl IndexWriter {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        IndexWriter {
            shared,
            pending: Pending::default(),
        }
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.shared.state.read().expect("index state lock poisoned")
    }

    fn image_entry(&self, id: ImageId) -> Option<ImageEntry> {
        match self.pending.images.get(&id) {
            Some(e) => e.clone(),
            None => self.state().images.get(&id).cloned(),
        }
    }

    /// The image a path has, counting uncommitted changes.
    pub fn image_id_by_path(&self, path: &str) -> Option<ImageId> {
        match self.pending.paths.get(path) {
            Some(id) => *id,
            None => self.state().paths.get(path).copied(),
        }
    }

    /// The image with a content hash, counting uncommitted changes.
    pub fn image_id_by_hash(&self, content_hash: &str) -> Option<ImageId> {
        match self.pending.hashes.get(content_hash) {
            Some(id) => *id,
            None => self.state().hashes.get(content_hash).copied(),
        }
    }

    /// Whether there are uncommitted changes.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Adds an image file with its `Q × D` L2-normalised vectors and, when the
    /// index stores them, its vision features (`values`, `shape`).
    ///
    /// A path already in the index is replaced. Bytes already in the index
    /// (same content hash) share that image's vectors: the ones given are ignored.
    pub fn add_image(
        &mut self,
        record: ImageRecord,
        vectors: &[f32],
        vision_features: Option<(&[f32], &[usize])>,
    ) -> Result<ImageId> {
        let m = &self.shared.manifest;
        let (q, dim) = (m.num_query_tokens, m.dim);
        if vectors.len() != q * dim {
            return Err(Error::WrongVectorDimension {
                expected: q * dim,
                received: vectors.len(),
            });
        }
        debug_assert_unit(vectors, dim);
        if let Some((values, shape)) = vision_features {
            if !m.store_vision_features {
                return Err(Error::VisionFeatures {
                    reason: "this index was created without store_vision_features".into(),
                });
            }
            if shape.iter().product::<usize>() != values.len() {
                return Err(Error::VisionFeatures {
                    reason: format!("shape {shape:?} does not hold {} values", values.len()),
                });
            }
        }
        if let Some(id) = self.image_id_by_path(&record.path) {
            let same_bytes = self
                .image_entry(id)
                .is_some_and(|e| e.content_hash == record.content_hash);
            if same_bytes {
                return self.add_path(record);
            }
            self.remove_path(&record.path)?;
        }
        if self.image_id_by_hash(&record.content_hash).is_some() {
            return self.add_path(record);
        }
        let id = self.allocate_image_id();
        let row = {
            let state = self.state();
            state.image_vectors.rows() + self.pending.image_rows.len()
        };
        let encoded = self.state().image_vectors.encode_row(vectors);
        self.pending.image_rows.push((id, encoded));
        let features = vision_features.map(|(values, shape)| {
            let offset = self.shared.files.lock().expect("files lock").features.len()
                + self.pending.features.len() as u64;
            let dtype = self.shared.manifest.vision_feature_dtype;
            dtype.encode(values, &mut self.pending.features);
            FeatureRef {
                offset,
                shape: shape.to_vec(),
            }
        });
        let entry = ImageEntry {
            content_hash: record.content_hash.clone(),
            width: record.width,
            height: record.height,
            row: row as u64,
            paths: vec![path_entry(&record)],
            features,
        };
        self.pending.images.insert(id, Some(entry));
        self.pending.paths.insert(record.path.clone(), Some(id));
        self.pending.hashes.insert(record.content_hash, Some(id));
        self.pending.lexical.push(LexOp::AddPath(id, record.path));
        Ok(id)
    }

    /// Adds a path whose bytes (content hash) the index already holds, e.g. a
    /// copied file; it shares that image's vectors. Fails with
    /// [`Error::UnknownHash`] otherwise.
    pub fn add_path(&mut self, record: ImageRecord) -> Result<ImageId> {
        let id = self
            .image_id_by_hash(&record.content_hash)
            .ok_or_else(|| Error::UnknownHash {
                hash: record.content_hash.clone(),
            })?;
        if let Some(old) = self.image_id_by_path(&record.path) {
            if old != id {
                self.remove_path(&record.path)?;
            }
        }
        let mut entry = self
            .image_entry(id)
            .expect("hash index points at a live image");
        let new = path_entry(&record);
        match entry.paths.iter_mut().find(|p| p.path == record.path) {
            Some(existing) => *existing = new,
            None => {
                entry.paths.push(new);
                self.pending
                    .lexical
                    .push(LexOp::AddPath(id, record.path.clone()));
            }
        }
        self.pending.images.insert(id, Some(entry));
        self.pending.paths.insert(record.path, Some(id));
        Ok(id)
    }

    /// Removes a path; its image goes when its last path goes. Returns whether
    /// the path was in the index.
    pub fn remove_path(&mut self, path: &str) -> Result<bool> {
        let Some(id) = self.image_id_by_path(path) else {
            return Ok(false);
        };
        let mut entry = self
            .image_entry(id)
            .expect("path index points at a live image");
        entry.paths.retain(|p| p.path != path);
        self.pending.paths.insert(path.to_string(), None);
        self.pending
            .lexical
            .push(LexOp::RemovePath(path.to_string()));
        if entry.paths.is_empty() {
            self.pending.hashes.insert(entry.content_hash.clone(), None);
            self.pending.images.insert(id, None);
        } else {
            self.pending.images.insert(id, Some(entry));
        }
        Ok(true)
    }

    /// Adds a text with its L2-normalised `D`-dim vector.
    pub fn add_text(
        &mut self,
        text: &str,
        external_id: Option<String>,
        vector: &[f32],
    ) -> Result<TextId> {
        let dim = self.shared.manifest.dim;
        if vector.len() != dim {
            return Err(Error::WrongVectorDimension {
                expected: dim,
                received: vector.len(),
            });
        }
        debug_assert_unit(vector, dim);
        let id = self.allocate_text_id();
        let (row, encoded) = {
            let state = self.state();
            (
                state.text_vectors.rows() + self.pending.text_rows.len(),
                state.text_vectors.encode_row(vector),
            )
        };
        self.pending.text_rows.push((id, encoded));
        self.pending.texts.insert(
            id,
            Some(TextEntry {
                text: text.to_string(),
                external_id,
                row: row as u64,
            }),
        );
        self.pending
            .lexical
            .push(LexOp::AddText(id, text.to_string()));
        Ok(id)
    }

    /// Removes a text. Returns whether it was in the index.
    pub fn remove_text(&mut self, id: TextId) -> bool {
        let exists = match self.pending.texts.get(&id) {
            Some(e) => e.is_some(),
            None => self.state().texts.contains_key(&id),
        };
        if exists {
            self.pending.texts.insert(id, None);
            self.pending.lexical.push(LexOp::RemoveText(id));
        }
        exists
    }

    /// Drops every uncommitted change.
    pub fn rollback(&mut self) {
        self.pending = Pending::default();
    }

    fn allocate_image_id(&mut self) -> ImageId {
        let next = self
            .pending
            .next_image_id
            .unwrap_or_else(|| self.state().commit.next_image_id);
        self.pending.next_image_id = Some(next + 1);
        next
    }

    fn allocate_text_id(&mut self) -> TextId {
        let next = self
            .pending
            .next_text_id
            .unwrap_or_else(|| self.state().commit.next_text_id);
        self.pending.next_text_id = Some(next + 1);
        next
    }

    /// Makes every pending change durable and visible, atomically. Returns the
    /// new generation. Compacts afterwards when dead rows pass 30%.
    pub fn commit(&mut self) -> Result<u64> {
        if self.pending.is_empty() {
            return Ok(self.state().commit.generation);
        }
        let pending = std::mem::take(&mut self.pending);
        let shared = self.shared.clone();
        let mut files = shared.files.lock().expect("files lock poisoned");
        let before = (files.images.len(), files.texts.len(), files.features.len());

        // 1. Data files.
        let append = |files: &mut crate::index::Files| -> Result<()> {
            for (_, bytes) in &pending.image_rows {
                files.images.append(bytes)?;
            }
            for (_, bytes) in &pending.text_rows {
                files.texts.append(bytes)?;
            }
            files.features.append(&pending.features)?;
            files.images.sync()?;
            files.texts.sync()?;
            files.features.sync()
        };
        let mut new_commit = self.state().commit.clone();
        new_commit.generation += 1;
        if let Some(next) = pending.next_image_id {
            new_commit.next_image_id = next;
        }
        if let Some(next) = pending.next_text_id {
            new_commit.next_text_id = next;
        }
        // 2. The commit point.
        let result = append(&mut files).and_then(|()| {
            new_commit.image_vectors_len = files.images.len();
            new_commit.text_vectors_len = files.texts.len();
            new_commit.features_len = files.features.len();
            shared.meta.commit(&meta_ops(&pending), &new_commit)
        });
        if let Err(e) = result {
            // Not committed: cut the files back so that they match sled again.
            let _ = files.images.rollback(before.0);
            let _ = files.texts.rollback(before.1);
            let _ = files.features.rollback(before.2);
            return Err(e);
        }
        drop(files);

        // 3. Readers.
        self.publish(&pending, new_commit.clone());
        let mut lexical = shared.lexical.lock().expect("lexical lock poisoned");
        for op in &pending.lexical {
            match op {
                LexOp::AddPath(id, path) => lexical.add_path(*id, path)?,
                LexOp::RemovePath(path) => lexical.remove_path(path),
                LexOp::AddText(id, text) => lexical.add_text(*id, text)?,
                LexOp::RemoveText(id) => lexical.remove_text(*id),
            }
        }
        lexical.commit(new_commit.generation)?;
        drop(lexical);

        if self.needs_compaction() {
            self.compact()?;
        }
        Ok(self.state().commit.generation)
    }

    fn publish(&self, pending: &Pending, commit: crate::metadata_store::CommitState) {
        let m = &self.shared.manifest;
        let mut state = self
            .shared
            .state
            .write()
            .expect("index state lock poisoned");
        let state = &mut *state;
        for (id, entry) in &pending.images {
            match entry {
                Some(e) => {
                    state.images.insert(*id, e.clone());
                }
                None => {
                    if let Some(old) = state.images.remove(id) {
                        state.image_rows[old.row as usize] = None;
                    }
                }
            }
        }
        let mut new_points = Vec::new();
        for (id, bytes) in &pending.image_rows {
            let row = state.image_vectors.rows();
            state.image_vectors.push_encoded(bytes);
            let live = state.images.get(id).is_some_and(|e| e.row as usize == row);
            state.image_rows.push(live.then_some(*id));
            if live && state.image_graph.get().is_some() {
                let vectors = state.image_vectors.row_f32(row);
                new_points.push((
                    row as u64,
                    graph_vectors(&vectors, m.dim, m.graph_points_per_image),
                ));
            }
        }
        if let Some(graph) = state.image_graph.get_mut() {
            graph.insert(&new_points, m.dim);
        }
        for (id, entry) in &pending.texts {
            match entry {
                Some(e) => {
                    state.texts.insert(*id, e.clone());
                }
                None => {
                    if let Some(old) = state.texts.remove(id) {
                        state.text_rows[old.row as usize] = None;
                    }
                }
            }
        }
        let mut new_points = Vec::new();
        for (id, bytes) in &pending.text_rows {
            let row = state.text_vectors.rows();
            state.text_vectors.push_encoded(bytes);
            let live = state.texts.get(id).is_some_and(|e| e.row as usize == row);
            state.text_rows.push(live.then_some(*id));
            if live && state.text_graph.get().is_some() {
                new_points.push((row as u64, state.text_vectors.row_f32(row)));
            }
        }
        if let Some(graph) = state.text_graph.get_mut() {
            graph.insert(&new_points, m.dim);
        }
        for (path, id) in &pending.paths {
            match id {
                Some(id) => state.paths.insert(path.clone(), *id),
                None => state.paths.remove(path),
            };
        }
        for (hash, id) in &pending.hashes {
            match id {
                Some(id) => state.hashes.insert(hash.clone(), *id),
                None => state.hashes.remove(hash),
            };
        }
        state.commit = commit;
    }

    fn needs_compaction(&self) -> bool {
        let state = self.state();
        let dead = state.image_rows.iter().filter(|r| r.is_none()).count()
            + state.text_rows.iter().filter(|r| r.is_none()).count();
        let total = state.image_rows.len() + state.text_rows.len();
        dead >= COMPACT_MIN_DEAD && dead as f64 > COMPACT_DEAD_FRACTION * total as f64
    }

    /// Commits pending changes, then rewrites the data files with live rows
    /// only and rebuilds the graphs, dropping every tombstone.
    pub fn compact(&mut self) -> Result<()> {
        self.commit()?;
        let shared = self.shared.clone();
        let dir = &shared.dir;
        let mut files = shared.files.lock().expect("files lock poisoned");
        let old = self.state().commit.clone();
        let generation = old.generation + 1;
        let mut new_commit = old.clone().with_files_for(generation);
        new_commit.generation = generation;
        let mut ops = Vec::new();
        {
            let state = self.state();
            let open_new = |name: &str| {
                let path = dir.join(name);
                // A leftover of an earlier interrupted compaction to this generation.
                let _ = std::fs::remove_file(&path);
                VectorFileWriter::open(&path, 0, None)
            };
            let mut images_out = open_new(&new_commit.image_vectors_file)?;
            let mut texts_out = open_new(&new_commit.text_vectors_file)?;
            let mut features_out = open_new(&new_commit.features_file)?;

            let row_bytes = state.image_vectors.row_bytes();
            let mut buf = vec![0u8; row_bytes];
            let mut ids: Vec<&ImageId> = state.images.keys().collect();
            ids.sort();
            for (new_row, id) in ids.into_iter().enumerate() {
                let mut e = state.images[id].clone();
                files.images.read_at(&mut buf, e.row * row_bytes as u64)?;
                images_out.append(&buf)?;
                e.row = new_row as u64;
                if let Some(f) = e.features.as_mut() {
                    let mut fbuf = vec![
                        0u8;
                        shared
                            .manifest
                            .vision_feature_dtype
                            .bytes(f.shape.iter().product::<usize>())
                    ];
                    files.features.read_at(&mut fbuf, f.offset)?;
                    f.offset = features_out.len();
                    features_out.append(&fbuf)?;
                }
                ops.push(MetaOp::PutImage(*id, e));
            }
            let row_bytes = state.text_vectors.row_bytes();
            let mut buf = vec![0u8; row_bytes];
            let mut ids: Vec<&TextId> = state.texts.keys().collect();
            ids.sort();
            for (new_row, id) in ids.into_iter().enumerate() {
                let mut e = state.texts[id].clone();
                files.texts.read_at(&mut buf, e.row * row_bytes as u64)?;
                texts_out.append(&buf)?;
                e.row = new_row as u64;
                ops.push(MetaOp::PutText(*id, e));
            }
            for f in [&mut images_out, &mut texts_out, &mut features_out] {
                f.sync()?;
            }
            sync_dir(dir)?;
            new_commit.image_vectors_len = images_out.len();
            new_commit.text_vectors_len = texts_out.len();
            new_commit.features_len = features_out.len();
        }
        // The commit point: from here on the new files are the index.
        shared.meta.commit(&ops, &new_commit)?;
        for old_file in [
            &old.image_vectors_file,
            &old.text_vectors_file,
            &old.features_file,
        ] {
            let _ = std::fs::remove_file(dir.join(old_file));
        }
        sync_dir(dir)?;
        let (state, new_files) = load_state(dir, &shared.manifest, &shared.meta)?;
        *shared.state.write().expect("index state lock poisoned") = state;
        *files = new_files;
        drop(files);
        // Ids did not change, only the generation the lexical index must carry.
        shared
            .lexical
            .lock()
            .expect("lexical lock poisoned")
            .commit(generation)?;
        Ok(())
    }
}

impl Drop for IndexWriter {
    fn drop(&mut self) {
        self.shared.writer_taken.store(false, Ordering::Release);
    }
}

fn path_entry(record: &ImageRecord) -> PathEntry {
    PathEntry {
        path: record.path.clone(),
        size: record.size,
        mtime: record.mtime,
        indexed_at: now_secs(),
    }
}

fn meta_ops(pending: &Pending) -> Vec<MetaOp> {
    let mut ops = Vec::new();
    for (id, e) in &pending.images {
        ops.push(match e {
            Some(e) => MetaOp::PutImage(*id, e.clone()),
            None => MetaOp::DeleteImage(*id),
        });
    }
    for (id, e) in &pending.texts {
        ops.push(match e {
            Some(e) => MetaOp::PutText(*id, e.clone()),
            None => MetaOp::DeleteText(*id),
        });
    }
    for (path, id) in &pending.paths {
        ops.push(match id {
            Some(id) => MetaOp::PutPath(path.clone(), *id),
            None => MetaOp::DeletePath(path.clone()),
        });
    }
    for (hash, id) in &pending.hashes {
        ops.push(match id {
            Some(id) => MetaOp::PutHash(hash.clone(), *id),
            None => MetaOp::DeleteHash(hash.clone()),
        });
    }
    ops
}
