//! The `qseek` command line: flags (clap) and one module per subcommand.
//!
//! Exit status: 0 when everything succeeded; 1 when some inputs (files, texts) failed
//! but the others were processed; 2 when the command could not run at all.

mod dups;
mod embed;
mod eval;
mod explain;
mod export;
mod index;
mod manage;
mod score;
mod search;
mod serve;
mod shard;
mod texts;

use clap::{Args, Parser, Subcommand};

use crate::embedder::{parse_device, parse_dtype, ModelOptions};
use crate::error::{BadRequest, ErrorKind, NotFound, Param};
use crate::model::checkpoint::DEFAULT_MODEL;
use crate::model::ModelSource;
use crate::preprocess::image::LoadOptions;
use crate::{Error, Result};

/// Find photos from a sentence, sentences from a photo, and photos from a photo (BLIP-2).
#[derive(Debug, Parser)]
#[command(name = "qseek", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print embeddings as JSON lines.
    #[command(subcommand)]
    Embed(embed::EmbedCommand),
    /// Score images against texts: ITC cosine, ITM logits and match probability.
    Score(score::ScoreArgs),
    /// Why a photo matches a sentence: the ITC query vector and an ITM heat map.
    Explain(explain::ExplainArgs),
    /// Index folders of photos (incremental: only new or changed files run the model).
    Index(index::IndexArgs),
    /// Embed one shard of a folder or file list into a Parquet file (for `import`).
    ShardEmbed(shard::ShardEmbedArgs),
    /// Build or extend an index from `shard-embed` files, without running the model.
    Import(shard::ImportArgs),
    /// Find photos for a sentence, photos like a photo, or texts for a photo.
    Search(search::SearchArgs),
    /// Write the index's images and texts into a distributed vector engine (Milvus).
    Export(export::ExportArgs),
    /// Manage the texts that `search --image FILE --texts` finds.
    #[command(subcommand)]
    Texts(texts::TextsCommand),
    /// List groups of near-duplicate photos (bursts, resized, re-encoded, cropped or
    /// lightly edited copies), best first. Never deletes anything.
    Dups(dups::DupsArgs),
    /// Show what an index holds.
    Info(manage::InfoArgs),
    /// Remove files or folders from the index.
    Remove(manage::RemoveArgs),
    /// Reclaim the space of removed and replaced items.
    Compact(manage::PlainArgs),
    /// Check every invariant of the index files.
    Verify(manage::PlainArgs),
    /// Image-text retrieval R@1/5/10 on Flickr30K/COCO-style annotations (BLIP-2 protocol).
    Eval(eval::EvalArgs),
    /// Serve the collection: a JSON API and a web page (loads the model once).
    Serve(serve::ServeArgs),
}

/// What happened, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was processed.
    Success,
    /// Some inputs failed (each reported on stderr); the rest were processed.
    SomeFailed,
    /// Stopped by Ctrl-C after committing what was done.
    Interrupted,
}

