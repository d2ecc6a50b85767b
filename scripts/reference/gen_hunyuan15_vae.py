#!/usr/bin/env python3
"""Tiny random-weight HunyuanVideo 1.5 VAE (diffusers AutoencoderKLHunyuanVideo15) and its reference decodes.

Writes tests/fixtures/hunyuan15/vae/:
  config.json                          the AutoencoderKLHunyuanVideo15 config, written by save_pretrained
  diffusion_pytorch_model.safetensors  the DECODER weights only (float16, diffusers keys `decoder.*`): the
                                       file save_pretrained wrote, with the `encoder.*` tensors removed, so
                                       the test also shows that the decoder loads without them
  reference.safetensors                whole frames: `latents` [1, 4, 3, 4, 5] as the pipeline samples them
                                       and `video` [1, 3, 9, 32, 40], diffusers' vae.decode(latents /
                                       scaling_factor) in f32, unclamped;
                                       tiled: `tiled_latents` [1, 4, 3, 6, 7] and `tiled_video`
                                       [1, 3, 9, 48, 56], the same with enable_tiling(32 px / 4 latent px
                                       tiles, overlap factor 0.25): 2 x 3 tiles, the last column 1 latent
                                       pixel wide, blended over 8 video pixels

The structure is the real one scaled down: latent_channels 4, block_out_channels (4, 8, 8, 8) (decoder
widths 8, 8, 8, 4), layers_per_block 1, spatial_compression_ratio 8, temporal_compression_ratio 4. So the
decoder has every block kind of the real one (16x space, 4x time, widths 1024..128): conv_in with its
channel-repeat shortcut, the mid block (resnet, causal 3D attention, resnet), two up blocks that upsample
in time and space (first frame apart), one that upsamples in space only, a last one without upsampler,
norm_out and conv_out. (With upsample_match_channel, as in the real config, no decoder resnet changes width,
so none has a 1x1x1 shortcut.) Every parameter is random (norm gammas
included) and rounded to float16, the dtype stored, so the f32 reference decode uses exactly the stored
weights. Three latent frames exercise the causal path past the first frame.

Run from the repository root:  python3 scripts/reference/gen_hunyuan15_vae.py
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from diffusers import AutoencoderKLHunyuanVideo15

OUT = os.path.join("tests", "fixtures", "hunyuan15", "vae")
LATENT_CHANNELS = 4
LATENT_SHAPE = (1, LATENT_CHANNELS, 3, 4, 5)  # 3 latent frames -> 9 video frames; 8x space
TILED_LATENT_SHAPE = (1, LATENT_CHANNELS, 3, 6, 7)
TILE_LATENT = 4  # latent pixels; 32 video pixels
TILE_OVERLAP = 0.25


def randomize_(module, gen):
    """Norm gammas around 1, biases small, conv weights ~ 1/sqrt(fan_in); all rounded to float16."""
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


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1515)
    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=LATENT_CHANNELS,
        block_out_channels=(4, 8, 8, 8),
        layers_per_block=1,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    ).eval()
    randomize_(vae, gen)
    scaling = vae.config.scaling_factor

    latents = torch.randn(*LATENT_SHAPE, generator=gen)
    tiled_latents = torch.randn(*TILED_LATENT_SHAPE, generator=gen)
    with torch.no_grad():
        video = vae.decode(latents / scaling).sample
        vae.enable_tiling(
            tile_sample_min_height=TILE_LATENT * 8,
            tile_sample_min_width=TILE_LATENT * 8,
            tile_latent_min_height=TILE_LATENT,
            tile_latent_min_width=TILE_LATENT,
            tile_overlap_factor=TILE_OVERLAP,
        )
        tiled_video = vae.decode(tiled_latents / scaling).sample
        # diffusers' own bf16 decode against its f32 one, for the bf16 bound of the test
        vae_bf16 = AutoencoderKLHunyuanVideo15.from_config(vae.config).eval()
        vae_bf16.load_state_dict(vae.state_dict())
        vae_bf16 = vae_bf16.to(torch.bfloat16)
        video_bf16 = vae_bf16.decode((latents / scaling).bfloat16()).sample.float()
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    print(f"video {tuple(video.shape)} std {video.std().item():.3f}; tiled {tuple(tiled_video.shape)}; "
          f"diffusers bf16 vs f32 relative error {rel(video_bf16, video):.3e}", file=sys.stderr)

    os.makedirs(OUT, exist_ok=True)
    vae.save_pretrained(OUT, safe_serialization=True)
    weights_path = os.path.join(OUT, "diffusion_pytorch_model.safetensors")
    state = load_file(weights_path)
    decoder = {k: v.half().contiguous() for k, v in state.items() if k.startswith("decoder.")}
    assert len(decoder) + sum(k.startswith("encoder.") for k in state) == len(state), sorted(state)
    save_file(decoder, weights_path)
    save_file(
        {
            "latents": latents.contiguous(),
            "video": video.contiguous(),
            "tiled_latents": tiled_latents.contiguous(),
            "tiled_video": tiled_video.contiguous(),
        },
        os.path.join(OUT, "reference.safetensors"),
    )
    with open(os.path.join(OUT, "config.json")) as f:
        json.load(f)
    params = sum(v.numel() for v in decoder.values())
    print("wrote", OUT, f"{params} decoder params", file=sys.stderr)


if __name__ == "__main__":
    main()
