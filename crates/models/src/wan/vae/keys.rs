//! Key dialects of Wan VAE checkpoints.
//!
//! The decoder asks for diffusers names (`decoder.up_blocks.1.resnets.0.conv1.weight`). Files in the
//! original Wan2.1_VAE layout (also ComfyUI's `wan_2.1_vae.safetensors`) use flat sequential indices
//! (`decoder.upsamples.4.residual.2.weight`); [`original_key`] translates. Wan2.2_VAE.pth nests each
//! up block's layers (`decoder.upsamples.1.upsamples.3.time_conv.weight`); [`original22_key`]
//! translates those. A common prefix in front of every key (`vae.`, `first_stage_model.`) is
//! detected and kept.

use crate::weights::KeyMap;

/// Which naming a VAE checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeKeyDialect {
    /// diffusers `AutoencoderKLWan`: `decoder.conv_in`, `decoder.mid_block`, `decoder.up_blocks`, ...
    Diffusers,
    /// Wan2.1_VAE.pth / Wan2.2_VAE.pth: `decoder.conv1`, `decoder.middle`, `decoder.upsamples`,
    /// `decoder.head`, `conv2` (the up blocks nested one level deeper in Wan2.2's file).
    Original,
}

/// The dialect and key prefix of a VAE checkpoint, found among its keys from the decoder's input conv.
pub fn detect_dialect<'a>(
    keys: impl IntoIterator<Item = &'a str>,
) -> Option<(VaeKeyDialect, String)> {
    detect_by_input_conv(keys, "decoder")
}

/// The same from the encoder's input conv (a checkpoint may hold only one of the two halves).
pub fn detect_encoder_dialect<'a>(
    keys: impl IntoIterator<Item = &'a str>,
) -> Option<(VaeKeyDialect, String)> {
    detect_by_input_conv(keys, "encoder")
}

/// `half`: "decoder" or "encoder".
fn detect_by_input_conv<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    half: &str,
) -> Option<(VaeKeyDialect, String)> {
    let diffusers = format!("{half}.conv_in.weight");
    let original = format!("{half}.conv1.weight");
    for key in keys {
        for (suffix, dialect) in [
            (diffusers.as_str(), VaeKeyDialect::Diffusers),
            (original.as_str(), VaeKeyDialect::Original),
        ] {
            if let Some(prefix) = key.strip_suffix(suffix) {
                if prefix.is_empty() || prefix.ends_with('.') {
                    return Some((dialect, prefix.to_string()));
                }
            }
        }
    }
    None
}

/// Whether a checkpoint's up blocks have Wan2.2's residual layout (`Some(true)`), Wan2.1's
/// (`Some(false)`), or neither could be told from its first up block's keys (`None`).
pub fn residual_layout<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<bool> {
    for key in keys {
        if key.contains("decoder.up_blocks.0.upsampler.")
            || key.contains("decoder.upsamples.0.upsamples.")
        {
            return Some(true);
        }
        if key.contains("decoder.up_blocks.0.upsamplers.")
            || key.contains("decoder.upsamples.0.residual.")
        {
            return Some(false);
        }
    }
    None
}

/// Whether a checkpoint's encoder has Wan2.2's residual down blocks (`Some(true)`), Wan2.1's flat
/// list (`Some(false)`), or neither could be told from its first down block's keys (`None`).
pub fn encoder_residual_layout<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<bool> {
    for key in keys {
        if key.contains("encoder.down_blocks.0.resnets.")
            || key.contains("encoder.downsamples.0.downsamples.")
        {
            return Some(true);
        }
        if key.contains("encoder.down_blocks.0.norm1.")
            || key.contains("encoder.downsamples.0.residual.")
        {
            return Some(false);
        }
    }
    None
}

/// The map from the decoder's (diffusers) names to the names stored in the file; `residual`
/// selects Wan2.2's layout of the up blocks.
pub fn key_map(
    dialect: VaeKeyDialect,
    prefix: &str,
    num_res_blocks: usize,
    residual: bool,
) -> KeyMap {
    let map = match (dialect, residual) {
        (VaeKeyDialect::Diffusers, _) => KeyMap::identity(),
        (VaeKeyDialect::Original, false) => {
            KeyMap::new(move |k: &str| original_key(k, num_res_blocks))
        }
        (VaeKeyDialect::Original, true) => {
            KeyMap::new(move |k: &str| original22_key(k, num_res_blocks))
        }
    };
    if prefix.is_empty() {
        map
    } else {
        map.with_prefix(prefix)
    }
}

