//! `qseek score --image FILE --text TEXT`: ITC and ITM for every (image, text) pair.

use candle_core::D;
use clap::Args;
use serde::Serialize;

use super::embed::write_line;
use std::path::PathBuf;

use super::{report_failure, ModelArgs, Outcome};
use crate::model::itc_scores;
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

#[derive(Serialize)]
struct ScoreLine<'a> {
    path: &'a str,
    text: &'a str,
    /// Max over the query vectors of the cosine with the text embedding.
    itc: f32,
    /// `[no match, match]`.
    itm_logits: [f32; 2],
    /// softmax(itm_logits)[1].
    itm_prob: f32,
}

pub(super) fn run(args: ScoreArgs) -> Result<Outcome> {
    if let Some(empty) = args
        .texts
        .iter()
        .find(|t| crate::preprocess::text::pre_caption(t).is_empty())
    {
        return Err(Error::Usage(format!(
            "--text {empty:?} is empty once normalised: give some words"
        )));
    }
    let load = args.model.load_options()?;
    let embedder = Embedder::load(&args.model.options()?)?;
    let ids = embedder.tokenize(&args.texts)?;
    let text_embeds = embedder.embed_token_ids(&ids)?;
    let mut out = std::io::stdout().lock();
    let mut outcome = Outcome::Success;
    for path in &args.images {
        let pixels = match embedder.pixel_values(path, &load) {
            Ok(p) => p,
            Err(e) => {
                report_failure(path, &e);
                outcome = Outcome::SomeFailed;
                continue;
            }
        };
        let (vision, embeds) = embedder.embed_pixels(&embedder.pixel_batch(&[pixels])?)?;
        let itc: Vec<f32> = itc_scores(&embeds, &text_embeds)?.squeeze(0)?.to_vec1()?;
        let logits = embedder.itm_logits(&vision, &ids)?;
        let probs: Vec<f32> = candle_nn::ops::softmax(&logits, D::Minus1)?
            .narrow(1, 1, 1)?
            .flatten_all()?
            .to_vec1()?;
        let logits: Vec<Vec<f32>> = logits.to_vec2()?;
        for (j, text) in args.texts.iter().enumerate() {
            let line = ScoreLine {
                path: &path.to_string_lossy(),
                text,
                itc: itc[j],
                itm_logits: [logits[j][0], logits[j][1]],
                itm_prob: probs[j],
            };
            write_line(&mut out, &line)?;
        }
    }
    Ok(outcome)
}
