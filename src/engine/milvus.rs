//! [`VectorEngine`] on Milvus, over its gRPC API (the protocol of a Milvus cluster, of
//! a standalone Milvus, and of milvus-lite 2.5's C++ server alike).
//!
//! Images: one row per query vector, `pk` = `"<content hash>:<slot>"`, grouped at search
//! time by `content_hash` (Milvus's group-by search keeps each group's best row: the max
//! over the image's vectors). Identity is the content hash, not an index's image id, so
//! several machines can each export their part of a collection into the same engine.
//! An image's vectors are read back by their primary keys (image → images scores them in
//! qseek). Each row also holds its photo's metadata, the same on each of its Q rows, for
//! the filters: `taken` and `taken_utc` (INT64), `camera` (VARCHAR), `lat` and `lon`
//! (DOUBLE) (`PhotoColumns`). A search's filters are one Milvus expression
//! (`filter_expr`), applied by the engine before its top k; a place's circle is a
//! latitude/longitude box there, checked exactly in qseek, deeper searches filling in
//! what the check drops (`MilvusEngine::filtered_lists`).
//! Texts: `<collection>_texts`, one row per text.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qseek_index::{Gps, Index, Near, PhotoMeta, TakenAt};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::milvus_proto::*;
use super::{
    under_it, EngineFilter, EngineImageHit, EngineTextHit, EngineUri, ExportMode, ExportReport,
    VectorEngine,
};
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
/// Milvus's largest `topk`.
const MAX_TOPK: usize = 16_384;
const VECTOR: &str = "v";

/// When the photo was taken: [`TakenAt::local`], the seconds its camera's clock showed
/// ([`NO_TIME`] for a photo without a date).
const TAKEN: &str = "taken";
/// The same instant as seconds since the Unix epoch, when the photo records its clock's
/// offset ([`NO_TIME`] otherwise).
const TAKEN_UTC: &str = "taken_utc";
/// [`PhotoMeta::camera`], lowercased (`""` for none).
const CAMERA: &str = "camera";
/// Degrees north and east ([`NO_PLACE`] for a photo without a place).
const LAT: &str = "lat";
const LON: &str = "lon";
/// The photo-metadata columns: an export made before them has none.
const PHOTO_FIELDS: [&str; 5] = [TAKEN, TAKEN_UTC, CAMERA, LAT, LON];
/// `taken` and `taken_utc` of a photo without them: −2⁵³ s, some 285 million years
/// before any date EXIF can write, in a literal Milvus reads as written (not so
/// `i64::MIN`'s: `-9223372036854775808` is a minus on `9223372036854775808`, which
/// overflows, and a filter on it kept undated photos).
const NO_TIME: i64 = -(1 << 53);
/// `lat` and `lon` of a photo without a place: outside every range of degrees.
const NO_PLACE: f64 = 1000.0;
/// At most the Earth radius [`Gps::distance_km`] uses (6371.0088 km): a box made with it
/// is a little larger than the circle.
const EARTH_RADIUS_KM_AT_MOST: f64 = 6371.0;
/// Degrees added around a place's box, against rounding (about 0.1 m).
const BOX_MARGIN_DEGREES: f64 = 1e-6;

/// An image found, with its place when asked for.
type PlacedHit = (EngineImageHit, Option<Gps>);

/// The columns of an image row besides `pk`, `content_hash`, `paths` and the vector.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageColumns {
    /// With the photo-metadata columns: what an export writes.
    WithPhoto,
    /// Without them, as exports made before qseek exported photo metadata (kept so that
    /// the tests can make one; appending to such a collection keeps its columns).
    BeforePhoto,
}

/// A connection to one Milvus collection (and its `_texts` companion).
#[derive(Debug)]
pub struct MilvusEngine {
    uri: EngineUri,
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    /// The images' collection was seen to have the photo-metadata columns (asked once
    /// per connection; a collection without them is asked again at each filtered
    /// search, since it may be exported again meanwhile).
    photo_fields: AtomicBool,
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
            photo_fields: AtomicBool::new(false),
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

    /// The names of a collection's fields.
    fn field_names(&self, name: &str) -> Result<Vec<String>> {
        let r: DescribeCollectionResponse = self.call(
            "DescribeCollection",
            DescribeCollectionRequest {
                collection_name: name.into(),
            },
        )?;
        self.check("DescribeCollection", r.status.as_ref())?;
        Ok(r.schema
            .map(|s| s.fields.into_iter().map(|f| f.name).collect())
            .unwrap_or_default())
    }

