//! `IndexWriter`: the one writer, its pending changes and commit.
//!
//! Commit protocol (what makes a crash at any point recover to the last
//! completed commit):
//! 1. append new vector rows and vision features to the data files, fsync;
//! 2. one sled batch with the new entries and the new committed file lengths
//!    and generation, then sled `flush` — this is the commit point;
//! 3. publish to readers in memory, then update tantivy tagged with the generation.
//!
//! A crash before 2 leaves bytes past the committed lengths: `open` cuts them
//! off. A crash after 2 leaves tantivy behind: `open` rebuilds it. Compaction:
//! see `compaction.rs`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::photo::PhotoMeta;
use crate::search::max_sim::debug_assert_unit;
use crate::state::{Files, Shared, State, TableKind};
use crate::storage::metadata_store::{
    CommitState, FeatureRef, ImageEntry, ImageId, ImageRecord, MetaOp, PathEntry, TextEntry, TextId,
};
use crate::writer::compaction::{COMPACT_DEAD_FRACTION, COMPACT_MIN_DEAD};
use crate::{Error, Result};

/// Adds, replaces and removes items; nothing is visible or durable until
/// [`IndexWriter::commit`]. One per index at a time; dropping it without
/// committing discards its changes.
pub struct IndexWriter {
    pub(super) shared: Arc<Shared>,
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
    /// The roots after this commit, when it adds some.
    roots: Option<Vec<String>>,
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
            && self.roots.is_none()
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

    pub(super) fn state(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.shared.state()
    }

    fn image_entry(&self, id: ImageId) -> Option<ImageEntry> {
        match self.pending.images.get(&id) {
            Some(e) => e.clone(),
            None => self.state().images.entries.get(&id).cloned(),
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
        let (row, encoded) = {
            let vectors_now = &self.state().images.rows.vectors;
            (
                vectors_now.rows() + self.pending.image_rows.len(),
                vectors_now.encode_row(vectors),
            )
        };
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
            photo: record.photo.clone(),
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
        if record.photo.is_some() {
            entry.photo = record.photo.clone();
        }
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

    /// Sets what an image's metadata says (an index written before metadata was read
    /// gets it so, without its vectors changing); `None` marks it unread. Returns
    /// whether the image exists.
    pub fn set_photo(&mut self, id: ImageId, photo: Option<PhotoMeta>) -> bool {
        let Some(mut entry) = self.image_entry(id) else {
            return false;
        };
        if entry.photo != photo {
            entry.photo = photo;
            self.pending.images.insert(id, Some(entry));
        }
        true
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
            let vectors_now = &self.state().texts.rows.vectors;
            (
                vectors_now.rows() + self.pending.text_rows.len(),
                vectors_now.encode_row(vector),
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
            None => self.state().texts.entries.contains_key(&id),
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

    /// Records folders or files the collection is built from (absolute paths), with
    /// the next commit; a root already recorded is kept once.
    pub fn add_roots(&mut self, roots: &[String]) {
        let current = match &self.pending.roots {
            Some(r) => r.clone(),
            None => self.state().commit.roots.clone(),
        };
        let mut all = current.clone();
        all.extend(roots.iter().cloned());
        all.sort();
        all.dedup();
        if all != current {
            self.pending.roots = Some(all);
        }
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
        let append = |files: &mut Files| -> Result<()> {
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
        if let Some(roots) = &pending.roots {
            new_commit.roots = roots.clone();
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
        // The new rows into the graphs, with searches going on (they score the
        // rows exactly until then).
        shared.extend_graph(TableKind::Images);
        shared.extend_graph(TableKind::Texts);
        Ok(self.state().commit.generation)
    }

    fn publish(&self, pending: &Pending, commit: CommitState) {
        let mut state = self.shared.state.write();
        let state = &mut *state;
        state.images.apply(&pending.images, &pending.image_rows);
        state.texts.apply(&pending.texts, &pending.text_rows);
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
        let dead = state.images.dead_rows() + state.texts.dead_rows();
        let total = state.images.rows.owners.len() + state.texts.rows.owners.len();
        dead >= COMPACT_MIN_DEAD && dead as f64 > COMPACT_DEAD_FRACTION * total as f64
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
