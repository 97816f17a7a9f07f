//! `qseek texts add FILE` and `qseek texts list`: the sentences `search --image --texts` finds.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{print_line, IndexDir, ModelArgs, Outcome};
use crate::pipeline::texts::read_texts_file;
use crate::pipeline::{open_index, Collection};
use crate::service::texts;
use crate::Result;

#[derive(Debug, Subcommand)]
pub(super) enum TextsCommand {
    /// Add the texts of a file: one per line, or JSON lines {"id": ..., "text": ...}.
    Add(AddArgs),
    /// List the texts of the index as JSON lines {"id", "text"}.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub(super) struct AddArgs {
    /// The texts file.
    file: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    index: IndexDir,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    #[command(flatten)]
    index: IndexDir,
}

pub(super) fn run(cmd: TextsCommand) -> Result<Outcome> {
    match cmd {
        TextsCommand::Add(args) => {
            // Read and check the whole file before loading the model or touching the index.
            let entries = read_texts_file(&args.file)?;
            let c = Collection::open(
                &args.index.dir()?,
                args.model.model.as_deref(),
                &args.model.options()?,
            )?;
            let s = texts::add(
                &c,
                &args.file.display().to_string(),
                &entries,
                args.model.batch as usize,
                !args.model.quiet,
            )?;
            if args.json {
                print_line(
                    &mut std::io::stdout().lock(),
                    &serde_json::to_string(&s).expect("serialises"),
                )?;
            } else {
                println!(
                    "{} added, {} replaced, {} unchanged; {} texts in the index",
                    s.added, s.replaced, s.unchanged, s.texts_in_index
                );
            }
        }
        TextsCommand::List(args) => {
            let index = open_index(&args.index.dir()?)?;
            let mut out = std::io::stdout().lock();
            for line in texts::list(&index) {
                print_line(&mut out, &serde_json::to_string(&line).expect("serialises"))?;
            }
        }
    }
    Ok(Outcome::Success)
}
