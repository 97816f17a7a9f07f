//! Checks the hand-written Milvus gRPC messages of `src/engine/milvus_proto.rs` against
//! the real protos, vendored in `proto/milvus/` (milvus-proto v2.5.27) and compiled here
//! with protox (pure Rust, no `protoc`).
//!
//! The source file is read as text. Each `pub struct` / `pub enum` names its proto in
//! the first backticked span of its doc comment: a message (`` `common.KeyValuePair` ``,
//! the package `milvus.proto.common` shortened to its last part) for a struct, a
//! message and one of its oneofs (`` `schema.ScalarField.data` ``) for a
//! `prost::Oneof` enum. Each `pub const` names an enum value
//! (`` `common.DslType::BoolExprV1` ``). Then, for every `#[prost(...)]` field or oneof
//! variant, the proto field with that number must exist and have the same name (a
//! variant's name in snake_case), the same type (an enum field may be a plain `int32`;
//! a message field's Rust type must be the struct written for that message) and the
//! same cardinality (`repeated`); a oneof variant must belong to the oneof its struct
//! field is named after. Every constant must equal its enum value's number.
//!
//! A plain optional message field may stand for one member of a proto oneof (`IDs`'s
//! `int_id`, `VectorField`'s `float_vector`): it is the same on the wire.

use std::collections::HashMap;
use std::path::Path;

use protox::prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

const FILE: &str = "src/engine/milvus_proto.rs";
const SOURCE: &str = include_str!("../src/engine/milvus_proto.rs");
const PROTO_FILES: [&str; 6] = [
    "common.proto",
    "feder.proto",
    "milvus.proto",
    "msg.proto",
    "rg.proto",
    "schema.proto",
];

/// The vendored protos, compiled.
fn pool() -> DescriptorPool {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/milvus");
    protox::Compiler::new([&dir])
        .and_then(|mut c| c.open_files(PROTO_FILES).map(|c| c.descriptor_pool()))
        .unwrap_or_else(|e| panic!("compiling the protos in {}: {e:?}", dir.display()))
}

/// The contents of one `#[prost(...)]` attribute.
#[derive(Debug, Default)]
struct ProstAttr {
    /// `string`, `bytes`, `message`, `enumeration`, `int32`, ...; empty for a oneof.
    ty: String,
    repeated: bool,
    optional: bool,
    tag: Option<u32>,
    /// The `prost::Oneof` enum of a `#[prost(oneof = "...")]` field.
    oneof: Option<String>,
    tags: Vec<u32>,
}

/// A struct field or a oneof variant.
#[derive(Debug)]
struct Field {
    /// The field's name (without `r#`) or the variant's name.
    name: String,
    /// The field's or variant's Rust type, e.g. `Option<LongArray>`.
    rust_type: String,
    attr: ProstAttr,
    line: usize,
}

#[derive(Debug)]
struct Item {
    rust_name: String,
    is_oneof: bool,
    /// The proto name from the doc comment, e.g. `common.KeyValuePair`.
    proto: Option<String>,
    fields: Vec<Field>,
    line: usize,
}

#[derive(Debug)]
struct Const {
    name: String,
    proto: Option<String>,
    rust_type: String,
    value: String,
    line: usize,
}

#[derive(Debug, Default)]
struct Parsed {
    items: Vec<Item>,
    consts: Vec<Const>,
}

/// The first backticked span of a doc comment, if it names something (has a `.`).
fn proto_name(doc: &[String]) -> Option<String> {
    let text = doc.join(" ");
    let start = text.find('`')? + 1;
    let len = text[start..].find('`')?;
    let name = &text[start..start + len];
    name.contains('.').then(|| name.to_string())
}

fn unquote(s: &str) -> &str {
    s.trim().trim_matches('"')
}

fn parse_tags(s: &str) -> Result<Vec<u32>, String> {
    unquote(s)
        .split(',')
        .map(|t| t.trim().parse().map_err(|_| format!("bad tag {t:?}")))
        .collect()
}

