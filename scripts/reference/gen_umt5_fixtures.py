#!/usr/bin/env python3
"""Reference fixtures for vdit's umT5 text encoder and its prompt tokenizer.

Writes tests/fixtures/umt5/:
  hf/config.json, hf/model.safetensors   a tiny random transformers UMT5EncoderModel (every parameter
                                          random: embeddings, projections, per-layer bias tables, norms)
  wan/model.safetensors                   the same weights under Wan2.1's original T5 key names
  reference.safetensors                   input ids [B, L] (right-padded), attention mask [B, L], the
                                          encoder's last hidden state [B, L, d_model] (eager attention, f32),
                                          and the relative-position buckets of rel = -600..600
  tokenizer.json                          prompts, their cleaned text (diffusers' prompt_clean with ftfy) and
                                          transformers' ids for the tiny_pipeline tokenizer, at two max lengths;
                                          and random strings of tricky pieces with their cleaned text

Requires ftfy (diffusers uses it when installed; Wan2.1 always does):  pip install ftfy
Run from the repository root:  python3 scripts/reference/gen_umt5_fixtures.py
"""
import json
import os
import random
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

import ftfy  # noqa: F401  (must import before diffusers decides whether ftfy is available)
from diffusers.pipelines.wan import pipeline_wan

OUT = os.path.join("tests", "fixtures", "umt5")
TOKENIZER_DIR = os.path.join("tests", "fixtures", "tiny_pipeline", "model", "tokenizer")
# Lengths of the batch rows: one past max_distance (far buckets, clamped), one past max_distance/2, short ones.
LENGTHS = [150, 70, 9, 1]

PROMPTS = [
    "a red circle   moving right &amp; a blue square",
    "  leading and trailing spaces\t\tand tabs\nand newlines  ",
    "entities: &lt;b&gt; &quot;quoted&quot; &#39;single&#39; &#x41;&#66; &amp;amp; &copy caf&eacute;",
    "fish &amp;chips&nbsp;and&nbsp;&nbsp;peas",
    "a tag <b>&amp;</b> stops ftfy's own unescape",
    "\u201ccurly\u201d \u2018quotes\u2019 and \ufb01ne \ufb02ags",
    "fullwidth \uff21\uff22\uff23 \u3000ideographic space and e\u0301 combining",
    "unicode: caf\u00e9 na\u00efve \u00fcber \u4e2d\u6587 \U0001f600 \u00a0nbsp",
    "control\x07chars\u200band\ufeffbom \x1b[31mred\x1b[0m",
    "crlf\r\nline\rbreaks\u2028and\u2029separators\x85",
    "c1 \x80 \x93quoted\x94 \x81",
    "&NTILDE; &Ntilde; &EACUTE; &amp &ampx &notin; &notit; &#0; &#128; &#x110000; &#1114111;",
    "",
    "a blue square shrinking, static, blurry, " * 6,
]
MAX_LENS = [512, 8]
# Pieces of random strings for a broad comparison of the cleaning: whitespace of all kinds, HTML
# references (complete, legacy, uppercase, numeric, broken), markup, quotes, C1 controls,
# width forms, ligatures, CJK, emoji, combining marks, controls and terminal escapes.
RANDOM_PIECES = [
    "a", "b", "Z", "0", "7", " ", "  ", "\t", "\n", "\r\n", "\r", "&", ";", "#", "x", "&amp;", "&amp", "&lt;",
    "&gt;", "&#39;", "&#x27;", "&#65", "&#0;", "&#150;", "&nbsp;", "&NTILDE;", "&notin", "&acE;", "&eacute;", "<",
    ">", "\u201c", "\u201d", "\u2018", "\u2019", "\u02bc", "\x85", "\x93", "\x94", "\x80", "\x9d", "\uff21",
    "\uff41", "\uff07", "\u3000", "\uffe0", "\uff61", "\ufb01", "\u0149", "\u01c4", "\u4e2d", "\u6587",
    "\U0001f600", "e\u0301", "\u00e9", "\u00a0", "\u2003", "\u200b", "\ufeff", "\x07", "\x1b[31m", "\x1b[0m",
    "\x1b", "\x1f", "\x7f", "\u2028", "\u2029", "\u206a", "\ufffc", "\u00c3", "\u00a9",
]