/// diffusers key → original Wan2.1_VAE key, for the decoder and the encoder halves. Keys it does
/// not know are returned unchanged, so a missing tensor is reported under the name that was
/// looked for.
pub fn original_key(key: &str, num_res_blocks: usize) -> String {
    let renamed = |old: &str, new: &str| key.strip_prefix(old).map(|rest| format!("{new}{rest}"));
    for half in ["decoder", "encoder"] {
        let named = |part: &str, original: &str| {
            renamed(&format!("{half}.{part}."), &format!("{half}.{original}."))
        };
        if let Some(k) = named("conv_in", "conv1")
            .or_else(|| named("norm_out", "head.0"))
            .or_else(|| named("conv_out", "head.2"))
            .or_else(|| named("mid_block.attentions.0", "middle.1"))
        {
            return k;
        }
    }
    if let Some(k) =
        renamed("post_quant_conv.", "conv2.").or_else(|| renamed("quant_conv.", "conv1."))
    {
        return k;
    }
    let parts: Vec<&str> = key.split('.').collect();
    let index = |s: &str| s.parse::<usize>().ok();
    match parts.as_slice() {
        // mid: resnet 0 → middle.0, attention → middle.1, resnet 1 → middle.2
        [half @ ("decoder" | "encoder"), "mid_block", "resnets", r, rest @ ..]
            if index(r).is_some() =>
        {
            let flat = 2 * index(r).unwrap_or_default();
            format!("{half}.middle.{flat}.{}", residual_key(rest))
        }
        // the encoder's down blocks are one flat list in both namings (resnets and resamples
        // numbered alike); a resample's own names (resample.1, time_conv) are the same
        ["encoder", "down_blocks", k, rest @ ..] if index(k).is_some() => {
            format!("encoder.downsamples.{k}.{}", residual_key(rest))
        }
        // up block b holds num_res_blocks + 1 resnets then one resample, flattened in order
        ["decoder", "up_blocks", b, "resnets", r, rest @ ..]
            if index(b).is_some() && index(r).is_some() =>
        {
            let flat =
                index(b).unwrap_or_default() * (num_res_blocks + 2) + index(r).unwrap_or_default();
            format!("decoder.upsamples.{flat}.{}", residual_key(rest))
        }
        ["decoder", "up_blocks", b, "upsamplers", "0", rest @ ..] if index(b).is_some() => {
            let flat = index(b).unwrap_or_default() * (num_res_blocks + 2) + num_res_blocks + 1;
            format!("decoder.upsamples.{flat}.{}", rest.join("."))
        }
        _ => key.to_string(),
    }
}

/// diffusers key → original Wan2.2_VAE key. Up block b is `decoder.upsamples.{b}`, a module
/// whose `upsamples` sequence holds its num_res_blocks + 1 residual blocks and then its upsampler
/// (the duplicate-up shortcut has no weights). Down block b is `encoder.downsamples.{b}`, whose
/// `downsamples` sequence holds its num_res_blocks residual blocks and then its downsampler (the
/// averaging shortcut has no weights). Everything else is named as in Wan2.1 ([`original_key`]).
pub fn original22_key(key: &str, num_res_blocks: usize) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let index = |s: &str| s.parse::<usize>().ok();
    match parts.as_slice() {
        ["encoder", "down_blocks", b, "resnets", r, rest @ ..]
            if index(b).is_some() && index(r).is_some() =>
        {
            format!(
                "encoder.downsamples.{b}.downsamples.{r}.{}",
                residual_key(rest)
            )
        }
        ["encoder", "down_blocks", b, "downsampler", rest @ ..] if index(b).is_some() => {
            format!(
                "encoder.downsamples.{b}.downsamples.{num_res_blocks}.{}",
                rest.join(".")
            )
        }
        ["decoder", "up_blocks", b, "resnets", r, rest @ ..]
            if index(b).is_some() && index(r).is_some() =>
        {
            format!("decoder.upsamples.{b}.upsamples.{r}.{}", residual_key(rest))
        }
        ["decoder", "up_blocks", b, "upsampler", rest @ ..] if index(b).is_some() => {
            format!(
                "decoder.upsamples.{b}.upsamples.{}.{}",
                num_res_blocks + 1,
                rest.join(".")
            )
        }
        _ => original_key(key, num_res_blocks),
    }
}

/// Inside a residual block: norm1 → residual.0, conv1 → residual.2, norm2 → residual.3,
/// conv2 → residual.6 (the positions in the original nn.Sequential), conv_shortcut → shortcut.
fn residual_key(rest: &[&str]) -> String {
    let tail = rest.get(1..).unwrap_or_default().join(".");
    let head = match rest.first().copied().unwrap_or_default() {
        "norm1" => "residual.0",
        "conv1" => "residual.2",
        "norm2" => "residual.3",
        "conv2" => "residual.6",
        "conv_shortcut" => "shortcut",
        other => other,
    };
    format!("{head}.{tail}")
}

#[cfg(test)]
mod tests {
    use super::{original22_key, original_key};

