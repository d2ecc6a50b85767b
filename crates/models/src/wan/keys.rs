//! Key dialects of Wan2.1 / Wan2.2 transformer checkpoints, recognised from the tensor names.
//!
//! - diffusers (`WanTransformer3DModel`): `condition_embedder.*`, `blocks.N.attn1.to_q`, `proj_out`,
//!   and for image-to-video `condition_embedder.image_embedder.*`, `blocks.N.attn2.add_k_proj`, ...
//! - original Wan (`WanModel`): `time_embedding.0`, `blocks.N.self_attn.q`, `head.head`, and
//!   `img_emb.proj.{0,1,3,4}`, `img_emb.emb_pos`, `blocks.N.cross_attn.k_img`, ...
//! - ComfyUI and other single files: original (rarely diffusers) names behind a prefix such as
//!   `model.diffusion_model.`.
//! - GGUF files (ComfyUI-GGUF's Wan files): original names without a prefix, architecture `wan`.
//!
//! The network asks for diffusers names (the canonical set); [`CheckpointKeys::key_map`] turns
//! them into the names the file uses, so loading errors name the key as it is stored.

use crate::error::{ModelError, Result};
use crate::lora::{LoraTargets, TargetModule};
use crate::wan::config::WanConfig;
use crate::weights::{KeyMap, WeightFiles};

/// Which naming scheme a checkpoint uses (after any prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDialect {
    Diffusers,
    Original,
}

/// The dialect and prefix of a Wan transformer checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointKeys {
    pub dialect: KeyDialect,
    /// Prepended to every key, e.g. `model.diffusion_model.` in ComfyUI files; empty otherwise.
    pub prefix: String,
}

const PATCH_EMBEDDING: &str = "patch_embedding.weight";
const DIFFUSERS_MARKER: &str = "condition_embedder.time_embedder.linear_1.weight";
const ORIGINAL_MARKER: &str = "time_embedding.0.weight";
/// `general.architecture` of a Wan transformer GGUF file.
pub const GGUF_ARCHITECTURE: &str = "wan";

impl CheckpointKeys {
    /// Recognises the dialect from the keys of `files`. The prefix is whatever precedes the
    /// patch embedding's name, so any wrapper prefix works, not only ComfyUI's.
    pub fn detect(files: &WeightFiles) -> Result<Self> {
        let unsupported = |reason: String| ModelError::UnsupportedCheckpoint {
            files: describe(files),
            reason,
        };
        // GGUF files name their architecture (`wan` for ComfyUI-GGUF's Wan2.1 and Wan2.2 files).
        if let Some(arch) = files
            .gguf_architecture()
            .filter(|a| *a != GGUF_ARCHITECTURE)
        {
            return Err(unsupported(format!(
                "GGUF architecture `{arch}` is not a Wan transformer (`{GGUF_ARCHITECTURE}`)"
            )));
        }
        let keys = files.keys();
        let prefix = keys
            .iter()
            .filter_map(|k| k.strip_suffix(PATCH_EMBEDDING))
            .filter(|p| p.is_empty() || p.ends_with('.'))
            .min_by_key(|p| p.len())
            .ok_or_else(|| {
                let sample: Vec<&str> = keys.iter().take(5).copied().collect();
                unsupported(format!(
                    "not a Wan transformer: no `{PATCH_EMBEDDING}` tensor (first keys: {sample:?})"
                ))
            })?
            .to_string();
        let dialect = if files.contains(&format!("{prefix}{DIFFUSERS_MARKER}")) {
            KeyDialect::Diffusers
        } else if files.contains(&format!("{prefix}{ORIGINAL_MARKER}")) {
            KeyDialect::Original
        } else {
            return Err(unsupported(format!(
                "has `{prefix}{PATCH_EMBEDDING}` but neither `{prefix}{DIFFUSERS_MARKER}` (diffusers) \
                 nor `{prefix}{ORIGINAL_MARKER}` (original Wan); not a Wan2.1 transformer"
            )));
        };
        Ok(Self { dialect, prefix })
    }

    /// Maps a canonical (diffusers) key to the key stored in the checkpoint.
    pub fn key_map(&self) -> KeyMap {
        let map = match self.dialect {
            KeyDialect::Diffusers => KeyMap::identity(),
            KeyDialect::Original => KeyMap::new(original_key),
        };
        if self.prefix.is_empty() {
            map
        } else {
            map.with_prefix(&self.prefix)
        }
    }
}

