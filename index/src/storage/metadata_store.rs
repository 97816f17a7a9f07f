//! Metadata in sled: images, paths, content hashes, texts and the commit state.
//!
//! Everything lives in sled's default tree under one-letter prefixes, so that a
//! commit is a single `apply_batch` (atomic) followed by `flush` (durable):
//!
//! | key                | value                         |
//! |--------------------|-------------------------------|
//! | `m/state`          | [`CommitState`] (JSON), roots |
//! | `i/` + image id BE | [`ImageEntry`] (JSON)         |
//! | `t/` + text id BE  | [`TextEntry`] (JSON)          |
//! | `p/` + path        | image id BE                   |
//! | `h/` + hash        | image id BE                   |

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::photo::PhotoMeta;
use crate::{Error, Result};

/// Identifies an image: one set of `Q` vectors, shared by every path whose
/// bytes have the same content hash. Stable across commits and compactions.
pub type ImageId = u64;
/// Identifies a text. Stable across commits and compactions.
pub type TextId = u64;

/// What the caller knows about an image file when adding it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// Path of the file (as the caller spells it; used for prefix filters).
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Hash of the file's bytes (any stable string, e.g. blake3 hex).
    pub content_hash: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// What the photo's metadata says (date, camera, place), when it was read; `None`
    /// keeps what the index has.
    pub photo: Option<PhotoMeta>,
}

/// One path of an image, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathEntry {
    /// The path.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// When it was indexed, seconds since the Unix epoch.
    pub indexed_at: i64,
}

/// Where an image's vision features are in the features file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FeatureRef {
    /// Byte offset.
    pub offset: u64,
    /// Shape, e.g. `[257, 1408]`; the byte length is `2 * product`.
    pub shape: Vec<usize>,
}

/// One image as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ImageEntry {
    pub content_hash: String,
    pub width: u32,
    pub height: u32,
    /// Row of its vectors in the image vector file.
    pub row: u64,
    /// Every path with these bytes; an image with no path is removed.
    pub paths: Vec<PathEntry>,
    pub features: Option<FeatureRef>,
    /// What its metadata says; `None` in entries written before it was read (the next
    /// `qseek index` reads it), `Some` (perhaps empty) once read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photo: Option<PhotoMeta>,
}

/// One text as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TextEntry {
    pub text: String,
    pub external_id: Option<String>,
    /// Row of its vector in the text vector file.
    pub row: u64,
}

/// The state a commit makes durable besides the entries: which files hold the
/// vectors and how many bytes of them are committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct CommitState {
    pub generation: u64,
    pub image_vectors_file: String,
    pub image_vectors_len: u64,
    pub text_vectors_file: String,
    pub text_vectors_len: u64,
    pub features_file: String,
    pub features_len: u64,
    pub next_image_id: ImageId,
    pub next_text_id: TextId,
    /// The folders and files the collection was built from (absolute paths), sorted;
    /// empty in indexes older than this field.
    #[serde(default)]
    pub roots: Vec<String>,
}

impl CommitState {
    /// File names for the files a compaction to `generation` writes.
    pub(crate) fn with_files_for(mut self, generation: u64) -> Self {
        self.image_vectors_file = format!("image_vectors.g{generation}.bin");
        self.text_vectors_file = format!("text_vectors.g{generation}.bin");
        self.features_file = format!("vision_features.g{generation}.bin");
        self
    }
}

/// Everything sled holds, loaded.
pub(crate) struct Loaded {
    pub state: CommitState,
    pub images: HashMap<ImageId, ImageEntry>,
    pub texts: HashMap<TextId, TextEntry>,
    pub paths: HashMap<String, ImageId>,
    pub hashes: HashMap<String, ImageId>,
}

/// One change to sled, applied with others in one atomic batch.
pub(crate) enum MetaOp {
    PutImage(ImageId, ImageEntry),
    DeleteImage(ImageId),
    PutText(TextId, TextEntry),
    DeleteText(TextId),
    PutPath(String, ImageId),
    DeletePath(String),
    PutHash(String, ImageId),
    DeleteHash(String),
}

const STATE_KEY: &[u8] = b"m/state";