impl Outcome {
    /// How a run over many files ended: interrupted, else some failed, else success.
    pub(crate) fn of(interrupted: bool, some_failed: bool) -> Outcome {
        if interrupted {
            Outcome::Interrupted
        } else if some_failed {
            Outcome::SomeFailed
        } else {
            Outcome::Success
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Embed(cmd) => embed::run(cmd),
        Command::Score(args) => score::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Index(args) => index::run(args),
        Command::ShardEmbed(args) => shard::shard_embed_run(args),
        Command::Import(args) => shard::import_run(args),
        Command::Search(args) => search::run(args),
        Command::Export(args) => export::run(args),
        Command::Texts(cmd) => texts::run(cmd),
        Command::Dups(args) => dups::run(args),
        Command::Info(args) => manage::info(args),
        Command::Remove(args) => manage::remove(args),
        Command::Compact(args) => manage::compact(args),
        Command::Verify(args) => manage::verify(args),
        Command::Eval(args) => eval::run(args),
        Command::Serve(args) => serve::run(args),
    }
}

/// Flags every model-running command takes.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Checkpoint: a local directory or a Hugging Face hub id [default:
    /// Salesforce/blip2-itm-vit-g; for an existing index, the model it was built with].
    #[arg(long, short = 'm', env = "QSEEK_MODEL")]
    pub model: Option<String>,
    /// Precision of the image encoder: f32 (the reference), bf16 (fast on CPUs with
    /// AVX512-BF16), int8 (the ViT's layers in int8, the rest as bf16 or f32: CPUs with
    /// AVX2, fastest with AVX512-VNNI or AVX-VNNI; without VNNI the weights in 7 bits),
    /// f16 (GPUs). The Q-Former computes in f32 (ITM in bf16 under bf16 and int8 on CPUs
    /// with AVX512-BF16).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16", "int8"])]
    pub dtype: String,
    /// Where to run: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images (or texts) per model call.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Refuse to decode images larger than this many megapixels.
    #[arg(long, default_value_t = 100.0)]
    pub max_megapixels: f64,
    /// Do not show progress bars.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl ModelArgs {
    fn options(&self) -> Result<ModelOptions> {
        let mut opts = ModelOptions::new(ModelSource::parse(
            self.model.as_deref().unwrap_or(DEFAULT_MODEL),
        ));
        opts.dtype = parse_dtype(&self.dtype)?;
        opts.device = parse_device(&self.device)?;
        opts.progress = !self.quiet;
        Ok(opts)
    }

    fn load_options(&self) -> Result<LoadOptions> {
        // Written so that NaN is refused too.
        if self.max_megapixels.is_nan() || self.max_megapixels <= 0.0 {
            return Err(BadRequest::OutOfRange {
                param: Param::MaxMegapixels,
                expected: "positive",
            }
            .into());
        }
        Ok(LoadOptions {
            max_megapixels: self.max_megapixels,
            ..LoadOptions::default()
        })
    }
}

/// A flag's positive, finite number of seconds as a duration (NaN and infinity refused).
fn seconds(param: Param, value: f64) -> Result<std::time::Duration> {
    if value.is_finite() && value > 0.0 {
        Ok(std::time::Duration::from_secs_f64(value))
    } else {
        Err(BadRequest::OutOfRange {
            param,
            expected: "a positive number of seconds",
        }
        .into())
    }
}

/// The command line's spelling of a request parameter.
fn flag(param: Param) -> &'static str {
    match param {
        Param::Query => "the query",
        Param::K => "-k",
        Param::Rerank => "--rerank",
        Param::MinProb => "--min-prob",
        Param::NotProb => "--not-prob",
        Param::Terms => "the number of terms",
        Param::Offset => "--offset",
        Param::MaxMegapixels => "--max-megapixels",
        Param::CommitEvery => "--commit-every",
        Param::Text => "--text",
        Param::MaxUploadMegapixels => "--max-upload-megapixels",
        Param::HeaderTimeout => "--header-timeout",
        Param::BodyTimeout => "--body-timeout",
        Param::MaxConnections => "--max-connections",
        Param::MaxDecodes => "--max-decodes",
        Param::PublicHost => "--public-host",
        Param::Threshold => "--threshold",
        Param::Limit => "--limit",
    }
}

