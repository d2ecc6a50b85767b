#!/usr/bin/env python3
"""A random-weight Wan2.2-TI2V-shaped transformer and its diffusers outputs, for vdit's dit22 parity tests.

TI2V-5B differs from the Wan2.1 transformers in its latent width (48 channels in and out) and in how it is
called: diffusers' Wan pipeline with `expand_timesteps` passes one timestep per latent token, `[B, L]`, with
L = F * (H/2) * (W/2) in (frame, row, column) raster order, so that the first frame's tokens of an
image-conditioned run get t = 0 while the rest are noised. The time embedding and the 6-way modulation of every
block, and the output head's shift and scale, are then per token.

Writes tests/fixtures/dit22/ti2v_heads2x32/:
  config.json                              diffusers WanTransformer3DModel config (48 channels, 2 heads x 32,
                                           2 layers, ffn 96, text_dim 24, freq_dim 16)
  config_original.json                     the same model as an original Wan `WanModel` config (model_type "ti2v")
  diffusion_pytorch_model.safetensors      diffusers-keyed weights, stored bf16; every parameter random and rounded
                                           to bf16 before the reference runs, so the f32 reference is exact for
                                           the stored values (one file serves the f32 and the bf16 tests)
  io_per_token.safetensors                 latents [2,48,3,6,10], timesteps [2,45] (per token: the first latent
                                           frame's 15 tokens t=0, the others 999 in row 0 and 421 in row 1),
                                           context [2,7,24] and diffusers' velocity [2,48,3,6,10]
  io_per_sample.safetensors                the same latents and context, timesteps [2] = (999, 421), velocity

Run from the repository root (CPU torch is enough):  python3 scripts/reference/gen_dit22_fixtures.py
"""
import json
import os
import sys

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

OUT = os.path.join("tests", "fixtures", "dit22", "ti2v_heads2x32")
CHANNELS = 48
MODEL = dict(num_attention_heads=2, attention_head_dim=32, text_dim=24, freq_dim=16, ffn_dim=96, num_layers=2)
GRID = (3, 6, 10)  # latent frames, height, width: tokens 3 x 3 x 5
TEXT_LEN = 7
NOISY_T = [999.0, 421.0]  # per batch row


def randomize_(model, gen):
    """Every parameter random: matrices scaled by fan-in, biases small, norm weights around 1, tables O(0.3)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "scale_shift_table" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


def per_token_timesteps(frames, height, width):
    """[2, L]: built the way diffusers' pipeline does with expand_timesteps (a first-frame mask of zeros, times t,
    subsampled by the 2x2 patch and flattened), one noisy t per batch row."""
    mask = torch.ones(1, 1, frames, height, width)
    mask[:, :, 0] = 0.0
    rows = [(mask[0][0][:, ::2, ::2] * t).flatten() for t in NOISY_T]
    return torch.stack(rows)


def main():
    gen = torch.Generator().manual_seed(20261206)
    os.makedirs(OUT, exist_ok=True)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), in_channels=CHANNELS, out_channels=CHANNELS, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, **MODEL).eval()
    randomize_(model, gen)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.save_config(OUT)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(OUT, "diffusion_pytorch_model.safetensors"))

    dim = MODEL["num_attention_heads"] * MODEL["attention_head_dim"]
    original_cfg = {
        "_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": "ti2v",
        "dim": dim, "eps": 1e-6, "ffn_dim": MODEL["ffn_dim"], "freq_dim": MODEL["freq_dim"], "in_dim": CHANNELS,
        "num_heads": MODEL["num_attention_heads"], "num_layers": MODEL["num_layers"], "out_dim": CHANNELS,
        "text_len": 512, "text_dim": MODEL["text_dim"],
    }
    with open(os.path.join(OUT, "config_original.json"), "w") as f:
        json.dump(original_cfg, f, indent=2)

    frames, height, width = GRID
    latents = torch.randn(2, CHANNELS, frames, height, width, generator=gen)
    context = torch.randn(2, TEXT_LEN, MODEL["text_dim"], generator=gen)
    cases = {
        "io_per_token": per_token_timesteps(frames, height, width),
        "io_per_sample": torch.tensor(NOISY_T, dtype=torch.float32),
    }
    for name, timesteps in cases.items():
        with torch.no_grad():
            velocity = model(latents, timesteps, context, return_dict=False)[0].float()
        io = dict(latents=latents, timesteps=timesteps, context=context, velocity=velocity)
        save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(OUT, name + ".safetensors"))
        print(name, {k: tuple(v.shape) for k, v in io.items()}, file=sys.stderr)
    # The per-token path must actually differ from the per-sample one, or the test could not tell them apart.
    with torch.no_grad():
        a = model(latents, cases["io_per_token"], context, return_dict=False)[0]
        b = model(latents, cases["io_per_sample"], context, return_dict=False)[0]
    print("per-token vs per-sample relative difference", ((a - b).norm() / b.norm()).item(), file=sys.stderr)
    print("params", sum(v.numel() for v in state.values()), file=sys.stderr)


if __name__ == "__main__":
    main()
