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
pub mod edge;
pub mod error;
pub mod files;
pub mod jobs;
pub mod limits;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::engine::VectorEngine;
use crate::error::BadRequest;
use crate::pipeline::indexer::IndexOptions;
use crate::pipeline::Collection;
use crate::preprocess::image::LoadOptions;
use crate::service::search::SearchSettings;
use crate::{Error, Result};

use batcher::Batcher;
use edge::Edge;
use error::error_response;
use jobs::Indexing;
use limits::DecodeSlots;

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

/// The page's Content-Security-Policy: its one inline script and style by their
/// SHA-256 (no other script runs, not even an injected one), requests to itself only,
/// no framing.
static PAGE_CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; img-src 'self' blob: data:; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        inline_hash(PAGE, "<script>", "</script>"),
        inline_hash(PAGE, "<style>", "</style>"),
    )
});

/// `'sha256-…'` of the text between `open` and `close` in `page`, as CSP hashes it.
fn inline_hash(page: &str, open: &str, close: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let start = page.find(open).expect("the page has the element") + open.len();
    let end = start + page[start..].find(close).expect("the element is closed");
    let digest = sha2::Sha256::digest(&page.as_bytes()[start..end]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The web page (HTML, with its script and style inline), with its policy.
#[utoipa::path(get, path = "/", tag = "server",
    responses((status = 200, description = "The page", content_type = "text/html"),
        (status = 303, description = "With a valid `?token=`: its session cookie set, to `/`")))]
async fn page() -> Response {
    let mut r = Html(PAGE).into_response();
    if let Ok(v) = HeaderValue::from_str(&PAGE_CSP) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Longest sentence a search takes, in characters; also the longest text one adds.
pub const MAX_QUERY_CHARS: usize = 1000;

/// Most texts one request adds.
pub const MAX_TEXTS_PER_REQUEST: usize = 1000;

/// Most candidates a search may rerank (LAVIS's largest `k_test`).
pub const MAX_RERANK: usize = 256;

/// Pixels an uploaded image may have, by default (in millions): a 16-bit RGBA
/// decode (8 bytes a pixel) with its 8-bit RGB copy (3 more) stays under 256 MiB.
pub const DEFAULT_MAX_UPLOAD_MEGAPIXELS: f64 = 24.0;

/// Bytes one decode may hold per pixel at its peak (16-bit RGBA and its RGB copy).
pub const DECODE_BYTES_PER_PIXEL: u64 = 11;

/// Connections served at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Seconds for a request's head (and an idle kept-alive connection), by default.
pub const DEFAULT_HEADER_TIMEOUT_S: f64 = 10.0;

/// Seconds a request body may pause, by default.
pub const DEFAULT_BODY_TIMEOUT_S: f64 = 30.0;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (port 0: any free port; the address is printed on stderr).
    pub addr: SocketAddr,
    /// Every request must carry this token (required beyond localhost).
    pub token: Option<String>,
    /// Host names the server answers for besides localhost and its address (a reverse
    /// proxy's).
    pub public_hosts: Vec<String>,
    /// Folders the indexing endpoint may index (besides the collection's roots).
    pub allow: Vec<PathBuf>,
    /// Largest upload, in bytes.
    pub max_upload_bytes: usize,
    /// Decoding limits of uploaded images.
    pub upload: LoadOptions,
    /// Images decoded at once (uploads, thumbnails, indexed query images); as many
    /// uploads again may wait, and more get 503.
    pub max_decodes: usize,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Longest wait for a request's head, and for the next request on an idle
    /// kept-alive connection.
    pub header_timeout: Duration,
    /// Longest gap while a request body arrives.
    pub body_timeout: Duration,
    /// How indexing runs index.
    pub index: IndexOptions,
    /// Decoding limits for thumbnails and indexed images.
    pub load: LoadOptions,
    /// ITM pairs per model call.
    pub batch: usize,
    /// Take search candidates and ITC scores from this engine
    /// ([`SearchSettings::engine`]), as `qseek search --engine` does.
    pub engine: Option<Arc<dyn VectorEngine>>,
}