fn parse_prost_attr(line: &str) -> Result<ProstAttr, String> {
    let inner = line
        .strip_prefix("#[prost(")
        .and_then(|s| s.strip_suffix(")]"))
        .ok_or_else(|| format!("not a one-line #[prost(...)] attribute: {line}"))?;
    // Split on the commas outside quotes (`tags = "3, 6"` holds one).
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);

    let mut attr = ProstAttr::default();
    for part in parts {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (part.trim(), None),
        };
        match (key, value) {
            ("repeated", None) => attr.repeated = true,
            ("optional", None) => attr.optional = true,
            ("tag", Some(v)) => {
                attr.tag = Some(unquote(v).parse().map_err(|_| format!("bad tag {v}"))?)
            }
            ("tags", Some(v)) => attr.tags = parse_tags(v)?,
            ("oneof", Some(v)) => attr.oneof = Some(unquote(v).to_string()),
            // `bytes = "vec"`, `enumeration = "Enum"`.
            ("bytes" | "enumeration", Some(_)) | (_, None) if attr.ty.is_empty() => {
                attr.ty = key.to_string()
            }
            _ => return Err(format!("unknown prost attribute part {part:?} in {line}")),
        }
    }
    Ok(attr)
}

/// `pub name: Type,` or `Variant(Type),`.
fn parse_field(line: &str, attr: ProstAttr, line_no: usize) -> Result<Field, String> {
    let (name, rust_type) = if let Some(rest) = line.strip_prefix("pub ") {
        let (name, ty) = rest
            .split_once(':')
            .ok_or_else(|| format!("not a field: {line}"))?;
        (
            name.trim().trim_start_matches("r#"),
            ty.trim().trim_end_matches(','),
        )
    } else {
        let (name, ty) = line
            .trim_end_matches(',')
            .strip_suffix(')')
            .and_then(|s| s.split_once('('))
            .ok_or_else(|| format!("not a oneof variant: {line}"))?;
        (name.trim(), ty.trim())
    };
    Ok(Field {
        name: name.to_string(),
        rust_type: rust_type.to_string(),
        attr,
        line: line_no,
    })
}

/// Reads the items of a file written like `milvus_proto.rs`: top-level `pub struct` and
/// `pub enum` with their `#[prost(...)]` fields, and `pub const` (at any depth).
fn parse(file: &str, source: &str) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    let mut doc: Vec<String> = Vec::new();
    let mut is_oneof = false;
    let mut current: Option<Item> = None;
    let mut pending: Option<(ProstAttr, usize)> = None;
    for (i, raw) in source.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        let at = |e: String| format!("{file}:{line_no}: {e}");
        if let Some(item) = current.as_mut() {
            if raw.starts_with('}') {
                if pending.is_some() {
                    return Err(at("#[prost(...)] without a field".into()));
                }
                parsed.items.push(current.take().unwrap());
            } else if line.starts_with("#[prost(") {
                pending = Some((parse_prost_attr(line).map_err(at)?, line_no));
            } else if line.is_empty() || line.starts_with("//") {
            } else if let Some((attr, _)) = pending.take() {
                item.fields
                    .push(parse_field(line, attr, line_no).map_err(at)?);
            } else {
                return Err(at(format!("field without #[prost(...)]: {line}")));
            }
            continue;
        }
        if let Some(text) = line.strip_prefix("///") {
            doc.push(text.trim().to_string());
            continue;
        }
        if line.starts_with("#[derive(") {
            is_oneof = line.contains("prost::Oneof");
            continue;
        }
        if let Some(rest) = line
            .strip_prefix("pub struct ")
            .or_else(|| line.strip_prefix("pub enum "))
        {
            if raw.starts_with(' ') {
                return Err(at("nested pub struct/enum: not read by this test".into()));
            }
            let rust_name = rest.trim_end_matches('{').trim().to_string();
            current = Some(Item {
                rust_name,
                is_oneof,
                proto: proto_name(&doc),
                fields: Vec::new(),
                line: line_no,
            });
        } else if let Some(rest) = line.strip_prefix("pub const ") {
            let (name, rest) = rest
                .split_once(':')
                .ok_or_else(|| at(format!("not a const: {line}")))?;
            let (rust_type, value) = rest
                .split_once('=')
                .ok_or_else(|| at(format!("not a const: {line}")))?;
            parsed.consts.push(Const {
                name: name.trim().to_string(),
                proto: proto_name(&doc),
                rust_type: rust_type.trim().to_string(),
                value: value.trim().trim_end_matches(';').trim().to_string(),
                line: line_no,
            });
        }
        doc.clear();
        is_oneof = false;
    }
    if let Some(item) = current {
        return Err(format!("{file}:{}: unclosed item", item.line));
    }
    Ok(parsed)
}

