#!/usr/bin/env python3
"""GGUF fixtures for vdit's GGUF tests (crates/models/tests/gguf_parity.rs), written with the `gguf` package
(llama.cpp's gguf-py: `pip install gguf`).

Writes tests/fixtures/gguf/:
  wan_tiny_q8_0.gguf          the random-weight transformer of tests/fixtures/dit/heads2x32 (f32 weights, made by
                              gen_dit_fixtures.py) laid out as ComfyUI-GGUF's Wan files are: original Wan key names
                              without a prefix, `general.architecture` = "wan", file type MOSTLY_Q8_0; the 5-D patch
                              embedding, every 1-D tensor, tensors of at most 1024 values and the `.modulation` tables in
                              F32; `time_embedding.*` in F16 (the converter's quantiser keeps them); matrices whose rows
                              are not whole 32-value blocks (here the 16-wide text and time inputs) in F16; every other
                              matrix in Q8_0, quantised by gguf-py.
  wan_tiny_q8_0_stats.json    for each tensor of that file: its type, and the sum and sum of squares (float64) of
                              gguf-py's dequantisation of it, which the test compares with candle's.
  blocks.gguf                 one [4, 512] tensor per block type candle reads (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
                              Q4_K, Q5_K, Q6_K) plus F16 and BF16, each made of random bytes with finite, moderate
                              scale fields: every bit pattern of the quantised values is a valid block, so this checks
                              decoding for all of them. gguf-py cannot quantise the K types (its quantize() raises
                              NotImplementedError for them), which is why they are random blocks here; the K-quantised
                              transformers of the forward-error test are made by candle's quantiser in the Rust test.
  blocks_dequant.safetensors  gguf-py's dequantisation of each tensor of blocks.gguf, f32, same names.

Run from the repository root:  python3 scripts/reference/gen_gguf.py
"""
import json
import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file, save_file

SOURCE = os.path.join("tests", "fixtures", "dit", "heads2x32")
OUT = os.path.join("tests", "fixtures", "gguf")
SMALL = 1024  # tensors of at most this many values stay F32


def tensor_type(key, array):
    """The storage type of one original-keyed tensor in a Q8_0 Wan file (see the module docstring)."""
    if array.ndim == 1 or array.size <= SMALL or array.ndim > 4 or ".modulation" in key or key == "head.modulation":
        return Q.F32
    if key.startswith("time_embedding."):
        return Q.F16
    if array.shape[-1] % 32 != 0:
        return Q.F16
    return Q.Q8_0


def write_model():
    weights = load_file(os.path.join(SOURCE, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(SOURCE, "original_keys.json")) as f:
        original = json.load(f)
    path = os.path.join(OUT, "wan_tiny_q8_0.gguf")
    writer = gguf.GGUFWriter(path, arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    stats = {}
    for key in sorted(weights):
        name = original[key]
        array = weights[key].astype(np.float32)
        qtype = tensor_type(name, array)
        data = gguf.quants.quantize(array, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
        back = gguf.quants.dequantize(data, qtype).astype(np.float64)
        stats[name] = {"type": qtype.name, "shape": list(array.shape), "sum": float(back.sum()),
                       "sum_sq": float((back * back).sum())}
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(os.path.join(OUT, "wan_tiny_q8_0_stats.json"), "w") as f:
        json.dump(stats, f, indent=1, sort_keys=True)
    print(path, os.path.getsize(path), "bytes")


def random_f16(rng, n, low=1e-3, high=5e-2):
    """n random finite float16 scales with random signs, as raw bytes."""
    values = rng.uniform(low, high, n) * rng.choice([-1.0, 1.0], n)
    return values.astype(np.float16).view(np.uint8).reshape(n, 2)


def random_blocks(rng, qtype, rows, cols):
    """rows × cols values of `qtype` as random blocks whose f16 scale fields are finite and moderate."""
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n = rows * cols // block_values
    blocks = rng.integers(0, 256, (n, block_bytes), dtype=np.uint8)
    # Byte offsets of the f16 fields of each block type (ggml's block layouts).
    f16_fields = {
        Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
        Q.Q2_K: [80, 82],     # scales[16], qs[64], d, dmin
        Q.Q3_K: [108],        # hmask[32], qs[64], scales[12], d
        Q.Q4_K: [0, 2],       # d, dmin, scales[12], qs[128]
        Q.Q5_K: [0, 2],       # d, dmin, scales[12], qh[32], qs[128]
        Q.Q6_K: [208],        # ql[128], qh[64], scales[16], d
    }[qtype]
    for offset in f16_fields:
        blocks[:, offset:offset + 2] = random_f16(rng, n)
    return blocks.reshape(rows, cols // block_values * block_bytes)


def write_blocks():
    rng = np.random.default_rng(19)
    rows, cols = 4, 512
    path = os.path.join(OUT, "blocks.gguf")
    writer = gguf.GGUFWriter(path, arch="blocks")
    dequantized = {}
    for qtype in [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]:
        data = random_blocks(rng, qtype, rows, cols)
        writer.add_tensor(qtype.name, data, raw_dtype=qtype)
        dequantized[qtype.name] = gguf.quants.dequantize(data, qtype).astype(np.float32).reshape(rows, cols)
    for qtype in [Q.F16, Q.BF16]:
        values = rng.normal(0.0, 1.0, (rows, cols)).astype(np.float32)
        data = gguf.quants.quantize(values, qtype)
        writer.add_tensor(qtype.name, data, raw_dtype=qtype)
        dequantized[qtype.name] = gguf.quants.dequantize(data, qtype).astype(np.float32).reshape(rows, cols)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert all(np.isfinite(v).all() for v in dequantized.values())
    save_file(dequantized, os.path.join(OUT, "blocks_dequant.safetensors"))
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    write_model()
    write_blocks()
