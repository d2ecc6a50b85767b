#!/usr/bin/env python3
"""Random-weight Wan2.1 transformers and their diffusers outputs, for vdit's DiT parity tests.

Writes tests/fixtures/dit/<case>/ for two configurations that differ in head_dim (so the 3D RoPE split of
the head channels differs):
  config.json                              diffusers WanTransformer3DModel config
  config_original.json                     the same model as an original Wan `WanModel` config.json
  diffusion_pytorch_model.safetensors      diffusers-keyed weights, every parameter random
  original_keys.json                       diffusers key -> original Wan key (spec section 2), checked here
                                           against diffusers' own single-file converter
  io.safetensors                           latents [2,16,F,H,W], timesteps [2] (two different values),
                                           context [2,7,text_dim] and the diffusers velocity [2,16,F,H,W]

Case `heads2x32` stores f32 weights. Case `heads2x64` stores bf16 weights whose values are rounded to bf16
before the reference runs, so the f32 reference is exact for that file: it serves the f32 parity test (loaded
and cast to f32) and the bf16 run. The Rust tests write the original-key and ComfyUI-prefixed files from these.

It also runs the transformer of the tiny end-to-end pipeline (tests/fixtures/tiny_pipeline, made by
gen_tiny_pipeline.py) as diffusers loads it from disk, on that fixture's noise and prompt embeddings, and
stores the velocity in tests/fixtures/dit/tiny_pipeline_velocity.safetensors.

Run from the repository root:  python3 scripts/reference/gen_dit_fixtures.py
"""
import json
import os
import sys

import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import load_file, save_file

OUT = os.path.join("tests", "fixtures", "dit")
TEXT_LEN = 7  # deliberately not 512
TIMESTEPS = [999.0, 421.0]

CASES = {
    # 2 heads x 32: RoPE split t/h/w = 12/10/10 channels. Odd frame count, non-square grid.
    "heads2x32": dict(
        model=dict(num_attention_heads=2, attention_head_dim=32, text_dim=16, freq_dim=16, ffn_dim=64, num_layers=2),
        grid=(3, 6, 10),
        storage=torch.float32,
    ),
    # 2 heads x 64: RoPE split 24/20/20. Grid taller than wide.
    "heads2x64": dict(
        model=dict(num_attention_heads=2, attention_head_dim=64, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2),
        grid=(2, 10, 6),
        storage=torch.bfloat16,
    ),
}


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


def original_key(key):
    """Diffusers key -> original Wan key, written from the table in the spec (section 2)."""
    whole = {
        "condition_embedder.time_embedder.linear_1": "time_embedding.0",
        "condition_embedder.time_embedder.linear_2": "time_embedding.2",
        "condition_embedder.time_proj": "time_projection.1",
        "condition_embedder.text_embedder.linear_1": "text_embedding.0",
        "condition_embedder.text_embedder.linear_2": "text_embedding.2",
        "proj_out": "head.head",
    }
    if key == "scale_shift_table":
        return "head.modulation"
    for src, dst in whole.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    if not key.startswith("blocks."):
        return key  # patch_embedding.*
    _, index, rest = key.split(".", 2)
    block = {
        "scale_shift_table": "modulation",
        "norm2.weight": "norm3.weight",
        "norm2.bias": "norm3.bias",
        "ffn.net.0.proj.weight": "ffn.0.weight",
        "ffn.net.0.proj.bias": "ffn.0.bias",
        "ffn.net.2.weight": "ffn.2.weight",
        "ffn.net.2.bias": "ffn.2.bias",
    }
    if rest in block:
        return f"blocks.{index}.{block[rest]}"
    rest = rest.replace(".to_out.0.", ".to_out.")  # the output projection is to_out.0 in diffusers
    attn, layer, param = rest.split(".", 2)
    attn = {"attn1": "self_attn", "attn2": "cross_attn"}[attn]
    layer = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out": "o", "norm_q": "norm_q", "norm_k": "norm_k"}[layer]
    return f"blocks.{index}.{attn}.{layer}.{param}"


def main():
    gen = torch.Generator().manual_seed(20261123)
    for name, case in CASES.items():
        out = os.path.join(OUT, name)
        os.makedirs(out, exist_ok=True)
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), in_channels=16, out_channels=16, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, **case["model"]).eval()
        randomize_(model, gen)
        with torch.no_grad():
            # Round to the storage dtype first, so the reference is computed from exactly the stored values.
            for p in model.parameters():
                p.copy_(p.to(case["storage"]).float())
        model.save_config(out)

        state = {k: v.to(case["storage"]).contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(out, "diffusion_pytorch_model.safetensors"))

        # The rename map, checked against diffusers' own converter (original -> diffusers) both ways.
        mapping = {k: original_key(k) for k in state}
        assert len(set(mapping.values())) == len(mapping)
        back = convert_wan_transformer_to_diffusers({"model.diffusion_model." + v: state[k] for k, v in mapping.items()})
        assert set(back) == set(state), sorted(set(back) ^ set(state))
        for k in state:
            assert torch.equal(back[k], state[k]), k
        with open(os.path.join(out, "original_keys.json"), "w") as f:
            json.dump(dict(sorted(mapping.items())), f, indent=1)

        m = case["model"]
        dim = m["num_attention_heads"] * m["attention_head_dim"]
        original_cfg = {
            "_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v",
            "dim": dim, "eps": 1e-6, "ffn_dim": m["ffn_dim"], "freq_dim": m["freq_dim"], "in_dim": 16,
            "num_heads": m["num_attention_heads"], "num_layers": m["num_layers"], "out_dim": 16,
            "text_len": 512, "text_dim": m["text_dim"],
        }
        with open(os.path.join(out, "config_original.json"), "w") as f:
            json.dump(original_cfg, f, indent=2)

        frames, height, width = case["grid"]
        latents = torch.randn(2, 16, frames, height, width, generator=gen)
        timesteps = torch.tensor(TIMESTEPS, dtype=torch.float32)
        context = torch.randn(2, TEXT_LEN, m["text_dim"], generator=gen)
        with torch.no_grad():
            velocity = model(latents, timesteps, context, return_dict=False)[0].float()
        io = dict(latents=latents, timesteps=timesteps, context=context, velocity=velocity)
        save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"))
        print(name, {k: tuple(v.shape) for k, v in io.items()}, "params", sum(v.numel() for v in state.values()),
              file=sys.stderr)


def tiny_pipeline_velocity():
    """Batch 2: (noise, prompt, t=999) and (noise/2, negative prompt, t=750), on the saved tiny transformer."""
    base = os.path.join("tests", "fixtures", "tiny_pipeline")
    model = WanTransformer3DModel.from_pretrained(os.path.join(base, "model", "transformer")).eval()
    ref = load_file(os.path.join(base, "reference.safetensors"))
    latents = torch.cat([ref["noise"], 0.5 * ref["noise"]])
    context = torch.cat([ref["prompt_embeds"], ref["negative_prompt_embeds"]])
    timesteps = torch.tensor([999.0, 750.0])
    with torch.no_grad():
        velocity = model(latents, timesteps, context, return_dict=False)[0].float()
    save_file({"timesteps": timesteps, "velocity": velocity.contiguous()},
              os.path.join(OUT, "tiny_pipeline_velocity.safetensors"))


if __name__ == "__main__":
    main()
    tiny_pipeline_velocity()
