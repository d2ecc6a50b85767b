#!/usr/bin/env python3
"""A tiny random HunyuanVideo 1.5 transformer and its diffusers outputs, for vdit's hunyuan15 transformer parity test.

The model is diffusers' `HunyuanVideo15Transformer3DModel` at small widths (2 heads x 16 = 32 wide, 2 dual-stream
blocks, 2 token-refiner blocks, mlp ratio 4, RoPE axes (4, 6, 6) with theta 256, patch 1 x 2 x 2 so that the
patch / unpatch layouts are exercised beyond the real 1 x 1 x 1), with every parameter random and rounded to bf16
before the reference runs, so the f32 reference is exact for the stored bf16 values.

One deviation from the stock class: diffusers builds the ByT5 projection (`context_embedder_2`) with a fixed
hidden width of 2048, which alone would make the fixture 17 MB. The generator builds it 48 wide instead and writes
that width into config.json as `byt5_projection_dim` (a key vdit reads, default 2048, that diffusers ignores).
The forward code is the stock one.

Writes:
  tests/fixtures/hunyuan15/transformer/config.json
  tests/fixtures/hunyuan15/transformer/diffusion_pytorch_model.safetensors   diffusers keys, stored bf16
  tests/fixtures/hunyuan15/transformer_io.safetensors:
    latents [2, 9, 3, 8, 8]          4 noisy + 4 condition latent channels + 1 mask channel, 3 latent frames
    timestep [2]                      (937.5, 412.0)
    text [2, 10, 24], text_mask [2, 10]            Qwen stream; row 1 padded after 6 tokens
    glyph [2, 7, 20], glyph_mask [2, 7]            ByT5 stream; 5 and 3 valid tokens
    image_embeds [2, 5, 12]                         random SigLIP-like tokens (image-to-video check)
    output [2, 4, 3, 8, 8]                          t2v: image_embeds all zero, as the text-to-video pipeline passes
    output_i2v [2, 4, 3, 8, 8]                      the same inputs with image_embeds set (image tokens valid)
    output_no_padding [1, 4, 3, 8, 8]               row 1 alone, its padded text tokens removed (no masks needed)

Run from the repository root (CPU torch is enough):  python3 scripts/reference/gen_hunyuan15_transformer.py
"""
import json
import os

import torch
import diffusers.models.transformers.transformer_hunyuan_video15 as hv
from diffusers import HunyuanVideo15Transformer3DModel
from safetensors.torch import save_file

ROOT = os.path.join("tests", "fixtures", "hunyuan15")
OUT = os.path.join(ROOT, "transformer")
BYT5_PROJECTION_DIM = 48
MODEL = dict(
    in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_refiner_layers=2,
    mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm", text_embed_dim=24, text_embed_2_dim=20,
    image_embed_dim=12, rope_theta=256.0, rope_axes_dim=(4, 6, 6), target_size=640, task_type="t2v",
    use_meanflow=False,
)


class SmallByT5Projection(hv.HunyuanVideo15ByT5TextProjection):
    """The stock projection with its hidden width taken from BYT5_PROJECTION_DIM instead of 2048."""

    def __init__(self, in_features, hidden_size, out_features):
        super().__init__(in_features, BYT5_PROJECTION_DIM, out_features)


def randomize_(model, gen):
    """Every parameter random: matrices scaled by fan-in, biases small, norm weights around 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight") and p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "cond_type_embed" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            p.copy_(p.to(torch.bfloat16).float())


def main():
    gen = torch.Generator().manual_seed(20261207)
    os.makedirs(OUT, exist_ok=True)
    hv.HunyuanVideo15ByT5TextProjection = SmallByT5Projection
    model = HunyuanVideo15Transformer3DModel(**MODEL).eval()
    randomize_(model, gen)
    model.save_config(OUT)
    with open(os.path.join(OUT, "config.json")) as f:
        config = json.load(f)
    config["byt5_projection_dim"] = BYT5_PROJECTION_DIM
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(OUT, "diffusion_pytorch_model.safetensors"))

    latents = torch.randn(2, 9, 3, 8, 8, generator=gen)
    timestep = torch.tensor([937.5, 412.0])
    text = torch.randn(2, 10, 24, generator=gen)
    text_mask = torch.ones(2, 10, dtype=torch.int64)
    text_mask[1, 6:] = 0
    glyph = torch.randn(2, 7, 20, generator=gen)
    glyph_mask = torch.zeros(2, 7, dtype=torch.int64)
    glyph_mask[0, :5] = 1
    glyph_mask[1, :3] = 1
    image_embeds = torch.randn(2, 5, 12, generator=gen)

    def run(latents, timestep, text, text_mask, glyph, glyph_mask, image_embeds):
        with torch.no_grad():
            out = model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                        encoder_attention_mask=text_mask, encoder_hidden_states_2=glyph,
                        encoder_attention_mask_2=glyph_mask, image_embeds=image_embeds, return_dict=False)[0]
        assert torch.isfinite(out).all(), "reference output is not finite"
        return out

    output = run(latents, timestep, text, text_mask, glyph, glyph_mask, torch.zeros_like(image_embeds))
    output_i2v = run(latents, timestep, text, text_mask, glyph, glyph_mask, image_embeds)
    # Row 1 alone with its padded text removed: what the masks must reproduce.
    output_no_padding = run(latents[1:], timestep[1:], text[1:, :6], text_mask[1:, :6], glyph[1:, :3],
                            glyph_mask[1:, :3], torch.zeros_like(image_embeds[1:]))
    gap = (output_no_padding - output[1:]).norm() / output[1:].norm()
    print(f"row 1 padded vs unpadded, diffusers itself: relative difference {gap:.2e}")
    assert (output_i2v - output).norm() / output.norm() > 1e-2, "image tokens changed nothing"

    tensors = dict(latents=latents, timestep=timestep, text=text, text_mask=text_mask.float(), glyph=glyph,
                   glyph_mask=glyph_mask.float(), image_embeds=image_embeds, output=output, output_i2v=output_i2v,
                   output_no_padding=output_no_padding)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ROOT, "transformer_io.safetensors"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d in (ROOT, OUT) for f in os.listdir(d)
                if os.path.isfile(os.path.join(d, f)))
    print(f"wrote {OUT} and transformer_io.safetensors: {total / 1024:.0f} KiB in all")


if __name__ == "__main__":
    main()
