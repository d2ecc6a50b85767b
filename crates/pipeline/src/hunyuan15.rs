//! HunyuanVideo 1.5's networks behind the stages' seams ([`crate::family::hunyuan15`] describes
//! the family): the prompt encoder of the encode stage, the transformer as the step loop's
//! [`VelocityModel`], and the checks preflight runs on their files. The stages reach this module
//! through the family's kinds (`TextEncoderKind::QwenByT5`, `TransformerKind::HunyuanVideo15`,
//! `VaeKind::HunyuanVideo15`).
//!
//! ```text
//! prompt ─chat template─► Qwen2.5-VL (state 2 layers before the end, template prefix cropped)
//!        ─► stream 0: [1, 1000, 3584] + mask
//! prompt ─quoted text─► ByT5 ─► stream 1: [1, 256, 1472] + mask (all padding without quotes)
//! latents [B,32,F,H,W] ++ zeros [B,33,F,H,W] (t2v: no condition latents, mask 0) ─transformer─► v
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rainfusion::SelfAttention;
use tokenizers::Tokenizer;
use vdit_models::byt5::{ByT5Config, ByT5Encoder, ByT5Tokenizer};
use vdit_models::hunyuan15::text::{
    chat_text, load_tokenizer, template_prefix_tokens, GlyphEncoder, HunyuanTextEncoders,
    HunyuanTextSettings, QwenPromptEncoder,
};
use vdit_models::hunyuan15::transformer::{
    HunyuanVideo15Config, HunyuanVideo15Inputs, HunyuanVideo15Transformer,
};
use vdit_models::hunyuan15::vae::{HunyuanVideo15VaeConfig, HunyuanVideo15VaeDecoder};
use vdit_models::qwen25vl_text::{Qwen25VlTextConfig, Qwen25VlTextModel};
use vdit_models::weights::WeightFiles;

use crate::context::{TextContext, TextStream};
use crate::denoise::VelocityModel;
use crate::error::{Result, VditError};
use crate::family::hunyuan15::{GLYPH_ENCODER_COMPONENT, GLYPH_TOKENIZER_COMPONENT};
use crate::family::ExpertRule;
use crate::hub::{ComponentFiles, ModelFiles};
use crate::options::{AttentionMode, Choice};
use crate::settings::GenerateSettings;

/// The dtype the text encoders run in: the run's, except f16, which neither Qwen2.5-VL nor ByT5
/// takes (both are bf16 models), so f16 runs encode in bf16.
fn text_dtype(settings: &GenerateSettings) -> DType {
    match settings.dtype {
        DType::F16 => DType::BF16,
        other => other,
    }
}

/// The folder of the ByT5 tokenizer: its `tokenizer_config.json` (transformers 4.34 and later)
/// or `added_tokens.json` (older saves), fetched first from the hub when the model is there.
fn glyph_tokenizer_dir(files: &ModelFiles) -> Result<PathBuf> {
    let config = format!("{GLYPH_TOKENIZER_COMPONENT}/tokenizer_config.json");
    let added = format!("{GLYPH_TOKENIZER_COMPONENT}/added_tokens.json");
    let found = match files.optional_file(&config)? {
        Some(path) => Some(path),
        None => files.optional_file(&added)?,
    };
    let path = found.ok_or_else(|| {
        VditError::Resolve(format!(
            "model {}: no ByT5 tokenizer ({config} or {added})",
            files.location()
        ))
    })?;
    Ok(path
        .parent()
        .map(PathBuf::from)
        .expect("a file in the tokenizer folder"))
}

/// A component's `config.json`, which these networks need (their sizes are not inferred from
/// the weights).
fn required_config(component: &str, files: &ComponentFiles) -> Result<PathBuf> {
    files.config.clone().ok_or_else(|| {
        VditError::Resolve(format!(
            "{component} weights {}: no config.json beside them or in the model",
            files.weights.display()
        ))
    })
}

/// HunyuanVideo 1.5's two text encoders, loaded once for any number of prompts.
pub struct HunyuanPromptEncoder {
    encoders: HunyuanTextEncoders,
    tokenizer: Tokenizer,
    /// Where the streams go (the transformer's device).
    output_device: Device,
}

