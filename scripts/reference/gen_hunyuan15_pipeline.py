#!/usr/bin/env python3
"""Reference fixture for `vdit generate` on HunyuanVideo 1.5 text-to-video (diffusers `HunyuanVideo15Pipeline`).

Writes tests/fixtures/hunyuan15_pipeline/:
  model/             a tiny random-weight diffusers HunyuanVideo15Pipeline folder as `save_pretrained` writes it:
                     model_index.json, text_encoder/ + tokenizer/ (the tiny Qwen2.5-VL language model and chat
                     tokenizer of tests/fixtures/hunyuan15/text, written by gen_hunyuan15_text.py), text_encoder_2/ +
                     tokenizer_2/ (the tiny ByT5 of the same fixture), transformer/ (2 dual-stream blocks, patch 1
                     like the released model, 4 + 4 + 1 input channels), vae/ (4 latent channels, x16 in space and
                     x4 in time like the released VAE), scheduler/ (FlowMatchEulerDiscreteScheduler, shift 7),
                     guider/ (ClassifierFreeGuidance, scale 4.5). Weights are rounded to float16 and stored so.
  reference.safetensors
                     noise [1, 4, 3, 3, 4] (the initial latents) and, per case, final_latents_<case> [1, 4, 3, 3, 4]:
                     the pipeline's output_type="latent" from that noise; final_latents_glyph_bf16: the glyph case
                     with the whole pipeline in bfloat16 (the noise cast to bfloat16);
                     final_latents_glyph_bf16_timesteps: the glyph case in float32 with the timesteps rounded to
                     bfloat16 as the bfloat16 pipeline casts them (the float32 reference of a bfloat16 run)
  reference.json     the settings of the runs (prompts, size, frames, steps, guidance, shift, crop_start) and the
                     sampler's timesteps

Cases: `plain` (a prompt without quoted text: the ByT5 stream is all padding) and `glyph` (a prompt quoting text,
with a negative prompt). Both run 4 steps at guidance 4.5 from the same noise; the plain case leaves the negative
prompt to the pipeline's default (None, encoded as "").

The pipeline's crop of the Qwen template (`prompt_template_encode_start_idx`, 108 for Qwen2.5-VL's tokenizer) is set
to the tiny tokenizer's template prefix length, which vdit computes from the tokenizer the same way. The ByT5
projection's hidden width (2048 in diffusers, hard-coded) is 48 here, recorded as `byt5_projection_dim` in the
transformer's config.json, as gen_hunyuan15_transformer.py does.

Run from the repository root:  python3 scripts/reference/gen_hunyuan15_pipeline.py
"""
import copy
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, ByT5Tokenizer, Qwen2_5_VLTextModel, T5EncoderModel

from diffusers import (
    AutoencoderKLHunyuanVideo15,
    ClassifierFreeGuidance,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
)
from diffusers.models.transformers import transformer_hunyuan_video15 as hv_transformer

TEXT = os.path.join("tests", "fixtures", "hunyuan15", "text")
OUT = os.path.join("tests", "fixtures", "hunyuan15_pipeline")
LATENT_CHANNELS = 4
BYT5_PROJECTION_DIM = 48
SHIFT = 7.0
GUIDANCE = 4.5
SETTINGS = dict(width=64, height=48, num_frames=9, num_inference_steps=4)
CASES = {
    "plain": dict(prompt="a cat walks on the grass, realistic", negative_prompt=None),
    "glyph": dict(prompt='a neon sign reads "OPEN 24h" above a door, a mug says \u201cCaf\u00e9\u201d',
                  negative_prompt="blurry, low quality"),
}


class SmallByT5Projection(hv_transformer.HunyuanVideo15ByT5TextProjection):
    """The stock glyph projection with its hidden width BYT5_PROJECTION_DIM instead of 2048."""

    def __init__(self, in_features, hidden_size, out_features):
        super().__init__(in_features, BYT5_PROJECTION_DIM, out_features)


def randomize_(module, gen):
    """Every parameter random (norm weights around 1, biases small, matrices by fan-in), rounded to float16."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma") or ("norm" in name and name.endswith("weight") and p.dim() == 1):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "cond_type_embed" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            p.copy_(p.half().float())


def template_prefix_length(tokenizer, system_message):
    """Tokens of the chat template before the user's prompt: the crop for this tokenizer."""
    marker = "zzzz"
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": system_message}, {"role": "user", "content": marker}],
        add_generation_prompt=True, tokenize=False,
    )
    return len(tokenizer(text[: text.index(marker)], add_special_tokens=False)["input_ids"])


