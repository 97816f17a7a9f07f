//! `qseek shard-embed INPUT --shard I/N --out FILE.parquet` and `qseek import FILE...`:
//! embedding on many machines, indexing on one.

use std::path::PathBuf;

use clap::Args;
use qseek_index::VectorDtype;

use super::{seconds, stop_on_ctrl_c, IndexDir, ModelArgs, Outcome};
use crate::error::{NotFound, Param};
use crate::pipeline::embedding::FileNote;
use crate::pipeline::import::{import_shards, ImportOptions, ImportSummary};
use crate::pipeline::shard_embed::{shard_embed, ShardEmbedOptions, ShardEmbedSummary};
use crate::pipeline::shard_file::ShardSpec;
use crate::pipeline::walk::WalkOptions;
use crate::Result;

#[derive(Debug, Args)]
pub(super) struct ShardEmbedArgs {
    /// A folder (searched recursively, as `qseek index` does) or a file list: a text
    /// file with one image path per line (relative paths are taken from the list's
    /// folder).
    input: PathBuf,
    /// Which shard to embed: I/N, 0 <= I < N (e.g. $SLURM_ARRAY_TASK_ID/$N). A file
    /// belongs to the shard given by a hash of its path relative to the folder (or as
    /// the list writes it), so shards stay put when files come and go.
    #[arg(long, value_name = "I/N")]
    shard: ShardSpec,
    /// The shard file to write (Parquet). Work in progress goes to FILE.parquet.partial/: a
    /// rerun after a crash goes on from there; a rerun of a finished shard does nothing.
    #[arg(long, value_name = "FILE.parquet")]
    out: PathBuf,
    /// Also store each image's vision-encoder output, for an index that reranks from
    /// stored features (large: 1.4 MB per image in f32 for ViT-g).
    #[arg(long)]
    features: bool,
    /// How to store the vision features: f32, or f16 (half the disk) [default: f32 with
    /// --dtype f32, else f16].
    #[arg(long, value_name = "DTYPE", value_parser = ["f32", "f16"], requires = "features")]
    feature_dtype: Option<String>,
    /// Also enter hidden folders and take hidden files.
    #[arg(long)]
    hidden: bool,
    /// Write the work done to a part file at least every this many seconds (a crash
    /// loses at most that much).
    #[arg(long, default_value_t = 30.0)]
    commit_every: f64,
    /// Print the summary as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Debug, Args)]
pub(super) struct ImportArgs {
    /// Shard files written by `qseek shard-embed`.
    #[arg(required = true, value_name = "FILE.parquet")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    index: IndexDir,
    /// How a new index stores vectors: f32 (exact), f16 or int8 (smaller).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "int8"])]
    vectors: String,
    /// Commit at least every this many seconds.
    #[arg(long, default_value_t = 10.0)]
    commit_every: f64,
    /// Print the summary as one JSON document.
    #[arg(long)]
    json: bool,
    /// Do not show a progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
}

pub(super) fn shard_embed_run(args: ShardEmbedArgs) -> Result<Outcome> {
    let part_every = seconds(Param::CommitEvery, args.commit_every)?;
    if !args.input.exists() {
        return Err(NotFound::Path { path: args.input }.into());
    }
    let opts = ShardEmbedOptions {
        shard: args.shard,
        walk: WalkOptions {
            hidden: args.hidden,
            confine: false,
        },
        load: args.model.load_options()?,
        batch: args.model.batch as usize,
        features: args.features.then(|| {
            args.feature_dtype
                .as_deref()
                .map(|d| d.parse().expect("clap checked the value"))
        }),
        part_every,
        progress: !args.model.quiet,
    };
    let stop = stop_on_ctrl_c("stopping after the current batch");
    let summary = shard_embed(&args.model.options()?, &args.input, &args.out, &opts, stop)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("summary serialises")
        );
    } else {
        print_shard_summary(&summary);
    }
    Ok(Outcome::of(summary.interrupted, !summary.failed.is_empty()))
}

fn print_notes(title: &str, notes: &[FileNote]) {
    if !notes.is_empty() {
        println!("{title}:");
        for n in notes {
            println!("  {}: {}", n.path, n.reason);
        }
    }
}

fn print_shard_summary(s: &ShardEmbedSummary) {
    if s.already_complete {
        println!(
            "shard {} is complete already: {} ({} rows); nothing to do",
            s.shard, s.out, s.rows
        );
        return;
    }
    print_notes("skipped (not an image qseek reads)", &s.skipped);
    print_notes("failed", &s.failed);
    println!(
        "shard {}: {}{} files, {} embedded, {} same bytes as another, {} done by an earlier run, {} skipped, {} failed; {} rows ({:.1} s)",
        s.shard,
        if s.interrupted { "interrupted; kept so far: " } else { "" },
        s.files,
        s.embedded,
        s.duplicates,
        s.resumed,
        s.skipped.len(),
        s.failed.len(),
        s.rows,
        s.seconds,
    );
    if s.interrupted {
        println!("run the same command again to finish");
    } else {
        println!("wrote {}", s.out);
    }
}

pub(super) fn import_run(args: ImportArgs) -> Result<Outcome> {
    let commit_every = seconds(Param::CommitEvery, args.commit_every)?;
    for f in &args.files {
        if !f.exists() {
            return Err(NotFound::Path { path: f.clone() }.into());
        }
    }
    let opts = ImportOptions {
        vector_dtype: args
            .vectors
            .parse::<VectorDtype>()
            .expect("clap checked the value"),
        commit_every,
        progress: !args.quiet,
    };
    let stop = stop_on_ctrl_c("stopping after the current batch");
    let summary = import_shards(&args.index.dir()?, &args.files, &opts, stop)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("summary serialises")
        );
    } else {
        print_import_summary(&summary);
    }
    Ok(Outcome::of(summary.interrupted, false))
}

fn print_import_summary(s: &ImportSummary) {
    println!(
        "{}{} shards, {} rows: {} images added, {} paths of known bytes, {} unchanged; {} images in the index{} ({:.1} s)",
        if s.interrupted { "interrupted; committed so far: " } else { "" },
        s.shards,
        s.rows,
        s.added,
        s.reused,
        s.unchanged,
        s.images_in_index,
        if s.created { " (created)" } else { "" },
        s.seconds,
    );
}