impl HunyuanPromptEncoder {
    /// Loads the tokenizers and encoders of the model (`--text-encoder` replaces the Qwen2.5-VL
    /// weights, `--tokenizer` its tokenizer); with `--text-encoder-cpu` both encoders run on the
    /// CPU. Only the Qwen layers below the state read are loaded. The template's crop is the
    /// tokenizer's count of template tokens before the prompt (the pipeline's hard-coded 108 for
    /// Qwen2.5-VL's tokenizer).
    pub fn load(settings: &GenerateSettings, files: &ModelFiles, device: &Device) -> Result<Self> {
        let spec = &settings.family.text_encoder;
        let encoder_device = if settings.t5_cpu {
            Device::Cpu
        } else {
            device.clone()
        };
        let dtype = text_dtype(settings);
        let tokenizer = load_tokenizer(&settings.tokenizer_file(files)?)?;
        let defaults = HunyuanTextSettings::default();
        let text_settings = HunyuanTextSettings {
            crop_start: template_prefix_tokens(&tokenizer, &defaults.system_message)?,
            max_length: spec.text_len,
            ..defaults
        };

        let component =
            files.component(spec.component, settings.overrides.text_encoder.as_deref())?;
        let config =
            Qwen25VlTextConfig::from_json_file(&required_config(spec.component, &component)?)?;
        let layers = config
            .num_hidden_layers
            .checked_sub(text_settings.hidden_layers_to_skip)
            .ok_or_else(|| {
                VditError::InvalidSetting(format!(
                    "{}: {} layers, but HunyuanVideo reads the state {} layers before the end",
                    spec.component, config.num_hidden_layers, text_settings.hidden_layers_to_skip
                ))
            })?;
        let weights = Arc::new(WeightFiles::open(&component.weights)?);
        let qwen =
            Qwen25VlTextModel::load_layers(&weights, &config, dtype, &encoder_device, layers)?;
        drop(weights);

        let glyph_component = files.component(GLYPH_ENCODER_COMPONENT, None)?;
        let glyph_config = ByT5Config::from_json_file(&required_config(
            GLYPH_ENCODER_COMPONENT,
            &glyph_component,
        )?)?;
        let glyph_weights = Arc::new(WeightFiles::open(&glyph_component.weights)?);
        let byt5 = ByT5Encoder::load(&glyph_weights, &glyph_config, dtype, &encoder_device)?;
        let byt5_tokenizer = ByT5Tokenizer::from_dir(&glyph_tokenizer_dir(files)?)?;
        let glyph_max_length = text_settings.glyph_max_length;
        Ok(Self {
            encoders: HunyuanTextEncoders {
                qwen: QwenPromptEncoder::new(qwen, tokenizer.clone(), text_settings),
                glyph: GlyphEncoder::new(byt5, byt5_tokenizer, glyph_max_length),
            },
            tokenizer,
            output_device: device.clone(),
        })
    }

    /// One prompt → its two streams, batch 1: the Qwen2.5-VL states `[1, 1000, D]` and the ByT5
    /// states of its quoted text `[1, 256, D2]`, each with its mask, on the run device.
    pub fn encode(&self, prompt: &str) -> Result<TextContext> {
        let settings = self.encoders.qwen.settings();
        let limit = settings.crop_start + settings.max_length;
        let chat = chat_text(prompt, &settings.system_message);
        if let Ok(encoding) = self.tokenizer.encode(chat.as_str(), false) {
            let tokens = encoding.get_ids().len();
            if tokens > limit {
                eprintln!(
                    "warning: the prompt is {} tokens long; the text encoder reads the first {} and the rest is ignored",
                    tokens - settings.crop_start,
                    settings.max_length
                );
            }
        }
        let embeddings = self.encoders.encode(&[prompt])?;
        let stream = |states: Tensor, mask: Tensor| -> Result<TextStream> {
            Ok(TextStream {
                states: states.to_device(&self.output_device)?,
                mask: Some(mask.to_device(&self.output_device)?),
            })
        };
        Ok(TextContext::new(vec![
            stream(embeddings.qwen_embeds, embeddings.qwen_mask)?,
            stream(embeddings.byt5_embeds, embeddings.byt5_mask)?,
        ]))
    }
}

/// The transformer of `rule` from its folder (or `--dit` for the weights).
pub fn load_transformer(
    settings: &GenerateSettings,
    component: &ComponentFiles,
    device: &Device,
    rule: &ExpertRule,
) -> Result<HunyuanVideo15Transformer> {
    let config = transformer_config(rule.component, component)?;
    let weights = Arc::new(WeightFiles::open(&component.weights)?);
    // `--offload blocks`: the dual-stream blocks are read into host memory and streamed.
    Ok(HunyuanVideo15Transformer::load_placed(
        &weights,
        &config,
        settings.dtype,
        device,
        settings.offload.mode.block_placement(),
    )?)
}

/// The transformer's config.json.
pub fn transformer_config(name: &str, component: &ComponentFiles) -> Result<HunyuanVideo15Config> {
    Ok(HunyuanVideo15Config::from_json_file(&required_config(
        name, component,
    )?)?)
}

/// The VAE's config.json.
pub fn vae_config(component: &ComponentFiles) -> Result<HunyuanVideo15VaeConfig> {
    Ok(HunyuanVideo15VaeConfig::from_json_file(&required_config(
        "vae", component,
    )?)?)
}

/// The VAE decoder of the model (or `--vae`).
pub fn load_vae(
    settings: &GenerateSettings,
    component: &ComponentFiles,
    device: &Device,
) -> Result<HunyuanVideo15VaeDecoder> {
    let config = vae_config(component)?;
    let weights = Arc::new(WeightFiles::open(&component.weights)?);
    Ok(HunyuanVideo15VaeDecoder::load_files(
        &weights,
        &config,
        settings.dtype,
        device,
    )?)
}

