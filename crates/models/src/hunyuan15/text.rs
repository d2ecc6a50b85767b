//! HunyuanVideo 1.5's prompt encoding, as diffusers' `HunyuanVideo15Pipeline.encode_prompt`
//! does it: what reaches the transformer's two text streams.
//!
//! Qwen2.5-VL stream: each prompt is put in a chat template (a fixed system message asking for a
//! detailed video description, the prompt as the user's turn, then the assistant's turn opened),
//! tokenized, cut to `crop_start + max_length` tokens and right-padded; the language model's
//! hidden state two layers before its end (un-normed) is taken, and the first `crop_start`
//! positions (the template before the prompt: 108 tokens with Qwen's tokenizer) are dropped.
//!
//! ByT5 stream: the quoted text of each prompt (`"…"` or `“…”`) is gathered into
//! `Text "…". Text "…". `, byte-tokenized with EOS to at most `glyph_max_length` tokens and
//! encoded by ByT5; a prompt without quotes gets zeros and an all-zero mask.
//!
//! The outputs keep the pipeline's shapes ([B, 1000, 3584] and [B, 256, 1472] for the released
//! model). One difference, on purpose: positions past a prompt's tokens are zero here, where the
//! pipeline's encoders fill them with values of padding tokens. The transformer never reads them:
//! its token refiner masks them and it replaces them with zeros before the double-stream blocks.
//! So only the real tokens go through the networks (a batch is padded to its longest prompt, not
//! to 1108 tokens), which also makes the result independent of the padding.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use crate::byt5::{ByT5Encoder, ByT5Tokenizer};
use crate::error::{ModelError, Result};
use crate::qwen25vl_text::{Qwen25VlTextConfig, Qwen25VlTextModel};

/// The system message of HunyuanVideo 1.5's template. The pipeline writes it over several source
/// lines joined by backslashes, so each numbered item is preceded by a space and the eight spaces
/// of the source indentation.
pub const SYSTEM_MESSAGE: &str = "You are a helpful assistant. Describe the video by detailing the following aspects:         1. The main content and theme of the video.         2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.         3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.         4. background environment, light, style and atmosphere.         5. camera angles, movements, and transitions used in the video.";

/// The pipeline's settings of the two text streams.
#[derive(Debug, Clone, PartialEq)]
pub struct HunyuanTextSettings {
    pub system_message: String,
    /// Template tokens before the prompt, dropped from the output (108 with Qwen's tokenizer).
    pub crop_start: usize,
    /// Qwen2.5-VL positions kept after the crop (the tokenizer cuts at crop_start + this).
    pub max_length: usize,
    /// ByT5 positions (with EOS).
    pub glyph_max_length: usize,
    /// The hidden state read is `hidden_states[-(skip + 1)]`.
    pub hidden_layers_to_skip: usize,
}

impl Default for HunyuanTextSettings {
    /// HunyuanVideo15Pipeline's values.
    fn default() -> Self {
        Self {
            system_message: SYSTEM_MESSAGE.to_string(),
            crop_start: 108,
            max_length: 1000,
            glyph_max_length: 256,
            hidden_layers_to_skip: 2,
        }
    }
}

/// The chat text of one prompt: Qwen2.5-VL's template with a system turn, the prompt as the
/// user's turn (an empty prompt becomes one space, as the pipeline does) and the assistant's
/// turn opened.
pub fn chat_text(prompt: &str, system_message: &str) -> String {
    let prompt = if prompt.is_empty() { " " } else { prompt };
    format!(
        "<|im_start|>system\n{system_message}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n\
         <|im_start|>assistant\n"
    )
}

/// The glyph text of a prompt, as the pipeline's `extract_glyph_texts`: every `"…"` or `“…”`
/// span (shortest, not across a line feed, left to right, not overlapping), duplicates dropped
/// keeping the first, each written `Text "…"`, joined by `. ` and ended by `. `. `None` without
/// quotes.
pub fn extract_glyph_text(prompt: &str) -> Option<String> {
    let chars: Vec<char> = prompt.chars().collect();
    let mut found: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let close = match chars[i] {
            '"' => '"',
            '\u{201c}' => '\u{201d}',
            _ => {
                i += 1;
                continue;
            }
        };
        // The lazy `(.*?)` of the pattern: up to the first closing quote; `.` stops at '\n'.
        let end = chars[i + 1..]
            .iter()
            .position(|&c| c == close || c == '\n')
            .map(|offset| i + 1 + offset)
            .filter(|&j| chars[j] == close);
        match end {
            Some(j) => {
                let text: String = chars[i + 1..j].iter().collect();
                if !found.contains(&text) {
                    found.push(text);
                }
                i = j + 1;
            }
            None => i += 1,
        }
    }
    if found.is_empty() {
        return None;
    }
    let mut joined = found
        .iter()
        .map(|t| format!("Text \"{t}\""))
        .collect::<Vec<_>>()
        .join(". ");
    joined.push_str(". ");
    Some(joined)
}