def randomize_(module, gen):
    """Every parameter random: norms around 1, matrices scaled by fan-in, bias tables of order 1."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "shared" in name or "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


def hf_to_wan(key):
    """transformers UMT5EncoderModel key -> Wan2.1 `models_t5_umt5-xxl-enc` key (wan/modules/t5.py)."""
    if key in ("shared.weight", "encoder.embed_tokens.weight"):
        return "token_embedding.weight"
    if key == "encoder.final_layer_norm.weight":
        return "norm.weight"
    _, _, idx, rest = key.split(".", 3)
    table = {
        "layer.0.layer_norm.weight": "norm1.weight",
        "layer.0.SelfAttention.q.weight": "attn.q.weight",
        "layer.0.SelfAttention.k.weight": "attn.k.weight",
        "layer.0.SelfAttention.v.weight": "attn.v.weight",
        "layer.0.SelfAttention.o.weight": "attn.o.weight",
        "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
        "layer.1.layer_norm.weight": "norm2.weight",
        "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
        "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
        "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
    }
    return f"blocks.{idx}.{table[rest]}"


def encoder_fixture(gen):
    # inner dim (heads * d_kv = 24) differs from d_model (32) so a mixed-up projection shape fails loudly
    cfg = UMT5Config(vocab_size=300, d_model=32, d_kv=6, d_ff=48, num_layers=3, num_heads=4,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
                     tie_word_embeddings=False)
    model = UMT5EncoderModel(cfg).eval()
    model.config._attn_implementation = "eager"
    randomize_(model, gen)
    model.save_pretrained(os.path.join(OUT, "hf"), safe_serialization=True)

    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    os.makedirs(os.path.join(OUT, "wan"), exist_ok=True)
    save_file({hf_to_wan(k): v for k, v in state.items()}, os.path.join(OUT, "wan", "model.safetensors"))

    batch, length = len(LENGTHS), max(LENGTHS)
    ids = torch.zeros(batch, length, dtype=torch.int64)
    mask = torch.zeros(batch, length, dtype=torch.int64)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = torch.randint(2, cfg.vocab_size, (n,), generator=gen)
        ids[row, n - 1] = 1  # EOS, as the tokenizer appends it
        mask[row, :n] = 1
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        attention = model.encoder.block[0].layer[0].SelfAttention
        rel = torch.arange(-600, 601)
        buckets = attention._relative_position_bucket(rel)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "last_hidden_state": hidden.contiguous(),
        "relative_positions": rel,
        "relative_buckets": buckets.to(torch.int64),
    }


def tokenizer_fixture():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    cases = []
    for prompt in PROMPTS:
        cleaned = pipeline_wan.prompt_clean(prompt)
        ids = {str(m): tokenizer(cleaned, max_length=m, truncation=True, add_special_tokens=True)["input_ids"]
               for m in MAX_LENS}
        cases.append({"prompt": prompt, "cleaned": cleaned, "ids": ids})
    return {"tokenizer": TOKENIZER_DIR, "clean": "diffusers.pipelines.wan.pipeline_wan.prompt_clean",
            "ftfy": ftfy.__version__, "cases": cases, "random_clean": random_clean_cases(300)}


def random_clean_cases(count):
    """[input, prompt_clean(input)] for random strings. vdit does not implement ftfy's mojibake repair
    (fix_encoding), so strings whose cleaning that step changes are left out (about 6% of draws)."""
    rng = random.Random(7)
    cases = []
    while len(cases) < count:
        text = "".join(rng.choice(RANDOM_PIECES) for _ in range(rng.randint(1, 30)))
        if ftfy.fix_text(text, fix_encoding=False) != ftfy.fix_text(text):
            continue
        cases.append([text, pipeline_wan.prompt_clean(text)])
    return cases


def main():
    assert pipeline_wan.is_ftfy_available(), "diffusers must see ftfy for the reference cleaning"
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(5)
    os.makedirs(OUT, exist_ok=True)
    tensors = encoder_fixture(gen)
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_fixture(), f, indent=1, ensure_ascii=True)
    print("wrote", OUT, {k: tuple(v.shape) for k, v in tensors.items()}, file=sys.stderr)


if __name__ == "__main__":
    main()
