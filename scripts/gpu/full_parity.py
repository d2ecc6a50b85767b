"""Full-size Wan2.1-1.3B transformer parity on the GPU: diffusers' WanTransformer3DModel with its own
random initialisation, weights rounded to bf16 and saved in the diffusers layout, and its f32 output on
random inputs, for `cargo test ... --test cuda_dit -- --ignored full_size` (VDIT_FULL_DIR=DIR) to load
through vdit's own loader and compare.

    python3 scripts/gpu/full_parity.py DIR
"""
import sys

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
              out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
              qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def main(out: str) -> None:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**CONFIG)
    with torch.no_grad():  # the default init leaves the modulation table at its randn/√dim draw
        model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    model.to(device="cuda", dtype=torch.float32).eval()
    gen = torch.Generator(device="cpu").manual_seed(1)
    # 17 frames at 240x416 (5x30x52 latents, 1,950 tokens): the full model, a small grid.
    latents = torch.randn(1, 16, 5, 30, 52, generator=gen)
    timesteps = torch.tensor([500.0])
    context = torch.randn(1, 512, 4096, generator=gen)
    with torch.no_grad():
        velocity = model(latents.cuda(), timesteps.cuda(), context.cuda(), return_dict=False)[0].float().cpu()
    save_file({"latents": latents, "timesteps": timesteps, "context": context, "velocity": velocity},
              f"{out}/io.safetensors")
    print(f"full-size reference written to {out}: velocity rms {velocity.pow(2).mean().sqrt():.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
