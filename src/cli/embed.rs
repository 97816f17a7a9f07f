//! `qseek embed image FILE...` and `qseek embed text TEXT...`.

use std::io::Write;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{report_failure, ModelArgs, Outcome};
use crate::service::embeddings::{embed_images, embed_texts};
use crate::{Embedder, Result};

#[derive(Debug, Subcommand)]
pub(super) enum EmbedCommand {
    /// One JSON line per image: {"path", "embeds": [[...] × Q]} (Q L2-normalised vectors).
    Image(ImageArgs),
    /// One JSON line per text: {"text", "input_ids", "embed"} (one L2-normalised vector).
    Text(TextArgs),
}

#[derive(Debug, Args)]
pub(super) struct ImageArgs {
    /// Image files (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Debug, Args)]
pub(super) struct TextArgs {
    /// Texts to embed (normalised as LAVIS does, 35 tokens at most).
    #[arg(required = true)]
    texts: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
}

pub(super) fn run(cmd: EmbedCommand) -> Result<Outcome> {
    match cmd {
        EmbedCommand::Image(args) => images(args),
        EmbedCommand::Text(args) => texts(args),
    }
}

fn images(args: ImageArgs) -> Result<Outcome> {
    let load = args.model.load_options()?;
    let embedder = Embedder::load(&args.model.options()?)?;
    let mut out = std::io::stdout().lock();
    let mut outcome = Outcome::Success;
    for chunk in args.files.chunks(args.model.batch as usize) {
        for (path, result) in chunk.iter().zip(embed_images(&embedder, chunk, &load)?) {
            match result {
                Ok(line) => write_line(&mut out, &line)?,
                Err(e) => {
                    report_failure(path, &e);
                    outcome = Outcome::SomeFailed;
                }
            }
        }
    }
    Ok(outcome)
}

fn texts(args: TextArgs) -> Result<Outcome> {
    let embedder = Embedder::load(&args.model.options()?)?;
    let mut out = std::io::stdout().lock();
    for chunk in args.texts.chunks(args.model.batch as usize) {
        for line in embed_texts(&embedder, chunk)? {
            write_line(&mut out, &line)?;
        }
    }
    Ok(Outcome::Success)
}

/// Writes one JSON line; a closed pipe (`| head`) ends the program quietly.
pub(super) fn write_line(out: &mut impl Write, value: &impl Serialize) -> Result<()> {
    super::print_line(
        out,
        &serde_json::to_string(value).expect("plain data serialises"),
    )
}
