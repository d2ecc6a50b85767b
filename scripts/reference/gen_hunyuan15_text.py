#!/usr/bin/env python3
"""Reference fixtures for vdit's HunyuanVideo 1.5 text encoders (Qwen2.5-VL's language model and ByT5).

Writes tests/fixtures/hunyuan15/text/:
  text_encoder/      a tiny random transformers `Qwen2_5_VLTextModel` (save_pretrained: config.json,
                     model.safetensors); 4 layers, grouped-query attention (4 query heads, 2 key/value heads),
                     multimodal RoPE sections, every parameter random (biases and norms included)
  tokenizer/         a tiny byte-level BPE tokenizer.json trained here on the template and the prompts, with
                     Qwen's special tokens and a chat template that renders string contents the way Qwen2.5-VL's
                     does when a system message is given. The real Qwen2.5-VL tokenizer is not available
                     offline; this one exercises the same code path (template, special tokens, truncation,
                     right padding) with a small vocabulary.
  text_encoder_2/    a tiny random transformers `T5EncoderModel` with ByT5's architecture (T5 v1.1: gated-GELU,
                     one relative-position bias table in the first layer shared by all layers)
  tokenizer_2/       transformers' `ByT5Tokenizer` with two added special tokens (as Glyph-ByT5 adds colour and
                     font tokens), save_pretrained
  reference.safetensors
                     qwen_input_ids / qwen_attention_mask [B, crop + max_length]: what the pipeline's
                     apply_chat_template gives; qwen_hidden_skip2 [B, crop + max_length, D]: hidden_states[-3]
                     uncropped; qwen_last_hidden [B, crop + max_length, D]: the last (normed) hidden state;
                     prompt_embeds [B, max_length, D], prompt_embeds_mask [B, max_length],
                     prompt_embeds_2 [B, glyph_max, D2], prompt_embeds_mask_2 [B, glyph_max]: what
                     `HunyuanVideo15Pipeline._get_mllm_prompt_embeds` / `_get_byt5_prompt_embeds` return
  reference.json     the prompts, the settings (system message, crop_start, max lengths), ByT5Tokenizer ids of
                     tricky strings (non-ASCII, special tokens in the text, truncation), and
                     `extract_glyph_texts` of tricky prompts

The pipeline's crop_start is 108, the length of the template prefix with the real tokenizer; with the tiny
tokenizer the prefix is shorter, so crop_start is set to the tiny tokenizer's prefix length (written to
reference.json) and passed to the pipeline's own function.

Run from the repository root:  python3 scripts/reference/gen_hunyuan15_text.py
"""
import inspect
import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    ByT5Tokenizer,
    PreTrainedTokenizerFast,
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLTextModel,
    T5Config,
    T5EncoderModel,
)

from diffusers.pipelines.hunyuan_video1_5 import pipeline_hunyuan_video1_5 as hv

OUT = os.path.join("tests", "fixtures", "hunyuan15", "text")
SYSTEM_MESSAGE = inspect.signature(hv.HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters[
    "system_message"
].default
MAX_LENGTH = 40  # the pipeline's tokenizer_max_length is 1000
GLYPH_MAX_LENGTH = 48  # the pipeline's tokenizer_2_max_length is 256

PROMPTS = [
    "",
    "a cat walks on the grass, realistic",
    'A neon sign reads "OPEN 24h" above a door, a mug says \u201cCaf\u00e9 \u2615\u201d, and the sign "OPEN 24h" flickers',
    "a very long prompt that the tokenizer must truncate: " + "red circles and blue squares move across a grey field; " * 4
    + '"' + "glyphs " * 12 + '"',
]

# Qwen2.5-VL's template for string contents with a system message (what the pipeline's prompts are).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

BYT5_STRINGS = [
    "",
    "abc",
    'Text "OPEN 24h". ',
    "caf\u00e9 \u4e2d\u6587 \U0001f600 e\u0301 \u00a0nbsp\ttab\nnewline",
    "special tokens in text: a </s> b <pad>c<unk> <extra_id_0> <extra_id_124>x <extra_id_125>",
    "added: <color-0> and<en-font-1>text <color-0><color-0>",
    "ends with eos</s>",
    "\x1c\x1dcontrol around </s>\x1f \u3000</s>\u2003 end",
    "x" * 60,
    "\u00e9" * 30,
]
GLYPH_PROMPTS = [
    "no quotes at all",
    'one "quoted" word',
    'two "a" and "b" and again "a"',
    "curly \u201cleft right\u201d and straight \"mixed\u201d end\"",
    'empty "" quotes and "x"',
    'unclosed "quote\nacross a newline" then "ok"',
    "\u201cnested \"inner\" curly\u201d",
    '"only one"',
    '"dup" "dup"',
    "carriage \"a\rb\" return",
]


def randomize_(module, gen, scale_1d=0.2):
    """Every parameter random: norm weights around 1, biases small, matrices scaled by fan-in."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(1.0 + scale_1d * torch.randn(p.shape, generator=gen))
            elif "relative_attention_bias" in name or "embed" in name or "shared" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


def qwen_tokenizer():
    """A tiny byte-level BPE trained on the template text and the prompts, with Qwen's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([SYSTEM_MESSAGE, "system user assistant"] + PROMPTS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
    )
    return fast


