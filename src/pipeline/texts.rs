//! `qseek texts add FILE`: a collection of sentences to find for a photo.
//!
//! The file holds one text per line, or JSON lines `{"id": ..., "text": ...}` (an id
//! lets a later run replace the text). Adding the same file twice changes nothing.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{progress_bar, Collection};
use crate::error::BadRequest;
use crate::preprocess::text::pre_caption;
use crate::{Error, Result};

/// One text to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TextEntry {
    /// The caller's id, if any.
    pub id: Option<String>,
    /// The text.
    pub text: String,
}

/// What `texts add` did.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TextsSummary {
    /// New texts.
    pub added: usize,
    /// Texts whose id was already there with another text.
    pub replaced: usize,
    /// Texts already there.
    pub unchanged: usize,
    /// Texts in the index after the run.
    pub texts_in_index: usize,
}

/// Reads a texts file; any malformed line is an error naming it, before anything is added.
pub fn read_texts_file(path: &Path) -> Result<Vec<TextEntry>> {
    let content = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_texts(&path.display().to_string(), &content)
}

/// Parses the lines of a texts file (or of a request body named `source_name`); any
/// malformed line is an error naming it, before anything is added.
pub fn parse_texts(source_name: &str, content: &str) -> Result<Vec<TextEntry>> {
    let bad = |line: usize, reason: String| {
        Error::from(BadRequest::BadTextsLine {
            source_name: source_name.to_string(),
            line,
            reason,
        })
    };
    let mut out = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let entry = if trimmed.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(trimmed)
                .map_err(|e| bad(i + 1, format!("not valid JSON: {e}")))?;
            let text = v
                .get("text")
                .and_then(|t| t.as_str())
                .ok_or_else(|| bad(i + 1, "a JSON line needs a string field \"text\"".into()))?;
            let id = match v.get("id") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(other) => {
                    return Err(bad(
                        i + 1,
                        format!("\"id\" must be a string or a number, not {other}"),
                    ))
                }
            };
            TextEntry {
                id,
                text: text.to_string(),
            }
        } else {
            TextEntry {
                id: None,
                text: trimmed.to_string(),
            }
        };
        if pre_caption(&entry.text).is_empty() {
            return Err(bad(i + 1, "the text is empty once normalised".into()));
        }
        out.push(entry);
    }
    if out.is_empty() {
        return Err(BadRequest::NoTextsGiven {
            source_name: source_name.to_string(),
        }
        .into());
    }
    Ok(out)
}

/// Checks texts given one by one (a request), as [`parse_texts`] checks a file's lines.
pub fn check_texts(source_name: &str, entries: &[TextEntry]) -> Result<()> {
    if entries.is_empty() {
        return Err(BadRequest::NoTextsGiven {
            source_name: source_name.to_string(),
        }
        .into());
    }
    match entries.iter().position(|e| pre_caption(&e.text).is_empty()) {
        Some(i) => Err(BadRequest::BadTextsLine {
            source_name: source_name.to_string(),
            line: i + 1,
            reason: "the text is empty once normalised".into(),
        }
        .into()),
        None => Ok(()),
    }
}

/// Adds `entries` to the collection's texts, embedding `batch` at a time.
pub fn add_texts(
    c: &Collection,
    entries: &[TextEntry],
    batch: usize,
    progress: bool,
) -> Result<TextsSummary> {
    let mut summary = TextsSummary::default();
    let existing = c.index.texts();
    let by_id: HashMap<&str, (&str, u64)> = existing
        .iter()
        .filter_map(|t| Some((t.external_id.as_deref()?, (t.text.as_str(), t.text_id))))
        .collect();
    let mut plain: std::collections::HashSet<&str> = existing
        .iter()
        .filter(|t| t.external_id.is_none())
        .map(|t| t.text.as_str())
        .collect();
    let mut writer = c.index.writer()?;
    let mut todo = Vec::new();
    for e in entries {
        match (&e.id, e.id.as_deref().and_then(|id| by_id.get(id))) {
            (Some(_), Some((text, _))) if *text == e.text => summary.unchanged += 1,
            (Some(_), Some((_, old))) => {
                writer.remove_text(*old);
                summary.replaced += 1;
                todo.push(e);
            }
            (Some(_), None) => {
                summary.added += 1;
                todo.push(e);
            }
            (None, _) => {
                if plain.insert(e.text.as_str()) {
                    summary.added += 1;
                    todo.push(e);
                } else {
                    summary.unchanged += 1;
                }
            }
        }
    }
    let bar = progress_bar(todo.len() as u64, "texts", progress);
    for chunk in todo.chunks(batch.max(1)) {
        let texts: Vec<String> = chunk.iter().map(|e| e.text.clone()).collect();
        let ids = c.embedder.tokenize(&texts)?;
        let embeds = c.embedder.embed_token_ids(&ids)?.to_vec2::<f32>()?;
        for (e, v) in chunk.iter().zip(embeds) {
            writer.add_text(&e.text, e.id.clone(), &v)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    writer.commit()?;
    summary.texts_in_index = c.index.stats().texts;
    Ok(summary)
}
