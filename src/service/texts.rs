//! The sentences that image → texts search finds: adding (embedded with the
//! collection's model) and listing.

use serde::{Deserialize, Serialize};

use crate::pipeline::texts::{add_texts, check_texts, TextEntry, TextsSummary};
use crate::pipeline::Collection;
use crate::Result;

/// One stored text, as `qseek texts list` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TextItem {
    /// The caller's id, if it gave one.
    pub id: Option<String>,
    /// The text.
    pub text: String,
}

/// Adds texts (checked first: nothing is added when one is empty); `source_name` names
/// them in errors (a file, or "request").
pub fn add(
    c: &Collection,
    source_name: &str,
    entries: &[TextEntry],
    batch: usize,
    progress: bool,
) -> Result<TextsSummary> {
    check_texts(source_name, entries)?;
    add_texts(c, entries, batch, progress)
}

/// Every text of the index, in the order they were added.
pub fn list(index: &qseek_index::Index) -> Vec<TextItem> {
    index
        .texts()
        .into_iter()
        .map(|t| TextItem {
            id: t.external_id,
            text: t.text,
        })
        .collect()
}