fn snake_case(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The proto type name prost's attribute uses for a field kind.
fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) => "message",
        Kind::Enum(_) => "enumeration",
    }
}

/// `Option<T>` / `Vec<T>` / `T` -> `T`.
fn inner_type(rust_type: &str) -> &str {
    for wrapper in ["Option<", "Vec<"] {
        if let Some(inner) = rust_type
            .strip_prefix(wrapper)
            .and_then(|s| s.strip_suffix('>'))
        {
            return inner.trim();
        }
    }
    rust_type
}

struct Checker<'a> {
    /// The checked file's name, for the messages.
    file: &'a str,
    pool: &'a DescriptorPool,
    parsed: &'a Parsed,
    /// Short package name (`common`) -> full (`milvus.proto.common`).
    packages: HashMap<String, String>,
    errors: Vec<String>,
}

impl Checker<'_> {
    fn error(&mut self, line: usize, message: String) {
        self.errors.push(format!("{}:{line}: {message}", self.file));
    }

    /// `common.KeyValuePair` -> `milvus.proto.common.KeyValuePair`.
    fn full_name(&self, short: &str) -> Option<String> {
        let (package, rest) = short.split_once('.')?;
        Some(format!("{}.{rest}", self.packages.get(package)?))
    }

    fn message(&mut self, proto: &str, line: usize) -> Option<MessageDescriptor> {
        let found = self
            .full_name(proto)
            .and_then(|full| self.pool.get_message_by_name(&full));
        if found.is_none() {
            self.error(line, format!("no proto message `{proto}`"));
        }
        found
    }

    /// The field numbered `tag` of `message`, which must be named `name`, with the type
    /// and cardinality of `field`'s attribute.
    fn check_field(&mut self, message: &MessageDescriptor, field: &Field, name: &str) {
        let line = field.line;
        let Some(tag) = field.attr.tag else {
            return self.error(line, format!("`{}` has no tag", field.name));
        };
        let Some(proto) = message.get_field(tag) else {
            return self.error(
                line,
                format!("`{}` has no field numbered {tag}", message.full_name()),
            );
        };
        if proto.name() != name {
            self.error(
                line,
                format!(
                    "field {tag} of `{}` is `{}`, not `{name}`",
                    message.full_name(),
                    proto.name()
                ),
            );
        }
        self.check_type(field, &proto);
    }

    fn check_type(&mut self, field: &Field, proto: &FieldDescriptor) {
        let (attr, line) = (&field.attr, field.line);
        let what = format!("`{}` (field `{}`)", field.name, proto.full_name());
        if proto.is_map() {
            return self.error(line, format!("{what} is a map: not supported here"));
        }
        if attr.repeated != proto.is_list() {
            self.error(
                line,
                format!(
                    "{what}: repeated in Rust: {}, in the proto: {}",
                    attr.repeated,
                    proto.is_list()
                ),
            );
        }
        let kind = proto.kind();
        if attr.optional && !matches!(kind, Kind::Message(_)) && !proto.supports_presence() {
            self.error(
                line,
                format!("{what} is optional in Rust, not in the proto"),
            );
        }
        match (attr.ty.as_str(), &kind) {
            ("message", Kind::Message(proto_message)) => {
                let rust = inner_type(&field.rust_type);
                let written = self
                    .parsed
                    .items
                    .iter()
                    .find(|i| i.rust_name == rust && !i.is_oneof)
                    .and_then(|i| i.proto.as_deref())
                    .and_then(|p| self.full_name(p));
                match written {
                    Some(full) if full == proto_message.full_name() => {}
                    Some(full) => self.error(
                        line,
                        format!(
                            "{what} holds `{}`, but `{rust}` is `{full}`",
                            proto_message.full_name()
                        ),
                    ),
                    None => self.error(
                        line,
                        format!("{what}: `{rust}` is not a struct of this file"),
                    ),
                }
            }
            // An enum field may be read and written as its plain number.
            ("enumeration" | "int32", Kind::Enum(_)) => {}
            (ty, kind) if ty == kind_name(kind) => {}
            (ty, kind) => self.error(
                line,
                format!(
                    "{what} is `{}` in the proto, `{ty}` in Rust",
                    kind_name(kind)
                ),
            ),
        }
    }

    fn check_struct(&mut self, item: &Item, proto: &str) {
        let Some(message) = self.message(proto, item.line) else {
            return;
        };
        for field in &item.fields {
            let Some(oneof_enum) = &field.attr.oneof else {
                self.check_field(&message, field, &field.name);
                continue;
            };
            // `#[prost(oneof = "Enum", tags = "..")] pub NAME: Option<Enum>`: the enum must
            // be written for oneof NAME of this message, with these tags.
            let line = field.line;
            if message.oneofs().all(|o| o.name() != field.name) {
                self.error(
                    line,
                    format!("`{}` has no oneof `{}`", message.full_name(), field.name),
                );
            }
            if inner_type(&field.rust_type) != oneof_enum {
                self.error(
                    line,
                    format!("`{}` is not Option<{oneof_enum}>", field.name),
                );
            }
            let Some(enum_item) = self
                .parsed
                .items
                .iter()
                .find(|i| i.is_oneof && &i.rust_name == oneof_enum)
            else {
                self.error(line, format!("no prost::Oneof enum `{oneof_enum}`"));
                continue;
            };
            let expected = format!("{proto}.{}", field.name);
            if enum_item.proto.as_deref() != Some(&expected) {
                self.error(
                    enum_item.line,
                    format!("`{oneof_enum}` should name `{expected}` in its doc comment"),
                );
            }
            let mut tags: Vec<Option<u32>> = enum_item.fields.iter().map(|v| v.attr.tag).collect();
            let mut listed: Vec<Option<u32>> = field.attr.tags.iter().copied().map(Some).collect();
            tags.sort();
            listed.sort();
            if tags != listed {
                self.error(
                    line,
                    format!("tags {listed:?} differ from `{oneof_enum}`'s variants' {tags:?}"),
                );
            }
        }
    }

    fn check_oneof(&mut self, item: &Item, proto: &str) {
        let Some((message_name, oneof)) = proto.rsplit_once('.') else {
            return self.error(
                item.line,
                format!("`{proto}` is not `package.Message.oneof`"),
            );
        };
        let Some(message) = self.message(message_name, item.line) else {
            return;
        };
        let referenced = self.parsed.items.iter().any(|i| {
            i.fields
                .iter()
                .any(|f| f.attr.oneof.as_deref() == Some(&item.rust_name))
        });
        if !referenced {
            self.error(
                item.line,
                format!("no struct field holds `{}`", item.rust_name),
            );
        }
        for variant in &item.fields {
            self.check_field(&message, variant, &snake_case(&variant.name));
            let in_oneof = variant
                .attr
                .tag
                .and_then(|tag| message.get_field(tag))
                .and_then(|f| f.containing_oneof())
                .is_some_and(|o| o.name() == oneof);
            if !in_oneof {
                self.error(
                    variant.line,
                    format!(
                        "`{}` is not in oneof `{oneof}` of `{}`",
                        variant.name,
                        message.full_name()
                    ),
                );
            }
        }
    }

    fn check_const(&mut self, c: &Const) {
        let Some(proto) = &c.proto else {
            return self.error(
                c.line,
                format!("`{}` names no enum value (`package.Enum::Value`)", c.name),
            );
        };
        let found = proto.split_once("::").and_then(|(enum_name, value)| {
            let full = self.full_name(enum_name)?;
            Some(
                self.pool
                    .get_enum_by_name(&full)?
                    .get_value_by_name(value)?
                    .number(),
            )
        });
        let Some(number) = found else {
            return self.error(c.line, format!("`{}`: no enum value `{proto}`", c.name));
        };
        if c.rust_type != "i32" || c.value != number.to_string() {
            self.error(
                c.line,
                format!(
                    "`{}: {} = {}`, but `{proto}` is {number} (i32)",
                    c.name, c.rust_type, c.value
                ),
            );
        }
    }
}

