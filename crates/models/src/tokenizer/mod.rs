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

thread_local! {
    /// Set while [`guarded`] runs: the panic hook stays silent on this thread.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `f()`, or the message of the panic it raised, which is not printed: the tokenizers crate
/// panics (`unwrap`, `expect`) on some malformed files, both while reading them and later while
/// encoding (found by fuzzing), and a bad file must be an error line. A hook installed once
/// wraps the previous one and is silent only on a thread inside `guarded`, so other threads'
/// panics print as before.
fn guarded<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::result::Result<T, String> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(f);
    QUIET.with(|q| q.set(false));
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("the tokenizers library failed on it ({message})")
    })
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
        let mut tokenizer = guarded(|| text.parse::<Tokenizer>())
            .map_err(error)?
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
        let tokenizer = Self {
            tokenizer,
            path: path.to_path_buf(),
        };
        // A post-processor naming a special token it does not define fails on every prompt:
        // say so now, when the file is read, rather than after the model has loaded.
        tokenizer.encode_raw("a", usize::MAX)?;
        Ok(tokenizer)
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
        let special_tokens = guarded(std::panic::AssertUnwindSafe(|| {
            self.tokenizer
                .get_post_processor()
                .map_or(0, |p| p.added_tokens(false))
        }))
        .map_err(error)?;
        if max_len <= special_tokens {
            return Err(ModelError::InvalidInput(format!(
                "text length {max_len} leaves no room for tokens next to the {special_tokens} \
                 special token(s) the tokenizer adds"
            )));
        }
        let tokenizer = &self.tokenizer;
        // Asserted: after a panic the tokenizer is only used to report this error.
        let encoding = guarded(std::panic::AssertUnwindSafe(|| {
            let mut encoding = tokenizer.encode(text, false)?;
            encoding.truncate(max_len - special_tokens, 0, TruncationDirection::Right);
            tokenizer.post_process(encoding, None, true)
        }))
        .map_err(error)?
        .map_err(|e| error(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id of a token, e.g. `</s>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}