    #[test]
    fn maps_the_wan22_layout() {
        let cases = [
            ("post_quant_conv.bias", "conv2.bias"),
            ("decoder.conv_in.weight", "decoder.conv1.weight"),
            (
                "decoder.mid_block.resnets.0.conv1.weight",
                "decoder.middle.0.residual.2.weight",
            ),
            (
                "decoder.up_blocks.0.resnets.2.norm2.gamma",
                "decoder.upsamples.0.upsamples.2.residual.3.gamma",
            ),
            (
                "decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
                "decoder.upsamples.2.upsamples.0.shortcut.weight",
            ),
            (
                "decoder.up_blocks.1.upsampler.time_conv.bias",
                "decoder.upsamples.1.upsamples.3.time_conv.bias",
            ),
            (
                "decoder.up_blocks.2.upsampler.resample.1.weight",
                "decoder.upsamples.2.upsamples.3.resample.1.weight",
            ),
            ("decoder.conv_out.weight", "decoder.head.2.weight"),
        ];
        for (diffusers, original) in cases {
            assert_eq!(original22_key(diffusers, 2), original, "{diffusers}");
        }
    }

    #[test]
    fn maps_the_encoder_halves() {
        let wan21 = [
            ("quant_conv.weight", "conv1.weight"),
            ("encoder.conv_in.bias", "encoder.conv1.bias"),
            (
                "encoder.down_blocks.0.norm1.gamma",
                "encoder.downsamples.0.residual.0.gamma",
            ),
            (
                "encoder.down_blocks.3.conv_shortcut.weight",
                "encoder.downsamples.3.shortcut.weight",
            ),
            (
                "encoder.down_blocks.2.resample.1.weight",
                "encoder.downsamples.2.resample.1.weight",
            ),
            (
                "encoder.down_blocks.5.time_conv.bias",
                "encoder.downsamples.5.time_conv.bias",
            ),
            (
                "encoder.mid_block.resnets.1.conv2.weight",
                "encoder.middle.2.residual.6.weight",
            ),
            (
                "encoder.mid_block.attentions.0.norm.gamma",
                "encoder.middle.1.norm.gamma",
            ),
            ("encoder.norm_out.gamma", "encoder.head.0.gamma"),
            ("encoder.conv_out.bias", "encoder.head.2.bias"),
        ];
        for (diffusers, original) in wan21 {
            assert_eq!(original_key(diffusers, 2), original, "{diffusers}");
        }
        let wan22 = [
            ("quant_conv.bias", "conv1.bias"),
            (
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
                "encoder.downsamples.1.downsamples.0.shortcut.weight",
            ),
            (
                "encoder.down_blocks.2.resnets.1.norm2.gamma",
                "encoder.downsamples.2.downsamples.1.residual.3.gamma",
            ),
            (
                "encoder.down_blocks.1.downsampler.time_conv.weight",
                "encoder.downsamples.1.downsamples.2.time_conv.weight",
            ),
            (
                "encoder.down_blocks.0.downsampler.resample.1.bias",
                "encoder.downsamples.0.downsamples.2.resample.1.bias",
            ),
            ("encoder.conv_in.weight", "encoder.conv1.weight"),
        ];
        for (diffusers, original) in wan22 {
            assert_eq!(original22_key(diffusers, 2), original, "{diffusers}");
        }
    }

    #[test]
    fn maps_the_wan21_layout() {
        // num_res_blocks 2: up block b starts at 4b; resample at 4b + 3 (spec table)
        let cases = [
            ("post_quant_conv.weight", "conv2.weight"),
            ("decoder.conv_in.bias", "decoder.conv1.bias"),
            (
                "decoder.mid_block.resnets.1.norm2.gamma",
                "decoder.middle.2.residual.3.gamma",
            ),
            (
                "decoder.mid_block.attentions.0.to_qkv.weight",
                "decoder.middle.1.to_qkv.weight",
            ),
            (
                "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
                "decoder.upsamples.4.shortcut.weight",
            ),
            (
                "decoder.up_blocks.2.resnets.2.conv2.bias",
                "decoder.upsamples.10.residual.6.bias",
            ),
            (
                "decoder.up_blocks.1.upsamplers.0.time_conv.weight",
                "decoder.upsamples.7.time_conv.weight",
            ),
            (
                "decoder.up_blocks.2.upsamplers.0.resample.1.bias",
                "decoder.upsamples.11.resample.1.bias",
            ),
            (
                "decoder.up_blocks.3.resnets.0.norm1.gamma",
                "decoder.upsamples.12.residual.0.gamma",
            ),
            ("decoder.norm_out.gamma", "decoder.head.0.gamma"),
            ("decoder.conv_out.weight", "decoder.head.2.weight"),
        ];
        for (diffusers, original) in cases {
            assert_eq!(original_key(diffusers, 2), original, "{diffusers}");
        }
        assert_eq!(
            original_key("decoder.up_blocks.1.resnets.1.conv1.weight", 1),
            "decoder.upsamples.4.residual.2.weight"
        );
    }
}