/// Every mistake found in `source` (the text of `file`), checked against `pool`.
fn check(file: &str, source: &str, pool: &DescriptorPool) -> Vec<String> {
    let parsed = match parse(file, source) {
        Ok(parsed) => parsed,
        Err(e) => return vec![e],
    };
    let packages = pool
        .files()
        .filter_map(|f| {
            let full = f.package_name();
            let short = full.strip_prefix("milvus.proto.")?;
            Some((short.to_string(), full.to_string()))
        })
        .collect();
    let mut checker = Checker {
        file,
        pool,
        parsed: &parsed,
        packages,
        errors: Vec::new(),
    };

    // Every struct, oneof enum and constant of the file is read and names its proto.
    let count = |prefixes: &[&str]| {
        source
            .lines()
            .filter(|l| prefixes.iter().any(|p| l.trim_start().starts_with(p)))
            .count()
    };
    let types = count(&["pub struct ", "pub enum "]);
    if parsed.items.len() != types {
        checker.errors.push(format!(
            "read {} structs/enums of {types} in {file}",
            parsed.items.len()
        ));
    }
    let consts = count(&["pub const "]);
    if parsed.consts.len() != consts {
        checker.errors.push(format!(
            "read {} consts of {consts} in {file}",
            parsed.consts.len()
        ));
    }

    for item in &parsed.items {
        match &item.proto {
            None => checker.error(
                item.line,
                format!("`{}`'s doc comment names no proto", item.rust_name),
            ),
            Some(proto) if item.is_oneof => checker.check_oneof(item, proto),
            Some(proto) => checker.check_struct(item, proto),
        }
    }
    for c in &parsed.consts {
        checker.check_const(c);
    }
    checker.errors
}

