//! A distributed vector engine as the collection's store: `qseek export --to URI` writes
//! an index's images (all Q vectors of each) and texts into it; `qseek search --engine
//! URI` takes its candidates and exact ITC scores from it and reranks in qseek.
//!
//! For: the engine URI, the [`VectorEngine`] seam (export, text → images, image →
//! texts) and its one implementation, Milvus ([`milvus`]). Not for: ranking policy or
//! reranking (`service/search/`, `rerank.rs`), running the engine (a deployment's job;
//! the tests start milvus-lite's server).

pub mod milvus;
mod milvus_proto;
pub mod similar;

use std::collections::HashMap;
use std::fmt;

use qseek_index::{Index, PhotoFilter};

use crate::error::{BadRequest, NotFound};
use crate::Result;

/// Milvus's default gRPC port.
pub const MILVUS_DEFAULT_PORT: u16 = 19530;

/// Where a collection lives in an engine: `milvus://HOST[:PORT]/COLLECTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineUri {
    /// `host:port` of the engine's gRPC endpoint.
    pub address: String,
    /// The images' collection; texts go in `<collection>_texts`.
    pub collection: String,
}

impl EngineUri {
    /// Parses `milvus://HOST[:PORT]/COLLECTION`; the collection name follows Milvus's
    /// rule (a letter or `_`, then letters, digits and `_`; the `_texts` suffix must fit
    /// in 255 characters).
    pub fn parse(uri: &str) -> Result<Self, BadRequest> {
        let bad = |reason: &str| BadRequest::EngineUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let rest = uri
            .strip_prefix("milvus://")
            .ok_or_else(|| bad("expected milvus://HOST[:PORT]/COLLECTION"))?;
        let (authority, collection) = rest
            .split_once('/')
            .ok_or_else(|| bad("no collection: expected milvus://HOST[:PORT]/COLLECTION"))?;
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let address = match authority.rsplit_once(':') {
            // `[::1]` has colons but no port.
            Some((host, port)) if !port.contains(']') => {
                if host.is_empty() {
                    return Err(bad("no host"));
                }
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
                authority.to_string()
            }
            _ => format!("{authority}:{MILVUS_DEFAULT_PORT}"),
        };
        let mut chars = collection.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && collection.len() + "_texts".len() <= 255;
        if !valid {
            return Err(bad(
                "the collection name must start with a letter or _ and hold only letters, digits and _ (at most 249)",
            ));
        }
        Ok(Self {
            address,
            collection: collection.to_string(),
        })
    }
}

impl fmt::Display for EngineUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "milvus://{}/{}", self.address, self.collection)
    }
}

/// Which images an engine search keeps: the local index's filters, which the engine
/// applies before its top k (not to the top k afterwards). `None` where a method takes
/// an `Option<&EngineFilter>`: every image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineFilter {
    /// Only images with a path that starts with this.
    pub under: Option<String>,
    /// Only photos whose metadata passes it ([`PhotoFilter::allows`]); an export made
    /// before qseek exported photo metadata refuses an active one (export it again).
    pub photo: PhotoFilter,
}

/// An image the engine found for a text (or for one query vector of an image).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineImageHit {
    /// Hash of its bytes (its identity in the engine).
    pub content_hash: String,
    /// Its paths, as exported.
    pub paths: Vec<String>,
    /// Max over its Q vectors of the dot product with the text's vector (or with the
    /// image's query vector).
    pub itc: f32,
}

/// A text the engine found for an image.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineTextHit {
    /// Its id in the exported index.
    pub text_id: u64,
    /// Its string.
    pub text: String,
    /// The caller's id for it, if given.
    pub external_id: Option<String>,
    /// Max over the image's Q vectors of the dot product with the text's vector.
    pub itc: f32,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ExportReport {
    /// Images exported.
    pub images: usize,
    /// Their rows (Q per image).
    pub image_rows: usize,
    /// Texts exported.
    pub texts: usize,
    /// Bytes of image vectors sent (f32).
    pub bytes_sent: usize,
    /// Wall time of the whole export.
    pub seconds: f64,
}

