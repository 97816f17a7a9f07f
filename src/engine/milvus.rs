//! [`VectorEngine`] on Milvus, over its gRPC API (the protocol of a Milvus cluster, of
//! a standalone Milvus, and of milvus-lite 2.5's C++ server alike).
//!
//! Images: one row per query vector, `pk` = `"<content hash>:<slot>"`, grouped at search
//! time by `content_hash` (Milvus's group-by search keeps each group's best row: the max
//! over the image's vectors). Identity is the content hash, not an index's image id, so
//! several machines can each export their part of a collection into the same engine.
//! An image's vectors are read back by their primary keys (image → images scores them in
//! qseek); a path prefix is a `like` filter on the `paths` column.
//! Texts: `<collection>_texts`, one row per text.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use qseek_index::Index;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::milvus_proto::*;
use super::{EngineImageHit, EngineTextHit, EngineUri, ExportMode, ExportReport, VectorEngine};
use crate::error::BadRequest;
use crate::{Error, Result};

/// Images per insert request: 64 × Q=32 rows × D=256 f32 is 2 MiB, far under gRPC's
/// usual 64 MiB limits.
const IMAGES_PER_INSERT: usize = 64;
/// Images whose vectors one query fetches: 64 × Q=32 rows × D=256 f32 is 2 MiB.
const IMAGES_PER_QUERY: usize = 64;
/// Texts per insert request.
const TEXTS_PER_INSERT: usize = 2048;
/// Longest VarChar Milvus takes.
const MAX_VARCHAR: usize = 65_535;
const VECTOR: &str = "v";

/// A connection to one Milvus collection (and its `_texts` companion).
#[derive(Debug)]
pub struct MilvusEngine {
    uri: EngineUri,
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl MilvusEngine {
    /// Connects (gRPC over HTTP/2, plain text); an engine that does not answer within
    /// 10 s is an [`Error::Engine`].
    pub fn connect(uri: &EngineUri) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
        let endpoint = Endpoint::from_shared(format!("http://{}", uri.address))
            .map_err(|e| BadRequest::EngineUri {
                uri: uri.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600));
        let channel = runtime
            .block_on(endpoint.connect())
            .map_err(|e| engine_error(uri, "connect", e))?;
        Ok(Self {
            uri: uri.clone(),
            runtime,
            channel,
        })
    }

    fn call<Req, Resp>(&self, method: &'static str, req: Req) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc =
            tonic::client::Grpc::new(self.channel.clone()).max_decoding_message_size(256 << 20);
        let path =
            PathAndQuery::from_maybe_shared(format!("/milvus.proto.milvus.MilvusService/{method}"))
                .expect("a valid gRPC path");
        self.runtime
            .block_on(async {
                grpc.ready().await.map_err(|e| e.to_string())?;
                grpc.unary(
                    tonic::Request::new(req),
                    path,
                    tonic_prost::ProstCodec::<Req, Resp>::default(),
                )
                .await
                .map(|r| r.into_inner())
                .map_err(|s| format!("{}: {}", s.code(), s.message()))
            })
            .map_err(|e| engine_error(&self.uri, method, e))
    }

    fn check(&self, method: &'static str, status: Option<&Status>) -> Result<()> {
        match status {
            Some(s) if s.code != 0 || s.error_code != 0 => Err(engine_error(
                &self.uri,
                method,
                format!("code {}: {}", s.code.max(s.error_code), s.reason),
            )),
            _ => Ok(()),
        }
    }

    fn has_collection(&self, name: &str) -> Result<bool> {
        let r: BoolResponse = self.call(
            "HasCollection",
            HasCollectionRequest {
                collection_name: name.into(),
            },
        )?;
        self.check("HasCollection", r.status.as_ref())?;
        Ok(r.value)
    }

    fn drop_collection(&self, name: &str) -> Result<()> {
        let s: Status = self.call(
            "DropCollection",
            DropCollectionRequest {
                collection_name: name.into(),
            },
        )?;
        self.check("DropCollection", Some(&s))
    }