#[test]
fn messages_match_the_milvus_protos() {
    let pool = pool();
    let parsed = parse(FILE, SOURCE).unwrap();
    let errors = check(FILE, SOURCE, &pool);
    assert!(
        errors.is_empty(),
        "{} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
    // Not vacuous: the file's messages, fields and constants were all read.
    let structs = parsed.items.iter().filter(|i| !i.is_oneof).count();
    let fields: usize = parsed.items.iter().map(|i| i.fields.len()).sum();
    assert!(
        structs >= 20 && fields >= 60,
        "{structs} structs, {fields} fields"
    );
    assert!(parsed.consts.len() >= 6, "{} consts", parsed.consts.len());
}

/// A few items as `milvus_proto.rs` writes them, checked as they are and with one
/// mistake each: the check must catch every one.
#[test]
fn the_check_catches_mistakes() {
    const GOOD: &str = r#"
/// `schema.DataType` values.
pub mod data_type {
    /// `schema.DataType::VarChar`.
    pub const VARCHAR: i32 = 21;
    /// `schema.DataType::Double`.
    pub const DOUBLE: i32 = 11;
}

/// `common.KeyValuePair`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValuePair {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `schema.LongArray`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LongArray {
    #[prost(int64, repeated, tag = "1")]
    pub data: Vec<i64>,
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

/// `schema.ScalarField`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScalarField {
    #[prost(oneof = "Scalars", tags = "3, 5, 6")]
    pub data: Option<Scalars>,
}

/// `schema.ScalarField.data`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Scalars {
    #[prost(message, tag = "3")]
    LongData(LongArray),
    #[prost(message, tag = "5")]
    DoubleData(DoubleArray),
    #[prost(message, tag = "6")]
    StringData(StringArray),
}

