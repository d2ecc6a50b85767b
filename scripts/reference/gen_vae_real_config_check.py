#!/usr/bin/env python3
"""Real-size Wan2.1_VAE check data (not a committed fixture: ~300 MB of weights).

Builds diffusers' AutoencoderKLWan with the real Wan2.1 config (base_dim 96), makes every parameter
random as gen_vae_fixtures.py does, and writes to OUT_DIR (default /tmp/vdit_vae_real):
  vae/config.json, vae/diffusion_pytorch_model.safetensors   decoder + post_quant_conv weights
  reference.safetensors   `latents` [1,16,2,8,12] (normalised) and diffusers' decode `video` [1,3,5,64,96]

Then:  VDIT_VAE_REAL_DIR=/tmp/vdit_vae_real cargo test --workspace --release --test vae_parity -- --ignored
Run from the repository root:  python3 scripts/reference/gen_vae_real_config_check.py [OUT_DIR]
"""
import os
import sys
import time

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKLWan

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_vae_fixtures import randomize_  # noqa: E402


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/vdit_vae_real"
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(99)
    vae = AutoencoderKLWan().eval()  # the Wan2.1_VAE config
    randomize_(vae, gen)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.5)
        vae.decoder.conv_out.bias.mul_(0.5)
    latents = torch.randn(1, 16, 2, 8, 12, generator=gen)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    start = time.time()
    with torch.no_grad():
        video = vae.decode(latents * std + mean).sample
    print(f"diffusers decode {tuple(video.shape)} in {time.time() - start:.1f} s", file=sys.stderr)
    os.makedirs(os.path.join(out, "vae"), exist_ok=True)
    vae.save_config(os.path.join(out, "vae"))
    state = {k: v.contiguous() for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}
    save_file(state, os.path.join(out, "vae", "diffusion_pytorch_model.safetensors"))
    save_file({"latents": latents, "video": video.contiguous()}, os.path.join(out, "reference.safetensors"))
    print("wrote", out, file=sys.stderr)


if __name__ == "__main__":
    main()