    /// Creates `name` with these fields plus the vector field, a FLAT inner-product
    /// index on it (exact scores), and loads it.
    fn create(&self, name: &str, mut fields: Vec<FieldSchema>, dim: usize) -> Result<()> {
        fields.push(FieldSchema {
            name: VECTOR.into(),
            is_primary_key: false,
            data_type: data_type::FLOAT_VECTOR,
            type_params: vec![KeyValuePair::new("dim", dim)],
        });
        let schema = CollectionSchema {
            name: name.into(),
            fields,
        };
        let s: Status = self.call(
            "CreateCollection",
            CreateCollectionRequest {
                collection_name: name.into(),
                schema: prost::Message::encode_to_vec(&schema),
                shards_num: 1,
                consistency_level: CONSISTENCY_STRONG,
            },
        )?;
        self.check("CreateCollection", Some(&s))?;
        let s: Status = self.call(
            "CreateIndex",
            CreateIndexRequest {
                collection_name: name.into(),
                field_name: VECTOR.into(),
                extra_params: vec![
                    KeyValuePair::new("index_type", "FLAT"),
                    KeyValuePair::new("metric_type", "IP"),
                    KeyValuePair::new("params", "{}"),
                ],
                index_name: format!("{VECTOR}_flat"),
            },
        )?;
        self.check("CreateIndex", Some(&s))?;
        let s: Status = self.call(
            "LoadCollection",
            LoadCollectionRequest {
                collection_name: name.into(),
                replica_number: 1,
            },
        )?;
        self.check("LoadCollection", Some(&s))
    }

    fn insert(&self, name: &str, fields: Vec<FieldData>, rows: usize) -> Result<()> {
        let r: MutationResult = self.call(
            "Insert",
            InsertRequest {
                collection_name: name.into(),
                fields_data: fields,
                num_rows: rows as u32,
            },
        )?;
        self.check("Insert", r.status.as_ref())?;
        if r.insert_cnt != rows as i64 {
            return Err(engine_error(
                &self.uri,
                "Insert",
                format!("{} of {rows} rows inserted", r.insert_cnt),
            ));
        }
        Ok(())
    }

    fn flush(&self, names: Vec<String>) -> Result<()> {
        let r: FlushResponse = self.call(
            "Flush",
            FlushRequest {
                collection_names: names,
            },
        )?;
        self.check("Flush", r.status.as_ref())
    }

    /// One search of `queries` (each `dim` values) for the top `k` rows (or groups, with
    /// `group_by`) among those `filter` keeps (a Milvus boolean expression; empty: all),
    /// with these output fields.
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        collection: &str,
        queries: &[f32],
        dim: usize,
        k: usize,
        group_by: Option<&str>,
        filter: &str,
        output_fields: &[&str],
    ) -> Result<SearchResultData> {
        let values = queries
            .chunks_exact(dim)
            .map(|q| q.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect::<Vec<Vec<u8>>>();
        let nq = values.len();
        let group = PlaceholderGroup {
            placeholders: vec![PlaceholderValue {
                tag: "$0".into(),
                r#type: PLACEHOLDER_FLOAT_VECTOR,
                values,
            }],
        };
        let mut params = vec![
            KeyValuePair::new("anns_field", VECTOR),
            KeyValuePair::new("topk", k),
            KeyValuePair::new("metric_type", "IP"),
            KeyValuePair::new("params", "{}"),
            KeyValuePair::new("round_decimal", -1),
            KeyValuePair::new("offset", 0),
        ];
        if let Some(field) = group_by {
            params.push(KeyValuePair::new("group_by_field", field));
        }
        let r: SearchResults = self.call(
            "Search",
            SearchRequest {
                collection_name: collection.into(),
                dsl: filter.into(),
                placeholder_group: prost::Message::encode_to_vec(&group),
                dsl_type: DSL_BOOL_EXPR_V1,
                output_fields: output_fields.iter().map(|s| s.to_string()).collect(),
                search_params: params,
                nq: nq as i64,
                consistency_level: CONSISTENCY_STRONG,
            },
        )?;
        self.check("Search", r.status.as_ref())?;
        Ok(r.results.unwrap_or_default())
    }

    /// The images of a group-by search's answer, in its order.
    fn image_hits(&self, data: &SearchResultData) -> Result<Vec<EngineImageHit>> {
        let hashes = self
            .column(data, "content_hash")?
            .as_strings()
            .unwrap_or_default();
        let paths = self.column(data, "paths")?.as_strings().unwrap_or_default();
        if hashes.len() != data.scores.len() || paths.len() != data.scores.len() {
            return Err(engine_error(
                &self.uri,
                "Search",
                "columns of unequal length",
            ));
        }
        let mut hits = Vec::with_capacity(data.scores.len());
        for ((hash, paths), &itc) in hashes.iter().zip(paths).zip(&data.scores) {
            hits.push(EngineImageHit {
                content_hash: hash.clone(),
                paths: serde_json::from_str(paths).map_err(|e| {
                    engine_error(&self.uri, "Search", format!("paths of {hash}: {e}"))
                })?,
                itc,
            });
        }
        Ok(hits)
    }

    fn texts_collection(&self) -> String {
        format!("{}_texts", self.uri.collection)
    }

    fn column<'a>(&self, data: &'a SearchResultData, name: &str) -> Result<&'a FieldData> {
        data.fields_data
            .iter()
            .find(|f| f.field_name == name)
            .ok_or_else(|| engine_error(&self.uri, "Search", format!("no `{name}` in the answer")))
    }
}

