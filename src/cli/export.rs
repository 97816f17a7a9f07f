//! `qseek export --to URI`: an index's collection into a distributed vector engine.

use clap::Args;

use super::{IndexDir, Outcome};
use crate::engine::{self, EngineUri, ExportMode};
use crate::pipeline::open_index;
use crate::Result;

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    /// The engine and collection: milvus://HOST[:PORT]/COLLECTION (texts go in
    /// COLLECTION_texts).
    #[arg(long, value_name = "URI")]
    to: String,
    /// Drop the collection first if the engine already holds it.
    #[arg(long, conflicts_with = "append")]
    replace: bool,
    /// Add to the collection if the engine already holds it (several machines each
    /// exporting their part of a collection).
    #[arg(long)]
    append: bool,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    index: IndexDir,
}

pub(super) fn run(args: ExportArgs) -> Result<Outcome> {
    let uri = EngineUri::parse(&args.to)?;
    let index = open_index(&args.index.dir()?)?;
    let mode = match (args.replace, args.append) {
        (true, _) => ExportMode::Replace,
        (_, true) => ExportMode::Append,
        _ => ExportMode::Create,
    };
    let report = engine::connect(&uri)?.export(&index, mode)?;
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("serialises"));
    } else {
        println!(
            "exported {} images ({} rows, {:.1} MB of vectors) and {} texts to {uri} in {:.1} s",
            report.images,
            report.image_rows,
            report.bytes_sent as f64 / 1e6,
            report.texts,
            report.seconds
        );
    }
    Ok(Outcome::Success)
}