/// How long [`MetadataStore::open`] waits for sled's lock to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether sled failed to open because its lock file is held. sled 0.34
/// reports that as an `Other` error whose message starts with "could not
/// acquire lock" (the `WouldBlock` from the OS is only in the text).
fn is_lock_held(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().starts_with("could not acquire lock")
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

/// The sled database of an index.
pub(crate) struct MetadataStore {
    db: sled::Db,
    path: PathBuf,
}

impl MetadataStore {
    /// Opens (or creates) the database. sled holds an exclusive file lock for
    /// as long as a process has the database open, and releases it from its
    /// background threads shortly after the last handle is dropped; so a
    /// lock held for more than [`LOCK_WAIT`] means another process has it.
    pub(crate) fn open(path: &Path) -> Result<MetadataStore> {
        let start = std::time::Instant::now();
        let db = loop {
            let opened = sled::Config::new()
                .path(path)
                // Metadata is small; sled's 1 GB default cache would only hide leaks.
                .cache_capacity(64 << 20)
                .open();
            match opened {
                Err(sled::Error::Io(io)) if is_lock_held(&io) => {
                    if start.elapsed() >= LOCK_WAIT {
                        return Err(Error::InUse {
                            path: path.parent().unwrap_or(path).to_path_buf(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => {
                    break other.map_err(|source| Error::Metadata {
                        path: path.to_path_buf(),
                        source,
                    })?
                }
            }
        };
        Ok(MetadataStore {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self) -> impl Fn(sled::Error) -> Error + '_ {
        move |source| Error::Metadata {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason: format!("{what}: {e}"),
        }
    }

    pub(crate) fn has_state(&self) -> Result<bool> {
        self.db.contains_key(STATE_KEY).map_err(self.err())
    }

    /// Applies `ops` and the new `state` atomically and waits until they are on disk.
    pub(crate) fn commit(&self, ops: &[MetaOp], state: &CommitState) -> Result<()> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                MetaOp::PutImage(id, e) => batch.insert(key(b"i/", &id.to_be_bytes()), json(e)),
                MetaOp::DeleteImage(id) => batch.remove(key(b"i/", &id.to_be_bytes())),
                MetaOp::PutText(id, e) => batch.insert(key(b"t/", &id.to_be_bytes()), json(e)),
                MetaOp::DeleteText(id) => batch.remove(key(b"t/", &id.to_be_bytes())),
                MetaOp::PutPath(p, id) => {
                    batch.insert(key(b"p/", p.as_bytes()), id.to_be_bytes().to_vec())
                }
                MetaOp::DeletePath(p) => batch.remove(key(b"p/", p.as_bytes())),
                MetaOp::PutHash(h, id) => {
                    batch.insert(key(b"h/", h.as_bytes()), id.to_be_bytes().to_vec())
                }
                MetaOp::DeleteHash(h) => batch.remove(key(b"h/", h.as_bytes())),
            }
        }
        batch.insert(STATE_KEY, json(state));
        self.db.apply_batch(batch).map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    pub(crate) fn load(&self) -> Result<Loaded> {
        let state_bytes = self
            .db
            .get(STATE_KEY)
            .map_err(self.err())?
            .ok_or_else(|| self.corrupt("commit state", "missing"))?;
        let state: CommitState =
            serde_json::from_slice(&state_bytes).map_err(|e| self.corrupt("commit state", e))?;
        let id_of = |k: &[u8], what: &str| -> Result<u64> {
            let bytes: [u8; 8] = k
                .try_into()
                .map_err(|_| self.corrupt(what, "key is not 8 bytes"))?;
            Ok(u64::from_be_bytes(bytes))
        };
        let mut images = HashMap::new();
        for kv in self.db.scan_prefix(b"i/") {
            let (k, v) = kv.map_err(self.err())?;
            let id = id_of(&k[2..], "image key")?;
            let entry: ImageEntry =
                serde_json::from_slice(&v).map_err(|e| self.corrupt("image entry", e))?;
            images.insert(id, entry);
        }
        let mut texts = HashMap::new();
        for kv in self.db.scan_prefix(b"t/") {
            let (k, v) = kv.map_err(self.err())?;
            let id = id_of(&k[2..], "text key")?;
            let entry: TextEntry =
                serde_json::from_slice(&v).map_err(|e| self.corrupt("text entry", e))?;
            texts.insert(id, entry);
        }
        let by_name = |prefix: &[u8], what: &str| -> Result<HashMap<String, ImageId>> {
            let mut map = HashMap::new();
            for kv in self.db.scan_prefix(prefix) {
                let (k, v) = kv.map_err(self.err())?;
                let name = String::from_utf8(k[2..].to_vec()).map_err(|e| self.corrupt(what, e))?;
                map.insert(name, id_of(&v, what)?);
            }
            Ok(map)
        };
        let paths = by_name(b"p/", "path index")?;
        let hashes = by_name(b"h/", "hash index")?;
        Ok(Loaded {
            state,
            images,
            texts,
            paths,
            hashes,
        })
    }

    /// Bytes sled takes on disk.
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("index entries serialise")
}
