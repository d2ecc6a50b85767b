"""A random LoRA at the real shapes of a Wan transformer, in lightx2v's published form (`diffusion_model.` +
lora_A / lora_B of every attention and feed-forward layer, `.diff_b` bias deltas), bf16, for timing LoRA runs
on the GPU machine (which has no network and so no real LoRA files).

    python3 scripts/gpu/make_random_lora.py MODEL_DIR OUT.safetensors [--rank 64]

The shapes come from MODEL_DIR/transformer/config.json (diffusers). Rank 64 is lightx2v's published rank.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--rank", type=int, default=64)
    args = p.parse_args()
    cfg = json.load(open(os.path.join(args.model, "transformer", "config.json")))
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ffn = cfg["ffn_dim"]
    gen = torch.Generator().manual_seed(0)
    sd = {}

    def layer(name, out_f, in_f):
        sd[f"diffusion_model.{name}.lora_A.weight"] = (torch.randn(args.rank, in_f, generator=gen) / in_f**0.5).bfloat16()
        sd[f"diffusion_model.{name}.lora_B.weight"] = (0.01 * torch.randn(out_f, args.rank, generator=gen)).bfloat16()
        sd[f"diffusion_model.{name}.diff_b"] = (0.01 * torch.randn(out_f, generator=gen)).bfloat16()

    for i in range(cfg["num_layers"]):
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                layer(f"blocks.{i}.{attn}.{proj}", dim, dim)
        layer(f"blocks.{i}.ffn.0", ffn, dim)
        layer(f"blocks.{i}.ffn.2", dim, ffn)
    save_file(sd, args.out)
    size = sum(t.numel() * t.element_size() for t in sd.values())
    print(f"{args.out}: {len(sd)} tensors, rank {args.rank}, {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
