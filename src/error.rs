//! The one error type of the `qseek` crate.

use std::path::PathBuf;

/// Everything that can go wrong in qseek, sorted by what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("{path}: image is {width}x{height} = {megapixels:.1} megapixels, over the limit of {limit} megapixels (raise it with --max-megapixels)")]
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

    /// The user asked for something that cannot be done (bad flag value, empty query, ...).
    #[error("{0}")]
    Usage(String),

    /// The index layer failed.
    #[error(transparent)]
    Index(#[from] qseek_index::Error),

    /// A tensor operation failed (a bug or an out-of-memory, not bad input).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with qseek's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
