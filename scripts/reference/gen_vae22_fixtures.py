#!/usr/bin/env python3
"""Tiny random-weight Wan2.2-style VAE decoder and its diffusers reference decode.

Writes tests/fixtures/vae22/:
  config.json                          diffusers AutoencoderKLWan config in the Wan2.2 form: is_residual,
                                       patch_size 2 (12 decoder output channels), z_dim 48,
                                       scale_factor_spatial 16, random 48-entry latents_mean / latents_std
  diffusion_pytorch_model.safetensors  decoder + post_quant_conv weights (float16) under diffusers keys
  Wan2.2_VAE.pth                       the same weights under the original Wan2.2_VAE.pth key names
                                       (`decoder.upsamples.{b}.upsamples.{r}.residual.*`), saved with
                                       torch.save like Wan's own file
  reference.safetensors                `latents` [1,48,3,3,4] as sampled (normalised) and `video`
                                       [1,3,9,48,64]: diffusers' vae.decode(latents * std + mean), clamped

The structure is the real Wan2.2 VAE one (dim_mult [1,2,4,4], num_res_blocks 2, residual up blocks
with parameter-free duplicate-up shortcuts, temporal upsampling in the first two up blocks, 2x2
unpatchify at the end) with the channel bases scaled down (encoder 2, decoder 4: widths 16, 16, 16, 8, 4) and the weights
stored in float16 so the files stay small; z_dim is the real 48. (A decoder base of 2 would halve
the files again, but its 2-channel RMS norms make even diffusers' own bf16 decode 4e-2 off its f32
one, over the 2e-2 bf16 bound; at base 4 diffusers' bf16 decode is 1.4e-2 off.) Every parameter is random, norm gammas included. The original-key
renaming is checked by mapping it back with an independent inverse written from the layout of
diffusers' scripts/convert_wan_to_diffusers.py (convert_vae_22), which is not installed here.

Run from the repository root:  python3 scripts/reference/gen_vae22_fixtures.py
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKLWan

OUT = os.path.join("tests", "fixtures", "vae22")
NUM_RES_BLOCKS = 2
Z_DIM = 48
LATENT_SHAPE = (1, Z_DIM, 3, 3, 4)  # 3 latent frames -> 9 video frames; 16x space


def randomize_(module, gen):
    """Every parameter random: norm gammas around 1, biases small, conv weights ~ 1/sqrt(fan_in).
    Values are rounded to float16, the dtype the weight files store (half the bytes), so the f32
    reference decode uses exactly the stored weights."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / fan_in**0.5))
            p.copy_(p.half().float())


