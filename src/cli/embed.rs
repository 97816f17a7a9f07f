//! `qseek embed image FILE...` and `qseek embed text TEXT...`.

use std::io::Write;

use clap::{Args, Subcommand};
use rayon::prelude::*;
use serde::Serialize;

use std::path::PathBuf;

use super::{report_failure, ModelArgs, Outcome};
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

#[derive(Serialize)]
struct ImageLine<'a> {
    path: &'a str,
    embeds: Vec<Vec<f32>>,
}

#[derive(Serialize)]
struct TextLine<'a> {
    text: &'a str,
    input_ids: &'a [u32],
    embed: Vec<f32>,
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
        // Decoding is independent per file: spread it over the cores.
        let decoded: Vec<_> = chunk
            .par_iter()
            .map(|p| embedder.pixel_values(p, &load))
            .collect();
        let mut good = Vec::new();
        let mut pixels = Vec::new();
        for (path, result) in chunk.iter().zip(decoded) {
            match result {
                Ok(p) => {
                    good.push(path);
                    pixels.push(p);
                }
                Err(e) => {
                    report_failure(path, &e);
                    outcome = Outcome::SomeFailed;
                }
            }
        }
        if good.is_empty() {
            continue;
        }
        let (_, embeds) = embedder.embed_pixels(&embedder.pixel_batch(&pixels)?)?;
        let embeds: Vec<Vec<Vec<f32>>> = embeds.to_vec3()?;
        for (path, embeds) in good.into_iter().zip(embeds) {
            let line = ImageLine {
                path: &path.to_string_lossy(),
                embeds,
            };
            write_line(&mut out, &line)?;
        }
    }
    Ok(outcome)
}

fn texts(args: TextArgs) -> Result<Outcome> {
    let embedder = Embedder::load(&args.model.options()?)?;
    let mut out = std::io::stdout().lock();
    for chunk in args.texts.chunks(args.model.batch as usize) {
        let ids = embedder.tokenize(chunk)?;
        let embeds: Vec<Vec<f32>> = embedder.embed_token_ids(&ids)?.to_vec2()?;
        for ((text, ids), embed) in chunk.iter().zip(&ids).zip(embeds) {
            write_line(
                &mut out,
                &TextLine {
                    text,
                    input_ids: ids,
                    embed,
                },
            )?;
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
