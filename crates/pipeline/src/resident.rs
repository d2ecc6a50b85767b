//! Networks kept loaded between runs of one process (`vdit bench pipeline --keep-loaded`), as a
//! pipeline object kept in memory keeps them: the text encoder, the transformers and the decoder
//! stay where the first run loaded them, and later runs of the same model with the same load
//! settings skip their loads.
//!
//! ```text
//! run 1:  load encoder ─► encode ─► load transformers ─► sample ─► load decoder ─► decode
//!                │                          │                            │
//!                └────────── kept ──────────┴──────────── kept ──────────┘
//! run 2:  encode ─► sample ─► decode            (same key; any other key drops them first)
//! ```
//!
//! Only runs that hold every network at once anyway keep them: not with `--offload` (whose point is
//! to hold less), and not for families whose experts are loaded one at a time.

use crate::decoder::VideoDecoder;
use crate::denoise::VelocityModel;
use crate::hub::ModelFiles;
use crate::options::OffloadMode;
use crate::settings::GenerateSettings;
use crate::Result;

/// The networks of the last run that kept them, and what they were loaded for. `Encoder` is the
/// stages' prompt encoder (`stages::KeptNetworks` names the pair; generic here so that this file
/// does not import the stages that use it).
pub struct LoadedStages<Encoder> {
    /// What the networks were loaded for (see [`load_key`]); `None` before the first run.
    key: Option<String>,
    encoder: Option<Encoder>,
    /// In the family's order.
    transformers: Vec<Box<dyn VelocityModel>>,
    decoder: Option<VideoDecoder>,
}

/// Everything a run's settings say about which networks load and how: the model and its files,
/// the overrides, the device and dtype, the text encoder's place, LoRAs and the decoder. Two runs
/// with one key can share their networks; prompt, seed, size, steps and attention may differ.
fn load_key(settings: &GenerateSettings, files: &ModelFiles) -> String {
    format!(
        "{:?}",
        (
            &settings.model,
            &settings.model_location,
            files,
            &settings.overrides,
            settings.device,
            settings.dtype,
            settings.t5_cpu,
            &settings.lora,
            &settings.decoder,
            settings.family.name,
        )
    )
}

/// Whether a run with these settings may keep its networks: every one of them is held at once
/// anyway (no offloading, one transformer).
pub fn may_keep(settings: &GenerateSettings) -> bool {
    settings.offload.mode == OffloadMode::None && settings.family.experts.len() == 1
}

impl<Encoder> Default for LoadedStages<Encoder> {
    fn default() -> Self {
        LoadedStages {
            key: None,
            encoder: None,
            transformers: Vec::new(),
            decoder: None,
        }
    }
}

impl<Encoder> LoadedStages<Encoder> {
    /// Gets ready for a run: networks loaded for other settings are dropped.
    pub fn prepare(&mut self, settings: &GenerateSettings, files: &ModelFiles) {
        let key = load_key(settings, files);
        if self.key.as_ref() != Some(&key) {
            *self = LoadedStages {
                key: Some(key),
                ..LoadedStages::default()
            };
        }
    }

    /// The kept text encoder, loading it first if there is none; `true` when this call loaded it.
    pub fn encoder(&mut self, load: impl FnOnce() -> Result<Encoder>) -> Result<(&Encoder, bool)> {
        kept_or_loaded(&mut self.encoder, load)
    }

    /// The kept transformers, loading them first if there are none; `true` when this call loaded
    /// them.
    pub fn transformers(
        &mut self,
        load: impl FnOnce() -> Result<Vec<Box<dyn VelocityModel>>>,
    ) -> Result<(&[Box<dyn VelocityModel>], bool)> {
        let loaded = self.transformers.is_empty();
        if loaded {
            self.transformers = load()?;
        }
        Ok((&self.transformers, loaded))
    }

    /// The kept decoder, loading it first if there is none; `true` when this call loaded it.
    pub fn decoder(
        &mut self,
        load: impl FnOnce() -> Result<VideoDecoder>,
    ) -> Result<(&VideoDecoder, bool)> {
        kept_or_loaded(&mut self.decoder, load)
    }
}

/// The network in `slot`, loaded into it first if there is none; `true` when this call loaded it.
fn kept_or_loaded<T>(slot: &mut Option<T>, load: impl FnOnce() -> Result<T>) -> Result<(&T, bool)> {
    match slot {
        Some(network) => Ok((network, false)),
        None => Ok((slot.insert(load()?), true)),
    }
}
