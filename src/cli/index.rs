//! `qseek index DIR...`: create or update the index of photo folders.

use std::path::PathBuf;

use clap::Args;
use qseek_index::{FeatureDtype, VectorDtype};

use super::{seconds, stop_on_ctrl_c, IndexDir, ModelArgs, Outcome};
use crate::error::{NotFound, Param};
use crate::pipeline::indexer::{index_folders, IndexOptions, IndexSummary};
use crate::pipeline::walk::WalkOptions;
use crate::pipeline::{Collection, CreateOptions};
use crate::Result;

#[derive(Debug, Args)]
pub(super) struct IndexArgs {
    /// Folders (searched recursively) or single image files.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    index: IndexDir,
    /// Also enter hidden folders and take hidden files.
    #[arg(long)]
    hidden: bool,
    /// How a new index stores vectors: f32 (exact), f16 or int8 (smaller).
    #[arg(long, default_value = "f32", value_name = "f32|f16|int8")]
    vectors: VectorDtype,
    /// A new index also stores each image's vision-encoder output, so that reranking
    /// need not decode the photo again (large: 257x1408 values per image for ViT-g,
    /// 1.4 MB in f32, 0.7 MB in f16).
    #[arg(long)]
    store_vision_features: bool,
    /// How a new index stores the vision features: f32 (exact; the default with
    /// --dtype f32) or f16 (half the disk; the default with a half --dtype; moves the
    /// ITM logits ~100 times further from the reference).
    #[arg(long, value_name = "f32|f16")]
    feature_dtype: Option<FeatureDtype>,
    /// Commit at least every this many seconds (an interruption loses at most that much work).
    #[arg(long, default_value_t = 10.0)]
    commit_every: f64,
    /// Print the summary as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub(super) fn run(args: IndexArgs) -> Result<Outcome> {
    let vector_dtype = args.vectors;
    let commit_every = seconds(Param::CommitEvery, args.commit_every)?;
    for p in &args.paths {
        if !p.exists() {
            return Err(NotFound::Path { path: p.clone() }.into());
        }
    }
    let dir = args.index.dir()?;
    let collection = Collection::open_or_create(
        &dir,
        args.model.model.as_deref(),
        &args.model.options()?,
        CreateOptions {
            vector_dtype,
            store_vision_features: args.store_vision_features,
            feature_dtype: args.feature_dtype,
        },
    )?;
    let stop = stop_on_ctrl_c("stopping after the current batch");
    let opts = IndexOptions {
        walk: WalkOptions {
            hidden: args.hidden,
            confine: false,
        },
        load: args.model.load_options()?,
        batch: args.model.batch as usize,
        commit_every,
        progress: !args.model.quiet,
    };
    let summary = index_folders(&collection, &args.paths, &opts, stop)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("summary serialises")
        );
    } else {
        print_summary(&summary);
    }
    Ok(Outcome::of(summary.interrupted, !summary.failed.is_empty()))
}

fn print_summary(s: &IndexSummary) {
    if !s.skipped.is_empty() {
        println!("skipped (not an image qseek reads):");
        for n in &s.skipped {
            println!("  {}: {}", n.path, n.reason);
        }
    }
    if !s.failed.is_empty() {
        println!("failed:");
        for n in &s.failed {
            println!("  {}: {}", n.path, n.reason);
        }
    }
    if !s.metadata_notes.is_empty() {
        println!("metadata left out (the photos are indexed):");
        for n in &s.metadata_notes {
            println!("  {}: {}", n.path, n.reason);
        }
    }
    if s.metadata_read > 0 {
        println!(
            "read the date, camera and place of {} indexed photos (no model needed)",
            s.metadata_read
        );
    }
    let rate = if s.seconds > 0.0 {
        s.embedded as f64 / s.seconds
    } else {
        0.0
    };
    println!(
        "{}{} embedded, {} reused (moved/copied/touched), {} unchanged, {} removed, {} skipped, {} failed; {} images in the index ({:.1} s, {:.2} images/s)",
        if s.interrupted { "interrupted; committed so far: " } else { "" },
        s.embedded,
        s.reused,
        s.unchanged,
        s.removed,
        s.skipped.len(),
        s.failed.len(),
        s.images_in_index,
        s.seconds,
        rate
    );
    if s.interrupted {
        println!("run `qseek index` again to finish");
    }
}
