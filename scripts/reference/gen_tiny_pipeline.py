#!/usr/bin/env python3
"""Tiny random-weight Wan2.1 text-to-video pipeline and a diffusers reference run.

Writes tests/fixtures/tiny_pipeline/:
  model/            a diffusers-layout checkpoint (model_index.json, transformer/, vae/, text_encoder/,
                    tokenizer/, scheduler/) of the real architectures at tiny sizes, all weights random
  reference.safetensors   noise, prompt embeddings (cond and uncond), final latents and decoded video of
                    diffusers' WanPipeline (UniPC, flow prediction, CFG) run from that noise in f32
  reference.json    the prompt, negative prompt and every setting of that run

vdit's end-to-end test loads model/ through the same resolver users use, runs from the same noise and
compares. Run from the repository root:  python3 scripts/reference/gen_tiny_pipeline.py
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

OUT = os.path.join("tests", "fixtures", "tiny_pipeline")
TEXT_DIM = 32
SETTINGS = dict(
    prompt="a red circle   moving right &amp; a blue square",
    negative_prompt="blurry, static",
    height=32,
    width=48,
    num_frames=9,
    num_inference_steps=4,
    guidance_scale=5.0,
    flow_shift=3.0,
    max_sequence_length=512,
)
CORPUS = [
    "a red circle moving right on a blue background",
    "a green square moving left on a white background",
    "a yellow triangle growing on a black background",
    "a blue square shrinking, static, blurry",
    "two objects: a red circle and a blue square moving up and down",
]


def randomize_(module, gen, std=0.2):
    """Every parameter random, norms around 1 so activations stay in range."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() <= 1 or "norm" in name or "gamma" in name or "scale_shift" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen) if "bias" not in name
                        else 0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (std / max(fan_in, 1) ** 0.5) * 3)


def make_tokenizer():
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    assert tok.token_to_id("<pad>") == 0 and tok.token_to_id("</s>") == 1
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    tokenizer = make_tokenizer()
    te_cfg = UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6)
    text_encoder = UMT5EncoderModel(te_cfg).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=64, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024).eval()
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[False, True, True], dropout=0.0).eval()
    for m in (text_encoder, transformer, vae):
        randomize_(m, gen)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=SETTINGS["flow_shift"])
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=scheduler)
    pipe.save_pretrained(os.path.join(OUT, "model"), safe_serialization=True)

    s = SETTINGS
    latent_frames = (s["num_frames"] - 1) // 4 + 1
    noise = torch.randn(1, 16, latent_frames, s["height"] // 8, s["width"] // 8, generator=gen)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(s["prompt"], s["negative_prompt"], do_classifier_free_guidance=True,
                                          max_sequence_length=s["max_sequence_length"], device="cpu")
        common = dict(prompt=s["prompt"], negative_prompt=s["negative_prompt"], height=s["height"],
                      width=s["width"], num_frames=s["num_frames"], num_inference_steps=s["num_inference_steps"],
                      guidance_scale=s["guidance_scale"], max_sequence_length=s["max_sequence_length"])
        latents = pipe(latents=noise.clone(), output_type="latent", **common).frames
        video = pipe(latents=noise.clone(), output_type="pt", **common).frames  # [1, T, 3, H, W] in [0, 1]
    ids = tokenizer(s["prompt"])["input_ids"]
    tensors = {
        "noise": noise.contiguous(),
        "prompt_embeds": cond.contiguous(),
        "negative_prompt_embeds": uncond.contiguous(),
        "final_latents": latents.contiguous(),
        "video": video.float().contiguous(),
        "prompt_ids": torch.tensor(ids, dtype=torch.int64),
        "timesteps": pipe.scheduler.timesteps.to(torch.int64).contiguous(),
    }
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({**s, "sampler": "unipc", "dtype": "f32", "diffusers": __import__("diffusers").__version__}, f,
                  indent=2)
    print("wrote", OUT, {k: tuple(v.shape) for k, v in tensors.items()}, file=sys.stderr)


if __name__ == "__main__":
    main()
