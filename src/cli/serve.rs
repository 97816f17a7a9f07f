//! `qseek serve`: the collection as a web service and a web page (see `crate::server`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use qseek_index::VectorDtype;

use super::{seconds, IndexDir, ModelArgs, Outcome};
use crate::engine::{self, EngineUri};
use crate::error::{BadRequest, Param};
use crate::pipeline::indexer::IndexOptions;
use crate::pipeline::walk::absolute;
use crate::pipeline::walk::WalkOptions;
use crate::pipeline::{Collection, CreateOptions};
use crate::preprocess::image::LoadOptions;
use crate::server::{
    serve, ServeOptions, DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_UPLOAD_MEGAPIXELS,
};
use crate::{Error, Result};

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Address to listen on. Anything but localhost needs --token.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Every request must carry this token (`Authorization: Bearer TOKEN`, or open the
    /// page once as /?token=TOKEN). Prefer $QSEEK_TOKEN: a flag shows in `ps`.
    #[arg(long, env = "QSEEK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Answer for this host name too (repeatable): the name a reverse proxy forwards.
    /// Without it only localhost, 127.0.0.1, [::1] and the bound address are answered.
    #[arg(long = "public-host", value_name = "NAME")]
    public_host: Vec<String>,
    /// A folder the web page and the API may index (repeatable); the folders `qseek
    /// index` was given may always be indexed again.
    #[arg(long = "allow", value_name = "DIR")]
    allow: Vec<PathBuf>,
    /// Largest image upload, in megabytes.
    #[arg(long, default_value_t = 20)]
    max_upload_mb: usize,
    /// Largest uploaded image, in megapixels (the default keeps one decode under
    /// 256 MiB).
    #[arg(long, default_value_t = DEFAULT_MAX_UPLOAD_MEGAPIXELS)]
    max_upload_megapixels: f64,
    /// Images decoded at once (uploads, thumbnails); as many uploads again may wait,
    /// more get 503 [default: the number of CPU cores].
    #[arg(long, value_name = "N")]
    max_decodes: Option<usize>,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a client may take to send a request's head; also how long an idle
    /// kept-alive connection stays open.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_HEADER_TIMEOUT_S)]
    header_timeout: f64,
    /// Seconds a request body may pause before the connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_BODY_TIMEOUT_S)]
    body_timeout: f64,
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
    let commit_every = seconds(Param::CommitEvery, args.commit_every)?;
    let header_timeout = seconds(Param::HeaderTimeout, args.header_timeout)?;
    let body_timeout = seconds(Param::BodyTimeout, args.body_timeout)?;
    let positive = |param, value: usize| {
        if value > 0 {
            Ok(value)
        } else {
            Err(BadRequest::OutOfRange {
                param,
                expected: "at least 1",
            })
        }
    };
    let max_connections = positive(Param::MaxConnections, args.max_connections)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max_decodes = positive(Param::MaxDecodes, args.max_decodes.unwrap_or(cores))?;
    if !(args.max_upload_megapixels.is_finite() && args.max_upload_megapixels > 0.0) {
        return Err(BadRequest::OutOfRange {
            param: Param::MaxUploadMegapixels,
            expected: "a positive number of megapixels",
        }
        .into());
    }
    // A name as `Host` carries it, not a URL: `https://` or a path would never match.
    for host in &args.public_host {
        let plain = |c: char| c.is_ascii_alphanumeric() || "-.:[]".contains(c);
        if host.is_empty() || !host.chars().all(plain) {
            return Err(BadRequest::OutOfRange {
                param: Param::PublicHost,
                expected:
                    "a host name as clients send it, e.g. photos.example.org (no scheme, no path)",
            }
            .into());
        }
    }
    let load = args.model.load_options()?;
    let allow = args
        .allow
        .iter()
        .map(|a| {
            absolute(a).map_err(|source| Error::Io {
                path: a.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>>>()?;
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
        public_hosts: args.public_host,
        allow,
        max_upload_bytes: args.max_upload_mb.saturating_mul(1 << 20),
        upload: LoadOptions {
            max_megapixels: args.max_upload_megapixels,
            ..load
        },
        max_decodes,
        max_connections,
        header_timeout,
        body_timeout,
        index: IndexOptions {
            walk: WalkOptions {
                hidden: false,
                confine: true,
            },
            load,
            batch: args.model.batch as usize,
            commit_every,
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
