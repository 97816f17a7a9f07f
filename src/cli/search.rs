//! `qseek search`: photos for a sentence, photos for a photo, sentences for a photo.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{print_line as write_line, IndexDir, ModelArgs, Outcome};
use crate::engine::{self, EngineUri};
use crate::error::BadRequest;
use crate::pipeline::Collection;
use crate::service::calls::Direct;
use crate::service::query::{like_term, split_weight, text_term, PhotoFilterText, Sort};
use crate::service::search::{
    first_photo, search, Hit, QueryInput, SearchRequest, SearchSettings, DEFAULT_NOT_PROB,
};
use crate::Result;

#[derive(Debug, Args)]
pub(super) struct SearchArgs {
    /// The sentence to find photos for. A weight may prefix it, as in every term:
    /// `"2:golden retriever"`.
    query: Option<String>,
    /// Another sentence the photos should match too (its ITC, and its ITM when
    /// reranking, add to the score): `--also sunset`, `--also 0.5:sunset`.
    #[arg(
        long,
        value_name = "[W:]TEXT",
        help_heading = "Terms",
        allow_hyphen_values = true
    )]
    also: Vec<String>,
    /// A photo the results should look like (its Chamfer similarity adds to the score): a
    /// file, or an indexed photo as `id:N`; `--like 0.5:photo.jpg`. Alone, it is
    /// --image.
    #[arg(
        long,
        value_name = "[W:]PHOTO",
        help_heading = "Terms",
        allow_hyphen_values = true
    )]
    like: Vec<String>,
    /// A sentence the photos must not match: its ITC subtracts, and a reranked photo
    /// whose ITM match probability for it reaches --not-prob is dropped.
    #[arg(
        long = "not",
        value_name = "[W:]TEXT",
        help_heading = "Terms",
        allow_hyphen_values = true
    )]
    not: Vec<String>,
    /// The ITM match probability for a --not sentence at which a photo is dropped.
    #[arg(long, value_name = "P", default_value_t = DEFAULT_NOT_PROB, help_heading = "Terms")]
    not_prob: f32,
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
    /// Only photos taken on or after DATE: 2023, 2023-06, 2023-06-14 or RFC 3339 (in the
    /// photo's local time when it has no offset).
    #[arg(long, value_name = "DATE", help_heading = "Filters")]
    after: Option<String>,
    /// Only photos taken on or before DATE (to the end of it: `--before 2023` keeps all of
    /// 2023).
    #[arg(long, value_name = "DATE", help_heading = "Filters")]
    before: Option<String>,
    /// Only photos whose camera's make and model contain TEXT (ignoring case).
    #[arg(long, value_name = "TEXT", help_heading = "Filters")]
    camera: Option<String>,
    /// Only photos taken within KM kilometres (default 1) of LAT,LON.
    #[arg(
        long,
        value_name = "LAT,LON[,KM]",
        help_heading = "Filters",
        allow_hyphen_values = true
    )]
    near: Option<String>,
    /// Only photos without a date taken.
    #[arg(long, help_heading = "Filters", conflicts_with_all = ["after", "before"])]
    undated: bool,
    /// Order the results by `score` (best first) or by `date` taken (oldest first; with
    /// --min-prob, every result that passes it).
    #[arg(long, value_name = "ORDER", default_value = "score")]
    sort: Sort,
    /// Find candidates with the HNSW graph instead of scoring every photo exactly (about
    /// 0.3 s per 100 000 photos on 2 cores). The graph is saved in the index; the first
    /// search after much was added builds it again (minutes for 100 000 photos).
    #[arg(long)]
    ann: bool,
    /// Take candidates and scores from this engine (milvus://HOST[:PORT]/COLLECTION,
    /// filled by `qseek export`) instead of the index; the index still gives the model
    /// and stored vision features for the rerank.
    #[arg(long, value_name = "URI", conflicts_with = "ann")]
    engine: Option<String>,
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

pub(super) fn run(args: SearchArgs) -> Result<Outcome> {
    let mut terms = Vec::new();
    for also in &args.also {
        terms.push(text_term("--also", also, false)?);
    }
    for like in &args.like {
        terms.push(like_term("--like", like, false)?);
    }
    for not in &args.not {
        terms.push(text_term("--not", not, true)?);
    }
    let (query, weight) = match (args.query, args.image) {
        (Some(q), _) => {
            let (weight, q) = split_weight("the query", &q)?;
            (QueryInput::Text(q.to_string()), weight)
        }
        (None, Some(img)) => (QueryInput::ImageFile(img), 1.0),
        // `--like` alone: the first photo is the query.
        (None, None) => first_photo(&mut terms).ok_or(BadRequest::EmptyQuery)?,
    };
    let request = SearchRequest {
        query,
        texts: args.texts,
        k: args.k,
        offset: 0,
        rerank: args.rerank,
        min_prob: args.min_prob,
        under: args.under,
        weight,
        terms,
        not_prob: Some(args.not_prob),
        photo: PhotoFilterText {
            after: args.after,
            before: args.before,
            camera: args.camera,
            near: args.near,
            undated: args.undated,
        }
        .parse()?,
        sort: args.sort,
        ann: args.ann,
    };
    let engine = match &args.engine {
        Some(uri) => Some(Arc::from(engine::connect_to_search(&EngineUri::parse(
            uri,
        )?)?)),
        None => None,
    };
    let settings = SearchSettings {
        engine,
        ..SearchSettings::new(args.model.load_options()?)
    };
    let dir = args.index.dir()?;
    let collection = Collection::open(&dir, args.model.model.as_deref(), &args.model.options()?)?;
    let model = Direct {
        embedder: &collection.embedder,
        batch: args.model.batch as usize,
    };
    let response = search(&collection, &model, &settings, &request)?;
    for note in &response.notes {
        eprintln!("qseek: note: {note}");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        write_line(
            &mut out,
            &serde_json::to_string(&response).expect("serialises"),
        )?;
    } else if args.paths {
        for h in &response.results {
            let line = h.path.as_deref().or(h.text.as_deref()).unwrap_or_default();
            write_line(&mut out, line)?;
        }
    } else {
        print_table(&mut out, &response.results)?;
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