/// `milvus.DescribeCollectionResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescribeCollectionResponse {
    #[prost(message, optional, tag = "2")]
    pub schema: Option<CollectionSchema>,
}

/// `schema.CollectionSchema`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CollectionSchema {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `common.PlaceholderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PlaceholderValue {
    #[prost(int32, tag = "2")]
    pub r#type: i32,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub values: Vec<Vec<u8>>,
}

/// `milvus.InsertRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InsertRequest {
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(uint32, tag = "7")]
    pub num_rows: u32,
}

/// `milvus.CreateIndexRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateIndexRequest {
    #[prost(message, repeated, tag = "5")]
    pub extra_params: Vec<KeyValuePair>,
}
"#;
    let pool = pool();
    assert_eq!(check("GOOD", GOOD, &pool), Vec::<String>::new());

    let mistakes: &[(&str, &str, &str)] = &[
        // (what, from, to)
        ("tag", "\"1\")]\n    pub key", "\"3\")]\n    pub key"),
        ("name", "pub value: String", "pub val: String"),
        ("type", "#[prost(int64, repeated", "#[prost(int32, repeated"),
        ("cardinality", "#[prost(string, repeated", "#[prost(string"),
        (
            "message type",
            "LongData(LongArray)",
            "LongData(StringArray)",
        ),
        ("variant name", "LongData(", "IntData("),
        ("oneof tags", "tags = \"3, 5, 6\"", "tags = \"3, 5, 7\""),
        ("double as float", "(double, repeated", "(float, repeated"),
        (
            "double variant",
            "DoubleData(DoubleArray)",
            "FloatData(DoubleArray)",
        ),
        ("Double's value", "DOUBLE: i32 = 11", "DOUBLE: i32 = 10"),
        (
            "schema's tag",
            "tag = \"2\")]\n    pub schema",
            "tag = \"3\")]\n    pub schema",
        ),
        ("enum value", "VARCHAR: i32 = 21", "VARCHAR: i32 = 20"),
        ("enum value name", "DataType::VarChar", "DataType::Varchar"),
        (
            "message name",
            "`schema.StringArray`",
            "`schema.StringArrays`",
        ),
        ("package", "`common.KeyValuePair`", "`schema.KeyValuePair`"),
        ("missing doc", "/// `schema.LongArray`.\n", ""),
        (
            "enum field type",
            "(int32, tag = \"2\")",
            "(int64, tag = \"2\")",
        ),
        ("uint32 as int32", "(uint32, tag", "(int32, tag"),
        ("message type name", "Vec<KeyValuePair>", "Vec<LongArray>"),
    ];
    for (what, from, to) in mistakes {
        assert_eq!(GOOD.matches(from).count(), 1, "{what}: {from:?}");
        let bad = GOOD.replace(from, to);
        let errors = check(what, &bad, &pool);
        assert!(!errors.is_empty(), "a wrong {what} went unnoticed:\n{bad}");
        eprintln!("{}", errors.join("; "));
    }
}
