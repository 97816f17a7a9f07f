//! `qseek explain --image FILE --text TEXT`: why the photo matches the sentence: the
//! query vector that gave the ITC max (and the runner-up), the ITM logit and a Grad-CAM
//! heat map over the ViT's patch grid, printed and, with `--out`, drawn over the photo.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::embed::write_line;
use super::{ModelArgs, Outcome};
use crate::service::calls::Direct;
use crate::service::explain::overlay::overlay_png;
use crate::service::explain::{explain, ExplainImage, ExplainRequest, Explanation};
use crate::service::query::text_term;
use crate::{Embedder, Error, Result};

#[derive(Debug, Args)]
pub(super) struct ExplainArgs {
    /// The photo.
    #[arg(long = "image", short = 'i')]
    image: PathBuf,
    /// The sentence (repeatable: each gets its own map).
    #[arg(long = "text", short = 't', required = true)]
    texts: Vec<String>,
    /// Another sentence of the query, with an optional weight (`--also 0.5:sunset`).
    #[arg(long, value_name = "[W:]TEXT", allow_hyphen_values = true)]
    also: Vec<String>,
    /// A sentence the photo must not match (its map shows where it would).
    #[arg(long = "not", value_name = "[W:]TEXT", allow_hyphen_values = true)]
    not: Vec<String>,
    /// The Q-Former layer whose cross-attention the map reads (a layer with
    /// cross-attention) [default: the one nearest the middle: 6 for BLIP-2].
    #[arg(long)]
    layer: Option<usize>,
    /// Write the photo with the first sentence's map blended over it to this PNG file
    /// (`heat.png`; with several sentences also `heat.1.png`, `heat.2.png`, …).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print the whole explanation as one JSON document (the maps included).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub(super) fn run(args: ExplainArgs) -> Result<Outcome> {
    let load = args.model.load_options()?;
    let mut terms = Vec::new();
    for text in &args.texts {
        terms.push(text_term("--text", text, false)?);
    }
    for also in &args.also {
        terms.push(text_term("--also", also, false)?);
    }
    for not in &args.not {
        terms.push(text_term("--not", not, true)?);
    }
    let embedder = Embedder::load(&args.model.options()?)?;
    let image = ExplainImage::from_file(&embedder, &args.image, &load)?;
    let model = Direct {
        embedder: &embedder,
        batch: args.model.batch as usize,
    };
    let req = ExplainRequest {
        terms,
        layer: args.layer,
    };
    let explanation = explain(&embedder, &model, &image, &req)?;
    if let (Some(out), Some(photo)) = (&args.out, &image.photo) {
        for (i, term) in explanation.terms.iter().enumerate() {
            let flat: Vec<f32> = term.heat.iter().flatten().copied().collect();
            let path = numbered(out, i);
            let png = overlay_png(photo, &flat, explanation.grid)?;
            std::fs::write(&path, png).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            eprintln!("wrote {}", path.display());
        }
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        write_line(&mut stdout, &explanation)?;
    } else {
        print_text(&mut stdout, &explanation)?;
    }
    Ok(Outcome::Success)
}

/// `heat.png` for the first map, `heat.1.png`, `heat.2.png`, … for the others.
fn numbered(out: &std::path::Path, i: usize) -> PathBuf {
    if i == 0 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let ext = out
        .extension()
        .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    out.with_file_name(format!("{stem}.{i}{ext}"))
}

fn print_text(out: &mut impl Write, e: &Explanation) -> Result<()> {
    let mut text = String::new();
    let features = if e.stored_features {
        "stored vision features"
    } else {
        "the photo through the ViT"
    };
    text.push_str(&format!(
        "layer {} cross-attention, {g}×{g} patches, from {features}\n",
        e.layer,
        g = e.grid
    ));
    for t in &e.terms {
        text.push_str(&format!("\n{:?} (weight {})\n", t.text, t.weight));
        text.push_str(&format!(
            "  ITC {:.4}: query vector {}",
            t.itc.best.similarity, t.itc.best.query
        ));
        if let Some(r) = t.itc.runner_up {
            text.push_str(&format!("; runner-up {} at {:.4}", r.query, r.similarity));
        }
        text.push_str(&format!(
            "\n  ITM match logit {:.4}, probability {:.4}\n  heat map (×{:.3e}; hottest patch row {}, column {}):\n",
            t.itm_logit, t.itm_prob, t.heat_max, t.hottest[0], t.hottest[1]
        ));
        for row in &t.heat {
            text.push_str("   ");
            for v in row {
                let shade = if t.heat_max > 0.0 {
                    v / t.heat_max
                } else {
                    0.0
                };
                text.push(match (shade * 4.0).round() as u32 {
                    0 => ' ',
                    1 => '░',
                    2 => '▒',
                    3 => '▓',
                    _ => '█',
                });
                text.push(' ');
            }
            text.push('\n');
        }
    }
    super::print_line(out, text.trim_end())
}
