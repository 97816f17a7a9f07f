//! Caption normalisation and tokenisation, as LAVIS does it.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// BLIP-2's text length: `max_length=35` in LAVIS's `Blip2Qformer`.
pub const DEFAULT_MAX_TOKENS: usize = 35;

/// LAVIS's `BlipCaptionProcessor.pre_caption` with `max_words = 50`: lowercase,
/// `.!"()*#:;~` to spaces, runs of two or more whitespace characters to one space,
/// trailing newline and surrounding spaces removed, at most 50 space-separated words.
///
/// A lone tab or newline between words stays, as in Python's `re.sub(r"\s{2,}", " ")`.
pub fn pre_caption(caption: &str) -> String {
    const MAX_WORDS: usize = 50;
    let lowered: String = caption
        .to_lowercase()
        .chars()
        .map(|c| if ".!\"()*#:;~".contains(c) { ' ' } else { c })
        .collect();
    let mut collapsed = String::with_capacity(lowered.len());
    let mut run = String::new();
    for c in lowered.chars() {
        if is_python_space(c) {
            run.push(c);
            continue;
        }
        flush_whitespace(&mut collapsed, &mut run);
        collapsed.push(c);
    }
    flush_whitespace(&mut collapsed, &mut run);
    let trimmed = collapsed.trim_end_matches('\n').trim_matches(' ');
    let words: Vec<&str> = trimmed.split(' ').collect();
    if words.len() > MAX_WORDS {
        words[..MAX_WORDS].join(" ")
    } else {
        trimmed.to_string()
    }
}

/// Python's `\s` for `str` patterns: Unicode whitespace plus the ASCII separators
/// U+001C..U+001F, which Rust's `char::is_whitespace` leaves out.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn flush_whitespace(out: &mut String, run: &mut String) {
    if run.chars().count() >= 2 {
        out.push(' ');
    } else {
        out.push_str(run);
    }
    run.clear();
}

/// The checkpoint's tokenizer, truncating to `max_tokens` (special tokens included).
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    max_tokens: usize,
    pad_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path, max_tokens: usize) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("is not a usable tokenizer: {e}"),
        })?;
        Self::new(tokenizer, max_tokens)
    }

    /// Builds bert-base-uncased's WordPiece tokenizer from a `vocab.txt` alone, adding
    /// `[DEC]` after the vocabulary when it is absent (as LAVIS does).
    pub fn from_vocab(path: &Path, max_tokens: usize) -> Result<Self> {
        use tokenizers::models::wordpiece::WordPiece;
        use tokenizers::normalizers::BertNormalizer;
        use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
        use tokenizers::processors::bert::BertProcessing;
        use tokenizers::AddedToken;

        let bad = |reason: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let path_str = path
            .to_str()
            .ok_or_else(|| bad("path is not UTF-8".into()))?;
        let wordpiece = WordPiece::from_file(path_str)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| bad(format!("is not a WordPiece vocabulary: {e}")))?;
        let id = |token: &str| {
            wordpiece_id(&wordpiece, token).ok_or_else(|| bad(format!("has no `{token}` token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let mut tokenizer = Tokenizer::new(wordpiece);
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )));
        let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
            .map(|t| AddedToken::from(t, true));
        tokenizer.add_special_tokens(&specials);
        Self::new(tokenizer, max_tokens)
    }

    fn new(mut tokenizer: Tokenizer, max_tokens: usize) -> Result<Self> {
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        Ok(Self {
            tokenizer,
            max_tokens,
            pad_id,
        })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Token ids of one caption after [`pre_caption`], `[CLS] … [SEP]`, truncated.
    pub fn encode(&self, caption: &str) -> Result<Vec<u32>> {
        let text = pre_caption(caption);
        let encoding = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Pads a batch of id lists to its longest: (input_ids u32, attention_mask u32),
    /// both (batch, longest). Padding is masked, so the result does not depend on it.
    pub fn batch(&self, ids: &[Vec<u32>], device: &Device) -> Result<(Tensor, Tensor)> {
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat_ids = Vec::with_capacity(ids.len() * longest);
        let mut flat_mask = Vec::with_capacity(ids.len() * longest);
        for row in ids {
            flat_ids.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(self.pad_id, longest - row.len())),
            );
            flat_mask.extend(
                std::iter::repeat_n(1u32, row.len())
                    .chain(std::iter::repeat_n(0, longest - row.len())),
            );
        }
        let shape = (ids.len(), longest);
        Ok((
            Tensor::from_vec(flat_ids, shape, device)?,
            Tensor::from_vec(flat_mask, shape, device)?,
        ))
    }

    /// The truncation length.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

fn wordpiece_id(wp: &tokenizers::models::wordpiece::WordPiece, token: &str) -> Option<u32> {
    use tokenizers::Model;
    wp.token_to_id(token)
}

#[cfg(test)]
mod tests {
    use super::pre_caption;

    #[test]
    fn pre_caption_matches_lavis() {
        let cases = [
            ("A cat lying on a bed.", "a cat lying on a bed"),
            ("coins   on    a\ttable", "coins on a\ttable"),
            ("  (Hello)  World!!\n", "hello world"),
            ("x\n", "x"),
            ("a~b*c#d", "a b c d"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(pre_caption(input), expected, "{input:?}");
        }
        let long = (0..60).map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
        assert_eq!(pre_caption(&long).split(' ').count(), 50);
    }
}