impl VectorEngine for MilvusEngine {
    fn export(&self, index: &Index, mode: ExportMode) -> Result<ExportReport> {
        let start = Instant::now();
        let manifest = index.manifest();
        let (q, d) = (manifest.num_query_tokens, manifest.dim);
        let images = &self.uri.collection;
        let texts = self.texts_collection();
        let mut missing = Vec::new();
        for name in [images, &texts] {
            let exists = self.has_collection(name)?;
            match mode {
                ExportMode::Create if exists => {
                    return Err(BadRequest::EngineCollectionExists {
                        collection: name.clone(),
                    }
                    .into())
                }
                ExportMode::Replace if exists => self.drop_collection(name)?,
                ExportMode::Append if exists => continue,
                _ => {}
            }
            missing.push(name.clone());
        }
        let varchar = |name: &str, max: usize, pk: bool| FieldSchema {
            name: name.into(),
            is_primary_key: pk,
            data_type: data_type::VARCHAR,
            type_params: vec![KeyValuePair::new("max_length", max)],
        };
        if missing.contains(images) {
            self.create(
                images,
                vec![
                    varchar("pk", 160, true),
                    varchar("content_hash", 128, false),
                    varchar("paths", MAX_VARCHAR, false),
                ],
                d,
            )?;
        }
        let mut report = ExportReport::default();
        let all = index.export_images();
        let mut batch = Vec::with_capacity(IMAGES_PER_INSERT);
        let mut flush_batch = |batch: &mut Vec<qseek_index::ExportedImage>| -> Result<()> {
            if batch.is_empty() {
                return Ok(());
            }
            let rows = batch.len() * q;
            let (mut pk, mut hash, mut paths) = (
                Vec::with_capacity(rows),
                Vec::with_capacity(rows),
                Vec::with_capacity(rows),
            );
            let mut vectors = Vec::with_capacity(rows * d);
            for image in batch.drain(..) {
                if image.vectors.len() != q * d {
                    return Err(Error::Internal(format!(
                        "image {} has {} values, not Q×D = {}",
                        image.image_id,
                        image.vectors.len(),
                        q * d
                    )));
                }
                let json = paths_json(image.paths.iter().map(|p| p.path.as_str()));
                for slot in 0..q {
                    pk.push(format!("{}:{slot}", image.content_hash));
                    hash.push(image.content_hash.clone());
                    paths.push(json.clone());
                }
                vectors.extend_from_slice(&image.vectors);
                report.images += 1;
            }
            report.image_rows += rows;
            report.bytes_sent += vectors.len() * 4;
            self.insert(
                images,
                vec![
                    FieldData::strings("pk", pk),
                    FieldData::strings("content_hash", hash),
                    FieldData::strings("paths", paths),
                    FieldData::vectors(VECTOR, d, vectors),
                ],
                rows,
            )
        };
        for image in all {
            batch.push(image);
            if batch.len() == IMAGES_PER_INSERT {
                flush_batch(&mut batch)?;
            }
        }
        flush_batch(&mut batch)?;
        let mut flushed = vec![images.clone()];
        let all_texts: Vec<_> = index.export_texts().collect();
        if !all_texts.is_empty() {
            if missing.contains(&texts) {
                self.create(
                    &texts,
                    vec![
                        FieldSchema {
                            name: "text_id".into(),
                            is_primary_key: true,
                            data_type: data_type::INT64,
                            type_params: Vec::new(),
                        },
                        varchar("text", MAX_VARCHAR, false),
                        varchar("external_id", MAX_VARCHAR, false),
                    ],
                    d,
                )?;
            }
            for chunk in all_texts.chunks(TEXTS_PER_INSERT) {
                let mut vectors = Vec::with_capacity(chunk.len() * d);
                for t in chunk {
                    vectors.extend_from_slice(&t.vector);
                }
                self.insert(
                    &texts,
                    vec![
                        FieldData::longs(
                            "text_id",
                            chunk.iter().map(|t| t.text_id as i64).collect(),
                        ),
                        FieldData::strings("text", chunk.iter().map(|t| t.text.clone()).collect()),
                        FieldData::strings(
                            "external_id",
                            chunk
                                .iter()
                                .map(|t| serde_json::to_string(&t.external_id).expect("a string"))
                                .collect(),
                        ),
                        FieldData::vectors(VECTOR, d, vectors),
                    ],
                    chunk.len(),
                )?;
            }
            report.texts = all_texts.len();
            flushed.push(texts);
        }
        self.flush(flushed)?;
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    fn holds_images(&self) -> Result<bool> {
        self.has_collection(&self.uri.collection)
    }

    fn search_images(
        &self,
        text: &[f32],
        k: usize,
        under: Option<&str>,
    ) -> Result<Vec<EngineImageHit>> {
        let data = self.search(
            &self.uri.collection,
            text,
            text.len(),
            k,
            Some("content_hash"),
            &under.map(under_filter).unwrap_or_default(),
            &["content_hash", "paths"],
        )?;
        self.image_hits(&data)
    }

    fn images_per_vector(
        &self,
        image: &[f32],
        dim: usize,
        k: usize,
        under: Option<&str>,
    ) -> Result<Vec<Vec<EngineImageHit>>> {
        // One search of Q vectors: Milvus answers each with its own top k groups,
        // one after the other, `topks` long each.
        let data = self.search(
            &self.uri.collection,
            image,
            dim,
            k,
            Some("content_hash"),
            &under.map(under_filter).unwrap_or_default(),
            &["content_hash", "paths"],
        )?;
        let mut hits = self.image_hits(&data)?.into_iter();
        let nq = image.len() / dim;
        let topks: Vec<usize> = match data.topks.len() {
            0 if hits.len() == 0 => vec![0; nq],
            n if n == nq => data.topks.iter().map(|&t| t as usize).collect(),
            n => {
                return Err(engine_error(
                    &self.uri,
                    "Search",
                    format!("{n} answers to {nq} query vectors"),
                ))
            }
        };
        if topks.iter().sum::<usize>() != hits.len() {
            return Err(engine_error(
                &self.uri,
                "Search",
                "the answers' lengths do not add up",
            ));
        }
        Ok(topks
            .into_iter()
            .map(|n| hits.by_ref().take(n).collect())
            .collect())
    }

    fn image_vectors(
        &self,
        hashes: &[String],
        num_vectors: usize,
        dim: usize,
    ) -> Result<HashMap<String, Vec<f32>>> {
        let mut out = HashMap::with_capacity(hashes.len());
        for chunk in hashes.chunks(IMAGES_PER_QUERY) {
            // Rows of the same pk (an image exported twice) hold the same vector: the
            // slot is written once per pk, whichever row comes.
            let mut filled: HashMap<&str, Vec<bool>> = HashMap::with_capacity(chunk.len());
            let r: QueryResults = self.call(
                "Query",
                QueryRequest {
                    collection_name: self.uri.collection.clone(),
                    // By primary key (`<hash>:<slot>`): a key lookup, where a filter on
                    // `content_hash` would scan the column.
                    expr: format!(
                        "pk in {}",
                        serde_json::to_string(
                            &chunk
                                .iter()
                                .flat_map(
                                    |h| (0..num_vectors).map(move |slot| format!("{h}:{slot}"))
                                )
                                .collect::<Vec<_>>()
                        )
                        .expect("strings serialise")
                    ),
                    output_fields: vec!["pk".into(), VECTOR.into()],
                    query_params: Vec::new(),
                    consistency_level: CONSISTENCY_STRONG,
                },
            )?;
            self.check("Query", r.status.as_ref())?;
            let column = |name: &str| {
                r.fields_data
                    .iter()
                    .find(|f| f.field_name == name)
                    .ok_or_else(|| {
                        engine_error(&self.uri, "Query", format!("no `{name}` in the answer"))
                    })
            };
            let pks = column("pk")?.as_strings().unwrap_or_default();
            let (values, got_dim) = column(VECTOR)?.as_vectors().unwrap_or((&[], dim));
            if got_dim != dim || values.len() != pks.len() * dim {
                return Err(engine_error(
                    &self.uri,
                    "Query",
                    format!(
                        "{} values of dimension {got_dim} for {} rows of dimension {dim}",
                        values.len(),
                        pks.len()
                    ),
                ));
            }
            for (pk, row) in pks.iter().zip(values.chunks_exact(dim)) {
                let slot = pk
                    .rsplit_once(':')
                    .and_then(|(hash, slot)| Some((hash, slot.parse::<usize>().ok()?)))
                    .filter(|&(_, slot)| slot < num_vectors);
                let Some((hash, slot)) = slot else {
                    return Err(engine_error(
                        &self.uri,
                        "Query",
                        format!("row {pk:?} is not <content hash>:<slot below {num_vectors}>"),
                    ));
                };
                let vectors = out
                    .entry(hash.to_string())
                    .or_insert_with(|| vec![0.0; num_vectors * dim]);
                vectors[slot * dim..(slot + 1) * dim].copy_from_slice(row);
                let hash = chunk
                    .iter()
                    .find(|h| *h == hash)
                    .map_or(hash, |h| h.as_str());
                filled
                    .entry(hash)
                    .or_insert_with(|| vec![false; num_vectors])[slot] = true;
            }
            for hash in chunk {
                let n = filled
                    .get(hash.as_str())
                    .map_or(0, |f| f.iter().filter(|&&x| x).count());
                if n != num_vectors {
                    return Err(engine_error(
                        &self.uri,
                        "Query",
                        format!("image {hash} has {n} of its {num_vectors} vectors"),
                    ));
                }
            }
        }
        Ok(out)
    }

    fn search_texts(&self, image: &[f32], dim: usize, k: usize) -> Result<Vec<EngineTextHit>> {
        // An export without texts creates no texts collection: the same answer as a
        // local index without texts.
        if !self.has_collection(&self.texts_collection())? {
            return Err(BadRequest::NoTexts.into());
        }
        // One search per query vector, top k each, merged by the max per text: exact,
        // since a text in the true top k is in the top k of the vector that reaches its
        // max (every text above it there scores higher overall).
        let data = self.search(
            &self.texts_collection(),
            image,
            dim,
            k,
            None,
            "",
            &["text_id", "text", "external_id"],
        )?;
        let ids = self
            .column(&data, "text_id")?
            .as_longs()
            .unwrap_or_default();
        let texts = self.column(&data, "text")?.as_strings().unwrap_or_default();
        let external = self
            .column(&data, "external_id")?
            .as_strings()
            .unwrap_or_default();
        let n = data.scores.len();
        if ids.len() != n || texts.len() != n || external.len() != n {
            return Err(engine_error(
                &self.uri,
                "Search",
                "columns of unequal length",
            ));
        }
        let mut best: HashMap<i64, EngineTextHit> = HashMap::new();
        for i in 0..n {
            let itc = data.scores[i];
            let entry = best.entry(ids[i]).or_insert_with(|| EngineTextHit {
                text_id: ids[i] as u64,
                text: texts[i].clone(),
                external_id: serde_json::from_str(&external[i]).unwrap_or(None),
                itc,
            });
            entry.itc = entry.itc.max(itc);
        }
        let mut hits: Vec<EngineTextHit> = best.into_values().collect();
        hits.sort_by(|a, b| b.itc.total_cmp(&a.itc).then(a.text_id.cmp(&b.text_id)));
        hits.truncate(k);
        Ok(hits)
    }
}

/// An image's paths as the `paths` column holds them: a JSON array, cut to the
/// VarChar limit by dropping the last paths (the first is the one shown).
fn paths_json<'a>(paths: impl Iterator<Item = &'a str>) -> String {
    let mut kept: Vec<&str> = paths.collect();
    loop {
        let json = serde_json::to_string(&kept).expect("strings serialise");
        if json.len() <= MAX_VARCHAR || kept.len() <= 1 {
            return json;
        }
        kept.pop();
    }
}

