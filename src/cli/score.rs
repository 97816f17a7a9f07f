//! `qseek score --image FILE --text TEXT`: ITC and ITM for every (image, text) pair.

use std::path::PathBuf;

use clap::Args;

use super::embed::write_line;
use super::{report_failure, ModelArgs, Outcome};
use crate::service::embeddings::ScoreTexts;
use crate::{Embedder, Error, Result};

#[derive(Debug, Args)]
pub(super) struct ScoreArgs {
    /// Image file(s) to score.
    #[arg(long = "image", short = 'i', required = true)]
    images: Vec<PathBuf>,
    /// Text(s) to score each image against.
    #[arg(long = "text", short = 't', required = true)]
    texts: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
}

pub(super) fn run(args: ScoreArgs) -> Result<Outcome> {
    ScoreTexts::check(&args.texts)?;
    let load = args.model.load_options()?;
    let embedder = Embedder::load(&args.model.options()?)?;
    let texts = ScoreTexts::new(&embedder, &args.texts)?;
    let mut out = std::io::stdout().lock();
    let mut outcome = Outcome::Success;
    for path in &args.images {
        match texts.score_image(&embedder, path, &load, args.model.batch as usize) {
            Ok(lines) => {
                for line in &lines {
                    write_line(&mut out, line)?;
                }
            }
            // The file could not be read or decoded: report it, score the others.
            Err(
                e @ (Error::Io { .. } | Error::ImageDecode { .. } | Error::ImageTooLarge { .. }),
            ) => {
                report_failure(path, &e);
                outcome = Outcome::SomeFailed;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(outcome)
}
