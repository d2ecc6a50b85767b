#!/usr/bin/env python3
"""GGUF fixtures for vdit's umT5 text encoder (crates/models/tests/umt5_gguf_parity.rs), written with the `gguf`
package (llama.cpp's gguf-py: `pip install gguf`) in the layout of llama.cpp's T5 encoder files, which is what
city96's `umt5-xxl-encoder-*.gguf` files use: `general.architecture` = "t5encoder" and the names

    token_embd.weight                 shared.weight (the token embedding)
    enc.blk.N.attn_norm.weight        encoder.block.N.layer.0.layer_norm.weight
    enc.blk.N.attn_{q,k,v,o}.weight   encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight
    enc.blk.N.attn_rel_b.weight       encoder.block.N.layer.0.SelfAttention.relative_attention_bias.weight
                                      (umT5: one table in every layer, not only in layer 0 as in T5)
    enc.blk.N.ffn_norm.weight         encoder.block.N.layer.1.layer_norm.weight
    enc.blk.N.ffn_gate.weight         encoder.block.N.layer.1.DenseReluDense.wi_0.weight (the GELU branch)
    enc.blk.N.ffn_up.weight           encoder.block.N.layer.1.DenseReluDense.wi_1.weight
    enc.blk.N.ffn_down.weight         encoder.block.N.layer.1.DenseReluDense.wo.weight
    enc.output_norm.weight            encoder.final_layer_norm.weight

Writes tests/fixtures/umt5/gguf/:
  umt5_tiny_q8_0.gguf          the weights of tests/fixtures/umt5/hf (gen_umt5_fixtures.py; its reference output is
                               tests/fixtures/umt5/reference.safetensors) at Q8_0: every matrix whose rows are whole
                               32-value blocks in Q8_0, quantised by gguf-py (q, k, v, wi_0, wi_1 and the embedding);
                               the others in F16, as llama.cpp's quantiser falls back for such rows (o has 24 inputs,
                               wo 48); norms and bias tables in F32.
  umt5_w256_q6_k.gguf          a second tiny random UMT5EncoderModel whose widths are multiples of 256 (d_model 256,
                               4 heads of 64, d_ff 256, 2 layers, 128 tokens), as the K-quants need, at Q6_K: every
                               matrix including the embedding in Q6_K, quantised here (gguf-py dequantises the K
                               types but cannot quantise them), norms and bias tables in F32. Its f32 weights are not
                               kept (3.7 MB); the reference is transformers' output with them.
  umt5_w256_reference.safetensors   input ids [2, 40] (right-padded), attention mask [2, 40], transformers' last
                               hidden state [2, 40, 256] (eager attention, f32) of that model, and
                               `last_hidden_state_dequantized`: the same with the weights gguf-py dequantises from
                               umt5_w256_q6_k.gguf.
  umt5_tiny_q8_0_dequantized.safetensors   `last_hidden_state_dequantized` [4, 150, 32]: transformers' output for
                               the batch of tests/fixtures/umt5/reference.safetensors with the weights gguf-py
                               dequantises from umt5_tiny_q8_0.gguf.

The two outputs with dequantised weights separate the loader's error from the quantisation's: a correct loader
stays close to them (its only other rounding is candle's quantised matmul rounding the activations to 8 bits),
while the distance to the f32 output is what the quantisation itself costs these random models.

Run from the repository root:  python3 scripts/reference/gen_umt5_gguf.py
"""
import os
import re

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch, save_file
from transformers import UMT5Config, UMT5EncoderModel

SOURCE = os.path.join("tests", "fixtures", "umt5", "hf", "model.safetensors")
OUT = os.path.join("tests", "fixtures", "umt5", "gguf")
ARCH = "t5encoder"

