//! `qseek eval`: Flickr30K / COCO retrieval R@K with the BLIP-2 protocol.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use qseek_index::VectorDtype;

use super::{print_line, stop_on_ctrl_c, ModelArgs, Outcome};
use crate::model::checkpoint::DEFAULT_MODEL;
use crate::pipeline::eval::{
    cache_index_dir, evaluate, load_dataset, EvalOptions, EvalReport, Metrics,
};
use crate::pipeline::indexer::IndexOptions;
use crate::pipeline::walk::{absolute, WalkOptions};
use crate::pipeline::{Collection, CreateOptions};
use crate::Result;

#[derive(Debug, Args)]
pub(super) struct EvalArgs {
    /// LAVIS/BLIP retrieval annotations: a JSON list of {"image", "caption": [...]}
    /// (e.g. flickr30k_test.json, coco_karpathy_test.json).
    #[arg(long)]
    annotations: PathBuf,
    /// Folder the annotations' image paths are relative to.
    #[arg(long)]
    images: PathBuf,
    /// Candidates per query rescored with ITM (the paper's configs use 128).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    k_test: u32,
    /// Only the first N images (and their captions).
    #[arg(long, value_name = "N")]
    limit_images: Option<usize>,
    /// Only the first N captions.
    #[arg(long, value_name = "N")]
    limit_texts: Option<usize>,
    /// Cache folder of the dataset's embeddings and vision features: it holds one index
    /// per precision (--dtype), each reused by the next run with that precision
    /// [default: under the user's data directory, one per (annotations, images, model)].
    #[arg(long, value_name = "PATH")]
    cache: Option<PathBuf>,
    /// Print one JSON document (with every ground-truth rank).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub(super) fn run(args: EvalArgs) -> Result<Outcome> {
    // Everything about the inputs is checked before the model loads.
    let data = load_dataset(
        &args.annotations,
        &args.images,
        args.limit_images,
        args.limit_texts,
    )?;
    let root = match &args.cache {
        Some(c) => c.clone(),
        None => {
            // "cache 2": the folder holds one index per precision (earlier builds kept
            // one index in the folder itself).
            let key = format!(
                "{}\0{}\0{}\0cache 2",
                absolute(&args.annotations).unwrap_or_default().display(),
                absolute(&args.images).unwrap_or_default().display(),
                args.model.model.as_deref().unwrap_or(DEFAULT_MODEL)
            );
            let hash = blake3::hash(key.as_bytes()).to_hex()[..16].to_string();
            crate::pipeline::default_index_dir()?
                .with_file_name("eval")
                .join(hash)
        }
    };
    let model_options = args.model.options()?;
    let cache = cache_index_dir(&root, model_options.dtype)?;
    let collection = Collection::open_or_create(
        &cache,
        args.model.model.as_deref(),
        &model_options,
        CreateOptions {
            vector_dtype: VectorDtype::F32,
            store_vision_features: true,
            feature_dtype: None,
        },
    )?;
    let stop = stop_on_ctrl_c("stopping");
    let progress = !args.model.quiet;
    if collection.embedder.model().device().is_cpu() && progress {
        eprintln!(
            "qseek: note: running on CPU; the ITM rerank ({} images x {} texts, k_test {}) is slow there, see its ETA (a GPU build runs it with --device cuda)",
            data.images.len(),
            data.texts.len(),
            args.k_test
        );
    }
    let opts = EvalOptions {
        k_test: args.k_test as usize,
        index: IndexOptions {
            walk: WalkOptions::default(),
            load: args.model.load_options()?,
            batch: args.model.batch as usize,
            commit_every: Duration::from_secs(30),
            progress,
        },
        batch: args.model.batch as usize,
        progress,
    };
    let report = evaluate(&collection, &data, &opts, stop)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_line(
            &mut out,
            &serde_json::to_string(&report).expect("serialises"),
        )?;
    } else {
        print_table(&mut out, &report)?;
    }
    Ok(Outcome::Success)
}

fn print_table(out: &mut impl std::io::Write, r: &EvalReport) -> Result<()> {
    print_line(
        out,
        &format!(
            "{} images, {} texts, k_test {} ({} ITM pairs)",
            r.images, r.texts, r.k_test, r.itm_pairs
        ),
    )?;
    print_line(
        out,
        &format!(
            "{:<22} {:>7} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7} {:>7}   {:>7}",
            "",
            "txt_r1",
            "txt_r5",
            "txt_r10",
            "txt_rm",
            "img_r1",
            "img_r5",
            "img_r10",
            "img_rm",
            "r_mean"
        ),
    )?;
    let row = |name: &str, m: &Metrics| {
        format!(
            "{name:<22} {:>7.2} {:>7.2} {:>7.2} {:>7.2}   {:>7.2} {:>7.2} {:>7.2} {:>7.2}   {:>7.2}",
            m.txt_r1, m.txt_r5, m.txt_r10, m.txt_r_mean, m.img_r1, m.img_r5, m.img_r10, m.img_r_mean, m.r_mean
        )
    };
    print_line(out, &row("ITC (index, HNSW)", &r.itc_index))?;
    print_line(out, &row("ITC (exact)", &r.itc_exact))?;
    print_line(out, &row("ITC + ITM rerank", &r.itm_rerank))?;
    print_line(
        out,
        &format!(
            "HNSW candidate recall at k_test: image->text {:.4}, text->image {:.4}",
            r.candidate_recall.i2t, r.candidate_recall.t2i
        ),
    )
}