/// What an export does with a collection the engine already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportMode {
    /// Refuse it ([`BadRequest::EngineCollectionExists`]).
    Create,
    /// Drop it and create it anew.
    Replace,
    /// Add to it (creating it if missing): one machine's part of a collection that
    /// several machines export in parallel.
    Append,
}

/// A vector engine holding a collection. Every score it returns is exact for the
/// vectors it holds (the f32 values of the exported index's stored vectors).
pub trait VectorEngine: Send + Sync + fmt::Debug {
    /// Writes every committed image and text of `index` into the engine, as of one
    /// commit; `mode` says what happens to a collection the engine already holds.
    fn export(&self, index: &Index, mode: ExportMode) -> Result<ExportReport>;

    /// Whether the engine holds the collection's images (an export created it).
    fn holds_images(&self) -> Result<bool>;

    /// The `k` images with the highest ITC score (max over their Q vectors of the dot
    /// product with `text`, one L2-normalised D-vector), highest first, among those the
    /// filter keeps (fewer only when fewer pass it).
    fn search_images(
        &self,
        text: &[f32],
        k: usize,
        filter: Option<&EngineFilter>,
    ) -> Result<Vec<EngineImageHit>>;

    /// For each of an image's query vectors (`image`: Q vectors of `dim` values, flat),
    /// the `k` images whose best vector matches it best, highest first, with that
    /// score (the candidates of image → images: see `service/search/image.rs`), among those
    /// the filter keeps (a list shorter than `k` holds every image that passes).
    fn images_per_vector(
        &self,
        image: &[f32],
        dim: usize,
        k: usize,
        filter: Option<&EngineFilter>,
    ) -> Result<Vec<Vec<EngineImageHit>>>;

    /// The stored vectors of these images (by content hash): `num_vectors` × `dim`
    /// values each, flat, in slot order. An image the engine lacks, or holds only part
    /// of, is an error.
    fn image_vectors(
        &self,
        hashes: &[String],
        num_vectors: usize,
        dim: usize,
    ) -> Result<HashMap<String, Vec<f32>>>;

    /// The `k` texts with the highest ITC score for an image (`image`: its Q vectors of
    /// `dim` values, flat), highest first.
    fn search_texts(&self, image: &[f32], dim: usize, k: usize) -> Result<Vec<EngineTextHit>>;
}

/// Connects to the engine a URI names.
pub fn connect(uri: &EngineUri) -> Result<Box<dyn VectorEngine>> {
    Ok(Box::new(milvus::MilvusEngine::connect(uri)?))
}

/// Connects to the engine a URI names, to search the collection it names: one that is
/// not there (nothing exported yet, a typo) is [`NotFound::EngineCollection`] now,
/// not an engine error at the first search.
pub fn connect_to_search(uri: &EngineUri) -> Result<Box<dyn VectorEngine>> {
    let engine = connect(uri)?;
    if !engine.holds_images()? {
        return Err(NotFound::EngineCollection {
            uri: uri.to_string(),
            collection: uri.collection.clone(),
        }
        .into());
    }
    Ok(engine)
}

/// Whether an image with these paths is under the filter (always, without one): what
/// the index's path-prefix filter keeps, checked again on an engine's hits.
pub fn under_it(paths: &[String], under: Option<&str>) -> bool {
    under.is_none_or(|u| paths.iter().any(|p| p.starts_with(u)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let ok = |s: &str, address: &str, collection: &str| {
            assert_eq!(
                EngineUri::parse(s).unwrap(),
                EngineUri {
                    address: address.into(),
                    collection: collection.into()
                },
                "{s}"
            )
        };
        ok(
            "milvus://localhost:19531/photos",
            "localhost:19531",
            "photos",
        );
        ok(
            "milvus://milvus.internal/photos_2",
            "milvus.internal:19530",
            "photos_2",
        );
        ok("milvus://[::1]:7000/_p", "[::1]:7000", "_p");
        for bad in [
            "qdrant://localhost/photos",
            "milvus://localhost",
            "milvus://localhost:port/photos",
            "milvus:///photos",
            "milvus://localhost/",
            "milvus://localhost/1photos",
            "milvus://localhost/ph-otos",
        ] {
            assert!(
                matches!(EngineUri::parse(bad), Err(BadRequest::EngineUri { .. })),
                "{bad}"
            );
        }
    }
}
