//! ByT5's tokenizer: UTF-8 bytes shifted past three special ids, plus added tokens.
//!
//! ByT5 has no vocabulary file. Ids 0, 1, 2 are `<pad>`, `</s>`, `<unk>`; byte `b` is id `b + 3`;
//! the sentinels `<extra_id_0>` … `<extra_id_124>` follow at 259 … 383, and a checkpoint may add
//! more tokens after them (Glyph-ByT5, HunyuanVideo 1.5's glyph encoder, adds colour and font
//! tokens). Where an added token's text occurs in the input it becomes that one id, as in
//! transformers' `ByT5Tokenizer`; `<pad>`, `</s>` and `<unk>` also swallow the whitespace around
//! them (transformers creates them with `lstrip` and `rstrip`).

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// Ids of ByT5's fixed special tokens.
pub const PAD_ID: u32 = 0;
pub const EOS_ID: u32 = 1;
pub const UNK_ID: u32 = 2;
/// Byte `b` has id `b + BYTE_OFFSET`.
pub const BYTE_OFFSET: u32 = 3;
/// Sentinels transformers' ByT5Tokenizer adds by default.
const DEFAULT_EXTRA_IDS: u32 = 125;

/// A token matched in the text before it is split into bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    pub content: String,
    pub id: u32,
    /// Swallows whitespace on its left.
    pub lstrip: bool,
    /// Swallows whitespace on its right.
    pub rstrip: bool,
}

/// One entry of `added_tokens_decoder` in `tokenizer_config.json`.
#[derive(Debug, Deserialize)]
struct AddedTokenEntry {
    content: String,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
}

#[derive(Debug, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    added_tokens_decoder: Option<std::collections::BTreeMap<String, AddedTokenEntry>>,
}

/// ByT5's byte tokenizer.
#[derive(Debug, Clone)]
pub struct ByT5Tokenizer {
    /// Longest first, so that a token that starts another is matched whole.
    added: Vec<AddedToken>,
}

impl Default for ByT5Tokenizer {
    /// transformers' `ByT5Tokenizer()`: the three specials and 125 sentinels.
    fn default() -> Self {
        let strip = |content: &str, id| AddedToken {
            content: content.to_string(),
            id,
            lstrip: true,
            rstrip: true,
        };
        let mut added = vec![
            strip("<pad>", PAD_ID),
            strip("</s>", EOS_ID),
            strip("<unk>", UNK_ID),
        ];
        added.extend((0..DEFAULT_EXTRA_IDS).map(|i| AddedToken {
            content: format!("<extra_id_{i}>"),
            id: 256 + BYTE_OFFSET + i,
            lstrip: false,
            rstrip: false,
        }));
        Self::with_added_tokens(added)
    }
}

impl ByT5Tokenizer {
    /// A tokenizer matching `added` tokens (ids and strip flags as given) before splitting bytes.
    pub fn with_added_tokens(mut added: Vec<AddedToken>) -> Self {
        added.retain(|t| !t.content.is_empty());
        added.sort_by_key(|t| std::cmp::Reverse(t.content.len()));
        Self { added }
    }

    /// Reads a saved tokenizer folder (`tokenizer_2/`): its `tokenizer_config.json`'s
    /// `added_tokens_decoder` when there is one (transformers 4.34 and later write it); else
    /// transformers' defaults plus the tokens of an `added_tokens.json` (older folders), which
    /// records no strip flags (none strip).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        if !path.is_file() {
            return Self::with_added_tokens_json(dir);
        }
        let error = |reason: String| ModelError::Tokenizer {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
        let config: TokenizerConfig =
            serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        let Some(decoder) = config.added_tokens_decoder else {
            return Self::with_added_tokens_json(dir);
        };
        let added = decoder
            .into_iter()
            .map(|(id, entry)| {
                let id = id
                    .parse::<u32>()
                    .map_err(|_| error(format!("added token id {id:?} is not a number")))?;
                Ok(AddedToken {
                    content: entry.content,
                    id,
                    lstrip: entry.lstrip,
                    rstrip: entry.rstrip,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::with_added_tokens(added))
    }

    /// The defaults, and the tokens of `dir/added_tokens.json` ({"content": id}) if present.
    fn with_added_tokens_json(dir: &Path) -> Result<Self> {
        let path = dir.join("added_tokens.json");
        let defaults = Self::default();
        if !path.is_file() {
            return Ok(defaults);
        }
        let error = |reason: String| ModelError::Tokenizer {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
        let extra: std::collections::BTreeMap<String, u32> =
            serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        let mut added = defaults.added;
        for (content, id) in extra {
            if !added.iter().any(|t| t.content == content) {
                added.push(AddedToken {
                    content,
                    id,
                    lstrip: false,
                    rstrip: false,
                });
            }
        }
        Ok(Self::with_added_tokens(added))
    }

    /// The added tokens, longest first.
    pub fn added_tokens(&self) -> &[AddedToken] {
        &self.added
    }

    /// Ids of `text` without EOS: added tokens where their text occurs, bytes elsewhere.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        // Pieces: Ok(token) or Err(plain text), whitespace next to stripping tokens removed.
        let mut pieces: Vec<std::result::Result<&AddedToken, &str>> = Vec::new();
        let mut plain_start = 0;
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            if let Some(token) = self.added.iter().find(|t| rest.starts_with(&t.content)) {
                let mut before = &text[plain_start..pos];
                if token.lstrip {
                    before = before.trim_end_matches(is_python_space);
                }
                pieces.push(Err(before));
                pieces.push(Ok(token));
                pos += token.content.len();
                if token.rstrip {
                    pos += rest[token.content.len()..].len()
                        - rest[token.content.len()..]
                            .trim_start_matches(is_python_space)
                            .len();
                }
                plain_start = pos;
            } else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        pieces.push(Err(&text[plain_start..]));
        pieces
            .into_iter()
            .flat_map(|piece| match piece {
                Ok(token) => vec![token.id],
                Err(plain) => plain.bytes().map(|b| b as u32 + BYTE_OFFSET).collect(),
            })
            .collect()
    }

    /// Ids with EOS, as transformers gives them with `add_special_tokens=True, truncation=True,
    /// max_length`: cut to `max_len − 1` tokens, then EOS appended unless the ids already end
    /// with it.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = self.tokenize(text);
        if ids.len() + 1 > max_len {
            ids.truncate(max_len.saturating_sub(1));
        }
        if ids.last() != Some(&EOS_ID) {
            ids.push(EOS_ID);
        }
        ids
    }

    /// [`encode`](Self::encode) right-padded with `<pad>` to `max_len`: (ids, mask), mask 1 on
    /// the real ids and 0 on the padding.
    pub fn encode_padded(&self, text: &str, max_len: usize) -> (Vec<u32>, Vec<u32>) {
        let mut ids = self.encode(text, max_len);
        let real = ids.len();
        ids.resize(max_len.max(real), PAD_ID);
        let mut mask = vec![1; real];
        mask.resize(ids.len(), 0);
        (ids, mask)
    }
}

/// Python's `str.isspace`, which transformers' stripping uses: Rust's Unicode whitespace plus
/// the four information separators U+001C … U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