/// An error as one sentence for the terminal: the library's message, with the flag or
/// command that fixes it where there is one.
pub fn describe(error: &Error) -> String {
    match error {
        Error::BadRequest(BadRequest::EmptyQuery) => {
            "the query is empty: give a sentence, or --image FILE".into()
        }
        Error::BadRequest(BadRequest::OutOfRange { param, expected }) => {
            format!("{} must be {expected}", flag(*param))
        }
        Error::BadRequest(BadRequest::MinProbNeedsRerank) => {
            "--min-prob needs ITM reranking: use it with --rerank N (N > 0)".into()
        }
        Error::BadRequest(BadRequest::NoTexts) => {
            "the index holds no texts: add some with `qseek texts add FILE`".into()
        }
        Error::BadRequest(BadRequest::EmptyText { text }) => {
            format!("--text {text:?} is empty once normalised: give some words")
        }
        Error::NotFound(NotFound::Index { path }) => format!(
            "no index at {}: build one with `qseek index DIR` (or choose another with --index)",
            path.display()
        ),
        Error::ImageTooLarge { .. } => format!("{error} (raise it with --max-megapixels)"),
        Error::BadRequest(BadRequest::TokenRequired { addr }) => {
            format!("listening on {addr} (not only this machine) needs --token TOKEN")
        }
        Error::BadRequest(BadRequest::NoDataDirectory) => {
            "cannot find a data directory for the default index (no $HOME?): pass --index PATH"
                .into()
        }
        Error::BadRequest(BadRequest::TooManyTokens { asked, positions }) => {
            format!("--max-tokens {asked} exceeds the model's {positions} positions")
        }
        Error::BadRequest(BadRequest::EngineCollectionExists { collection }) => format!(
            "the engine already holds a collection {collection:?}: pass --replace (or --append), or name another"
        ),
        Error::NotFound(NotFound::EngineCollection { uri, collection }) => format!(
            "the engine {uri} holds no collection {collection:?}: fill it with `qseek export --to {uri}`, or fix --engine"
        ),
        Error::BadRequest(BadRequest::EngineUnsupported { what }) => {
            format!("{what} is not available with --engine: search without it")
        }
        _ => error.to_string(),
    }
}

/// The exit status of a command that could not run: 130 when the user interrupted it
/// (as for a command that stops cleanly on Ctrl-C), else 2, the user's fault or not
/// (documented in the README). The mapping lives here only.
pub fn exit_status(error: &Error) -> i32 {
    match error.kind() {
        ErrorKind::Interrupted => 130,
        ErrorKind::BadRequest
        | ErrorKind::NotFound
        | ErrorKind::Unsupported
        | ErrorKind::TooLarge
        | ErrorKind::InUse
        | ErrorKind::Forbidden
        | ErrorKind::Busy
        | ErrorKind::Internal => 2,
    }
}

/// Reports one failed input on stderr, the way every command does.
pub(crate) fn report_failure(what: &std::path::Path, error: &crate::Error) {
    // The error's message already names the file for file errors.
    let message = describe(error);
    if message.contains(&what.display().to_string()) {
        eprintln!("qseek: {message}");
    } else {
        eprintln!("qseek: {}: {message}", what.display());
    }
}

/// Installs the Ctrl-C handler of a long command and returns the flag it sets: the
/// command polls it, stops at the next safe point and keeps what it committed. A second
/// Ctrl-C quits at once (the index's commits are crash-safe, so that loses nothing
/// committed either).
pub(crate) fn stop_on_ctrl_c(what: &'static str) -> &'static std::sync::atomic::AtomicBool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    // Only fails if a handler is already installed, which leaves the flag unset: harmless.
    let _ = ctrlc::set_handler(move || {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nqseek: {what} (Ctrl-C again to quit now)");
    });
    &STOP
}

/// Where the index is.
#[derive(Debug, Clone, Args)]
pub struct IndexDir {
    /// Index directory [default: the user's data directory, e.g. ~/.local/share/qseek/index].
    #[arg(long, env = "QSEEK_INDEX", value_name = "PATH")]
    pub index: Option<std::path::PathBuf>,
}

impl IndexDir {
    fn dir(&self) -> Result<std::path::PathBuf> {
        match &self.index {
            Some(p) => Ok(p.clone()),
            None => crate::pipeline::default_index_dir(),
        }
    }
}

/// Writes one line to stdout; a closed pipe (`qseek ... | head`) ends the program quietly.
pub(crate) fn print_line(out: &mut impl std::io::Write, line: &str) -> Result<()> {
    let result = out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"));
    if let Err(e) = result {
        // A broken pipe means the reader has seen enough: graceful termination.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        return Err(crate::Error::Io {
            path: "<stdout>".into(),
            source: e,
        });
    }
    Ok(())
}