fn describe(files: &WeightFiles) -> String {
    let paths: Vec<String> = files
        .paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    paths.join(", ")
}

/// Top-level modules whose names differ (diffusers prefix → original prefix). The image
/// embedder's `proj` is a Sequential (LayerNorm, Linear, GELU, Linear, LayerNorm): indices 0, 1,
/// 3, 4 hold weights.
const TOP_LEVEL: [(&str, &str); 10] = [
    (
        "condition_embedder.time_embedder.linear_1.",
        "time_embedding.0.",
    ),
    (
        "condition_embedder.time_embedder.linear_2.",
        "time_embedding.2.",
    ),
    ("condition_embedder.time_proj.", "time_projection.1."),
    (
        "condition_embedder.text_embedder.linear_1.",
        "text_embedding.0.",
    ),
    (
        "condition_embedder.text_embedder.linear_2.",
        "text_embedding.2.",
    ),
    ("proj_out.", "head.head."),
    (
        "condition_embedder.image_embedder.norm1.",
        "img_emb.proj.0.",
    ),
    (
        "condition_embedder.image_embedder.ff.net.0.proj.",
        "img_emb.proj.1.",
    ),
    (
        "condition_embedder.image_embedder.ff.net.2.",
        "img_emb.proj.3.",
    ),
    (
        "condition_embedder.image_embedder.norm2.",
        "img_emb.proj.4.",
    ),
];

/// Pieces of a block parameter's name that differ (diffusers → original). Note the swap: the
/// affine cross-attention LayerNorm is `norm2` in diffusers and `norm3` in the original.
const IN_BLOCK: [(&str, &str); 13] = [
    ("scale_shift_table", "modulation"),
    ("norm2.", "norm3."),
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "o."),
    ("ffn.net.0.proj.", "ffn.0."),
    ("ffn.net.2.", "ffn.2."),
    ("add_k_proj.", "k_img."),
    ("add_v_proj.", "v_img."),
    ("norm_added_k.", "norm_k_img."),
];

/// The original Wan name of a diffusers transformer key (spec §2: a pure rename).
pub fn original_key(diffusers_key: &str) -> String {
    match diffusers_key {
        "scale_shift_table" => return "head.modulation".into(),
        "condition_embedder.image_embedder.pos_embed" => return "img_emb.emb_pos".into(),
        _ => {}
    }
    for (diffusers, original) in TOP_LEVEL {
        if let Some(rest) = diffusers_key.strip_prefix(diffusers) {
            return format!("{original}{rest}");
        }
    }
    let Some((index, mut rest)) = diffusers_key
        .strip_prefix("blocks.")
        .and_then(|r| r.split_once('.'))
    else {
        return diffusers_key.into(); // patch_embedding.* is spelled the same
    };
    // Rename piece by piece from the left: `attn1.to_q.weight` → `self_attn.` + `q.` + `weight`.
    let mut out = format!("blocks.{index}.");
    'pieces: while !rest.is_empty() {
        for (diffusers, original) in IN_BLOCK {
            if let Some(tail) = rest.strip_prefix(diffusers) {
                out.push_str(original);
                rest = tail;
                continue 'pieces;
            }
        }
        out.push_str(rest);
        break;
    }
    out
}

