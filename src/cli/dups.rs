//! `qseek dups`: groups of near-duplicate photos, best first. It lists them; deleting
//! is the user's call (qseek never deletes photos).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{print_line, IndexDir, Outcome};
use crate::pipeline::open_index;
use crate::service::dups::{self, DupsRequest, DupsResponse, ScoreDistribution, DEFAULT_THRESHOLD};
use crate::Result;

#[derive(Debug, Args)]
pub(super) struct DupsArgs {
    /// Two photos are near-duplicates when their symmetric Chamfer similarity (over
    /// BLIP-2's 32 query vectors) is at least this, between 0 and 1. Calibrate it on
    /// your photos with --show-scores.
    #[arg(long, short = 't', value_name = "T", default_value_t = DEFAULT_THRESHOLD)]
    threshold: f32,
    /// Only photos under this folder (or whose path starts with this prefix).
    #[arg(long, value_name = "DIR")]
    under: Option<PathBuf>,
    /// Also print how similar each photo is to its nearest other photo, as a histogram
    /// (in the JSON: `scores`): near-duplicates make a bump near 1.
    #[arg(long)]
    show_scores: bool,
    /// Print at most this many groups.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Skip this many groups first.
    #[arg(long, value_name = "N", default_value_t = 0)]
    offset: usize,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    index: IndexDir,
}

pub(super) fn run(args: DupsArgs) -> Result<Outcome> {
    let threshold = dups::threshold(Some(args.threshold))?;
    let index = open_index(&args.index.dir()?)?;
    let found = dups::find(
        &index,
        &DupsRequest {
            threshold: Some(threshold),
            under: args.under,
        },
    )?;
    let page = dups::page(&found, args.offset, args.limit, args.show_scores)?;
    let out = &mut std::io::stdout().lock();
    if args.json {
        print_line(out, &serde_json::to_string(&page).expect("serialises"))?;
    } else {
        print_page(out, &page)?;
    }
    Ok(Outcome::Success)
}

fn print_page(out: &mut impl Write, page: &DupsResponse) -> Result<()> {
    if let Some(scores) = &page.scores {
        print_scores(out, scores, page.threshold)?;
    }
    print_line(
        out,
        &format!(
            "{} group(s) of near-duplicates among {} photos (threshold {}{})",
            page.total_groups,
            page.images,
            page.threshold,
            if page.exact {
                ", every pair scored"
            } else {
                ""
            }
        ),
    )?;
    for (i, group) in page.groups.iter().enumerate() {
        print_line(
            out,
            &format!(
                "\ngroup {} ({} photos):",
                page.offset + i + 1,
                group.members.len()
            ),
        )?;
        for m in &group.members {
            let size = format!("{}x{}", m.width, m.height);
            let taken = m.taken_at.as_deref().unwrap_or("-");
            print_line(
                out,
                &format!("  {:.3}  {size:>11}  {taken:<25}  {}", m.similarity, m.path),
            )?;
            for copy in &m.copies {
                print_line(out, &format!("  {:>40}  same bytes: {copy}", ""))?;
            }
        }
    }
    Ok(())
}

/// The distribution as a histogram, the bin of the threshold marked.
fn print_scores(out: &mut impl Write, scores: &ScoreDistribution, threshold: f32) -> Result<()> {
    print_line(
        out,
        &format!(
            "similarity of each photo to its nearest other photo ({} photos):",
            scores.photos
        ),
    )?;
    let most = scores
        .bins
        .iter()
        .map(|b| b.photos)
        .max()
        .unwrap_or(0)
        .max(1);
    for b in &scores.bins {
        let bar = "#".repeat((b.photos * 50).div_ceil(most));
        let mark = if (b.from..b.to).contains(&threshold) {
            "  <- threshold"
        } else {
            ""
        };
        print_line(
            out,
            &format!("  {:.2}-{:.2} {:>8} {bar}{mark}", b.from, b.to, b.photos),
        )?;
    }
    print_line(out, "")
}