impl ServeOptions {
    /// Serving on `addr` with no token, no `--allow` folder and the default limits
    /// (decodes: one per core).
    pub fn new(addr: SocketAddr, index: IndexOptions, load: LoadOptions, batch: usize) -> Self {
        Self {
            addr,
            token: None,
            public_hosts: Vec::new(),
            allow: Vec::new(),
            max_upload_bytes: 20 << 20,
            upload: LoadOptions {
                max_megapixels: DEFAULT_MAX_UPLOAD_MEGAPIXELS,
                ..load
            },
            max_decodes: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: Duration::from_secs_f64(DEFAULT_HEADER_TIMEOUT_S),
            body_timeout: Duration::from_secs_f64(DEFAULT_BODY_TIMEOUT_S),
            index,
            load,
            batch,
            engine: None,
        }
    }

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

    /// The most memory the server's decodes can hold at once, in bytes: every permit
    /// decoding the largest image it may (an upload, or an indexed photo for a
    /// thumbnail), and the bodies of every admitted upload. The model, the index and an
    /// indexing run come on top.
    pub fn worst_case_decode_bytes(&self) -> u64 {
        let megapixels = self.upload.max_megapixels.max(self.load.max_megapixels);
        let pixels = (megapixels * 1e6) as u64;
        let decodes = self.max_decodes as u64 * pixels * DECODE_BYTES_PER_PIXEL;
        decodes + 2 * self.max_decodes as u64 * self.max_upload_bytes as u64
    }
}

/// What every request shares.
pub struct AppState {
    collection: Arc<Collection>,
    model: Batcher,
    settings: SearchSettings,
    thumbnails: PathBuf,
    indexing: Indexing,
    decodes: DecodeSlots,
    batch: usize,
    max_upload_bytes: usize,
    /// The last near-duplicate scan, kept for its next pages (`api::duplicates`).
    dups: std::sync::Mutex<Option<api::DupsCache>>,
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
        if collection.index.roots().is_empty() && collection.index.stats().paths > 0 {
            eprintln!(
                "qseek: note: this index records no roots (it predates them): only --allow \
                 folders may be indexed, and files are served from their indexed paths \
                 wherever links lead; run `qseek index` on its folders once to record them"
            );
        }
        let app = router(collection, &opts, addr);
        eprintln!(
            "qseek: decodes hold at most {} MiB at once ({} at a time)",
            opts.worst_case_decode_bytes() >> 20,
            opts.max_decodes
        );
        eprintln!("qseek: serving http://{addr}/");
        listen(listener, app, &opts).await;
        Ok(())
    })
}

/// Accepts connections until Ctrl-C, at most `max_connections` at once, each HTTP/1.1
/// with the header timeout; then lets the open ones finish (up to 10 s).
async fn listen(listener: tokio::net::TcpListener, app: Router, opts: &ServeOptions) {
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper starts the header timer whenever it waits for a request's head, the next
    // one on a kept-alive connection included: one timeout covers both.
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout);
    let graceful = GracefulShutdown::new();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    eprintln!("qseek serve: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// The routes, their limits and middleware.
fn router(collection: Collection, opts: &ServeOptions, bound: SocketAddr) -> Router {
    let collection = Arc::new(collection);
    let state = Arc::new(AppState {
        model: Batcher::start(collection.clone(), opts.batch),
        settings: SearchSettings {
            max_query_chars: Some(MAX_QUERY_CHARS),
            max_rerank: Some(MAX_RERANK),
            upload: opts.upload,
            confine_reads: Some(opts.allow.clone()),
            engine: opts.engine.clone(),
            ..SearchSettings::new(opts.load)
        },
        thumbnails: files::thumbnail_dir(collection.index.path()),
        indexing: Indexing::new(&opts.allow, opts.index.clone()),
        decodes: DecodeSlots::new(opts.max_decodes),
        batch: opts.batch,
        max_upload_bytes: opts.max_upload_bytes,
        dups: std::sync::Mutex::new(None),
        collection,
    });
    let edge = Arc::new(Edge::new(
        bound,
        &opts.public_hosts,
        opts.token.as_deref(),
        opts.max_upload_bytes,
    ));
    api::routes(opts.max_upload_bytes)
        .split_for_parts()
        .0
        .fallback(|| async { api::not_found_route() })
        .layer(DefaultBodyLimit::max(edge::JSON_BODY_LIMIT))
        .layer(RequestBodyTimeoutLayer::new(opts.body_timeout))
        .layer(middleware::from_fn(json_errors))
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(300),
        ))
        .layer(middleware::from_fn_with_state(edge, edge::guard))
        .with_state(state)
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
