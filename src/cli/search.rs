//! `qseek search`: photos for a sentence, photos for a photo, sentences for a photo.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{print_line as write_line, IndexDir, ModelArgs, Outcome};
use crate::pipeline::search::{
    image_to_images, image_to_texts, text_to_images, Hit, SearchOptions,
};
use crate::pipeline::walk::absolute;
use crate::pipeline::Collection;
use crate::{Error, Result};

#[derive(Debug, Args)]
pub(super) struct SearchArgs {
    /// The sentence to find photos for.
    query: Option<String>,
    /// Find photos similar to this image instead (or, with --texts, sentences for it).
    #[arg(long, short = 'i', conflicts_with = "query")]
    image: Option<PathBuf>,
    /// With --image: find texts (added with `qseek texts add`) for the image.
    #[arg(long, requires = "image")]
    texts: bool,
    /// Number of results.
    #[arg(short = 'k', long, default_value_t = 10)]
    k: usize,
    /// Rescore the best N candidates with the ITM head (score = ITM match logit + ITC, as
    /// BLIP-2's retrieval protocol does); 0 ranks by ITC only. Default: 16 when the index
    /// stores vision features, else 0 (reranking would run the image encoder on every
    /// candidate's file).
    #[arg(long)]
    rerank: Option<usize>,
    /// Drop results whose ITM match probability is below P (needs reranking).
    #[arg(long, value_name = "P")]
    min_prob: Option<f32>,
    /// Only photos under this folder (or whose path starts with this prefix).
    #[arg(long, value_name = "PATH")]
    under: Option<PathBuf>,
    /// Find candidates with the HNSW graph instead of scoring every photo exactly (about
    /// 0.3 s per 100 000 photos on 2 cores). The graph is saved in the index; the first
    /// search after much was added builds it again (minutes for 100 000 photos).
    #[arg(long)]
    ann: bool,
    /// Print one JSON document.
    #[arg(long, conflicts_with = "paths")]
    json: bool,
    /// Print only the paths (or texts), one per line, for piping.
    #[arg(long)]
    paths: bool,
    #[command(flatten)]
    index: IndexDir,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Serialize)]
struct Document<'a> {
    query: Query<'a>,
    results: &'a [Hit],
    notes: &'a [String],
}

#[derive(Serialize)]
struct Query<'a> {
    text: Option<&'a str>,
    image: Option<String>,
    mode: &'a str,
    k: usize,
    rerank: usize,
}

pub(super) fn run(args: SearchArgs) -> Result<Outcome> {
    if args.query.is_none() && args.image.is_none() {
        return Err(Error::Usage(
            "the query is empty: give a sentence, or --image FILE".into(),
        ));
    }
    if let Some(p) = args.min_prob {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Usage("--min-prob must be between 0 and 1".into()));
        }
    }
    let dir = args.index.dir()?;
    let collection = Collection::open(&dir, args.model.model.as_deref(), &args.model.options()?)?;
    let stored = collection.index.manifest().store_vision_features;
    let rerank = args.rerank.unwrap_or(if stored { 16 } else { 0 });
    let under = match &args.under {
        Some(u) => {
            let abs = absolute(u).map_err(|source| Error::Io {
                path: u.clone(),
                source,
            })?;
            let mut s = abs.to_string_lossy().into_owned();
            if abs.is_dir() && !s.ends_with('/') {
                s.push('/');
            }
            Some(s)
        }
        None => None,
    };
    let opts = SearchOptions {
        k: args.k,
        rerank,
        min_prob: args.min_prob,
        under,
        ann: args.ann,
        load: args.model.load_options()?,
        batch: args.model.batch as usize,
    };
    let (mode, mut result) = match (&args.query, &args.image) {
        (Some(q), _) => ("text_to_images", text_to_images(&collection, q, &opts)?),
        (None, Some(img)) if args.texts => {
            ("image_to_texts", image_to_texts(&collection, img, &opts)?)
        }
        (None, Some(img)) => ("image_to_images", image_to_images(&collection, img, &opts)?),
        (None, None) => unreachable!("checked above"),
    };
    if args.rerank.is_none() && !stored && mode != "image_to_images" {
        result.notes.push(
            "ranked by ITC only: this index stores no vision features, so ITM reranking (--rerank N) would run the image encoder on each of the N candidates' files; `qseek index --store-vision-features` into a new index makes it cheap".into(),
        );
    }
    for note in &result.notes {
        eprintln!("qseek: note: {note}");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = Document {
            query: Query {
                text: args.query.as_deref(),
                image: args.image.as_ref().map(|p| p.display().to_string()),
                mode,
                k: args.k,
                rerank,
            },
            results: &result.hits,
            notes: &result.notes,
        };
        write_line(&mut out, &serde_json::to_string(&doc).expect("serialises"))?;
    } else if args.paths {
        for h in &result.hits {
            let line = h.path.as_deref().or(h.text.as_deref()).unwrap_or_default();
            write_line(&mut out, line)?;
        }
    } else {
        print_table(&mut out, &result.hits)?;
    }
    Ok(Outcome::Success)
}

fn print_table(out: &mut impl Write, hits: &[Hit]) -> Result<()> {
    if hits.is_empty() {
        return write_line(out, "no results");
    }
    let fmt =
        |v: Option<f32>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    write_line(
        out,
        &format!(
            "{:>4}  {:>8}  {:>7}  {:>8}  {:>6}  result",
            "rank", "score", "itc", "itm", "prob"
        ),
    )?;
    for h in hits {
        let what = match (&h.path, &h.text) {
            (Some(p), _) if h.copies.is_empty() => p.clone(),
            (Some(p), _) => format!("{p} (+{} copies)", h.copies.len()),
            (None, Some(t)) => match &h.id {
                Some(id) => format!("[{id}] {t}"),
                None => t.clone(),
            },
            (None, None) => String::new(),
        };
        write_line(
            out,
            &format!(
                "{:>4}  {:>8.4}  {:>7}  {:>8}  {:>6}  {what}",
                h.rank,
                h.score,
                fmt(h.itc, 4),
                fmt(h.itm_logit, 3),
                fmt(h.itm_prob, 3),
            ),
        )?;
    }
    Ok(())
}