/// Tokens of the chat template before the prompt: what `crop_start` must be for `tokenizer`
/// (108 for Qwen2.5-VL's tokenizer, whose count the pipeline hard-codes).
pub fn template_prefix_tokens(tokenizer: &Tokenizer, system_message: &str) -> Result<usize> {
    let marker = "\u{0}";
    let text = chat_text(marker, system_message);
    let prefix = &text[..text.find(marker).expect("the template contains the prompt")];
    let encoding = tokenizer
        .encode(prefix, false)
        .map_err(|e| ModelError::Tokenizer {
            path: "Qwen2.5-VL tokenizer".to_string(),
            reason: e.to_string(),
        })?;
    Ok(encoding.get_ids().len())
}

/// The Qwen ids of each prompt's chat text, cut to `crop_start + max_length` (no padding).
pub fn tokenize_prompts(
    tokenizer: &Tokenizer,
    prompts: &[&str],
    settings: &HunyuanTextSettings,
) -> Result<Vec<Vec<u32>>> {
    let limit = settings.crop_start + settings.max_length;
    prompts
        .iter()
        .map(|prompt| {
            let text = chat_text(prompt, &settings.system_message);
            // The template carries its special tokens; the tokenizer adds none (as
            // apply_chat_template tokenizes).
            let encoding =
                tokenizer
                    .encode(text.as_str(), false)
                    .map_err(|e| ModelError::Tokenizer {
                        path: "Qwen2.5-VL tokenizer".to_string(),
                        reason: e.to_string(),
                    })?;
            let mut ids = encoding.get_ids().to_vec();
            ids.truncate(limit);
            Ok(ids)
        })
        .collect()
}

/// What the transformer receives from the text encoders.
#[derive(Debug, Clone)]
pub struct HunyuanTextEmbeddings {
    /// [B, max_length, hidden] f32; zero past each prompt's tokens.
    pub qwen_embeds: Tensor,
    /// [B, max_length] f32: 1 on the prompt's tokens, 0 after.
    pub qwen_mask: Tensor,
    /// [B, glyph_max_length, d_model] f32; zero past the glyph tokens and for prompts without.
    pub byt5_embeds: Tensor,
    /// [B, glyph_max_length] f32: 1 on the glyph tokens (with EOS), 0 elsewhere.
    pub byt5_mask: Tensor,
}

/// The Qwen2.5-VL stream: tokenizer, language model (up to the layer read) and settings.
#[derive(Debug, Clone)]
pub struct QwenPromptEncoder {
    model: Qwen25VlTextModel,
    tokenizer: Tokenizer,
    settings: HunyuanTextSettings,
}

impl QwenPromptEncoder {
    pub fn new(
        model: Qwen25VlTextModel,
        tokenizer: Tokenizer,
        settings: HunyuanTextSettings,
    ) -> Self {
        Self {
            model,
            tokenizer,
            settings,
        }
    }

    /// Opens `text_encoder/` and `tokenizer/tokenizer.json` of a diffusers folder, loading only
    /// the layers below the state read.
    pub fn open(
        model_dir: &Path,
        settings: HunyuanTextSettings,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let encoder_dir = model_dir.join("text_encoder");
        let cfg = Qwen25VlTextConfig::from_json_file(&encoder_dir.join("config.json"))?;
        let layers = match settings.hidden_layers_to_skip {
            0 => cfg.num_hidden_layers,
            skip => cfg.num_hidden_layers.checked_sub(skip).ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "cannot skip {skip} of {} layers",
                    cfg.num_hidden_layers
                ))
            })?,
        };
        let model = Qwen25VlTextModel::open(&encoder_dir, dtype, device, Some(layers))?;
        let tokenizer = load_tokenizer(&model_dir.join("tokenizer").join("tokenizer.json"))?;
        Ok(Self::new(model, tokenizer, settings))
    }

    pub fn model(&self) -> &Qwen25VlTextModel {
        &self.model
    }

    pub fn settings(&self) -> &HunyuanTextSettings {
        &self.settings
    }

    /// prompts → (embeds [B, max_length, hidden] f32, mask [B, max_length] f32).
    pub fn encode(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let ids = tokenize_prompts(&self.tokenizer, prompts, &self.settings)?;
        self.encode_ids(&ids)
    }

    /// Tokenized chat texts (from [`tokenize_prompts`]) → (embeds, mask) as [`encode`](Self::encode).
    pub fn encode_ids(&self, ids: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        let device = self.model.device().clone();
        let (crop, max_length) = (self.settings.crop_start, self.settings.max_length);
        let hidden_size = self.model.config().hidden_size;
        let batch = ids.len();
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        if batch == 0 || longest == 0 {
            return Err(ModelError::InvalidInput(
                "no tokens to encode (an empty batch or empty token lists)".to_string(),
            ));
        }
        if longest > crop + max_length {
            return Err(ModelError::InvalidInput(format!(
                "{longest} tokens exceed crop_start + max_length = {}",
                crop + max_length
            )));
        }
        // Right-padded to the longest prompt of the batch; the padding id is any valid id.
        let mut flat_ids = Vec::with_capacity(batch * longest);
        let mut flat_mask = Vec::with_capacity(batch * longest);
        for row in ids {
            flat_ids.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, longest - row.len())),
            );
            flat_mask.extend((0..longest).map(|i| if i < row.len() { 1f32 } else { 0f32 }));
        }
        let ids_tensor = Tensor::from_vec(flat_ids, (batch, longest), &device)?;
        let mask = Tensor::from_vec(flat_mask, (batch, longest), &device)?;
        let hidden = self.model.hidden_state_from_end(
            &ids_tensor,
            Some(&mask),
            self.settings.hidden_layers_to_skip,
        )?; // [B, longest, hidden]
        let hidden = hidden.broadcast_mul(&mask.unsqueeze(2)?)?;

        let kept = longest.saturating_sub(crop);
        let mut embeds = Tensor::zeros((batch, max_length, hidden_size), DType::F32, &device)?;
        let mut out_mask = Tensor::zeros((batch, max_length), DType::F32, &device)?;
        if kept > 0 {
            let hidden = hidden.narrow(1, crop, kept)?.contiguous()?;
            let mask = mask.narrow(1, crop, kept)?.contiguous()?;
            embeds = embeds.slice_assign(&[0..batch, 0..kept, 0..hidden_size], &hidden)?;
            out_mask = out_mask.slice_assign(&[0..batch, 0..kept], &mask)?;
        }
        Ok((embeds, out_mask))
    }
}

