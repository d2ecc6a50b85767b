//! LoRA tensor names: the wrapper prefix, the module name and the role suffix of each key, in
//! every form published for Wan (diffusers/PEFT, original Wan/ComfyUI, kohya/musubi, lightx2v).
//!
//! ```text
//! transformer.blocks.0.attn1.to_q.lora_A.weight         diffusers / PEFT
//! diffusion_model.blocks.0.self_attn.q.lora_down.weight  original Wan, ComfyUI (+ `.alpha`)
//! diffusion_model.blocks.0.self_attn.q.lora_A.weight     lightx2v, Lightning
//! diffusion_model.blocks.0.norm3.diff                    full deltas (`.diff`, `.diff_b`)
//! lora_unet_blocks_0_self_attn_q.lora_down.weight        kohya / musubi (+ `.alpha`)
//! ```

/// What one tensor of a LoRA file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The down projection A `[rank, in]` (`lora_A`, `lora_down`).
    Down,
    /// The up projection B `[out, rank]` (`lora_B`, `lora_up`).
    Up,
    /// A scalar alpha: the pair is scaled by `alpha / rank`.
    Alpha,
    /// A full delta of the module's weight (`.diff`), or of the parameter itself.
    WeightDiff,
    /// A full delta of the module's bias (`.diff_b`, or PEFT's `lora_B.bias`).
    BiasDiff,
}

/// Wrappers put in front of module names by the tools that save LoRAs.
const PREFIXES: [&str; 6] = [
    "base_model.model.",
    "model.diffusion_model.",
    "diffusion_model.",
    "transformer.",
    "lora_unet_",
    "unet.",
];

/// Role suffixes, longest first so that `lora_B.bias` is not read as something else.
const SUFFIXES: [(&str, Role); 11] = [
    (".lora_A.default.weight", Role::Down),
    (".lora_B.default.weight", Role::Up),
    (".lora_down.weight", Role::Down),
    (".lora_up.weight", Role::Up),
    (".lora_A.weight", Role::Down),
    (".lora_B.weight", Role::Up),
    (".lora_B.bias", Role::BiasDiff),
    (".lora_up.bias", Role::BiasDiff),
    (".diff_b", Role::BiasDiff),
    (".alpha", Role::Alpha),
    (".diff", Role::WeightDiff),
];

/// Splits a key into (module name as the file spells it, role), without its wrapper prefix.
/// `None` for a suffix that is not a LoRA role (e.g. DoRA's `dora_scale`).
pub fn split_key(key: &str) -> Option<(&str, Role)> {
    let (module, role) = SUFFIXES
        .iter()
        .find_map(|(suffix, role)| key.strip_suffix(suffix).map(|m| (m, *role)))?;
    Some((strip_prefix(module), role))
}

fn strip_prefix(mut name: &str) -> &str {
    // Wrappers can nest (`base_model.model.transformer.`).
    'outer: loop {
        for prefix in PREFIXES {
            if let Some(rest) = name.strip_prefix(prefix) {
                name = rest;
                continue 'outer;
            }
        }
        return name;
    }
}

/// kohya's spelling of a module name: every `.` becomes `_` (`blocks_0_self_attn_q`).
pub fn kohya_name(module: &str) -> String {
    module.replace('.', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_published_form_splits_into_module_and_role() {
        let cases = [
            (
                "transformer.blocks.0.attn1.to_q.lora_A.weight",
                "blocks.0.attn1.to_q",
                Role::Down,
            ),
            (
                "blocks.0.attn1.to_out.0.lora_B.weight",
                "blocks.0.attn1.to_out.0",
                Role::Up,
            ),
            (
                "diffusion_model.blocks.3.self_attn.q.lora_down.weight",
                "blocks.3.self_attn.q",
                Role::Down,
            ),
            (
                "diffusion_model.blocks.3.self_attn.q.alpha",
                "blocks.3.self_attn.q",
                Role::Alpha,
            ),
            (
                "diffusion_model.blocks.3.norm3.diff",
                "blocks.3.norm3",
                Role::WeightDiff,
            ),
            (
                "diffusion_model.blocks.3.ffn.0.diff_b",
                "blocks.3.ffn.0",
                Role::BiasDiff,
            ),
            (
                "transformer.proj_out.lora_B.bias",
                "proj_out",
                Role::BiasDiff,
            ),
            (
                "lora_unet_blocks_0_cross_attn_k.lora_up.weight",
                "blocks_0_cross_attn_k",
                Role::Up,
            ),
            (
                "base_model.model.blocks.1.ffn.net.2.lora_A.default.weight",
                "blocks.1.ffn.net.2",
                Role::Down,
            ),
        ];
        for (key, module, role) in cases {
            assert_eq!(split_key(key), Some((module, role)), "{key}");
        }
        assert_eq!(split_key("blocks.0.attn1.to_q.dora_scale"), None);
    }
}
