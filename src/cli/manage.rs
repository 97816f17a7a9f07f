//! `qseek info`, `qseek remove`, `qseek compact`, `qseek verify`: looking after an index.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{IndexDir, Outcome};
use crate::pipeline::open_index;
use crate::pipeline::walk::{absolute, is_under};
use crate::{Error, Result};

#[derive(Debug, Args)]
pub(super) struct InfoArgs {
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    index: IndexDir,
}

#[derive(Debug, Args)]
pub(super) struct RemoveArgs {
    /// Indexed files, or folders (everything indexed under them goes).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    index: IndexDir,
}

#[derive(Debug, Args)]
pub(super) struct PlainArgs {
    #[command(flatten)]
    index: IndexDir,
}

#[derive(Serialize)]
struct Info {
    index: String,
    model: String,
    config_hash: String,
    format_version: u32,
    num_query_tokens: usize,
    dim: usize,
    vector_dtype: String,
    images: usize,
    paths: usize,
    texts: usize,
    dead_rows: usize,
    store_vision_features: bool,
    /// f32 or f16: what ITM reranking reads back.
    vision_feature_dtype: String,
    vision_features_bytes: u64,
    vector_bytes: u64,
    metadata_bytes: u64,
    bytes_on_disk: u64,
}

fn dir_size(path: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub(super) fn info(args: InfoArgs) -> Result<Outcome> {
    let dir = args.index.dir()?;
    let index = open_index(&dir)?;
    let m = index.manifest();
    let s = index.stats();
    let info = Info {
        index: dir.display().to_string(),
        model: m.model_id.clone(),
        config_hash: m.config_hash.clone(),
        format_version: m.format_version,
        num_query_tokens: m.num_query_tokens,
        dim: m.dim,
        vector_dtype: format!("{:?}", m.vector_dtype).to_lowercase(),
        images: s.images,
        paths: s.paths,
        texts: s.texts,
        dead_rows: s.dead_image_rows + s.dead_text_rows,
        store_vision_features: s.store_vision_features,
        vision_feature_dtype: format!("{:?}", m.vision_feature_dtype).to_lowercase(),
        vision_features_bytes: s.vision_features_bytes,
        vector_bytes: s.vector_bytes,
        metadata_bytes: s.metadata_bytes,
        bytes_on_disk: dir_size(&dir),
    };
    if args.json {
        println!("{}", serde_json::to_string(&info).expect("serialises"));
        return Ok(Outcome::Success);
    }
    println!("index:            {}", info.index);
    println!(
        "model:            {} (config {})",
        info.model, info.config_hash
    );
    println!(
        "vectors:          {} per image x {} dims, {}",
        info.num_query_tokens, info.dim, info.vector_dtype
    );
    println!("images:           {} ({} paths)", info.images, info.paths);
    println!("texts:            {}", info.texts);
    println!(
        "vision features:  {}",
        if info.store_vision_features {
            format!(
                "stored, {} ({})",
                info.vision_feature_dtype,
                human_bytes(info.vision_features_bytes)
            )
        } else {
            "not stored (reranking decodes the photos again)".into()
        }
    );
    println!(
        "dead rows:        {} (`qseek compact` reclaims them)",
        info.dead_rows
    );
    println!(
        "on disk:          {} (vectors {}, metadata {})",
        human_bytes(info.bytes_on_disk),
        human_bytes(info.vector_bytes),
        human_bytes(info.metadata_bytes)
    );
    Ok(Outcome::Success)
}

pub(super) fn remove(args: RemoveArgs) -> Result<Outcome> {
    let index = open_index(&args.index.dir()?)?;
    let indexed = index.paths();
    let mut writer = index.writer()?;
    let mut outcome = Outcome::Success;
    let mut removed = 0;
    for p in &args.paths {
        let abs = absolute(p).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
        let key = abs.to_string_lossy().into_owned();
        let matching: Vec<&String> = indexed.iter().filter(|i| is_under(i, &key)).collect();
        if matching.is_empty() {
            eprintln!("qseek: {}: not in the index", p.display());
            outcome = Outcome::SomeFailed;
        }
        for m in matching {
            if writer.remove_path(m)? {
                removed += 1;
            }
        }
    }
    writer.commit()?;
    println!(
        "removed {removed} paths; {} images in the index",
        index.stats().images
    );
    Ok(outcome)
}

pub(super) fn compact(args: PlainArgs) -> Result<Outcome> {
    let index = open_index(&args.index.dir()?)?;
    let before = index.stats();
    index.compact()?;
    let after = index.stats();
    println!(
        "compacted: {} dead rows dropped; vectors {} -> {}",
        before.dead_image_rows + before.dead_text_rows,
        human_bytes(before.vector_bytes),
        human_bytes(after.vector_bytes)
    );
    Ok(Outcome::Success)
}

pub(super) fn verify(args: PlainArgs) -> Result<Outcome> {
    let dir = args.index.dir()?;
    let index = open_index(&dir)?;
    let report = index.verify();
    if report.is_ok() {
        let stats = index.stats();
        println!(
            "{}: ok ({} images, {} texts)",
            dir.display(),
            stats.images,
            stats.texts
        );
        Ok(Outcome::Success)
    } else {
        println!("{}: problems found:\n{report}", dir.display());
        Ok(Outcome::SomeFailed)
    }
}
