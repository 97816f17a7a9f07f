//! `verify`: every invariant of an index, checked against what is on disk.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::search::max_sim::norm;
use crate::state::{Shared, TableKind};
use crate::storage::manifest::Manifest;

/// What [`Index::verify`](crate::Index::verify) found. Empty `problems` means the index is sound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Live images checked.
    pub images: usize,
    /// Live paths checked.
    pub paths: usize,
    /// Live texts checked.
    pub texts: usize,
    /// One line per broken invariant, naming the file or item.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether no invariant is broken.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} images, {} paths, {} texts",
            self.images, self.paths, self.texts
        )?;
        if self.problems.is_empty() {
            return writeln!(f, "ok");
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        Ok(())
    }
}

/// Tolerance on the norm of a stored vector: int8 quantisation moves it ~1%.
const NORM_TOLERANCE: f32 = 0.05;

pub(crate) fn verify(shared: &Shared) -> VerifyReport {
    // The graphs are checked too: load or build them first, without the lock.
    shared.ensure_graph(TableKind::Images, true);
    shared.ensure_graph(TableKind::Texts, true);
    let mut problems = Vec::new();
    match Manifest::read(&shared.dir) {
        Ok(m) if m == shared.manifest => {}
        Ok(_) => problems.push("manifest.json changed since the index was opened".to_string()),
        Err(e) => problems.push(format!("manifest: {e}")),
    }
    let state = shared.state();
    match shared.meta.load() {
        Ok(disk) => {
            if disk.state != state.commit {
                problems.push(format!(
                    "sled commit state (generation {}) differs from the loaded one (generation {})",
                    disk.state.generation, state.commit.generation
                ));
            }
            if disk.images != state.images.entries || disk.texts != state.texts.entries {
                problems.push("sled entries differ from the loaded ones".to_string());
            }
            if disk.paths.len() != state.paths.len() || disk.hashes != state.hashes {
                problems.push("sled path or hash index differs from the loaded one".to_string());
            }
        }
        Err(e) => problems.push(format!("metadata: {e}")),
    }
    for (name, len, rows, row_bytes) in [
        (
            &state.commit.image_vectors_file,
            state.commit.image_vectors_len,
            state.images.rows.vectors.rows(),
            state.images.rows.vectors.row_bytes(),
        ),
        (
            &state.commit.text_vectors_file,
            state.commit.text_vectors_len,
            state.texts.rows.vectors.rows(),
            state.texts.rows.vectors.row_bytes(),
        ),
        (&state.commit.features_file, state.commit.features_len, 0, 0),
    ] {
        let path = shared.dir.join(name);
        match std::fs::metadata(&path) {
            Ok(md) if md.len() != len => problems.push(format!(
                "{}: {} bytes on disk, last commit recorded {len}",
                path.display(),
                md.len()
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
        if row_bytes > 0 && (rows * row_bytes) as u64 != len {
            problems.push(format!(
                "{}: {rows} rows loaded for {len} committed bytes",
                path.display()
            ));
        }
    }

    // Image entries ↔ rows ↔ paths ↔ hashes.
    let mut rows_seen: HashMap<u64, u64> = HashMap::new();
    for (id, e) in &state.images.entries {
        if id >= &state.commit.next_image_id {
            problems.push(format!(
                "image {id}: id not below next_image_id {}",
                state.commit.next_image_id
            ));
        }
        if let Some(other) = rows_seen.insert(e.row, *id) {
            problems.push(format!(
                "images {other} and {id} share vector row {}",
                e.row
            ));
        }
        if state
            .images
            .rows
            .owners
            .get(e.row as usize)
            .copied()
            .flatten()
            != Some(*id)
        {
            problems.push(format!(
                "image {id}: row table does not map row {} to it",
                e.row
            ));
        }
        if e.paths.is_empty() {
            problems.push(format!("image {id}: no paths"));
        }
        for p in &e.paths {
            if state.paths.get(&p.path) != Some(id) {
                problems.push(format!("image {id}: path {:?} not mapped to it", p.path));
            }
        }
        if state.hashes.get(&e.content_hash) != Some(id) {
            problems.push(format!(
                "image {id}: content hash {} not mapped to it",
                e.content_hash
            ));
        }
        if let Some(f) = &e.features {
            let end = state.features.end_of(f);
            if end > state.commit.features_len {
                problems.push(format!(
                    "image {id}: vision features end at byte {end}, past the committed length"
                ));
            }
        }
    }
    for (path, id) in &state.paths {
        if !state
            .images
            .entries
            .get(id)
            .is_some_and(|e| e.paths.iter().any(|p| &p.path == path))
        {
            problems.push(format!(
                "path {path:?}: maps to image {id}, which does not list it"
            ));
        }
    }
    for (hash, id) in &state.hashes {
        if state.images.entries.get(id).map(|e| &e.content_hash) != Some(hash) {
            problems.push(format!(
                "content hash {hash}: maps to image {id}, which has another hash"
            ));
        }
    }
    let live_rows = state.images.rows.owners.iter().flatten().count();
    if live_rows != state.images.entries.len() {
        problems.push(format!(
            "{live_rows} live image rows for {} images",
            state.images.entries.len()
        ));
    }
    for (id, e) in &state.texts.entries {
        if state
            .texts
            .rows
            .owners
            .get(e.row as usize)
            .copied()
            .flatten()
            != Some(*id)
        {
            problems.push(format!(
                "text {id}: row table does not map row {} to it",
                e.row
            ));
        }
        if id >= &state.commit.next_text_id {
            problems.push(format!(
                "text {id}: id not below next_text_id {}",
                state.commit.next_text_id
            ));
        }
    }

    // Every live row the graph covers has its graph points (unless a
    // compaction since `ensure_graph` dropped the graph: it is rebuilt from the
    // same rows). Rows past `graph_rows` are a commit's, still going in.
    let mut points_per_row: HashMap<u64, usize> = HashMap::new();
    let image_rows = &state.images.rows;
    if let Some(graph) = &image_rows.graph {
        for (_, target) in graph.points().iter() {
            *points_per_row.entry(target.row).or_default() += 1;
        }
        let per_image = shared.manifest.graph_points_per_image;
        for e in state.images.entries.values() {
            let n = points_per_row.get(&e.row).copied().unwrap_or(0);
            if (e.row as usize) < image_rows.graph_rows && n != per_image {
                problems.push(format!(
                    "vector row {}: {n} graph points, expected {per_image}",
                    e.row
                ));
            }
        }
    }
    let text_rows = &state.texts.rows;
    if let Some(graph) = &text_rows.graph {
        let text_points: std::collections::HashSet<u64> =
            graph.points().iter().map(|(_, t)| t.row).collect();
        for (id, e) in &state.texts.entries {
            if (e.row as usize) < text_rows.graph_rows && !text_points.contains(&e.row) {
                problems.push(format!("text {id}: not in the text graph"));
            }
        }
    }

    // Stored vectors are finite and unit-length.
    let dim = shared.manifest.dim;
    let bad_vectors: Vec<String> = state
        .images
        .entries
        .par_iter()
        .filter_map(|(id, e)| {
            let v = state.images.rows.vectors.row_f32(e.row as usize);
            let bad = v.chunks_exact(dim).any(|x| {
                let n = norm(x);
                !n.is_finite() || (n - 1.0).abs() > NORM_TOLERANCE
            });
            bad.then(|| format!("image {id}: a stored vector is not finite or not unit-length"))
        })
        .collect();
    problems.extend(bad_vectors);

    drop(state);
    let lexical_counts = shared
        .lexical
        .lock()
        .expect("lexical index lock poisoned")
        .counts();
    let state = shared.state();
    match lexical_counts {
        Ok((paths, texts)) => {
            if paths != state.paths.len() as u64 || texts != state.texts.entries.len() as u64 {
                problems.push(format!(
                    "lexical index has {paths} paths and {texts} texts, metadata {} and {}",
                    state.paths.len(),
                    state.texts.entries.len()
                ));
            }
        }
        Err(e) => problems.push(format!("lexical index: {e}")),
    }
    VerifyReport {
        images: state.images.entries.len(),
        paths: state.paths.len(),
        texts: state.texts.entries.len(),
        problems,
    }
}
