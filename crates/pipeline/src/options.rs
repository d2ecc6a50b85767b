//! The choices a run is configured with (device, dtype, attention, token window), as plain enums:
//! each parses from and prints as its flag value, and lists its values with a one-line help, so a
//! front end (the `vdit` CLI) can offer them without a second copy of the enum.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use vdit_models::wan::BlockPlacement;

/// A closed set of named values: what a command line offers for one flag.
pub trait Choice: Copy + Sized + Send + Sync + 'static {
    /// Every value, in the order a help text lists them.
    const ALL: &'static [Self];
    /// The flag value (`auto`, `rainfusion-v1`, ...).
    fn name(self) -> &'static str;
    /// One line saying what the value does, where the name alone does not.
    fn help(self) -> Option<&'static str>;
}

/// The value of `name` among `T::ALL`, or an error listing the possible values.
pub fn parse_choice<T: Choice>(name: &str) -> Result<T, String> {
    T::ALL
        .iter()
        .copied()
        .find(|v| v.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = T::ALL.iter().map(|v| v.name()).collect();
            format!("`{name}` is not one of {}", names.join(", "))
        })
}

/// `FromStr` and `Display` through [`Choice`].
macro_rules! choice_text {
    ($ty:ty) => {
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                $crate::options::parse_choice(s)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}
pub(crate) use choice_text;

/// Where the networks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA if this build has it and a GPU is present, else Metal likewise, else the CPU.
    Auto,
    Cpu,
    Cuda,
    Metal,
}

impl Choice for DeviceChoice {
    const ALL: &'static [Self] = &[Self::Auto, Self::Cpu, Self::Cuda, Self::Metal];
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Metal => "metal",
        }
    }
    fn help(self) -> Option<&'static str> {
        match self {
            Self::Auto => Some(
                "CUDA if this build has it and a GPU is present, else Metal likewise, else the CPU",
            ),
            _ => None,
        }
    }
}
choice_text!(DeviceChoice);

/// Weight and activation dtype of the networks (sampling and guidance always run in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeChoice {
    /// bf16 on a GPU, f32 on the CPU.
    Auto,
    Bf16,
    F16,
    F32,
}

impl Choice for DTypeChoice {
    const ALL: &'static [Self] = &[Self::Auto, Self::Bf16, Self::F16, Self::F32];
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }
    fn help(self) -> Option<&'static str> {
        match self {
            Self::Auto => Some("bf16 on a GPU, f32 on the CPU"),
            _ => None,
        }
    }
}
choice_text!(DTypeChoice);

/// Self-attention of the transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionMode {
    /// Full softmax attention (the reference).
    Dense,
    /// RainFusion 2.0: block-sparse attention with per-head masks predicted from pooled q and k.
    Rainfusion,
    /// RainFusion 1.0: spatial / temporal / textural head patterns chosen online.
    RainfusionV1,
}

impl Choice for AttentionMode {
    const ALL: &'static [Self] = &[Self::Dense, Self::Rainfusion, Self::RainfusionV1];
    /// The flag value (`dense`, `rainfusion`, `rainfusion-v1`).
    fn name(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Rainfusion => "rainfusion",
            Self::RainfusionV1 => "rainfusion-v1",
        }
    }
    fn help(self) -> Option<&'static str> {
        Some(match self {
            Self::Dense => "Full softmax attention (the reference)",
            Self::Rainfusion => {
                "RainFusion 2.0: block-sparse attention with per-head masks predicted from pooled q and k"
            }
            Self::RainfusionV1 => {
                "RainFusion 1.0: spatial / temporal / textural head patterns chosen online"
            }
        })
    }
}
choice_text!(AttentionMode);

/// How RainFusion groups tokens into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenWindow {
    /// 1×8×8 tiles within a frame.
    Tile,
    /// 2×8×8 windows spanning two frames.
    Spatiotemporal,
}

impl Choice for TokenWindow {
    const ALL: &'static [Self] = &[Self::Tile, Self::Spatiotemporal];
    fn name(self) -> &'static str {
        match self {
            Self::Tile => "tile",
            Self::Spatiotemporal => "spatiotemporal",
        }
    }
    fn help(self) -> Option<&'static str> {
        Some(match self {
            Self::Tile => "1×8×8 tiles within a frame",
            Self::Spatiotemporal => "2×8×8 windows spanning two frames",
        })
    }
}
choice_text!(TokenWindow);

/// Whether and how transformer passes are skipped (`--step-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepCacheMode {
    /// Every step runs the whole transformer.
    None,
    /// MagCache: skip while the calibrated magnitude ratios of the residual stay close to 1.
    MagCache,
    /// TeaCache: skip while the change of the time modulation, rescaled, stays small.
    TeaCache,
}

