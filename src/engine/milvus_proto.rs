//! The few messages of Milvus's gRPC API (`milvus.proto.milvus.MilvusService`, protos
//! of milvus-proto v2.5) that qseek sends and reads, written out by hand with their
//! field numbers so that no `protoc` and no build script are needed. Fields qseek never
//! sets are left out: protobuf skips unknown fields on both sides.
//!
//! `tests/milvus_proto.rs` checks them against the real protos, vendored in
//! `proto/milvus/` (milvus-proto v2.5.27): every field's number, name, type and
//! cardinality, and every constant's enum value. For that, each struct's doc comment
//! names its proto message first (`` `common.KeyValuePair` ``: the package
//! `milvus.proto.common` without `milvus.proto.`), each oneof enum its message and
//! oneof (`` `schema.ScalarField.data` ``), and each constant its enum value
//! (`` `common.DslType::BoolExprV1` ``); keep that form when adding one.

// Names follow the protos (`long_data`, `double_data`, `string_data`: `…Data` variants).
#![allow(missing_docs, clippy::enum_variant_names)]

/// `common.KeyValuePair`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValuePair {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl KeyValuePair {
    pub fn new(key: &str, value: impl ToString) -> Self {
        Self {
            key: key.to_string(),
            value: value.to_string(),
        }
    }
}

/// `common.Status`: `error_code` (deprecated) or `code` non-zero means failure.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    #[prost(string, tag = "2")]
    pub reason: String,
    #[prost(int32, tag = "3")]
    pub code: i32,
}

/// `schema.DataType` values qseek uses.
pub mod data_type {
    /// `schema.DataType::Int64`.
    pub const INT64: i32 = 5;
    /// `schema.DataType::Double`.
    pub const DOUBLE: i32 = 11;
    /// `schema.DataType::VarChar`.
    pub const VARCHAR: i32 = 21;
    /// `schema.DataType::FloatVector`.
    pub const FLOAT_VECTOR: i32 = 101;
}

/// `common.PlaceholderType::FloatVector`.
pub const PLACEHOLDER_FLOAT_VECTOR: i32 = 101;
/// `common.DslType::BoolExprV1`.
pub const DSL_BOOL_EXPR_V1: i32 = 1;
/// `common.ConsistencyLevel::Strong`.
pub const CONSISTENCY_STRONG: i32 = 0;

/// `schema.FieldSchema`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldSchema {
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(bool, tag = "3")]
    pub is_primary_key: bool,
    #[prost(int32, tag = "5")]
    pub data_type: i32,
    #[prost(message, repeated, tag = "6")]
    pub type_params: Vec<KeyValuePair>,
}

/// `schema.CollectionSchema`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CollectionSchema {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "4")]
    pub fields: Vec<FieldSchema>,
}

/// `schema.LongArray`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LongArray {
    #[prost(int64, repeated, tag = "1")]
    pub data: Vec<i64>,
}

/// `schema.FloatArray`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FloatArray {
    #[prost(float, repeated, tag = "1")]
    pub data: Vec<f32>,
}

/// `schema.DoubleArray`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DoubleArray {
    #[prost(double, repeated, tag = "1")]
    pub data: Vec<f64>,
}

/// `schema.StringArray`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringArray {
    #[prost(string, repeated, tag = "1")]
    pub data: Vec<String>,
}

/// `schema.ScalarField` (the `data` oneof).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScalarField {
    #[prost(oneof = "Scalars", tags = "3, 5, 6")]
    pub data: Option<Scalars>,
}

/// `schema.ScalarField.data`: the oneof's members qseek uses.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Scalars {
    #[prost(message, tag = "3")]
    LongData(LongArray),
    #[prost(message, tag = "5")]
    DoubleData(DoubleArray),
    #[prost(message, tag = "6")]
    StringData(StringArray),
}

/// `schema.VectorField` (float vectors only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct VectorField {
    #[prost(int64, tag = "1")]
    pub dim: i64,
    #[prost(message, optional, tag = "2")]
    pub float_vector: Option<FloatArray>,
}

/// `schema.FieldData`: one column.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldData {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub field_name: String,
    #[prost(oneof = "Column", tags = "3, 4")]
    pub field: Option<Column>,
}

/// `schema.FieldData.field`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Column {
    #[prost(message, tag = "3")]
    Scalars(ScalarField),
    #[prost(message, tag = "4")]
    Vectors(VectorField),
}

impl FieldData {
    pub fn longs(name: &str, data: Vec<i64>) -> Self {
        Self {
            r#type: data_type::INT64,
            field_name: name.into(),
            field: Some(Column::Scalars(ScalarField {
                data: Some(Scalars::LongData(LongArray { data })),
            })),
        }
    }

    pub fn doubles(name: &str, data: Vec<f64>) -> Self {
        Self {
            r#type: data_type::DOUBLE,
            field_name: name.into(),
            field: Some(Column::Scalars(ScalarField {
                data: Some(Scalars::DoubleData(DoubleArray { data })),
            })),
        }
    }

    pub fn strings(name: &str, data: Vec<String>) -> Self {
        Self {
            r#type: data_type::VARCHAR,
            field_name: name.into(),
            field: Some(Column::Scalars(ScalarField {
                data: Some(Scalars::StringData(StringArray { data })),
            })),
        }
    }

    pub fn vectors(name: &str, dim: usize, data: Vec<f32>) -> Self {
        Self {
            r#type: data_type::FLOAT_VECTOR,
            field_name: name.into(),
            field: Some(Column::Vectors(VectorField {
                dim: dim as i64,
                float_vector: Some(FloatArray { data }),
            })),
        }
    }