/// Checks the VAE's checkpoint from its headers (every decoder tensor present with its shape);
/// returns its latent channels.
pub fn check_vae(component: &ComponentFiles) -> Result<usize> {
    let config = vae_config(component)?;
    let weights = Arc::new(WeightFiles::open(&component.weights)?);
    HunyuanVideo15VaeDecoder::check(&weights, &config).map_err(|e| {
        VditError::InvalidSetting(format!("vae {}: {e}", component.weights.display()))
    })?;
    Ok(config.latent_channels)
}

/// What preflight checks beyond the weights' headers: the flags the HunyuanVideo transformer
/// does not take yet are refused (one line each), and both text encoders' configs and
/// tokenizers are there and parse.
pub fn check_run(settings: &GenerateSettings, files: &ModelFiles) -> Result<()> {
    let mut problems = Vec::new();
    if settings.attention.mode == AttentionMode::RainfusionV1 {
        problems.push(format!(
            "--attention {}: RainFusion 1.0's head patterns are not built for the joint video + \
             text attention of HunyuanVideo 1.5; use --attention rainfusion or dense",
            settings.attention.mode.name()
        ));
    }
    if !settings.lora.first.is_empty() || !settings.lora.second.is_empty() {
        problems.push("--lora: LoRAs are not supported for HunyuanVideo 1.5 yet".into());
    }
    if settings.step_cache.is_active() {
        problems.push(
            "--step-cache: the HunyuanVideo 1.5 transformer has no step-cache seam yet; run without it"
                .into(),
        );
    }
    if !problems.is_empty() {
        return Err(VditError::InvalidSetting(problems.join("\n")));
    }
    let [(qwen_name, qwen), (glyph_name, glyph)] = text_components(settings, files)?;
    Qwen25VlTextConfig::from_json_file(&required_config(qwen_name, &qwen)?)?;
    load_tokenizer(&settings.tokenizer_file(files)?)?;
    ByT5Config::from_json_file(&required_config(glyph_name, &glyph)?)?;
    ByT5Tokenizer::from_dir(&glyph_tokenizer_dir(files)?)?;
    Ok(())
}

/// The components preflight opens the headers of, besides the transformer and the VAE.
pub fn text_components(
    settings: &GenerateSettings,
    files: &ModelFiles,
) -> Result<[(&'static str, ComponentFiles); 2]> {
    let spec = &settings.family.text_encoder;
    Ok([
        (
            spec.component,
            files.component(spec.component, settings.overrides.text_encoder.as_deref())?,
        ),
        (
            GLYPH_ENCODER_COMPONENT,
            files.component(GLYPH_ENCODER_COMPONENT, None)?,
        ),
    ])
}

/// The HunyuanVideo 1.5 transformer as the step loop's velocity model, for text-to-video.
///
/// Its input has the noisy latents and then, as diffusers' `prepare_cond_latents_and_mask` gives
/// them for text-to-video, zeros for the condition latents and the condition mask (32 + 1
/// channels at the released size). The timestep goes in rounded to the transformer's dtype, as
/// the pipeline casts it to the latents' dtype (a no-op in f32). The context is two streams:
/// the Qwen2.5-VL prompt states and the ByT5 glyph states, each with its mask. No image tokens
/// (the pipeline's zero image embeddings are padding the transformer drops).
///
/// Each block's joint attention goes to `attention` (`SelfAttention::attend_joint`): dense, or
/// RainFusion's sparse video blocks with the text band dense.
impl VelocityModel for HunyuanVideo15Transformer {
    fn num_layers(&self) -> usize {
        self.config().num_layers
    }

    fn out_channels(&self) -> Option<usize> {
        Some(self.config().out_channels)
    }

    fn velocity(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &TextContext,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        let (b, c, f, h, w) = latents.dims5()?;
        let in_channels = self.config().in_channels;
        let condition_channels =
            in_channels
                .checked_sub(c)
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    VditError::InvalidSetting(format!(
                "latents of {c} channels for a HunyuanVideo transformer taking {in_channels} \
                 (noise, condition latents and mask)"
            ))
                })?;
        let condition = Tensor::zeros(
            (b, condition_channels, f, h, w),
            latents.dtype(),
            latents.device(),
        )?;
        let input = Tensor::cat(&[latents, &condition], 1)?;
        let timesteps = timesteps.to_dtype(self.dtype())?.to_dtype(DType::F32)?;
        let prompt = context.stream(0, "the Qwen2.5-VL prompt states")?;
        let glyph = context.stream(1, "the ByT5 glyph states")?;
        let mask = |stream: &TextStream| -> Result<Tensor> {
            Ok(match &stream.mask {
                Some(mask) => mask.clone(),
                None => {
                    let (b, l, _) = stream.states.dims3()?;
                    Tensor::ones((b, l), DType::F32, stream.states.device())?
                }
            })
        };
        let (prompt_mask, glyph_mask) = (mask(prompt)?, mask(glyph)?);
        let inputs = HunyuanVideo15Inputs {
            latents: &input,
            timesteps: &timesteps,
            prompt: &prompt.states,
            prompt_mask: &prompt_mask,
            glyph: &glyph.states,
            glyph_mask: &glyph_mask,
            image: None,
        };
        Ok(self.forward_with_attention(&inputs, attention)?)
    }
}