impl Choice for StepCacheMode {
    const ALL: &'static [Self] = &[Self::None, Self::MagCache, Self::TeaCache];
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::MagCache => "magcache",
            Self::TeaCache => "teacache",
        }
    }
    fn help(self) -> Option<&'static str> {
        Some(match self {
            Self::None => "every step runs the whole transformer",
            Self::MagCache => {
                "skip a step's transformer blocks while the model's calibrated residual magnitude ratios predict a small error (needs a calibration)"
            }
            Self::TeaCache => {
                "skip while the rescaled change of the timestep modulation stays small (needs published coefficients: Wan2.1 1.3B, 14B)"
            }
        })
    }
}
choice_text!(StepCacheMode);

/// Which network decodes the final latents into video (`--decoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderChoice {
    /// The model's VAE decoder.
    Full,
    /// TAEHV's tiny preview decoder (taew2_1 / taew2_2).
    Tiny,
}

impl Choice for DecoderChoice {
    const ALL: &'static [Self] = &[Self::Full, Self::Tiny];
    fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Tiny => "tiny",
        }
    }
    fn help(self) -> Option<&'static str> {
        Some(match self {
            Self::Full => "the model's VAE decoder",
            Self::Tiny => {
                "TAEHV's tiny preview decoder (taew2_1 for 16-channel latents, taew2_2 for 48): several times faster, slightly lower quality"
            }
        })
    }
}
choice_text!(DecoderChoice);

/// The `--offload` flag as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadChoice {
    Auto,
    None,
    Experts,
    Blocks,
}

impl Choice for OffloadChoice {
    const ALL: &'static [Self] = &[Self::Auto, Self::None, Self::Experts, Self::Blocks];
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::None => "none",
            Self::Experts => "experts",
            Self::Blocks => "blocks",
        }
    }
    fn help(self) -> Option<&'static str> {
        Some(match self {
            Self::Auto => {
                "on the CPU none (two-expert models: experts); on a GPU the least offload whose transformer stage fits in the free device memory (an estimate; the choice is printed first)"
            }
            Self::None => {
                "every transformer stays on the device for the whole run (two-expert models: both experts, as --keep-experts)"
            }
            Self::Experts => {
                "two-expert models keep only the active expert on the device, the other loads at the switch (one-transformer models: as none)"
            }
            Self::Blocks => {
                "the transformer's blocks stay in host memory and each is copied to the device just before it runs (about one block's weights on the device; slower, needs the weights in host RAM)"
            }
        })
    }
}
choice_text!(OffloadChoice);

/// The offload a run uses, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadMode {
    None,
    Experts,
    Blocks,
}

impl OffloadMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Experts => "experts",
            Self::Blocks => "blocks",
        }
    }

    /// Whether a two-expert model keeps both experts loaded (no freeing at the switch).
    pub fn keeps_experts_loaded(self) -> bool {
        self == Self::None
    }

    /// Where each transformer's blocks live.
    pub fn block_placement(self) -> BlockPlacement {
        match self {
            Self::Blocks => BlockPlacement::Streamed,
            Self::None | Self::Experts => BlockPlacement::Resident,
        }
    }
}

impl fmt::Display for OffloadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OffloadMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "experts" => Ok(Self::Experts),
            "blocks" => Ok(Self::Blocks),
            _ => Err(format!("`{s}` is not one of none, experts, blocks")),
        }
    }
}

/// `--lora-mode`: how LoRA updates are applied (the type is the models crate's).
impl Choice for vdit_models::lora::LoraMode {
    const ALL: &'static [Self] = &[Self::Merge, Self::Runtime];
    fn name(self) -> &'static str {
        vdit_models::lora::LoraMode::name(self)
    }
    fn help(self) -> Option<&'static str> {
        Some(match self {
            Self::Merge => {
                "add the updates into the weights at load (f32, then cast): no cost per step"
            }
            Self::Runtime => {
                "keep them as low-rank factors applied every step: no merged copy, slower steps"
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Choice + FromStr + fmt::Display + PartialEq + fmt::Debug>() {
        for &v in T::ALL {
            assert_eq!(v.to_string().parse::<T>().ok(), Some(v));
        }
    }

    #[test]
    fn every_value_parses_from_its_name() {
        round_trips::<DeviceChoice>();
        round_trips::<DTypeChoice>();
        round_trips::<AttentionMode>();
        round_trips::<TokenWindow>();
        round_trips::<StepCacheMode>();
        assert!("RAINFUSION".parse::<AttentionMode>().is_err());
    }
}