/// The ByT5 stream: byte tokenizer, ByT5 encoder and the glyph length.
#[derive(Debug, Clone)]
pub struct GlyphEncoder {
    model: ByT5Encoder,
    tokenizer: ByT5Tokenizer,
    max_length: usize,
}

impl GlyphEncoder {
    pub fn new(model: ByT5Encoder, tokenizer: ByT5Tokenizer, max_length: usize) -> Self {
        Self {
            model,
            tokenizer,
            max_length,
        }
    }

    /// Opens `text_encoder_2/` and `tokenizer_2/` of a diffusers folder.
    pub fn open(
        model_dir: &Path,
        max_length: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let model = ByT5Encoder::open(&model_dir.join("text_encoder_2"), dtype, device)?;
        let tokenizer = ByT5Tokenizer::from_dir(&model_dir.join("tokenizer_2"))?;
        Ok(Self::new(model, tokenizer, max_length))
    }

    pub fn tokenizer(&self) -> &ByT5Tokenizer {
        &self.tokenizer
    }

    /// prompts → (embeds [B, max_length, d_model] f32, mask [B, max_length] f32).
    pub fn encode(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let d_model = self.model.config().d_model;
        let mut embeds = Vec::with_capacity(prompts.len());
        let mut masks = Vec::with_capacity(prompts.len());
        let device = self.model.device().clone();
        for prompt in prompts {
            match extract_glyph_text(prompt) {
                None => {
                    embeds.push(Tensor::zeros(
                        (1, self.max_length, d_model),
                        DType::F32,
                        &device,
                    )?);
                    masks.push(Tensor::zeros((1, self.max_length), DType::F32, &device)?);
                }
                Some(text) => {
                    let ids = self.tokenizer.encode(&text, self.max_length);
                    embeds.push(self.model.encode_padded(&ids, self.max_length)?);
                    let mask: Vec<f32> = (0..self.max_length)
                        .map(|i| if i < ids.len() { 1.0 } else { 0.0 })
                        .collect();
                    masks.push(Tensor::from_vec(mask, (1, self.max_length), &device)?);
                }
            }
        }
        Ok((Tensor::cat(&embeds, 0)?, Tensor::cat(&masks, 0)?))
    }
}

/// Both text streams of HunyuanVideo 1.5.
#[derive(Debug, Clone)]
pub struct HunyuanTextEncoders {
    pub qwen: QwenPromptEncoder,
    pub glyph: GlyphEncoder,
}

impl HunyuanTextEncoders {
    /// Opens the four text folders of a diffusers HunyuanVideo 1.5 folder (`text_encoder/`,
    /// `tokenizer/`, `text_encoder_2/`, `tokenizer_2/`).
    pub fn open(
        model_dir: &Path,
        settings: HunyuanTextSettings,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let glyph = GlyphEncoder::open(model_dir, settings.glyph_max_length, dtype, device)?;
        let qwen = QwenPromptEncoder::open(model_dir, settings, dtype, device)?;
        Ok(Self { qwen, glyph })
    }

    /// prompts → the four tensors the transformer takes.
    pub fn encode(&self, prompts: &[&str]) -> Result<HunyuanTextEmbeddings> {
        let (qwen_embeds, qwen_mask) = self.qwen.encode(prompts)?;
        let (byt5_embeds, byt5_mask) = self.glyph.encode(prompts)?;
        Ok(HunyuanTextEmbeddings {
            qwen_embeds,
            qwen_mask,
            byt5_embeds,
            byt5_mask,
        })
    }
}

/// Reads a `tokenizer.json`; the real Qwen2.5-VL folder must contain one (a folder with only
/// `vocab.json` and `merges.txt` is not read).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}
