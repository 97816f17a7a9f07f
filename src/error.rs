//! The one error type of the `qseek` crate.
//!
//! [`Error::kind`] sorts every error by who is at fault: the user's mistakes (a bad
//! request, something not found, an unsupported or oversized file, an index in use)
//! and internal failures. The CLI maps the kind to an exit status, the server to an
//! HTTP status. Messages name no command-line flag: the CLI says those itself.

use std::path::PathBuf;

use serde::Serialize;

/// Who is at fault, and so how a front end reports an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or contradicts itself (HTTP 400).
    BadRequest,
    /// Something the request names does not exist (HTTP 404).
    NotFound,
    /// A file is not an image qseek reads (HTTP 415).
    Unsupported,
    /// A file or image is over a size limit (HTTP 413).
    TooLarge,
    /// The index is used by another process, or the work asked for is already going on
    /// (HTTP 409).
    InUse,
    /// The request may not see what it names: a file outside the folders the service
    /// serves (HTTP 403).
    Forbidden,
    /// The service is at its limit of work in flight: try again shortly (HTTP 503 with
    /// `Retry-After`).
    Busy,
    /// The user stopped it (a terminal's Ctrl-C; exit status 130).
    Interrupted,
    /// Not the user's fault: a bug, a broken checkpoint, a disk or network failure (HTTP 500).
    Internal,
}

/// A request parameter, named as the library and the HTTP API name it (the CLI has its
/// own spelling of each, see `cli`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Param {
    /// The query sentence.
    Query,
    /// Results wanted.
    K,
    /// Candidates rescored with ITM.
    Rerank,
    /// Minimum ITM match probability.
    MinProb,
    /// ITM match probability that drops a result for a negative term.
    NotProb,
    /// Terms of a combined query.
    Terms,
    /// Results skipped (paging).
    Offset,
    /// Decoding limit.
    MaxMegapixels,
    /// Seconds between commits.
    CommitEvery,
    /// A text.
    Text,
    /// Decoding limit of uploads.
    MaxUploadMegapixels,
    /// Seconds for a request's head.
    HeaderTimeout,
    /// Seconds a request body may pause.
    BodyTimeout,
    /// Connections served at once.
    MaxConnections,
    /// Images decoded at once.
    MaxDecodes,
    /// A host name the server answers for.
    PublicHost,
    /// The near-duplicate threshold.
    Threshold,
    /// Groups wanted (paging).
    Limit,
}

impl std::fmt::Display for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Param::Query => "q",
            Param::K => "k",
            Param::Rerank => "rerank",
            Param::MinProb => "min_prob",
            Param::NotProb => "not_prob",
            Param::Terms => "the number of terms",
            Param::Offset => "offset",
            Param::MaxMegapixels => "max_megapixels",
            Param::CommitEvery => "commit_every",
            Param::Text => "text",
            Param::MaxUploadMegapixels => "max_upload_megapixels",
            Param::HeaderTimeout => "header_timeout",
            Param::BodyTimeout => "body_timeout",
            Param::MaxConnections => "max_connections",
            Param::MaxDecodes => "max_decodes",
            Param::PublicHost => "public_host",
            Param::Threshold => "threshold",
            Param::Limit => "limit",
        };
        f.write_str(name)
    }
}

