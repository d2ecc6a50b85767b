#!/usr/bin/env python3
"""Random LoRAs in every published Wan key form, and diffusers' velocity with each applied, for vdit's
LoRA parity tests.

Base model: the f32 random transformer of tests/fixtures/dit/heads2x32 (written by gen_dit_fixtures.py), run on
that fixture's io.safetensors inputs (latents, timesteps, context). Writes tests/fixtures/lora/:

  <case>.safetensors     one LoRA file per key form (below), random factors of rank 4
  reference.safetensors  `<case>` -> the velocity [2,16,F,H,W] with that LoRA at STRENGTHS[case];
                         `stacked` -> the velocity with `peft` (0.6) and `kohya` (-0.8) both applied

Cases (the forms of lora_conversion_utils.py in diffusers 0.42.1 and of the files on the hub):
  peft      diffusers / PEFT: transformer.blocks.N.attn1.to_q.lora_A.weight / lora_B.weight, every linear layer
            of the blocks plus proj_out and the condition embedder's time projection; no alpha
  kohya     original Wan names behind `diffusion_model.`, lora_down / lora_up with `.alpha` (alpha 2, rank 4) on
            the block layers, and the head `head.head` without alpha
  lightx2v  original names behind `diffusion_model.`, lora_A / lora_B (no alpha), `.diff_b` bias deltas on the
            linears, `head.head.diff` + `head.head.diff_b` full deltas of the output head, and `.diff` deltas of
            the norms (norm3, self_attn.norm_q, cross_attn.norm_k)
  musubi    kohya names `lora_unet_blocks_N_self_attn_q` with `.alpha` (alpha 8, rank 4), every block layer

The reference is diffusers: `WanLoraLoaderMixin.lora_state_dict` converts the file, `load_lora_adapter` loads it
into the transformer and `set_adapters` sets the strength. One exception: diffusers drops the norm `.diff` keys
(its converter says they are zero in the published files; vdit adds them, as ComfyUI does), so for `lightx2v` the
norm deltas are added to the base model's weights before the LoRA is loaded.

Run from the repository root:  python3 scripts/reference/gen_lora_fixtures.py
"""
import os
import sys

import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file, save_file

BASE = os.path.join("tests", "fixtures", "dit", "heads2x32")
OUT = os.path.join("tests", "fixtures", "lora")
RANK = 4
STRENGTHS = {"peft": 0.7, "kohya": 1.0, "lightx2v": 1.0, "musubi": 1.3}