def template_prefix_length(tokenizer):
    """Tokens before the user's prompt: the pipeline's crop_start for this tokenizer."""
    marker = "zzzz"
    text = tokenizer.apply_chat_template(
        hv.format_text_input([marker], SYSTEM_MESSAGE)[0], add_generation_prompt=True, tokenize=False
    )
    prefix = text[: text.index(marker)]
    return len(tokenizer(prefix, add_special_tokens=False)["input_ids"])


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(2115)

    # --- Qwen2.5-VL language model ---
    tokenizer = qwen_tokenizer()
    tokenizer.save_pretrained(os.path.join(OUT, "tokenizer"))
    crop_start = template_prefix_length(tokenizer)
    qcfg = Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=512,
        rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
        rope_theta=10000.0,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    qcfg._attn_implementation = "eager"
    qwen = Qwen2_5_VLTextModel(qcfg).eval()
    randomize_(qwen, gen)
    qwen.save_pretrained(os.path.join(OUT, "text_encoder"))

    text_inputs = tokenizer.apply_chat_template(
        hv.format_text_input(PROMPTS, SYSTEM_MESSAGE),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        padding="max_length",
        max_length=MAX_LENGTH + crop_start,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        full = qwen(
            input_ids=text_inputs.input_ids, attention_mask=text_inputs.attention_mask, output_hidden_states=True
        )
        prompt_embeds, prompt_mask = hv.HunyuanVideo15Pipeline._get_mllm_prompt_embeds(
            text_encoder=qwen,
            tokenizer=tokenizer,
            prompt=PROMPTS,
            device="cpu",
            tokenizer_max_length=MAX_LENGTH,
            system_message=SYSTEM_MESSAGE,
            crop_start=crop_start,
        )

    # --- ByT5 ---
    byt5_tok = ByT5Tokenizer()
    byt5_tok.add_tokens(["<color-0>", "<en-font-1>"], special_tokens=True)
    byt5_tok.save_pretrained(os.path.join(OUT, "tokenizer_2"))
    bcfg = T5Config(
        vocab_size=len(byt5_tok),
        d_model=24,
        d_kv=8,
        d_ff=40,
        num_layers=3,
        num_heads=4,  # inner width 32 != d_model
        relative_attention_num_buckets=32,
        relative_attention_max_distance=20,  # below the glyph length: the clamped far buckets are used
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
    )
    bcfg._attn_implementation = "eager"
    byt5 = T5EncoderModel(bcfg).eval()
    randomize_(byt5, gen)
    byt5.save_pretrained(os.path.join(OUT, "text_encoder_2"))
    with torch.no_grad():
        prompt_embeds_2, prompt_mask_2 = hv.HunyuanVideo15Pipeline._get_byt5_prompt_embeds(
            tokenizer=byt5_tok,
            text_encoder=byt5,
            prompt=PROMPTS,
            device="cpu",
            tokenizer_max_length=GLYPH_MAX_LENGTH,
        )

    save_file(
        {
            "qwen_input_ids": text_inputs.input_ids.to(torch.int64).contiguous(),
            "qwen_attention_mask": text_inputs.attention_mask.to(torch.int64).contiguous(),
            "qwen_hidden_skip2": full.hidden_states[-3].contiguous(),
            "qwen_last_hidden": full.last_hidden_state.contiguous(),
            "prompt_embeds": prompt_embeds.contiguous(),
            "prompt_embeds_mask": prompt_mask.to(torch.int64).contiguous(),
            "prompt_embeds_2": prompt_embeds_2.contiguous(),
            "prompt_embeds_mask_2": prompt_mask_2.to(torch.int64).contiguous(),
        },
        os.path.join(OUT, "reference.safetensors"),
    )

    byt5_cases = []
    for text in BYT5_STRINGS:
        for max_length in (GLYPH_MAX_LENGTH, 8):
            enc = byt5_tok(text, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True)
            byt5_cases.append(
                {"text": text, "max_length": max_length, "ids": enc["input_ids"], "mask": enc["attention_mask"]}
            )
    reference = {
        "prompts": PROMPTS,
        "system_message": SYSTEM_MESSAGE,
        "crop_start": crop_start,
        "max_length": MAX_LENGTH,
        "glyph_max_length": GLYPH_MAX_LENGTH,
        "hidden_layers_to_skip": 2,
        "chat_texts": [
            tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
            for m in hv.format_text_input(PROMPTS, SYSTEM_MESSAGE)
        ],
        "glyph_texts": [hv.extract_glyph_texts(p) for p in PROMPTS + GLYPH_PROMPTS],
        "glyph_prompts": PROMPTS + GLYPH_PROMPTS,
        "byt5_cases": byt5_cases,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1, ensure_ascii=True)
    print(f"crop_start {crop_start}, vocab {len(tokenizer)}, qwen mask sums {text_inputs.attention_mask.sum(1).tolist()}")
    print(f"byt5 mask sums {prompt_mask_2.sum(1).tolist()}")


if __name__ == "__main__":
    main()
