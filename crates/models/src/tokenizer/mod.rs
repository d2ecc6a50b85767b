//! The umT5 prompt tokenizer: reference prompt cleaning, then a `tokenizer.json`
//! (SentencePiece unigram for google/umt5-xxl) through the `tokenizers` crate, with the special
//! tokens its post-processor adds (EOS `</s>` for umT5) and truncation to the text length.
//!
//! - [`clean`]: `clean_prompt` (ftfy-like fixes, HTML unescaping, whitespace collapsing).
//! - [`html`]: HTML character references decoded like Python's `html.unescape` and ftfy.

pub mod clean;
mod entities;
pub mod html;

use std::path::{Path, PathBuf};

use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

pub use clean::clean_prompt;

use crate::error::{ModelError, Result};

/// A `tokenizer.json` prepared for prompts: no padding (the encoder pads its output itself)
/// and truncation done per call.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("path", &self.path)
            .finish()
    }
}

/// `f()`, or `None` if it panicked, without the panic message on stderr (a library's internal
/// panic on a bad file is reported by the caller as an error line instead).
fn quiet_catch_unwind<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    result.ok()
}

impl PromptTokenizer {
    /// Reads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let error = |reason: String| ModelError::Tokenizer {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        // The tokenizers crate unwraps inside some of its deserialisers (a syntax error in the
        // decoder section panics; found by fuzzing): the JSON is checked here first, and a
        // panic that still escapes on valid JSON becomes this error.
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| error(format!("invalid JSON: {e}")))?;
        let mut tokenizer = quiet_catch_unwind(|| text.parse::<Tokenizer>())
            .ok_or_else(|| error("the tokenizers library could not read it".into()))?
            .map_err(|e| error(e.to_string()))?;
        // Padding and truncation settings saved in the file would change the ids; this type
        // applies its own truncation and never pads.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            tokenizer,
            path: path.to_path_buf(),
        })
    }

    /// Cleans `prompt` ([`clean_prompt`]) and tokenizes it: the ids with the closing special
    /// tokens (EOS for umT5), at most `max_len` of them in all (512 for Wan2.1). Like
    /// transformers' `truncation=True`, the text is cut and the special tokens are kept.
    pub fn encode(&self, prompt: &str, max_len: usize) -> Result<Vec<u32>> {
        self.encode_raw(&clean_prompt(prompt), max_len)
    }

    /// Tokenizes `text` as it is, without cleaning (for text cleaned elsewhere, or for
    /// comparisons with pipelines that skip cleaning).
    pub fn encode_raw(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let error = |reason: String| ModelError::Tokenizer {
            path: self.path.display().to_string(),
            reason,
        };
        let special_tokens = self
            .tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if max_len <= special_tokens {
            return Err(ModelError::InvalidInput(format!(
                "text length {max_len} leaves no room for tokens next to the {special_tokens} \
                 special token(s) the tokenizer adds"
            )));
        }
        let mut encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| error(e.to_string()))?;
        encoding.truncate(max_len - special_tokens, 0, TruncationDirection::Right);
        let encoding = self
            .tokenizer
            .post_process(encoding, None, true)
            .map_err(|e| error(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id of a token, e.g. `</s>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}