/// A request its sender can fix, with what is wrong as data.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum BadRequest {
    /// The query (sentence or text) is empty once normalised.
    #[error("the query is empty: give a sentence or an image")]
    EmptyQuery,
    /// A text to score is empty once normalised.
    #[error("text {text:?} is empty once normalised: give some words")]
    EmptyText {
        /// The text.
        text: String,
    },
    /// The query is longer than the service takes.
    #[error("the query has {chars} characters, more than the limit of {limit}")]
    QueryTooLong {
        /// Its length.
        chars: usize,
        /// The limit.
        limit: usize,
    },
    /// A text to add is longer than the service takes.
    #[error("a text has {chars} characters, more than the limit of {limit}")]
    TextTooLong {
        /// Its length.
        chars: usize,
        /// The limit.
        limit: usize,
    },
    /// More candidates to rerank than the service takes.
    #[error("rerank must be at most {limit} (asked for {rerank})")]
    RerankTooLarge {
        /// As asked.
        rerank: usize,
        /// The limit.
        limit: usize,
    },
    /// More ITM passes than the service takes: reranked candidates × sentences.
    #[error("rerank × sentences must be at most {limit} ({rerank} × {sentences}): rerank fewer candidates")]
    RerankPairsTooMany {
        /// As asked.
        rerank: usize,
        /// Sentences in the query, negative ones included.
        sentences: usize,
        /// The limit.
        limit: usize,
    },
    /// A parameter is outside its range.
    #[error("{param} must be {expected}")]
    OutOfRange {
        /// Which.
        param: Param,
        /// What it must be.
        expected: &'static str,
    },
    /// A minimum match probability needs ITM scores, so reranking.
    #[error("a minimum match probability needs ITM reranking: set rerank to at least 1")]
    MinProbNeedsRerank,
    /// Image → texts on an index without texts.
    #[error("the index holds no texts: add some first")]
    NoTexts,
    /// A folder to index is not one this service may index.
    #[error("{path}: not a folder this service may index")]
    FolderNotAllowed {
        /// The folder as given.
        path: String,
    },
    /// A server listening beyond this machine must require a token.
    #[error("listening on {addr} (not only this machine) needs a token")]
    TokenRequired {
        /// The address.
        addr: String,
    },
    /// Indexing was asked for while a run is going on.
    #[error("an indexing run is already going on")]
    AlreadyIndexing,
    /// A texts file line (or request item) is malformed.
    #[error("{source_name}:{line}: {reason}")]
    BadTextsLine {
        /// The file (or request) it came from.
        source_name: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// There are no texts in what was given.
    #[error("{source_name}: no texts in it")]
    NoTextsGiven {
        /// The file (or request) it came from.
        source_name: String,
    },
    /// A request (its parameters, body or upload) the service cannot read.
    #[error("{reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// No folder for the default index on this system.
    #[error("cannot find a data directory for the default index (no $HOME?): name an index")]
    NoDataDirectory,
    /// More text tokens asked for than the model has positions.
    #[error("{asked} text tokens exceed the model's {positions} positions")]
    TooManyTokens {
        /// Tokens asked for.
        asked: usize,
        /// The Q-Former's position embeddings.
        positions: usize,
    },
    /// An evaluation dataset's annotation file is malformed.
    #[error("{path}: {reason}")]
    BadDataset {
        /// The annotation file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Images an evaluation dataset lists are not in its image folder.
    #[error(
        "{missing} of the images listed in {annotations} are not under {images_dir}: {}{}",
        examples.join(", "),
        if *missing > examples.len() { ", ..." } else { "" }
    )]
    DatasetImagesMissing {
        /// The annotation file.
        annotations: PathBuf,
        /// The image folder.
        images_dir: PathBuf,
        /// How many are missing.
        missing: usize,
        /// The first few.
        examples: Vec<String>,
    },
    /// An evaluation dataset's image could not be embedded (every image counts).
    #[error("{path}: {reason} ({failed} of the dataset's images failed)")]
    DatasetImageFailed {
        /// The first image that failed.
        path: String,
        /// Why.
        reason: String,
        /// How many failed.
        failed: usize,
    },
    /// The folder given as an evaluation cache is an index itself.
    #[error(
        "{path}: this is an index, not an eval cache folder (earlier qseek builds kept their \
         eval cache index there); give the cache a new folder, or delete this one"
    )]
    NotAnEvalCache {
        /// The folder.
        path: PathBuf,
    },
    /// An index in the evaluation cache stores vectors or features evaluation cannot use.
    #[error(
        "{path}: this index stores {vectors} vectors and {features} vision features; \
         evaluation needs F32 vectors and {wanted_features} features: give the cache a new folder"
    )]
    WrongEvalCache {
        /// The cache index.
        path: PathBuf,
        /// Its vector dtype.
        vectors: String,
        /// Its feature dtype, or "no".
        features: String,
        /// The feature dtype evaluation needs.
        wanted_features: String,
    },
    /// A file given as a shard is not one `shard-embed` wrote (not Parquet, or without
    /// its metadata or columns).
    #[error("{path}: not a qseek shard file: {reason}")]
    NotAShard {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A shard does not fit with the index, the other shards or the run that would
    /// extend it: another model, other shapes or dtypes.
    #[error("{path}: {reason}")]
    ShardMismatch {
        /// The shard file (or partial run).
        path: PathBuf,
        /// What differs, and what to do.
        reason: String,
    },
    /// An engine URI that does not parse.
    #[error("engine URI {uri:?}: {reason}")]
    EngineUri {
        /// As given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An export into a collection that already exists, without replacing or adding to it.
    #[error("the engine already holds a collection {collection:?}: replace it, add to it, or name another")]
    EngineCollectionExists {
        /// Its name.
        collection: String,
    },
    /// A search filter (a date, a place, a sort) is malformed or contradicts another.
    #[error("{param} {value:?} {reason}")]
    Filter {
        /// The flag or parameter.
        param: &'static str,
        /// As given.
        value: String,
        /// What is wrong, and how to write it.
        reason: String,
    },
    /// Texts for a photo take the photo alone.
    #[error("texts for a photo take that photo alone: drop the other terms (--also, --like, --not, a weight)")]
    TermsWithTexts,
    /// A photo filter through an engine whose export has no photo metadata.
    #[error("engine {uri:?} holds an export made before qseek exported photo metadata, so it cannot filter by date, camera or place: export the index again with `qseek export --to {uri} --replace`")]
    EngineExportTooOld {
        /// The engine.
        uri: String,
    },
    /// A search the engine backend does not run.
    #[error("{what} is not available through an engine: search the local index")]
    EngineUnsupported {
        /// The search or option.
        what: &'static str,
    },
}

/// Something a request names that does not exist.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[serde(tag = "missing", rename_all = "snake_case")]
pub enum NotFound {
    /// No index at this directory.
    #[error("no index at {path}")]
    Index {
        /// The directory.
        path: PathBuf,
    },
    /// No indexed image with this id.
    #[error("no image with id {id} in the index")]
    Image {
        /// The id.
        id: u64,
    },
    /// No such file or folder (a folder to index, an image to search by).
    #[error("{path}: no such file or folder")]
    Path {
        /// The path as given.
        path: PathBuf,
    },
    /// The engine holds no such collection (nothing was exported into it).
    #[error("the engine {uri} holds no collection {collection:?}: export an index into it first")]
    EngineCollection {
        /// The engine's URI.
        uri: String,
        /// The collection's name.
        collection: String,
    },
    /// No such route or resource.
    #[error("{what}: not found")]
    Resource {
        /// What was asked for.
        what: String,
    },
}

/// Everything that can go wrong in qseek, sorted by what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's request is wrong (see [`BadRequest`]).
    #[error(transparent)]
    BadRequest(#[from] BadRequest),

    /// What the request names does not exist (see [`NotFound`]).
    #[error(transparent)]
    NotFound(#[from] NotFound),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// An image file could not be decoded.
    #[error("{path}: cannot decode image: {reason}")]
    ImageDecode {
        /// The file.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },

    /// An image is larger than the configured decoding limit.
    #[error("{path}: image is {width}x{height} = {megapixels:.1} megapixels, over the limit of {limit} megapixels")]
    ImageTooLarge {
        /// The file.
        path: PathBuf,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// width × height / 1e6.
        megapixels: f64,
        /// The limit, in megapixels.
        limit: f64,
    },

    /// An upload is larger than the service takes.
    #[error("the upload is over the limit of {limit_bytes} bytes")]
    UploadTooLarge {
        /// The limit.
        limit_bytes: usize,
    },

    /// More texts in one request than the service takes.
    #[error("{count} texts in one request, more than the limit of {limit}: send them in parts")]
    TooManyTexts {
        /// How many were sent.
        count: usize,
        /// The limit.
        limit: usize,
    },

    /// An indexed file that now resolves (through a symbolic link) outside the folders
    /// the service serves.
    #[error("{path}: outside the folders this service serves")]
    OutsideRoots {
        /// The indexed path.
        path: PathBuf,
    },

    /// Too much work of one kind in flight (image decodes): the client may retry.
    #[error("the server is busy {what}: try again shortly")]
    Busy {
        /// What it is busy with, e.g. "decoding images".
        what: &'static str,
    },

    /// The model checkpoint is incomplete or inconsistent.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A tensor is missing from the checkpoint or has the wrong shape.
    #[error("checkpoint tensor `{name}`: {reason}")]
    Tensor {
        /// The safetensors key.
        name: String,
        /// What is wrong (expected vs actual shape, missing, ...).
        reason: String,
    },

    /// A `config.json` or `preprocessor_config.json` key is missing or invalid.
    #[error("{path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The model could not be fetched from the hub, or is not cached while offline.
    #[error("{0}")]
    Hub(String),

    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A command line that cannot run (a bad flag value): only the command-line front
    /// ends raise it.
    #[error("{0}")]
    Usage(String),

    /// The user stopped a long run (Ctrl-C) before it could give its result.
    #[error("interrupted while {during}; what was done is kept")]
    Interrupted {
        /// What was going on, e.g. "embedding images".
        during: &'static str,
    },

    /// An invariant the code relies on does not hold: a bug, never the user's fault.
    #[error("internal error: {0}")]
    Internal(String),

    /// A shard file could not be written or read back (the disk, or a bug; a file
    /// that is not a shard is [`BadRequest::NotAShard`]).
    #[error("{path}: parquet: {reason}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },

    /// The vector engine failed or could not be reached: not the user's typo (a
    /// malformed URI is [`BadRequest::EngineUri`]).
    #[error("engine {uri}: {operation}: {reason}")]
    Engine {
        /// The engine and collection.
        uri: String,
        /// What qseek asked of it.
        operation: String,
        /// What went wrong.
        reason: String,
    },

    /// The index layer failed.
    #[error(transparent)]
    Index(#[from] qseek_index::Error),

    /// A tensor operation failed (a bug or an out-of-memory, not bad input).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Who is at fault (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::BadRequest(BadRequest::AlreadyIndexing) => ErrorKind::InUse,
            Error::BadRequest(_) | Error::Usage(_) => ErrorKind::BadRequest,
            Error::OutsideRoots { .. } => ErrorKind::Forbidden,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Interrupted { .. } => ErrorKind::Interrupted,
            Error::ImageDecode { .. } => ErrorKind::Unsupported,
            Error::ImageTooLarge { .. }
            | Error::UploadTooLarge { .. }
            | Error::TooManyTexts { .. } => ErrorKind::TooLarge,
            Error::Index(qseek_index::Error::InUse { .. } | qseek_index::Error::WriterBusy) => {
                ErrorKind::InUse
            }
            Error::Index(qseek_index::Error::NotFound { .. }) => ErrorKind::NotFound,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Index(
                qseek_index::Error::ModelMismatch { .. } | qseek_index::Error::NoPositiveTerm,
            ) => ErrorKind::BadRequest,
            _ => ErrorKind::Internal,
        }
    }
}

/// `Result` with qseek's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
