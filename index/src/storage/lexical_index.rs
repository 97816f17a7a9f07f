//! Tantivy over file names, path components and texts: lexical filters.
//!
//! A derived structure: sled is the truth. Every tantivy commit carries the
//! sled generation it reflects as its payload; on open a missing, unreadable
//! or stale tantivy index is rebuilt from sled.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tantivy::collector::DocSetCollector;
use tantivy::query::{BooleanQuery, Occur, QueryParser, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, FAST, INDEXED, STORED, STRING, TEXT};
use tantivy::{doc, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::{Error, Result};

/// Indexing arena; tantivy's minimum per thread is 15 MB.
const WRITER_ARENA_BYTES: usize = 20_000_000;

/// What a tantivy document stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DocKind {
    Image,
    Text,
}

impl DocKind {
    fn as_str(self) -> &'static str {
        match self {
            DocKind::Image => "image",
            DocKind::Text => "text",
        }
    }
}

struct Fields {
    /// Unique per document (`i:<path>` or `t:<text id>`): what deletes match.
    key: Field,
    kind: Field,
    item_id: Field,
    name: Field,
    path: Field,
    text: Field,
}

/// The tantivy index of an index directory.
pub(crate) struct LexicalIndex {
    dir: PathBuf,
    index: tantivy::Index,
    writer: IndexWriter<TantivyDocument>,
    reader: IndexReader,
    fields: Fields,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        kind: b.add_text_field("kind", STRING),
        item_id: b.add_u64_field("item_id", INDEXED | FAST | STORED),
        name: b.add_text_field("name", TEXT),
        path: b.add_text_field("path", TEXT),
        text: b.add_text_field("text", TEXT),
    };
    (b.build(), fields)
}

impl LexicalIndex {
    /// Opens the index in `dir`, or creates an empty one when it is missing or
    /// unreadable. Returns the sled generation its last commit reflects
    /// (`None` when it must be rebuilt).
    pub(crate) fn open(dir: &Path) -> Result<(LexicalIndex, Option<u64>)> {
        let (schema, fields) = schema();
        let opened = std::fs::create_dir_all(dir)
            .ok()
            .and_then(|_| tantivy::Index::open_in_dir(dir).ok())
            .filter(|index| index.schema() == schema);
        let (index, generation) = match opened {
            Some(index) => {
                let generation = index
                    .load_metas()
                    .ok()
                    .and_then(|m| m.payload)
                    .and_then(|p| p.parse::<u64>().ok());
                (index, generation)
            }
            None => {
                // Derived data: throw away whatever is there and start over.
                let _ = std::fs::remove_dir_all(dir);
                std::fs::create_dir_all(dir).map_err(crate::io_err(dir))?;
                let index = tantivy::Index::create_in_dir(dir, schema).map_err(lex_err(dir))?;
                (index, None)
            }
        };
        let writer = index
            .writer_with_num_threads(1, WRITER_ARENA_BYTES)
            .map_err(lex_err(dir))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(lex_err(dir))?;
        Ok((
            LexicalIndex {
                dir: dir.to_path_buf(),
                index,
                writer,
                reader,
                fields,
            },
            generation,
        ))
    }

    pub(crate) fn add_path(&mut self, image: u64, path: &str) -> Result<()> {
        let f = &self.fields;
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.writer
            .add_document(doc!(
                f.key => format!("i:{path}"),
                f.kind => DocKind::Image.as_str(),
                f.item_id => image,
                f.name => name,
                f.path => path,
            ))
            .map_err(lex_err(&self.dir))?;
        Ok(())
    }

    pub(crate) fn remove_path(&mut self, path: &str) {
        self.writer
            .delete_term(Term::from_field_text(self.fields.key, &format!("i:{path}")));
    }

    pub(crate) fn add_text(&mut self, id: u64, text: &str) -> Result<()> {
        let f = &self.fields;
        self.writer
            .add_document(doc!(
                f.key => format!("t:{id}"),
                f.kind => DocKind::Text.as_str(),
                f.item_id => id,
                f.text => text,
            ))
            .map_err(lex_err(&self.dir))?;
        Ok(())
    }

    pub(crate) fn remove_text(&mut self, id: u64) {
        self.writer
            .delete_term(Term::from_field_text(self.fields.key, &format!("t:{id}")));
    }

    pub(crate) fn clear(&mut self) -> Result<()> {
        self.writer
            .delete_all_documents()
            .map_err(lex_err(&self.dir))?;
        Ok(())
    }

    /// Commits, tagged with the sled generation the documents now reflect.
    pub(crate) fn commit(&mut self, generation: u64) -> Result<()> {
        let mut prepared = self.writer.prepare_commit().map_err(lex_err(&self.dir))?;
        prepared.set_payload(&generation.to_string());
        prepared.commit().map_err(lex_err(&self.dir))?;
        self.reader.reload().map_err(lex_err(&self.dir))?;
        Ok(())
    }

    /// Ids of the items of `kind` that match `query` (tantivy query syntax over
    /// the fields `name`, `path` and `text`).
    pub(crate) fn matching(&self, query: &str, kind: DocKind) -> Result<HashSet<u64>> {
        let f = &self.fields;
        let parser = QueryParser::for_index(&self.index, vec![f.name, f.path, f.text]);
        let parsed = parser.parse_query(query).map_err(|e| Error::BadQuery {
            query: query.to_string(),
            reason: e.to_string(),
        })?;
        let kind_query = TermQuery::new(
            Term::from_field_text(f.kind, kind.as_str()),
            IndexRecordOption::Basic,
        );
        let combined = BooleanQuery::new(vec![
            (Occur::Must, parsed),
            (Occur::Must, Box::new(kind_query)),
        ]);
        let searcher = self.reader.searcher();
        let docs = searcher
            .search(&combined, &DocSetCollector)
            .map_err(lex_err(&self.dir))?;
        // Ids come from the fast field: loading stored documents would cost a
        // decompression per match, and broad filters match thousands.
        let mut columns = HashMap::new();
        let mut ids = HashSet::with_capacity(docs.len());
        for address in docs {
            let column = match columns.entry(address.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    searcher
                        .segment_reader(address.segment_ord)
                        .fast_fields()
                        .u64("item_id")
                        .map_err(lex_err(&self.dir))?,
                ),
            };
            if let Some(id) = column.first(address.doc_id) {
                ids.insert(id);
            }
        }
        Ok(ids)
    }

    /// Live documents of each kind: (image paths, texts).
    pub(crate) fn counts(&self) -> Result<(u64, u64)> {
        let searcher = self.reader.searcher();
        let count = |kind: DocKind| {
            let q = TermQuery::new(
                Term::from_field_text(self.fields.kind, kind.as_str()),
                IndexRecordOption::Basic,
            );
            searcher
                .search(&q, &tantivy::collector::Count)
                .map(|n| n as u64)
                .map_err(lex_err(&self.dir))
        };
        Ok((count(DocKind::Image)?, count(DocKind::Text)?))
    }
}

fn lex_err(dir: &Path) -> impl Fn(tantivy::TantivyError) -> Error + '_ {
    move |source| Error::Lexical {
        path: dir.to_path_buf(),
        source,
    }
}
