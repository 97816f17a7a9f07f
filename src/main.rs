//! The `qseek` binary: parse flags, run, map the outcome to an exit status.

use clap::Parser;
use qseek::cli::{describe, exit_status, run, Cli, Outcome};

fn main() {
    qseek::model::use_one_thread_pool();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(Outcome::Success) => 0,
        Ok(Outcome::SomeFailed) => 1,
        Ok(Outcome::Interrupted) => 130,
        Err(e) => {
            eprintln!("qseek: {}", describe(&e));
            exit_status(&e)
        }
    };
    std::process::exit(code);
}