/// A Milvus filter keeping the images with a path that starts with `prefix`. The `paths`
/// column is a JSON array, where every path starts right after a `"`: the filter is
/// `paths like "%<"prefix as JSON writes it>%"`, with LIKE's `%`, `_` and `\` escaped,
/// in an expression string literal. (A path holding a `"` could match after its escaped
/// quote: the search service checks every hit's paths again.)
fn under_filter(prefix: &str) -> String {
    let json = serde_json::to_string(prefix).expect("strings serialise");
    let opening = &json[..json.len() - 1];
    let mut pattern = String::from("%");
    for c in opening.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    let literal = serde_json::to_string(&pattern).expect("strings serialise");
    format!("paths like {literal}")
}

fn engine_error(uri: &EngineUri, operation: &str, reason: impl ToString) -> Error {
    Error::Engine {
        uri: uri.to_string(),
        operation: operation.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQL LIKE as Milvus evaluates it: `%` any run, `_` one character, `\` escapes.
    fn like(pattern: &str, text: &str) -> bool {
        fn go(p: &[char], t: &[char]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some(('%', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
                Some(('_', rest)) => !t.is_empty() && go(rest, &t[1..]),
                Some(('\\', rest)) => match (rest.split_first(), t.split_first()) {
                    (Some((c, rest)), Some((d, t))) => c == d && go(rest, t),
                    _ => false,
                },
                Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
            }
        }
        let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
        go(&p, &t)
    }

    /// The filter's two levels undone: the expression's string literal (JSON's escapes),
    /// then LIKE's pattern, matched against the `paths` column's JSON.
    #[test]
    fn a_folder_filter_keeps_exactly_the_paths_under_it_whatever_they_hold() {
        assert_eq!(under_filter("/a/b"), r#"paths like "%\"/a/b%""#);
        // (prefix, the image's paths, kept)
        let cases: &[(&str, &[&str], bool)] = &[
            ("/photos/2024", &["/photos/2024/a.jpg"], true),
            (
                "/photos/2024",
                &["/other/x.jpg", "/photos/2024/a.jpg"],
                true,
            ),
            ("/photos/2024", &["/photos/2023/a.jpg"], false),
            ("/photos/2024", &["/x/photos/2024/a.jpg"], false),
            ("/a%b", &["/a%b/c.png"], true),
            ("/a%b", &["/aXXb/c.png"], false),
            ("/a_b", &["/a_b/c.png"], true),
            ("/a_b", &["/aXb/c.png"], false),
            ("/a\\b", &["/a\\b/c.png"], true),
            ("/a\\b", &["/ab/c.png"], false),
            ("/ü/ñ 1", &["/ü/ñ 1/é.jpg"], true),
            ("/tab\there", &["/tab\there/x.jpg"], true),
            ("/tab\there", &["/tab here/x.jpg"], false),
        ];
        for (prefix, paths, kept) in cases {
            let filter = under_filter(prefix);
            let literal = filter.strip_prefix("paths like ").unwrap();
            let pattern: String = serde_json::from_str(literal).unwrap();
            let column = paths_json(paths.iter().copied());
            assert_eq!(
                like(&pattern, &column),
                *kept,
                "{prefix:?} on {column}: {filter}"
            );
        }
    }

    #[test]
    fn the_paths_column_drops_the_last_paths_to_fit() {
        let long = "x".repeat(MAX_VARCHAR / 3);
        let paths = [long.as_str(), long.as_str(), long.as_str(), "/short"];
        let json = paths_json(paths.iter().copied());
        assert!(json.len() <= MAX_VARCHAR);
        let kept: Vec<String> = serde_json::from_str(&json).unwrap();
        assert_eq!(kept.len(), 2);
        // The first is kept whatever its length: it is the one shown.
        let huge = "y".repeat(MAX_VARCHAR + 10);
        let kept: Vec<String> =
            serde_json::from_str(&paths_json([huge.as_str()].into_iter())).unwrap();
        assert_eq!(kept, [huge]);
        assert_eq!(paths_json(["/a", "/b"].into_iter()), r#"["/a","/b"]"#);
    }
}
