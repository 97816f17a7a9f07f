//! Compaction: rewriting the data files with live rows only.
//!
//! Removed and replaced items leave tombstone rows (hnsw_rs cannot delete
//! points, and the files are append-only). Compaction copies every live row,
//! in id order, and every live image's vision features into new files named
//! for the next generation, switches to them in one sled batch (the commit
//! point), and only then deletes the old ones; `open` deletes files no commit
//! names, so a crash at any point leaves one complete set. The graphs are
//! built again over the new files when a search next needs them.

use crate::state::load_state;
use crate::storage::feature_store::FeatureStoreWriter;
use crate::storage::manifest::sync_dir;
use crate::storage::metadata_store::MetaOp;
use crate::storage::vector_store::VectorFileWriter;
use crate::table::{Table, TableEntry};
use crate::writer::IndexWriter;
use crate::Result;

/// Fraction of dead rows past which `commit` compacts.
pub(crate) const COMPACT_DEAD_FRACTION: f64 = 0.3;
/// Fewer dead rows than this never trigger a compaction.
pub(crate) const COMPACT_MIN_DEAD: usize = 64;

impl IndexWriter {
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
                path
            };
            let mut images_out =
                VectorFileWriter::open(&open_new(&new_commit.image_vectors_file), 0, None)?;
            let mut texts_out =
                VectorFileWriter::open(&open_new(&new_commit.text_vectors_file), 0, None)?;
            let mut features_out = FeatureStoreWriter::open(
                &open_new(&new_commit.features_file),
                0,
                &shared.manifest,
            )?;

            for (id, mut e) in copy_live_rows(&state.images, &files.images, &mut images_out)? {
                if let Some(f) = e.features.as_mut() {
                    f.offset = features_out.copy_from(&files.features, f)?;
                }
                ops.push(MetaOp::PutImage(id, e));
            }
            for (id, e) in copy_live_rows(&state.texts, &files.texts, &mut texts_out)? {
                ops.push(MetaOp::PutText(id, e));
            }
            images_out.sync()?;
            texts_out.sync()?;
            features_out.sync()?;
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
        *shared.state.write() = state;
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

/// Appends the live rows of `table` to `to`, in id order, reading them from
/// `from`; returns each entry pointing at its new row.
fn copy_live_rows<E: TableEntry>(
    table: &Table<E>,
    from: &VectorFileWriter,
    to: &mut VectorFileWriter,
) -> Result<Vec<(u64, E)>> {
    let row_bytes = table.rows.vectors.row_bytes();
    let mut buf = vec![0u8; row_bytes];
    let mut ids: Vec<u64> = table.entries.keys().copied().collect();
    ids.sort_unstable();
    ids.into_iter()
        .enumerate()
        .map(|(new_row, id)| {
            let mut e = table.entries[&id].clone();
            from.read_at(&mut buf, e.row() * row_bytes as u64)?;
            to.append(&buf)?;
            e.set_row(new_row as u64);
            Ok((id, e))
        })
        .collect()
}