/// The layers of a Wan transformer of `cfg` that LoRAs can update, under their diffusers names
/// and their original Wan names (and the kohya `_` form of both).
pub fn lora_targets(cfg: &WanConfig) -> LoraTargets {
    let mut targets = LoraTargets::default();
    // A module with a weight and (if `bias`) a bias.
    let mut module = |name: String, bias: bool| {
        let weight = format!("{name}.weight");
        let original = original_key(&weight)
            .strip_suffix(".weight")
            .map(str::to_string)
            .unwrap_or_else(|| name.clone());
        let target = TargetModule {
            bias: bias.then(|| format!("{name}.bias")),
            weight,
            name,
        };
        targets.add(target, &[original]);
    };
    module("patch_embedding".into(), true);
    for name in [
        "condition_embedder.time_embedder.linear_1",
        "condition_embedder.time_embedder.linear_2",
        "condition_embedder.time_proj",
        "condition_embedder.text_embedder.linear_1",
        "condition_embedder.text_embedder.linear_2",
        "proj_out",
    ] {
        module(name.into(), true);
    }
    if cfg.has_image_input() {
        for name in [
            "condition_embedder.image_embedder.norm1",
            "condition_embedder.image_embedder.ff.net.0.proj",
            "condition_embedder.image_embedder.ff.net.2",
            "condition_embedder.image_embedder.norm2",
        ] {
            module(name.into(), true);
        }
    }
    for i in 0..cfg.num_layers {
        if cfg.has_image_input() {
            module(format!("blocks.{i}.attn2.add_k_proj"), true);
            module(format!("blocks.{i}.attn2.add_v_proj"), true);
            module(format!("blocks.{i}.attn2.norm_added_k"), false);
        }
        for attn in ["attn1", "attn2"] {
            for proj in ["to_q", "to_k", "to_v", "to_out.0"] {
                module(format!("blocks.{i}.{attn}.{proj}"), true);
            }
            for norm in ["norm_q", "norm_k"] {
                module(format!("blocks.{i}.{attn}.{norm}"), false);
            }
        }
        if cfg.cross_attn_norm {
            module(format!("blocks.{i}.norm2"), true);
        }
        module(format!("blocks.{i}.ffn.net.0.proj"), true);
        module(format!("blocks.{i}.ffn.net.2"), true);
    }
    // Bare tables (no `.weight`): a `.diff` updates the table itself.
    let mut tables: Vec<String> = vec!["scale_shift_table".into()];
    tables.extend((0..cfg.num_layers).map(|i| format!("blocks.{i}.scale_shift_table")));
    for table in tables {
        let original = original_key(&table);
        let target = TargetModule {
            name: table.clone(),
            weight: table,
            bias: None,
        };
        targets.add(target, &[original]);
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::original_key;

    #[test]
    fn renames_follow_the_spec_table() {
        let cases = [
            ("patch_embedding.weight", "patch_embedding.weight"),
            (
                "condition_embedder.time_embedder.linear_1.bias",
                "time_embedding.0.bias",
            ),
            (
                "condition_embedder.time_proj.weight",
                "time_projection.1.weight",
            ),
            (
                "condition_embedder.text_embedder.linear_2.weight",
                "text_embedding.2.weight",
            ),
            ("scale_shift_table", "head.modulation"),
            ("proj_out.bias", "head.head.bias"),
            ("blocks.12.scale_shift_table", "blocks.12.modulation"),
            ("blocks.0.attn1.to_q.weight", "blocks.0.self_attn.q.weight"),
            ("blocks.3.attn2.to_out.0.bias", "blocks.3.cross_attn.o.bias"),
            (
                "blocks.3.attn2.norm_k.weight",
                "blocks.3.cross_attn.norm_k.weight",
            ),
            ("blocks.7.norm2.bias", "blocks.7.norm3.bias"),
            ("blocks.7.ffn.net.0.proj.weight", "blocks.7.ffn.0.weight"),
            ("blocks.7.ffn.net.2.bias", "blocks.7.ffn.2.bias"),
            (
                "condition_embedder.image_embedder.norm1.weight",
                "img_emb.proj.0.weight",
            ),
            (
                "condition_embedder.image_embedder.ff.net.0.proj.bias",
                "img_emb.proj.1.bias",
            ),
            (
                "condition_embedder.image_embedder.ff.net.2.weight",
                "img_emb.proj.3.weight",
            ),
            (
                "condition_embedder.image_embedder.norm2.bias",
                "img_emb.proj.4.bias",
            ),
            (
                "condition_embedder.image_embedder.pos_embed",
                "img_emb.emb_pos",
            ),
            (
                "blocks.2.attn2.add_k_proj.weight",
                "blocks.2.cross_attn.k_img.weight",
            ),
            (
                "blocks.2.attn2.add_v_proj.bias",
                "blocks.2.cross_attn.v_img.bias",
            ),
            (
                "blocks.2.attn2.norm_added_k.weight",
                "blocks.2.cross_attn.norm_k_img.weight",
            ),
        ];
        for (diffusers, original) in cases {
            assert_eq!(original_key(diffusers), original, "{diffusers}");
        }
    }
}