    /// Whether the images' collection has the photo-metadata columns.
    fn has_photo_fields(&self) -> Result<bool> {
        if self.photo_fields.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let names = self.field_names(&self.uri.collection)?;
        let has = PHOTO_FIELDS.iter().all(|f| names.iter().any(|n| n == f));
        self.photo_fields.store(has, Ordering::Relaxed);
        Ok(has)
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

    /// The images of a group-by search's answer to `nq` query vectors: one list per
    /// vector, in the answer's order, each image with its place (`lat`, `lon`) when
    /// `places`.
    fn image_lists(
        &self,
        data: &SearchResultData,
        nq: usize,
        places: bool,
    ) -> Result<Vec<Vec<PlacedHit>>> {
        let n = data.scores.len();
        if n == 0 {
            // Nothing found: an answer without columns.
            return Ok(vec![Vec::new(); nq]);
        }
        let hashes = self
            .column(data, "content_hash")?
            .as_strings()
            .unwrap_or_default();
        let paths = self.column(data, "paths")?.as_strings().unwrap_or_default();
        let (lats, lons) = if places {
            (
                self.column(data, LAT)?.as_doubles().unwrap_or_default(),
                self.column(data, LON)?.as_doubles().unwrap_or_default(),
            )
        } else {
            (&[][..], &[][..])
        };
        if hashes.len() != n || paths.len() != n || (places && (lats.len() != n || lons.len() != n))
        {
            return Err(engine_error(
                &self.uri,
                "Search",
                "columns of unequal length",
            ));
        }
        let mut hits = Vec::with_capacity(n);
        for (i, ((hash, paths), &itc)) in hashes.iter().zip(paths).zip(&data.scores).enumerate() {
            let hit = EngineImageHit {
                content_hash: hash.clone(),
                paths: serde_json::from_str(paths).map_err(|e| {
                    engine_error(&self.uri, "Search", format!("paths of {hash}: {e}"))
                })?,
                itc,
            };
            let place = places.then(|| Gps {
                lat: lats[i],
                lon: lons[i],
                alt: None,
            });
            hits.push((hit, place));
        }
        // Milvus answers each query vector with its own top k groups, one after the
        // other, `topks` long each.
        let topks: Vec<usize> = match data.topks.len() {
            0 if hits.is_empty() => vec![0; nq],
            t if t == nq => data.topks.iter().map(|&t| t as usize).collect(),
            t => {
                return Err(engine_error(
                    &self.uri,
                    "Search",
                    format!("{t} answers to {nq} query vectors"),
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
        let mut hits = hits.into_iter();
        Ok(topks
            .into_iter()
            .map(|n| hits.by_ref().take(n).collect())
            .collect())
    }

    /// For each query vector (`queries`: `dim` values each), its top `k` images among
    /// those `filter` keeps, exactly. The engine searches with the filter's expression
    /// ([`filter_expr`]), whose place is a box around the circle; qseek then checks each
    /// hit's place on the circle ([`Gps::distance_km`], as the index does) and its paths
    /// ([`under_it`]: the `like` on the paths' JSON may let a path holding a `"` through).
    /// While a list lost hits to the check and the engine had more, it searches again,
    /// twice as deep and without the images the check dropped, so that each list ends
    /// with `k` images that pass or with every one there is.
    fn filtered_lists(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
        filter: Option<&EngineFilter>,
    ) -> Result<Vec<Vec<EngineImageHit>>> {
        let no_filter = EngineFilter::default();
        let filter = filter.unwrap_or(&no_filter);
        if filter.photo.is_active() && !self.has_photo_fields()? {
            return Err(BadRequest::EngineExportTooOld {
                uri: self.uri.to_string(),
            }
            .into());
        }
        let near = filter.photo.near;
        let under = filter.under.as_deref();
        let mut output = vec!["content_hash", "paths"];
        if near.is_some() {
            output.extend([LAT, LON]);
        }
        let expr = filter_expr(filter);
        let nq = queries.len() / dim;
        // A place's box holds about 4/π as many photos as its circle: ask for more at once.
        let mut ask = if near.is_some() {
            (2 * k).min(MAX_TOPK).max(k)
        } else {
            k
        };
        let mut dropped: Vec<String> = Vec::new();
        let mut dropped_set: HashSet<String> = HashSet::new();
        loop {
            let exclude = (!dropped.is_empty()).then(|| {
                format!(
                    "content_hash not in {}",
                    serde_json::to_string(&dropped).expect("strings serialise")
                )
            });
            let expr = [Some(expr.clone()), exclude]
                .into_iter()
                .flatten()
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>()
                .join(" and ");
            let data = self.search(
                &self.uri.collection,
                queries,
                dim,
                ask,
                Some("content_hash"),
                &expr,
                &output,
            )?;
            let dropped_before = dropped.len();
            let mut complete = true;
            let mut lists = Vec::with_capacity(nq);
            for list in self.image_lists(&data, nq, near.is_some())? {
                let answered = list.len();
                let mut kept = Vec::with_capacity(answered.min(k));
                for (hit, place) in list {
                    let in_circle = match (near, place) {
                        (Some(n), Some(p)) => p.distance_km(n.lat, n.lon) <= n.km,
                        _ => true,
                    };
                    if in_circle && under_it(&hit.paths, under) {
                        kept.push(hit);
                    } else if dropped_set.insert(hit.content_hash.clone()) {
                        dropped.push(hit.content_hash);
                    }
                }
                complete &= kept.len() >= k || answered < ask;
                kept.truncate(k);
                lists.push(kept);
            }
            // A list still short lost some of its hits to the check, and those are
            // left out next time; were none new, the engine would answer the same.
            if complete || dropped.len() == dropped_before {
                return Ok(lists);
            }
            ask = (ask * 2).min(MAX_TOPK).max(k);
        }
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

impl MilvusEngine {
    /// [`VectorEngine::export`] with these image columns (appending to a collection
    /// keeps the columns it has).
    #[doc(hidden)]
    pub fn export_with(
        &self,
        index: &Index,
        mode: ExportMode,
        mut columns: ImageColumns,
    ) -> Result<ExportReport> {
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
                ExportMode::Append if exists => {
                    if name == images && !self.has_photo_fields()? {
                        columns = ImageColumns::BeforePhoto;
                    }
                    continue;
                }
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
        let with_photo = columns == ImageColumns::WithPhoto;
        if missing.contains(images) {
            let mut fields = vec![
                varchar("pk", 160, true),
                varchar("content_hash", 128, false),
                varchar("paths", MAX_VARCHAR, false),
            ];
            if with_photo {
                let scalar = |name: &str, data_type| FieldSchema {
                    name: name.into(),
                    is_primary_key: false,
                    data_type,
                    type_params: Vec::new(),
                };
                fields.extend([
                    scalar(TAKEN, data_type::INT64),
                    scalar(TAKEN_UTC, data_type::INT64),
                    varchar(CAMERA, MAX_VARCHAR, false),
                    scalar(LAT, data_type::DOUBLE),
                    scalar(LON, data_type::DOUBLE),
                ]);
            }
            self.create(images, fields, d)?;
            self.photo_fields.store(with_photo, Ordering::Relaxed);
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
            let mut photo = PhotoColumns::with_capacity(rows);
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
                if with_photo {
                    photo.push(image.photo.as_ref(), q);
                }
                vectors.extend_from_slice(&image.vectors);
                report.images += 1;
            }
            report.image_rows += rows;
            report.bytes_sent += vectors.len() * 4;
            let mut fields = vec![
                FieldData::strings("pk", pk),
                FieldData::strings("content_hash", hash),
                FieldData::strings("paths", paths),
            ];
            if with_photo {
                fields.extend(photo.into_fields());
            }
            fields.push(FieldData::vectors(VECTOR, d, vectors));
            self.insert(images, fields, rows)
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
}

impl VectorEngine for MilvusEngine {
    fn export(&self, index: &Index, mode: ExportMode) -> Result<ExportReport> {
        self.export_with(index, mode, ImageColumns::WithPhoto)
    }

    fn holds_images(&self) -> Result<bool> {
        self.has_collection(&self.uri.collection)
    }

    fn search_images(
        &self,
        text: &[f32],
        k: usize,
        filter: Option<&EngineFilter>,
    ) -> Result<Vec<EngineImageHit>> {
        let mut lists = self.filtered_lists(text, text.len(), k, filter)?;
        Ok(lists.pop().unwrap_or_default())
    }

    fn images_per_vector(
        &self,
        image: &[f32],
        dim: usize,
        k: usize,
        filter: Option<&EngineFilter>,
    ) -> Result<Vec<Vec<EngineImageHit>>> {
        // One search of the Q vectors.
        self.filtered_lists(image, dim, k, filter)
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

/// An image's photo-metadata columns, one value per row (each image's repeated on its
/// Q rows).
#[derive(Debug, Default)]
struct PhotoColumns {
    taken: Vec<i64>,
    taken_utc: Vec<i64>,
    camera: Vec<String>,
    lat: Vec<f64>,
    lon: Vec<f64>,
}

impl PhotoColumns {
    fn with_capacity(rows: usize) -> Self {
        Self {
            taken: Vec::with_capacity(rows),
            taken_utc: Vec::with_capacity(rows),
            camera: Vec::with_capacity(rows),
            lat: Vec::with_capacity(rows),
            lon: Vec::with_capacity(rows),
        }
    }

    /// `rows` rows of a photo with this metadata (`None`: never read, as empty).
    fn push(&mut self, photo: Option<&PhotoMeta>, rows: usize) {
        let taken = photo.and_then(|p| p.taken);
        let camera = photo
            .and_then(PhotoMeta::camera)
            .map(|c| cut(c.to_lowercase(), MAX_VARCHAR))
            .unwrap_or_default();
        let place = photo.and_then(|p| p.gps);
        for _ in 0..rows {
            self.taken.push(taken.map_or(NO_TIME, |t| t.local));
            self.taken_utc
                .push(taken.and_then(|t| t.utc()).unwrap_or(NO_TIME));
            self.camera.push(camera.clone());
            self.lat.push(place.map_or(NO_PLACE, |g| g.lat));
            self.lon.push(place.map_or(NO_PLACE, |g| g.lon));
        }
    }

    fn into_fields(self) -> [FieldData; 5] {
        [
            FieldData::longs(TAKEN, self.taken),
            FieldData::longs(TAKEN_UTC, self.taken_utc),
            FieldData::strings(CAMERA, self.camera),
            FieldData::doubles(LAT, self.lat),
            FieldData::doubles(LON, self.lon),
        ]
    }
}

/// `s` cut to at most `max` bytes, at a character's boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The Milvus boolean expression of a filter (`""`: keep everything): its parts joined
/// by `and`, each in parentheses where it holds an `or`.
///
/// - `under`: [`under_filter`].
/// - A date bound: [`time_bound`].
/// - `undated`: `taken == NO_TIME`.
/// - `camera`: `camera like "%TEXT%"` on the lowercased text, escaped as
///   [`contains_literal`] says (an empty text: `camera != ""`, a photo with a camera).
/// - `near`: a box around the circle ([`PlaceBox`]; qseek checks the circle).
fn filter_expr(filter: &EngineFilter) -> String {
    let p = &filter.photo;
    let mut parts = Vec::new();
    if let Some(prefix) = &filter.under {
        parts.push(under_filter(prefix));
    }
    if p.undated {
        parts.push(format!("{TAKEN} == {NO_TIME}"));
    }
    if let Some(from) = &p.taken_from {
        parts.push(time_bound(from, ">="));
    }
    if let Some(until) = &p.taken_until {
        parts.push(time_bound(until, "<"));
    }
    if let Some(camera) = &p.camera {
        parts.push(if camera.is_empty() {
            format!("{CAMERA} != \"\"")
        } else {
            format!("{CAMERA} like {}", contains_literal(&camera.to_lowercase()))
        });
    }
    if let Some(near) = &p.near {
        parts.push(PlaceBox::around(near).expr());
    }
    parts.join(" and ")
}

/// A photo's time `op` (`>=` or `<`) a bound, as [`TakenAt::cmp_time`] orders them: by
/// the instant when the bound and the photo both know their offset, else by the clocks
/// they show. A bound without an offset compares clocks only: `(taken != NO_TIME and
/// taken OP LOCAL)`; one with an offset, instants where the photo has one:
/// `((taken_utc != NO_TIME and taken_utc OP UTC) or (taken_utc == NO_TIME and taken !=
/// NO_TIME and taken OP LOCAL))`. Whole seconds: a photo's fraction of a second is not
/// exported, nor a bound's (qseek's dates have none).
fn time_bound(bound: &TakenAt, op: &str) -> String {
    let by_clock = format!("{TAKEN} != {NO_TIME} and {TAKEN} {op} {}", bound.local);
    match bound.utc() {
        None => format!("({by_clock})"),
        Some(utc) => format!(
            "(({TAKEN_UTC} != {NO_TIME} and {TAKEN_UTC} {op} {utc}) or ({TAKEN_UTC} == {NO_TIME} and {by_clock}))"
        ),
    }
}

/// A latitude/longitude box that holds a place's circle ([`PlaceBox::around`]): what the
/// engine's expression for `near` keeps ([`PlaceBox::expr`]); qseek checks the circle
/// ([`MilvusEngine::filtered_lists`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct PlaceBox {
    /// Degrees north, from `south` to `north`.
    south: f64,
    north: f64,
    /// Degrees east, from the first to the second (across the ±180° meridian when the
    /// first is larger); `None`: every longitude.
    lons: Option<(f64, f64)>,
}

impl PlaceBox {
    /// Latitudes within the circle's angular radius δ; longitudes within
    /// asin(sin δ / cos lat) of its centre (the widest the circle reaches), unbounded
    /// where the box holds a pole; with [`EARTH_RADIUS_KM_AT_MOST`] and
    /// [`BOX_MARGIN_DEGREES`] to spare.
    fn around(near: &Near) -> Self {
        let delta = near.km / EARTH_RADIUS_KM_AT_MOST;
        let delta_deg = delta.to_degrees() + BOX_MARGIN_DEGREES;
        let (south, north) = (near.lat - delta_deg, near.lat + delta_deg);
        let every = |south: f64, north: f64| PlaceBox {
            south: south.max(-90.0),
            north: north.min(90.0),
            lons: None,
        };
        if delta >= std::f64::consts::FRAC_PI_2 || south <= -90.0 || north >= 90.0 {
            return every(south, north);
        }
        let spread = (delta.sin() / near.lat.to_radians().cos()).min(1.0);
        let dlon = spread.asin().to_degrees() + BOX_MARGIN_DEGREES;
        if dlon >= 180.0 {
            return every(south, north);
        }
        let wrap = |lon: f64| {
            if lon < -180.0 {
                lon + 360.0
            } else if lon > 180.0 {
                lon - 360.0
            } else {
                lon
            }
        };
        PlaceBox {
            south,
            north,
            lons: Some((wrap(near.lon - dlon), wrap(near.lon + dlon))),
        }
    }

    /// `lat >= S and lat <= N`, then `and lon >= W and lon <= E`, or `and (lon >= W or
    /// lon <= E)` across the ±180° meridian. A photo without a place (`NO_PLACE`) is
    /// outside every box.
    fn expr(&self) -> String {
        let lats = format!("{LAT} >= {} and {LAT} <= {}", self.south, self.north);
        match self.lons {
            None => lats,
            Some((west, east)) if west <= east => {
                format!("{lats} and {LON} >= {west} and {LON} <= {east}")
            }
            Some((west, east)) => format!("{lats} and ({LON} >= {west} or {LON} <= {east})"),
        }
    }

    /// Whether the box holds a place, as its expression says.
    #[cfg(test)]
    fn holds(&self, lat: f64, lon: f64) -> bool {
        (self.south..=self.north).contains(&lat)
            && match self.lons {
                None => true,
                Some((west, east)) if west <= east => (west..=east).contains(&lon),
                Some((west, east)) => lon >= west || lon <= east,
            }
    }
}

/// A Milvus filter keeping the images with a path that starts with `prefix`. The `paths`
/// column is a JSON array, where every path starts right after a `"`: the filter is
/// `paths like "%<"prefix as JSON writes it>%"` ([`contains_literal`]). (A path holding a
/// `"` could match after its escaped quote: qseek checks every hit's paths again.)
fn under_filter(prefix: &str) -> String {
    let json = serde_json::to_string(prefix).expect("strings serialise");
    let opening = &json[..json.len() - 1];
    format!("paths like {}", contains_literal(opening))
}

/// The expression string literal of a LIKE pattern that keeps the values holding
/// `text`: `%TEXT%` with LIKE's `%`, `_` and `\` escaped by a `\`, then written as a
/// string literal (JSON's escapes: `"` and `\` and control characters).
fn contains_literal(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    serde_json::to_string(&pattern).expect("strings serialise")
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

    /// Each filter → its expression, the whole of it.
    #[test]
    fn filters_are_one_expression() {
        use qseek_index::PhotoFilter;
        let at = |local: i64, offset: Option<i32>| TakenAt {
            local,
            nanos: 0,
            offset_minutes: offset,
        };
        let photo = |photo: PhotoFilter| EngineFilter { under: None, photo };
        let n = -(1i64 << 53);
        let cases: Vec<(&str, EngineFilter, String)> = vec![
            ("nothing", EngineFilter::default(), String::new()),
            (
                "under",
                EngineFilter {
                    under: Some("/a/b".into()),
                    ..EngineFilter::default()
                },
                r#"paths like "%\"/a/b%""#.into(),
            ),
            (
                "undated",
                photo(PhotoFilter {
                    undated: true,
                    ..PhotoFilter::default()
                }),
                format!("taken == {n}"),
            ),
            (
                "after a clock time",
                photo(PhotoFilter {
                    taken_from: Some(at(1000, None)),
                    ..PhotoFilter::default()
                }),
                format!("(taken != {n} and taken >= 1000)"),
            ),
            (
                "before an instant: 02:00+02:00 is 00:00Z",
                photo(PhotoFilter {
                    taken_until: Some(at(7200, Some(120))),
                    ..PhotoFilter::default()
                }),
                format!(
                    "((taken_utc != {n} and taken_utc < 0) or (taken_utc == {n} and taken != {n} and taken < 7200))"
                ),
            ),
            (
                "a camera, lowercased",
                photo(PhotoFilter {
                    camera: Some("Canon EOS".into()),
                    ..PhotoFilter::default()
                }),
                r#"camera like "%canon eos%""#.into(),
            ),
            (
                "a camera holding LIKE's wildcards, a quote and a backslash",
                photo(PhotoFilter {
                    camera: Some(r#"50%_"X"\d"#.into()),
                    ..PhotoFilter::default()
                }),
                r#"camera like "%50\\%\\_\"x\"\\\\d%""#.into(),
            ),
            (
                "an empty camera: any camera",
                photo(PhotoFilter {
                    camera: Some(String::new()),
                    ..PhotoFilter::default()
                }),
                r#"camera != """#.into(),
            ),
            (
                "all of them",
                EngineFilter {
                    under: Some("/p/".into()),
                    photo: PhotoFilter {
                        taken_from: Some(at(0, Some(0))),
                        taken_until: Some(at(86_400, None)),
                        camera: Some("nikon".into()),
                        near: Some(Near {
                            lat: 0.0,
                            lon: 0.0,
                            km: 1.0,
                        }),
                        undated: false,
                    },
                },
                format!(
                    "{} and {} and {} and {} and {}",
                    r#"paths like "%\"/p/%""#,
                    format_args!("((taken_utc != {n} and taken_utc >= 0) or (taken_utc == {n} and taken != {n} and taken >= 0))"),
                    format_args!("(taken != {n} and taken < 86400)"),
                    r#"camera like "%nikon%""#,
                    PlaceBox::around(&Near {
                        lat: 0.0,
                        lon: 0.0,
                        km: 1.0
                    })
                    .expr()
                ),
            ),
        ];
        for (what, filter, expected) in cases {
            assert_eq!(filter_expr(&filter), expected, "{what}");
        }
        // A box: degrees as Rust prints them (no exponent), two ranges across ±180°.
        for (place, expected) in [
            (
                PlaceBox {
                    south: -1.5,
                    north: 0.25,
                    lons: Some((10.0, 12.125)),
                },
                "lat >= -1.5 and lat <= 0.25 and lon >= 10 and lon <= 12.125",
            ),
            (
                PlaceBox {
                    south: 60.0,
                    north: 61.0,
                    lons: Some((179.5, -179.5)),
                },
                "lat >= 60 and lat <= 61 and (lon >= 179.5 or lon <= -179.5)",
            ),
            (
                PlaceBox {
                    south: 89.0,
                    north: 90.0,
                    lons: None,
                },
                "lat >= 89 and lat <= 90",
            ),
            (
                PlaceBox {
                    south: 0.0000001,
                    north: 1.0,
                    lons: None,
                },
                "lat >= 0.0000001 and lat <= 1",
            ),
        ] {
            assert_eq!(place.expr(), expected);
        }
    }

    /// The camera filter's two levels undone (the string literal, then LIKE's pattern)
    /// and matched against the `camera` column keep what the index's filter keeps.
    #[test]
    fn a_camera_filter_keeps_what_the_index_keeps() {
        use qseek_index::PhotoFilter;
        let cameras: &[(Option<&str>, Option<&str>)] = &[
            (Some("Canon"), Some("Canon EOS R5")),
            (Some("NIKON CORPORATION"), Some("NIKON D850")),
            (Some("Odd%Maker"), Some("Model_1 \"Pro\"")),
            (Some("Back\\Slash"), None),
            (None, Some("X100V")),
            (Some("ÉCLAIR"), Some("Ü 1")),
            (None, None),
        ];
        let texts = [
            "canon",
            "CANON eos",
            "nikon d",
            "eos r6",
            "%",
            "_",
            "odd%m",
            "oddxm",
            "l_1",
            "lx1",
            "\"pro\"",
            "\\",
            "back\\s",
            "backs",
            "é",
            "éclair ü",
            "x100v",
            "",
            "1 \"",
        ];
        for text in texts {
            let filter = PhotoFilter {
                camera: Some(text.to_string()),
                ..PhotoFilter::default()
            };
            let expr = filter_expr(&EngineFilter {
                under: None,
                photo: filter.clone(),
            });
            for &(make, model) in cameras {
                let meta = PhotoMeta {
                    make: make.map(String::from),
                    model: model.map(String::from),
                    ..PhotoMeta::default()
                };
                let mut columns = PhotoColumns::default();
                columns.push(Some(&meta), 1);
                let column = &columns.camera[0];
                let kept = if let Some(literal) = expr.strip_prefix("camera like ") {
                    like(&serde_json::from_str::<String>(literal).unwrap(), column)
                } else {
                    assert_eq!(expr, r#"camera != """#);
                    !column.is_empty()
                };
                assert_eq!(
                    kept,
                    filter.allows(Some(&meta)),
                    "{text:?} on {column:?}: {expr}"
                );
            }
        }
    }

    /// Every place within the circle lies in its box: centres on the equator, at the
    /// poles, beside the ±180° meridian; radii from metres to half the Earth.
    #[test]
    fn a_place_box_holds_its_circle() {
        let centres = [
            (0.0, 0.0),
            (48.8584, 2.2945),
            (-33.86, 151.21),
            (35.6762, 139.6503),
            (64.0, 179.99),
            (-16.5, -179.9),
            (89.9, 10.0),
            (-89.99, -45.0),
            (90.0, 0.0),
            (-90.0, 180.0),
            (0.0, -180.0),
        ];
        let radii = [
            0.001, 1.0, 5.0, 100.0, 1000.0, 5000.0, 10_000.0, 19_000.0, 25_000.0,
        ];
        for (lat, lon) in centres {
            let centre = Gps {
                lat,
                lon,
                alt: None,
            };
            for km in radii {
                let near = Near { lat, lon, km };
                let place = PlaceBox::around(&near);
                assert!(!place.holds(NO_PLACE, NO_PLACE));
                let delta = km / 6371.0088;
                for bearing in 0..72 {
                    let theta = (bearing as f64 * 5.0).to_radians();
                    for f in [0.0, 0.3, 0.7, 0.99, 0.999_999, 1.0, 1.000_001] {
                        // The place `f × km` away on this bearing.
                        let (p1, d) = (lat.to_radians(), delta * f);
                        let p2 = (p1.sin() * d.cos() + p1.cos() * d.sin() * theta.cos()).asin();
                        let l2 = lon.to_radians()
                            + (theta.sin() * d.sin() * p1.cos())
                                .atan2(d.cos() - p1.sin() * p2.sin());
                        let (plat, mut plon) = (p2.to_degrees(), l2.to_degrees());
                        plon = (plon + 540.0).rem_euclid(360.0) - 180.0;
                        let inside = Gps {
                            lat: plat,
                            lon: plon,
                            alt: None,
                        }
                        .distance_km(lat, lon)
                            <= km;
                        assert!(
                            !inside || place.holds(plat, plon),
                            "{plat},{plon} is within {km} km of {lat},{lon} ({} km) but not in {place:?}",
                            centre.distance_km(plat, plon)
                        );
                    }
                }
            }
        }
        // Not the whole Earth for a small circle: about 2 × 5 km across.
        let paris = PlaceBox::around(&Near {
            lat: 48.8584,
            lon: 2.2945,
            km: 5.0,
        });
        let (west, east) = paris.lons.unwrap();
        assert!((paris.north - paris.south) * 111.2 < 10.1, "{paris:?}");
        assert!(
            (east - west) * 111.2 * 48.8584f64.to_radians().cos() < 10.1,
            "{paris:?}"
        );
    }
}
