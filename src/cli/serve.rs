//! `qseek serve`: the collection as a web service and a web page (see `crate::server`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use qseek_index::VectorDtype;

use super::{IndexDir, ModelArgs, Outcome};
use crate::engine::{self, EngineUri};
use crate::error::{BadRequest, Param};
use crate::pipeline::indexer::IndexOptions;
use crate::pipeline::walk::WalkOptions;
use crate::pipeline::{Collection, CreateOptions};
use crate::server::{serve, ServeOptions};
use crate::Result;

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Address to listen on. Anything but localhost needs --token.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Every request must carry this token (`Authorization: Bearer TOKEN` or `?token=`).
    #[arg(long, env = "QSEEK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A folder the web page and the API may index (repeatable); folders already in the
    /// index may always be indexed again.
    #[arg(long = "allow", value_name = "DIR")]
    allow: Vec<PathBuf>,
    /// Largest image upload, in megabytes.
    #[arg(long, default_value_t = 20)]
    max_upload_mb: usize,
    /// While indexing, commit at least every this many seconds (searches see new
    /// photos after each commit).
    #[arg(long, default_value_t = 10.0)]
    commit_every: f64,
    /// Take search candidates and ITC scores from this engine
    /// (milvus://HOST[:PORT]/COLLECTION, filled by `qseek export`), as `qseek search
    /// --engine` does; the index still gives the model and stored vision features.
    #[arg(long, value_name = "URI")]
    engine: Option<String>,
    #[command(flatten)]
    index: IndexDir,
    #[command(flatten)]
    model: ModelArgs,
}

pub(super) fn run(args: ServeArgs) -> Result<Outcome> {
    if !(args.commit_every.is_finite() && args.commit_every > 0.0) {
        return Err(BadRequest::OutOfRange {
            param: Param::CommitEvery,
            expected: "a positive number of seconds",
        }
        .into());
    }
    let load = args.model.load_options()?;
    // Before loading the model: a malformed or unreachable engine, or one without the
    // collection, fails at once.
    let engine = match &args.engine {
        Some(uri) => Some(Arc::from(engine::connect_to_search(&EngineUri::parse(
            uri,
        )?)?)),
        None => None,
    };
    let opts = ServeOptions {
        addr: args.addr,
        token: args.token,
        allow: args.allow,
        max_upload_bytes: args.max_upload_mb.saturating_mul(1 << 20),
        index: IndexOptions {
            walk: WalkOptions { hidden: false },
            load,
            batch: args.model.batch as usize,
            commit_every: Duration::from_secs_f64(args.commit_every),
            progress: false,
        },
        load,
        batch: args.model.batch as usize,
        engine,
    };
    // Before loading the model: a refused address fails at once.
    opts.check()?;
    let collection = Collection::open_or_create(
        &args.index.dir()?,
        args.model.model.as_deref(),
        &args.model.options()?,
        CreateOptions {
            vector_dtype: VectorDtype::F32,
            store_vision_features: false,
            feature_dtype: None,
        },
    )?;
    serve(collection, opts)?;
    Ok(Outcome::Success)
}