def main():
    gen = torch.Generator().manual_seed(1521)
    text_encoder = Qwen2_5_VLTextModel.from_pretrained(os.path.join(TEXT, "text_encoder")).eval()
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(TEXT, "tokenizer"))
    text_encoder_2 = T5EncoderModel.from_pretrained(os.path.join(TEXT, "text_encoder_2")).eval()
    tokenizer_2 = ByT5Tokenizer.from_pretrained(os.path.join(TEXT, "tokenizer_2"))

    hv_transformer.HunyuanVideo15ByT5TextProjection = SmallByT5Projection
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * LATENT_CHANNELS + 1, out_channels=LATENT_CHANNELS, num_attention_heads=2,
        attention_head_dim=16, num_layers=2, num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1,
        qk_norm="rms_norm", text_embed_dim=text_encoder.config.hidden_size,
        text_embed_2_dim=text_encoder_2.config.d_model, image_embed_dim=12, rope_theta=256.0,
        rope_axes_dim=(4, 6, 6), target_size=640, task_type="t2v", use_meanflow=False,
    ).eval()
    randomize_(transformer, gen)
    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=LATENT_CHANNELS, block_out_channels=(4, 8, 8, 8, 8), layers_per_block=1,
        spatial_compression_ratio=16, temporal_compression_ratio=4,
    ).eval()
    randomize_(vae, gen)

    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, guider=ClassifierFreeGuidance(guidance_scale=GUIDANCE),
    )
    crop_start = template_prefix_length(tokenizer, pipe.system_message)
    pipe.prompt_template_encode_start_idx = crop_start

    s = SETTINGS
    shape = (1, LATENT_CHANNELS, (s["num_frames"] - 1) // 4 + 1, s["height"] // 16, s["width"] // 16)
    noise = torch.randn(*shape, generator=gen)
    tensors = {"noise": noise.contiguous()}
    with torch.no_grad():
        for case, texts in CASES.items():
            latents = pipe(**texts, **s, latents=noise.clone(), output_type="latent").frames
            tensors[f"final_latents_{case}"] = latents.contiguous()
        timesteps = pipe.scheduler.timesteps.tolist()
        # bfloat16: diffusers casts the timestep to the transformer's dtype and keeps the latents in it
        # (on a copy: the saved weights stay the ones the float32 runs used)
        pipe_bf16 = copy.deepcopy(pipe).to(torch.bfloat16)
        latents = pipe_bf16(**CASES["glyph"], **s, latents=noise.clone().to(torch.bfloat16),
                            output_type="latent").frames
        tensors["final_latents_glyph_bf16"] = latents.float().contiguous()
        del pipe_bf16
        forward = transformer.forward

        def forward_bf16_timestep(*args, timestep, **kwargs):
            return forward(*args, timestep=timestep.to(torch.bfloat16).float(), **kwargs)

        transformer.forward = forward_bf16_timestep
        latents = pipe(**CASES["glyph"], **s, latents=noise.clone(), output_type="latent").frames
        tensors["final_latents_glyph_bf16_timesteps"] = latents.contiguous()
        transformer.forward = forward

    model_dir = os.path.join(OUT, "model")
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    for module in (transformer, vae):
        module.half()
    pipe.save_pretrained(model_dir, safe_serialization=True)
    # the tokenizers as gen_hunyuan15_text.py wrote them (without the padding state the runs left on them)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(os.path.join(model_dir, name))
        shutil.copytree(os.path.join(TEXT, name), os.path.join(model_dir, name))
    config_path = os.path.join(model_dir, "transformer", "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["byt5_projection_dim"] = BYT5_PROJECTION_DIM
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)

    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({**SETTINGS, "cases": CASES, "guidance_scale": GUIDANCE, "shift": SHIFT, "crop_start": crop_start,
                   "timesteps": timesteps, "sampler": "euler", "dtype": "f32",
                   "diffusers": __import__("diffusers").__version__}, f, indent=2, ensure_ascii=False)
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(OUT) for n in names)
    print("wrote", OUT, {k: tuple(v.shape) for k, v in tensors.items()}, f"crop_start {crop_start}",
          f"timesteps {timesteps}", f"{size / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
