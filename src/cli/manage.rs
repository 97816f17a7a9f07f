//! `qseek info`, `qseek remove`, `qseek compact`, `qseek verify`: looking after an index.

use std::path::PathBuf;

use clap::Args;

use super::{IndexDir, Outcome};
use crate::pipeline::open_index;
use crate::service::manage;
use crate::Result;

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
    let info = manage::info(&index, &dir);
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
    let span = match (&info.taken_first, &info.taken_last) {
        (Some(first), Some(last)) => format!(", taken {first} to {last}"),
        _ => String::new(),
    };
    println!(
        "metadata:         {} dated{span}, {} with a camera, {} with a place",
        info.photos_dated, info.photos_with_camera, info.photos_with_place
    );
    if info.photos_metadata_unread > 0 {
        println!(
            "                  {} never read: `qseek index` reads it, without the model",
            info.photos_metadata_unread
        );
    }
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
    let summary = manage::remove(&index, &args.paths)?;
    for p in &summary.not_in_index {
        eprintln!("qseek: {}: not in the index", p.display());
    }
    println!(
        "removed {} paths; {} images in the index",
        summary.removed, summary.images_in_index
    );
    Ok(if summary.not_in_index.is_empty() {
        Outcome::Success
    } else {
        Outcome::SomeFailed
    })
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
