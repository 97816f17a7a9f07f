//! `qseek serve`: the collection as an HTTP service and a web page (axum on tokio).
//!
//! The model is loaded once and the index kept open in one [`AppState`] shared by every
//! request. Model and index work runs on tokio's blocking pool; sentences to embed and
//! ITM pairs to score go through the [`batcher::Batcher`], which merges concurrent
//! requests into one model call. Indexing runs on its own thread ([`jobs`]) while
//! searches read the last commit. Files are served by image id only ([`files`]).
//!
//! Not for: deciding anything about searching or indexing (that is [`crate::service`]).

mod api;
pub mod batcher;
pub mod error;
pub mod files;
pub mod jobs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;

use crate::engine::VectorEngine;
use crate::error::BadRequest;
use crate::pipeline::indexer::IndexOptions;
use crate::pipeline::Collection;
use crate::preprocess::image::LoadOptions;
use crate::service::search::SearchSettings;
use crate::{Error, Result};

use batcher::Batcher;
use error::error_response;
use jobs::Indexing;

/// The web page: one HTML document with its style and script, built into the binary
/// (no build step, no CDN, works offline).
const PAGE: &str = concat!(
    include_str!("page/head.html"),
    "<style>\n",
    include_str!("page/app.css"),
    "</style>\n",
    include_str!("page/body.html"),
    "<script>\n",
    include_str!("page/app.js"),
    "</script>\n</body>\n</html>\n"
);

/// Longest sentence a search takes, in characters.
pub const MAX_QUERY_CHARS: usize = 1000;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (port 0: any free port; the address is printed on stderr).
    pub addr: SocketAddr,
    /// Every request must carry this token (required beyond localhost).
    pub token: Option<String>,
    /// Folders the indexing endpoint may index (besides the collection's own).
    pub allow: Vec<PathBuf>,
    /// Largest upload, in bytes.
    pub max_upload_bytes: usize,
    /// How indexing runs index.
    pub index: IndexOptions,
    /// Decoding limits for uploads and thumbnails.
    pub load: LoadOptions,
    /// ITM pairs per model call.
    pub batch: usize,
    /// Take search candidates and ITC scores from this engine
    /// ([`SearchSettings::engine`]), as `qseek search --engine` does.
    pub engine: Option<Arc<dyn VectorEngine>>,
}

impl ServeOptions {
    /// Refuses to listen beyond this machine without a token.
    pub fn check(&self) -> Result<()> {
        let token = self.token.as_deref().unwrap_or("");
        if !self.addr.ip().is_loopback() && token.is_empty() {
            return Err(BadRequest::TokenRequired {
                addr: self.addr.to_string(),
            }
            .into());
        }
        Ok(())
    }
}

/// What every request shares.
pub struct AppState {
    collection: Arc<Collection>,
    model: Batcher,
    settings: SearchSettings,
    thumbnails: PathBuf,
    token: Option<String>,
    indexing: Indexing,
    batch: usize,
    max_upload_bytes: usize,
}

/// Serves until Ctrl-C, searching the index (or `opts.engine`).
pub fn serve(collection: Collection, opts: ServeOptions) -> Result<()> {
    opts.check()?;
    // The engine's client owns a tokio runtime, which must not be dropped inside the
    // server's: this reference outlives it.
    let _engine = opts.engine.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|source| Error::Io {
                path: opts.addr.to_string().into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            path: opts.addr.to_string().into(),
            source,
        })?;
        let app = router(collection, &opts);
        eprintln!("qseek: serving http://{addr}/");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|source| Error::Io {
                path: addr.to_string().into(),
                source,
            })
    })
}

/// The routes, their limits and middleware.
fn router(collection: Collection, opts: &ServeOptions) -> Router {
    let collection = Arc::new(collection);
    let state = Arc::new(AppState {
        model: Batcher::start(collection.clone(), opts.batch),
        settings: SearchSettings {
            load: opts.load,
            max_query_chars: Some(MAX_QUERY_CHARS),
            engine: opts.engine.clone(),
        },
        thumbnails: files::thumbnail_dir(collection.index.path()),
        token: opts.token.clone().filter(|t| !t.is_empty()),
        indexing: Indexing::new(&opts.allow, opts.index.clone()),
        batch: opts.batch,
        max_upload_bytes: opts.max_upload_bytes,
        collection,
    });
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .merge(api::routes(opts.max_upload_bytes))
        .fallback(|| async { api::not_found_route() })
        .layer(DefaultBodyLimit::max(1 << 20))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn(json_errors))
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(300),
        ))
        .with_state(state)
}

/// With a token set, every request carries it: `Authorization: Bearer TOKEN`, or
/// `?token=TOKEN` (for `<img src>` and the page's first load).
async fn require_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_string)
    });
    let given = from_header.map(str::to_string).or(from_query);
    match given {
        Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => error_response(
            StatusCode::UNAUTHORIZED,
            "this server needs its token: `Authorization: Bearer TOKEN` or `?token=TOKEN`",
            serde_json::Value::Null,
        ),
    }
}

/// Compares without stopping at the first difference (no timing hint).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Errors that axum and tower-http make themselves (a malformed id, an oversized body,
/// a timeout) are plain text: give them the same JSON shape as ours.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.trim().to_string()
    };
    error_response(status, &message, serde_json::Value::Null).into_response()
}