RESNET_PARTS = (("norm1.", "residual.0."), ("conv1.", "residual.2."), ("norm2.", "residual.3."),
                ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut."))


def resnet_to_original(rest):
    for new, old in RESNET_PARTS:
        if rest.startswith(new):
            return old + rest[len(new):]
    raise KeyError(rest)


def to_original_key(key):
    """diffusers key -> Wan2.2_VAE.pth key (decoder side)."""
    if key.startswith("post_quant_conv."):
        return "conv2." + key[len("post_quant_conv."):]
    parts = key.split(".")
    assert parts[0] == "decoder", key
    tail = lambda n: ".".join(parts[n:])  # noqa: E731
    if parts[1] == "conv_in":
        return "decoder.conv1." + tail(2)
    if parts[1] == "norm_out":
        return "decoder.head.0." + tail(2)
    if parts[1] == "conv_out":
        return "decoder.head.2." + tail(2)
    if parts[1] == "mid_block":
        if parts[2] == "attentions":
            return "decoder.middle.1." + tail(4)
        return f"decoder.middle.{2 * int(parts[3])}." + resnet_to_original(tail(4))
    if parts[1] == "up_blocks":
        # each original up block is a Sequential of its resnets then its resample, nested in
        # decoder.upsamples.{block}.upsamples
        block = parts[2]
        if parts[3] == "resnets":
            return f"decoder.upsamples.{block}.upsamples.{parts[4]}." + resnet_to_original(tail(5))
        if parts[3] == "upsampler":
            return f"decoder.upsamples.{block}.upsamples.{NUM_RES_BLOCKS + 1}." + tail(4)
    raise KeyError(key)


def from_original_key(key):
    """The inverse, written the way diffusers' convert_vae_22 renames (string replacements)."""
    fixed = {"conv2.": "post_quant_conv.", "decoder.conv1.": "decoder.conv_in.",
             "decoder.head.0.": "decoder.norm_out.", "decoder.head.2.": "decoder.conv_out.",
             "decoder.middle.1.": "decoder.mid_block.attentions.0."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    for index in ("0", "2"):
        old = f"decoder.middle.{index}."
        if key.startswith(old):
            rest = key[len(old):]
            for new_part, old_part in RESNET_PARTS:
                rest = rest.replace(old_part, new_part) if rest.startswith(old_part) else rest
            return f"decoder.mid_block.resnets.{int(index) // 2}." + rest
    assert key.startswith("decoder.upsamples."), key
    new = key.replace("decoder.upsamples.", "decoder.up_blocks.", 1)
    if ".residual." in new or ".shortcut." in new:
        new = new.replace(".upsamples.", ".resnets.")
        for new_part, old_part in RESNET_PARTS:
            new = new.replace("." + old_part, "." + new_part)
        return new
    parts = new.split(".")
    assert parts[3] == "upsamples", key
    return ".".join(parts[:3] + ["upsampler"] + parts[5:])


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2222)
    latents_mean = (0.3 * torch.randn(Z_DIM, generator=gen)).tolist()
    latents_std = (0.4 + torch.rand(Z_DIM, generator=gen)).tolist()
    vae = AutoencoderKLWan(base_dim=2, decoder_base_dim=4, z_dim=Z_DIM, dim_mult=[1, 2, 4, 4],
                           num_res_blocks=NUM_RES_BLOCKS, attn_scales=[],
                           temperal_downsample=[False, True, True], dropout=0.0,
                           latents_mean=latents_mean, latents_std=latents_std, is_residual=True,
                           in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4,
                           scale_factor_spatial=16).eval()
    randomize_(vae, gen)
    with torch.no_grad():  # keep most outputs inside [-1, 1] so the clamp hides little
        vae.decoder.conv_out.weight.mul_(0.25)  # a power of two: still exact in float16
        vae.decoder.conv_out.bias.mul_(0.25)

    latents = torch.randn(*LATENT_SHAPE, generator=gen)
    mean = torch.tensor(vae.config.latents_mean).view(1, Z_DIM, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, Z_DIM, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(latents * std + mean).sample  # [1, 3, 9, 48, 64], clamped to [-1, 1]
    clamped = (video.abs() >= 1.0).float().mean().item()
    print(f"video {tuple(video.shape)} std {video.std().item():.3f}, fraction clamped {clamped:.3f}",
          file=sys.stderr)

    state = {k: v.half().contiguous() for k, v in vae.state_dict().items()
             if k.startswith(("decoder.", "post_quant_conv."))}
    original = {to_original_key(k): v for k, v in state.items()}
    assert len(original) == len(state)
    back = {from_original_key(k): v for k, v in original.items()}
    assert set(back) == set(state), sorted(set(back) ^ set(state))

    os.makedirs(OUT, exist_ok=True)
    vae.save_config(OUT)
    save_file(state, os.path.join(OUT, "diffusion_pytorch_model.safetensors"))
    torch.save(original, os.path.join(OUT, "Wan2.2_VAE.pth"))
    save_file({"latents": latents.contiguous(), "video": video.contiguous()},
              os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "config.json")) as f:
        json.load(f)  # written by save_config; make sure it parses
    params = sum(v.numel() for v in state.values())
    print("wrote", OUT, tuple(latents.shape), "->", tuple(video.shape), f"{params} decoder params",
          file=sys.stderr)


if __name__ == "__main__":
    main()