    /// The column's values as integers, if it holds integers.
    pub fn as_longs(&self) -> Option<&[i64]> {
        match &self.field {
            Some(Column::Scalars(ScalarField {
                data: Some(Scalars::LongData(a)),
            })) => Some(&a.data),
            _ => None,
        }
    }

    /// The column's values as doubles, if it holds doubles.
    pub fn as_doubles(&self) -> Option<&[f64]> {
        match &self.field {
            Some(Column::Scalars(ScalarField {
                data: Some(Scalars::DoubleData(a)),
            })) => Some(&a.data),
            _ => None,
        }
    }

    /// The column's float vectors (flat) and their dimension, if it holds float vectors.
    pub fn as_vectors(&self) -> Option<(&[f32], usize)> {
        match &self.field {
            Some(Column::Vectors(VectorField {
                dim,
                float_vector: Some(a),
            })) => Some((&a.data, *dim as usize)),
            _ => None,
        }
    }

    /// The column's values as strings, if it holds strings.
    pub fn as_strings(&self) -> Option<&[String]> {
        match &self.field {
            Some(Column::Scalars(ScalarField {
                data: Some(Scalars::StringData(a)),
            })) => Some(&a.data),
            _ => None,
        }
    }
}

/// `schema.IDs` (integer primary keys).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ids {
    #[prost(message, optional, tag = "1")]
    pub int_id: Option<LongArray>,
}

/// `schema.SearchResultData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SearchResultData {
    #[prost(int64, tag = "1")]
    pub num_queries: i64,
    #[prost(int64, tag = "2")]
    pub top_k: i64,
    #[prost(message, repeated, tag = "3")]
    pub fields_data: Vec<FieldData>,
    #[prost(float, repeated, tag = "4")]
    pub scores: Vec<f32>,
    #[prost(message, optional, tag = "5")]
    pub ids: Option<Ids>,
    #[prost(int64, repeated, tag = "6")]
    pub topks: Vec<i64>,
}

/// `common.PlaceholderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PlaceholderValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(int32, tag = "2")]
    pub r#type: i32,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub values: Vec<Vec<u8>>,
}

/// `common.PlaceholderGroup`: the query vectors of a search.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PlaceholderGroup {
    #[prost(message, repeated, tag = "1")]
    pub placeholders: Vec<PlaceholderValue>,
}

/// `milvus.CreateCollectionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateCollectionRequest {
    #[prost(string, tag = "3")]
    pub collection_name: String,
    /// An encoded [`CollectionSchema`].
    #[prost(bytes = "vec", tag = "4")]
    pub schema: Vec<u8>,
    #[prost(int32, tag = "5")]
    pub shards_num: i32,
    #[prost(int32, tag = "6")]
    pub consistency_level: i32,
}

/// `milvus.DropCollectionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DropCollectionRequest {
    #[prost(string, tag = "3")]
    pub collection_name: String,
}

/// `milvus.HasCollectionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HasCollectionRequest {
    #[prost(string, tag = "3")]
    pub collection_name: String,
}

/// `milvus.DescribeCollectionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescribeCollectionRequest {
    #[prost(string, tag = "3")]
    pub collection_name: String,
}

/// `milvus.DescribeCollectionResponse`: the collection's schema (its fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescribeCollectionResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(message, optional, tag = "2")]
    pub schema: Option<CollectionSchema>,
}

/// `milvus.BoolResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BoolResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(bool, tag = "2")]
    pub value: bool,
}

/// `milvus.InsertRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InsertRequest {
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(message, repeated, tag = "5")]
    pub fields_data: Vec<FieldData>,
    #[prost(uint32, tag = "7")]
    pub num_rows: u32,
}

/// `milvus.MutationResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MutationResult {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(int64, tag = "6")]
    pub insert_cnt: i64,
}

/// `milvus.CreateIndexRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateIndexRequest {
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(string, tag = "4")]
    pub field_name: String,
    #[prost(message, repeated, tag = "5")]
    pub extra_params: Vec<KeyValuePair>,
    #[prost(string, tag = "6")]
    pub index_name: String,
}

/// `milvus.LoadCollectionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoadCollectionRequest {
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(int32, tag = "4")]
    pub replica_number: i32,
}

/// `milvus.FlushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FlushRequest {
    #[prost(string, repeated, tag = "3")]
    pub collection_names: Vec<String>,
}

/// `milvus.FlushResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FlushResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
}

/// `milvus.SearchRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SearchRequest {
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(string, tag = "5")]
    pub dsl: String,
    /// An encoded [`PlaceholderGroup`].
    #[prost(bytes = "vec", tag = "6")]
    pub placeholder_group: Vec<u8>,
    #[prost(int32, tag = "7")]
    pub dsl_type: i32,
    #[prost(string, repeated, tag = "8")]
    pub output_fields: Vec<String>,
    #[prost(message, repeated, tag = "9")]
    pub search_params: Vec<KeyValuePair>,
    #[prost(int64, tag = "12")]
    pub nq: i64,
    #[prost(int32, tag = "14")]
    pub consistency_level: i32,
}

/// `milvus.SearchResults`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SearchResults {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(message, optional, tag = "2")]
    pub results: Option<SearchResultData>,
}

/// `milvus.QueryRequest`: the rows an expression selects.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryRequest {
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(string, tag = "4")]
    pub expr: String,
    #[prost(string, repeated, tag = "5")]
    pub output_fields: Vec<String>,
    #[prost(message, repeated, tag = "9")]
    pub query_params: Vec<KeyValuePair>,
    #[prost(int32, tag = "11")]
    pub consistency_level: i32,
}

/// `milvus.QueryResults`: one column per output field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryResults {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(message, repeated, tag = "2")]
    pub fields_data: Vec<FieldData>,
}