LAYER_NAMES = {
    "layer.0.layer_norm.weight": "attn_norm.weight",
    "layer.0.SelfAttention.q.weight": "attn_q.weight",
    "layer.0.SelfAttention.k.weight": "attn_k.weight",
    "layer.0.SelfAttention.v.weight": "attn_v.weight",
    "layer.0.SelfAttention.o.weight": "attn_o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "attn_rel_b.weight",
    "layer.1.layer_norm.weight": "ffn_norm.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn_gate.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn_up.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn_down.weight",
}


def gguf_name(key):
    """transformers UMT5EncoderModel key -> llama.cpp T5 encoder tensor name."""
    if key in ("shared.weight", "encoder.embed_tokens.weight"):
        return "token_embd.weight"
    if key == "encoder.final_layer_norm.weight":
        return "enc.output_norm.weight"
    m = re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", key)
    return f"enc.blk.{m.group(1)}.{LAYER_NAMES[m.group(2)]}"


def quantize_q6_k(values):
    """rows × cols f32 (cols a multiple of 256) -> Q6_K blocks as uint8 [rows, cols / 256 * 210].

    A block holds 256 values in 16 groups of 16: value = d · scale[g] · (q − 32) with q in 0..63, scale[g] an int8
    and d an f16. Bytes: ql[128] (low 4 bits of q), qh[64] (high 2 bits), scales[16], d — in the order that
    gguf.quants.Q6_K.dequantize_blocks reads them, which the round trip below checks."""
    rows, cols = values.shape
    blocks = values.astype(np.float32).reshape(-1, 16, 16)  # [n_blocks, group, value]
    n = blocks.shape[0]
    group_scale = np.abs(blocks).max(axis=-1) / 31.0  # [n, 16]
    d = (group_scale.max(axis=-1) / 127.0).astype(np.float16)  # [n]
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.where(d32 > 0, np.round(group_scale / d32), 0).clip(-128, 127).astype(np.int8)
        step = d32 * scales.astype(np.float32)  # [n, 16]
        q = np.where(step[..., None] > 0, np.round(blocks / step[..., None]), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(n, 256)
    # value v = 128·h + 32·s + i (half h, quarter s, index i): its low nibble sits in ql byte 64·h + 32·(s % 2) + i
    # (low nibble for s < 2, high for s ≥ 2); its high two bits in qh byte 32·h + i at bit 2·s.
    q = q.reshape(n, 2, 4, 32)
    low, high = q & 0x0F, q >> 4
    ql = (low[:, :, 0:2, :] | (low[:, :, 2:4, :] << 4)).reshape(n, 128)
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(n, 64)
    out = np.concatenate([ql, qh, scales.view(np.uint8), d.reshape(n, 1).view(np.uint8)], axis=-1)
    blocks_out = out.reshape(rows, cols // 256 * 210)
    back = gguf.quants.dequantize(blocks_out, Q.Q6_K).reshape(rows, cols)
    err = np.linalg.norm(back - values) / np.linalg.norm(values)
    assert err < 2e-2, f"Q6_K round trip relative error {err}"
    return blocks_out


def storage_type(key, array, quant):
    """How one tensor is stored: 1-D norms and the bias tables in F32, matrices in `quant` when their rows are
    whole blocks of it, F16 otherwise."""
    if array.ndim == 1 or "relative_attention_bias" in key:
        return Q.F32
    block = gguf.GGML_QUANT_SIZES[quant][0]
    return quant if array.shape[-1] % block == 0 else Q.F16


def write_gguf(path, weights, quant):
    writer = gguf.GGUFWriter(path, arch=ARCH)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type({Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q6_K: gguf.LlamaFileType.MOSTLY_Q6_K}[quant])
    kinds = {}
    for key in sorted(weights):
        array = weights[key].astype(np.float32)
        qtype = storage_type(key, array, quant)
        if qtype == Q.Q6_K:
            data = quantize_q6_k(array)
        else:
            data = gguf.quants.quantize(array, qtype)
        writer.add_tensor(gguf_name(key), data, raw_dtype=qtype)
        kinds[qtype.name] = kinds.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(path, os.path.getsize(path), "bytes", kinds)


def randomize_(module, gen, d_kv):
    """Every parameter random, as gen_umt5_fixtures.py does (norms around 1, matrices scaled by fan-in, bias
    tables and embeddings of order 1), except q, further scaled by 1/sqrt(d_kv) as T5's own initialisation does
    (T5 has no 1/sqrt(d) in its attention): with 64-wide heads, unscaled random scores saturate the softmax and
    the output would swing with any rounding of the weights."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "relative_attention_bias" in name or "shared" in name or "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
                if name.endswith("SelfAttention.q.weight"):
                    p.mul_(d_kv ** -0.5)


def gguf_to_hf(name):
    """llama.cpp T5 encoder tensor name -> transformers key (the inverse of gguf_name)."""
    if name == "token_embd.weight":
        return "shared.weight"
    if name == "enc.output_norm.weight":
        return "encoder.final_layer_norm.weight"
    m = re.fullmatch(r"enc\.blk\.(\d+)\.(.+)", name)
    inverse = {v: k for k, v in LAYER_NAMES.items()}
    return f"encoder.block.{m.group(1)}.{inverse[m.group(2)]}"


def dequantized_output(path, cfg, ids, mask):
    """transformers' last hidden state with the weights gguf-py dequantises from the GGUF file at `path`."""
    state = {}
    for t in gguf.GGUFReader(path).tensors:
        shape = [int(n) for n in reversed(t.shape)]  # GGUF lists dimensions innermost first
        values = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        state[gguf_to_hf(t.name)] = torch.from_numpy(values.copy())
    state["encoder.embed_tokens.weight"] = state["shared.weight"]
    model = UMT5EncoderModel(cfg).eval()
    model.config._attn_implementation = "eager"
    model.load_state_dict(state)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state.contiguous()


def w256_model(gen):
    cfg = UMT5Config(vocab_size=128, d_model=256, d_kv=64, d_ff=256, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
                     tie_word_embeddings=False)
    model = UMT5EncoderModel(cfg).eval()
    model.config._attn_implementation = "eager"
    randomize_(model, gen, cfg.d_kv)
    lengths = [40, 7]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(2, cfg.vocab_size, (n,), generator=gen)
        ids[row, n - 1] = 1  # EOS
        mask[row, :n] = 1
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = {k: v.numpy() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    reference = {"input_ids": ids, "attention_mask": mask, "last_hidden_state": hidden.contiguous()}
    return cfg, weights, reference


def main():
    os.makedirs(OUT, exist_ok=True)
    tiny = os.path.join(OUT, "umt5_tiny_q8_0.gguf")
    write_gguf(tiny, load_file(SOURCE), Q.Q8_0)
    tiny_cfg = UMT5Config.from_pretrained(os.path.dirname(SOURCE))
    tiny_ref = load_torch(os.path.join("tests", "fixtures", "umt5", "reference.safetensors"))
    hidden = dequantized_output(tiny, tiny_cfg, tiny_ref["input_ids"], tiny_ref["attention_mask"])
    save_file({"last_hidden_state_dequantized": hidden},
              os.path.join(OUT, "umt5_tiny_q8_0_dequantized.safetensors"))

    gen = torch.Generator().manual_seed(256)
    cfg, weights, reference = w256_model(gen)
    w256 = os.path.join(OUT, "umt5_w256_q6_k.gguf")
    write_gguf(w256, weights, Q.Q6_K)
    reference["last_hidden_state_dequantized"] = dequantized_output(
        w256, cfg, reference["input_ids"], reference["attention_mask"])
    save_file(reference, os.path.join(OUT, "umt5_w256_reference.safetensors"))
    for name, ref, deq in [("tiny Q8_0", tiny_ref["last_hidden_state"], hidden),
                           ("w256 Q6_K", reference["last_hidden_state"], reference["last_hidden_state_dequantized"])]:
        # whole batch, padding rows included: a rough figure; the tests measure over real tokens
        print(name, "dequantised vs f32 (transformers):", float((deq - ref).norm() / ref.norm()))


if __name__ == "__main__":
    main()