PROJ = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
FFN = {"ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}


def linears(model):
    """(diffusers module name, original name, (out, in)) of every block linear layer."""
    out = []
    for i, _ in enumerate(model.blocks):
        for attn, orig in (("attn1", "self_attn"), ("attn2", "cross_attn")):
            for d, o in PROJ.items():
                w = model.get_submodule(f"blocks.{i}.{attn}.{d}").weight
                out.append((f"blocks.{i}.{attn}.{d}", f"blocks.{i}.{orig}.{o}", tuple(w.shape)))
        for d, o in FFN.items():
            w = model.get_submodule(f"blocks.{i}.{d}").weight
            out.append((f"blocks.{i}.{d}", f"blocks.{i}.{o}", tuple(w.shape)))
    return out


def pair(gen, shape, scale=0.3):
    out_f, in_f = shape
    down = torch.randn(RANK, in_f, generator=gen) / in_f**0.5
    up = scale * torch.randn(out_f, RANK, generator=gen) / RANK**0.5
    return down, up


def make_loras(model, gen):
    files = {}
    layers = linears(model)
    extra = [
        ("proj_out", "head.head", tuple(model.proj_out.weight.shape)),
        ("condition_embedder.time_proj", "time_projection.1", tuple(model.condition_embedder.time_proj.weight.shape)),
    ]

    sd = {}
    for d, _, shape in layers + extra:
        down, up = pair(gen, shape)
        sd[f"transformer.{d}.lora_A.weight"] = down
        sd[f"transformer.{d}.lora_B.weight"] = up
    files["peft"] = sd

    sd = {}
    for _, o, shape in layers + extra[:1]:
        down, up = pair(gen, shape)
        sd[f"diffusion_model.{o}.lora_down.weight"] = down
        sd[f"diffusion_model.{o}.lora_up.weight"] = up
        if o != "head.head":  # diffusers' converter takes no alpha for the head
            sd[f"diffusion_model.{o}.alpha"] = torch.tensor(2.0)
    files["kohya"] = sd

    sd = {}
    for _, o, shape in layers:
        down, up = pair(gen, shape)
        sd[f"diffusion_model.{o}.lora_A.weight"] = down
        sd[f"diffusion_model.{o}.lora_B.weight"] = up
        sd[f"diffusion_model.{o}.diff_b"] = 0.05 * torch.randn(shape[0], generator=gen)
    head = model.proj_out.weight
    sd["diffusion_model.head.head.diff"] = 0.02 * torch.randn(head.shape, generator=gen)
    sd["diffusion_model.head.head.diff_b"] = 0.05 * torch.randn(head.shape[0], generator=gen)
    dim = model.proj_out.weight.shape[1]
    for i, _ in enumerate(model.blocks):
        for name in ("norm3", "self_attn.norm_q", "cross_attn.norm_k"):
            sd[f"diffusion_model.blocks.{i}.{name}.diff"] = 0.1 * torch.randn(dim, generator=gen)
    files["lightx2v"] = sd

    sd = {}
    for _, o, shape in layers:
        down, up = pair(gen, shape)
        name = "lora_unet_" + o.replace(".", "_")
        sd[f"{name}.lora_down.weight"] = down
        sd[f"{name}.lora_up.weight"] = up
        sd[f"{name}.alpha"] = torch.tensor(8.0)
    files["musubi"] = sd
    return files


def norm_diffs_into(model, sd):
    """Adds the `.diff` deltas of norms (which diffusers ignores) to the model's weights."""
    rename = {"norm3": "norm2", "self_attn.norm_q": "attn1.norm_q", "cross_attn.norm_k": "attn2.norm_k"}
    with torch.no_grad():
        for key, value in sd.items():
            if key.endswith(".diff") and "norm" in key:
                rest = key[len("diffusion_model.blocks."):-len(".diff")]
                index, name = rest.split(".", 1)
                model.get_submodule(f"blocks.{index}.{rename[name]}").weight.add_(value)


def velocity(loras, io):
    """diffusers' velocity with `loras` [(case, file, strength)] loaded."""
    model = WanTransformer3DModel.from_pretrained(BASE).eval()
    names, weights = [], []
    for case, path, strength in loras:
        sd = load_file(path)
        if case == "lightx2v":
            norm_diffs_into(model, sd)
        converted = WanPipeline.lora_state_dict(path)
        model.load_lora_adapter(converted, prefix="transformer", adapter_name=case)
        names.append(case)
        weights.append(strength)
    model.set_adapters(names, weights=weights)
    with torch.no_grad():
        return model(io["latents"], io["timesteps"], io["context"], return_dict=False)[0].float()


def main():
    gen = torch.Generator().manual_seed(20261206)
    os.makedirs(OUT, exist_ok=True)
    base = WanTransformer3DModel.from_pretrained(BASE).eval()
    io = load_file(os.path.join(BASE, "io.safetensors"))
    reference = {}
    paths = {}
    for case, sd in make_loras(base, gen).items():
        path = os.path.join(OUT, f"{case}.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
        paths[case] = path
        reference[case] = velocity([(case, path, STRENGTHS[case])], io)
        change = (reference[case] - io["velocity"]).norm() / io["velocity"].norm()
        print(case, len(sd), "tensors; relative change of the velocity", f"{change:.3f}", file=sys.stderr)
        assert change > 0.05, f"{case}: the LoRA barely changes the output"
    reference["stacked"] = velocity([("peft", paths["peft"], 0.6), ("kohya", paths["kohya"], -0.8)], io)
    save_file({k: v.contiguous() for k, v in reference.items()}, os.path.join(OUT, "reference.safetensors"))


if __name__ == "__main__":
    main()
