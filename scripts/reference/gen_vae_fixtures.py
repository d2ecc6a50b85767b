#!/usr/bin/env python3
"""Tiny random-weight Wan VAE decoder and its diffusers reference decode.

Writes tests/fixtures/vae/:
  config.json                          diffusers AutoencoderKLWan config (random latents_mean / latents_std)
  diffusion_pytorch_model.safetensors  decoder weights (+ post_quant_conv, quant_conv) under diffusers keys
  Wan2.1_VAE.pth                       the same weights under the original key names, saved with
                                       torch.save like Wan's own Wan2.1_VAE.pth (tests also rewrite it
                                       as safetensors, the layout of ComfyUI's wan_2.1_vae.safetensors)
  reference.safetensors                `latents` [1,16,4,5,7] as sampled (normalised) and `video`
                                       [1,3,13,40,56]: diffusers' vae.decode(latents * std + mean), clamped

The architecture is the real Wan2.1 one (dim_mult [1,2,4,4], num_res_blocks 2, temporal upsampling in
the first two up blocks), scaled down to base_dim 4, so the flat original key indices are the real ones.
Every parameter is random, norm gammas and biases included. The original-key file is checked by
converting it back with diffusers' own `convert_wan_vae_to_diffusers`.

Run from the repository root:  python3 scripts/reference/gen_vae_fixtures.py
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

OUT = os.path.join("tests", "fixtures", "vae")
NUM_RES_BLOCKS = 2
LATENT_SHAPE = (1, 16, 4, 5, 7)  # 4 latent frames -> 13 video frames; odd spatial size


def randomize_(module, gen):
    """Every parameter random. Norm gammas around 1, biases small, conv weights ~ 1/sqrt(fan_in)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in**0.5))


def resnet_to_original(rest):
    """`norm1.gamma` -> `residual.0.gamma` etc. inside one residual block."""
    for new, old in (("norm1.", "residual.0."), ("conv1.", "residual.2."), ("norm2.", "residual.3."),
                     ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut.")):
        if rest.startswith(new):
            return old + rest[len(new):]
    raise KeyError(rest)


def to_original_key(key):
    """diffusers key -> Wan2.1_VAE.pth key (decoder side), written independently of the Rust mapping."""
    if key.startswith("post_quant_conv."):
        return "conv2." + key[len("post_quant_conv."):]
    if key.startswith("quant_conv."):
        return "conv1." + key[len("quant_conv."):]
    parts = key.split(".")
    assert parts[0] == "decoder", key
    if parts[1] == "conv_in":
        return "decoder.conv1." + ".".join(parts[2:])
    if parts[1] == "norm_out":
        return "decoder.head.0." + ".".join(parts[2:])
    if parts[1] == "conv_out":
        return "decoder.head.2." + ".".join(parts[2:])
    if parts[1] == "mid_block":
        if parts[2] == "attentions":
            return "decoder.middle.1." + ".".join(parts[4:])
        index = {"0": 0, "1": 2}[parts[3]]
        return f"decoder.middle.{index}." + resnet_to_original(".".join(parts[4:]))
    if parts[1] == "up_blocks":
        block = int(parts[2])
        first = block * (NUM_RES_BLOCKS + 2)  # each up block: resnets, then one resample
        if parts[3] == "resnets":
            return f"decoder.upsamples.{first + int(parts[4])}." + resnet_to_original(".".join(parts[5:]))
        if parts[3] == "upsamplers":
            return f"decoder.upsamples.{first + NUM_RES_BLOCKS + 1}." + ".".join(parts[5:])
    raise KeyError(key)


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4321)
    latents_mean = (0.5 * torch.randn(16, generator=gen)).tolist()
    latents_std = (0.5 + torch.rand(16, generator=gen)).tolist()
    vae = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=NUM_RES_BLOCKS,
                           attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0,
                           latents_mean=latents_mean, latents_std=latents_std).eval()
    randomize_(vae, gen)
    with torch.no_grad():  # keep most outputs inside [-1, 1] so the clamp hides little
        vae.decoder.conv_out.weight.mul_(0.5)
        vae.decoder.conv_out.bias.mul_(0.5)

    latents = torch.randn(*LATENT_SHAPE, generator=gen)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(latents * std + mean).sample  # [1, 3, 13, 40, 56], clamped to [-1, 1]
    clamped = (video.abs() >= 1.0).float().mean().item()
    print(f"video std {video.std().item():.3f}, fraction clamped {clamped:.3f}", file=sys.stderr)

    state = {k: v.contiguous() for k, v in vae.state_dict().items()
             if k.startswith(("decoder.", "post_quant_conv.", "quant_conv."))}
    original = {to_original_key(k): v for k, v in state.items()}
    # Independent check of the renaming: diffusers' converter must map it back exactly.
    back = convert_wan_vae_to_diffusers(original)
    assert set(back) == set(state), sorted(set(back) ^ set(state))
    assert all(torch.equal(back[k], state[k]) for k in state)

    os.makedirs(OUT, exist_ok=True)
    vae.save_config(OUT)
    save_file(state, os.path.join(OUT, "diffusion_pytorch_model.safetensors"))
    torch.save(original, os.path.join(OUT, "Wan2.1_VAE.pth"))
    stale = os.path.join(OUT, "wan_2.1_vae_original.safetensors")
    if os.path.exists(stale):
        os.remove(stale)
    save_file({"latents": latents.contiguous(), "video": video.contiguous()},
              os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "config.json")) as f:
        json.load(f)  # written by save_config; make sure it parses
    print("wrote", OUT, tuple(latents.shape), "->", tuple(video.shape), file=sys.stderr)


if __name__ == "__main__":
    main()
