#!/usr/bin/env python3
"""fp8 transformer fixtures for vdit's fp8 tests (crates/models/tests/fp8_parity.rs), from the f32 random-weight
transformer of tests/fixtures/dit/heads2x32 (made by gen_dit_fixtures.py).

Writes tests/fixtures/fp8/:
  wan_tiny_fp8_scaled.safetensors  ComfyUI's "scaled fp8" layout: keys `model.diffusion_model.` + original Wan names;
                                   every 2-D `.weight` (the linear layers) stored as float8_e4m3fn values w / s with
                                   s = max|w| / 448 (the largest e4m3 value) and `<name>.scale_weight` = [s] (f32);
                                   a `scaled_fp8` marker tensor (empty, float8_e4m3fn); every other tensor f32 as in
                                   the source (published files keep those in bf16; f32 here isolates the fp8 error).
  wan_tiny_fp8_e4m3fn.safetensors  a plain fp8 file: the same 2-D weights cast straight to float8_e4m3fn (no scale),
                                   original names without a prefix, everything else f32.
  e4m3_values.safetensors          `bits`: the 256 byte values as uint8, `fp8`: the same bytes as float8_e4m3fn,
                                   `values`: torch's float32 of each (NaN for the two NaN codes), to check the
                                   loader's fp8 decoding.

Run from the repository root:  python3 scripts/reference/gen_fp8_fixtures.py
"""
import json
import os

import torch
from safetensors.torch import load_file, save_file

SOURCE = os.path.join("tests", "fixtures", "dit", "heads2x32")
OUT = os.path.join("tests", "fixtures", "fp8")
E4M3_MAX = 448.0
PREFIX = "model.diffusion_model."


def main():
    os.makedirs(OUT, exist_ok=True)
    weights = load_file(os.path.join(SOURCE, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(SOURCE, "original_keys.json")) as f:
        original = json.load(f)
    scaled, plain = {}, {}
    for key, w in sorted(weights.items()):
        name = original[key]
        w = w.float()
        if w.ndim == 2 and name.endswith(".weight"):
            scale = w.abs().max() / E4M3_MAX
            scaled[PREFIX + name] = (w / scale).to(torch.float8_e4m3fn)
            scaled[PREFIX + name[: -len("weight")] + "scale_weight"] = scale.reshape(1).float()
            plain[name] = w.to(torch.float8_e4m3fn)
        else:
            scaled[PREFIX + name] = w.contiguous()
            plain[name] = w.contiguous()
    scaled[PREFIX + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(scaled, os.path.join(OUT, "wan_tiny_fp8_scaled.safetensors"))
    save_file(plain, os.path.join(OUT, "wan_tiny_fp8_e4m3fn.safetensors"))

    bits = torch.arange(256, dtype=torch.uint8)
    values = bits.view(torch.float8_e4m3fn).float()
    save_file({"bits": bits, "fp8": bits.view(torch.float8_e4m3fn).clone(), "values": values},
              os.path.join(OUT, "e4m3_values.safetensors"))
    for name in sorted(os.listdir(OUT)):
        print(os.path.join(OUT, name), os.path.getsize(os.path.join(OUT, name)), "bytes")


if __name__ == "__main__":
    main()
