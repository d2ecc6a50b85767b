#!/usr/bin/env python3
"""Tiny random-weight Wan2.2 pipelines (two experts; TI2V) and their diffusers reference runs.

Writes two fixtures, each laid out like tests/fixtures/tiny_pipeline (see gen_tiny_pipeline.py):

tests/fixtures/wan22_two_expert/   Wan2.2-T2V-A14B in small
  model/            diffusers WanPipeline folder: model_index.json (boundary_ratio 0.875), transformer/ (the
                    high-noise expert) and transformer_2/ (the low-noise expert, other random weights), vae/,
                    text_encoder/, tokenizer/, scheduler/ (UniPC, flow prediction, shift 12). The tokenizer is the
                    tiny Wan2.1 pipeline's; the text encoder and VAE have its sizes (16 latent channels, 8x space).
  reference.safetensors   noise, prompt embeddings (cond, uncond), final latents, decoded video [1,T,3,H,W] in
                    [0, 1], prompt ids and the timesteps, all from diffusers' WanPipeline in f32
  reference.json    every setting: prompt, sizes, steps, shift, guidance_scale (high noise) and
                    guidance_scale_2 (low noise), boundary_ratio, and which steps ran which expert

  With 6 steps at shift 12 the timesteps are 999 983 960 923 | 857 707: the boundary 0.875 * 1000 = 875 puts
  the switch after step 4, so both experts and both guidance scales take part and the UniPC history crosses
  the switch.

tests/fixtures/wan22_ti2v/         Wan2.2-TI2V-5B in small, text to video (no image)
  model/            diffusers WanPipeline folder with expand_timesteps = true (one timestep per latent token),
                    a 48-channel transformer and a Wan2.2-form VAE (z 48, 16x space with a 2x2 pixel patch,
                    residual up blocks; the small config of gen_vae22_fixtures.py: decoder base 4, which stays
                    inside the bf16 bound), UniPC at shift 5
  reference.safetensors / reference.json   as above

Every parameter is random. Transformer and VAE weights are rounded to float16 before the reference runs and stored
as float16 (half the bytes), so the f32 reference is exact for the stored values; the text encoder stays f32.
The decoded videos and final latents are stored in f32 (the parity bound is 1e-4).

Run from the repository root (CPU torch is enough):  python3 scripts/reference/gen_wan22_pipelines.py
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_tiny_pipeline import TEXT_DIM, randomize_  # noqa: E402

# the tiny pipeline's trained tokenizer, loaded rather than retrained: training it again gives scores that differ
# in the last digits and so, at times, other token ids
TOKENIZER = os.path.join("tests", "fixtures", "tiny_pipeline", "model", "tokenizer")

ROOT = os.path.join("tests", "fixtures")
PROMPT = "a red circle   moving right &amp; a blue square"
NEGATIVE = "blurry, static"

TWO_EXPERT = dict(
    prompt=PROMPT,
    negative_prompt=NEGATIVE,
    height=32,
    width=48,
    num_frames=9,
    num_inference_steps=6,
    guidance_scale=4.0,
    guidance_scale_2=3.0,
    boundary_ratio=0.875,
    flow_shift=12.0,
    max_sequence_length=512,
)
TI2V = dict(
    prompt=PROMPT,
    negative_prompt=NEGATIVE,
    height=64,
    width=96,
    num_frames=9,
    num_inference_steps=4,
    guidance_scale=5.0,
    flow_shift=5.0,
    max_sequence_length=512,
)


def round_to_f16_(module):
    """Round every parameter to a float16 value (kept in f32), so storing float16 loses nothing."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())


def randomize_vae22_(vae, gen):
    """gen_vae22_fixtures.py's recipe: gammas around 1, small biases, conv weights ~ 1/sqrt(fan_in); the output
    conv scaled by 1/4 (exact in float16) so most of the video stays inside the [-1, 1] clamp."""
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
        vae.decoder.conv_out.weight.mul_(0.25)
        vae.decoder.conv_out.bias.mul_(0.25)


def text_encoder_for(tokenizer):
    cfg = UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6)
    return UMT5EncoderModel(cfg).eval()


def tiny_transformer(channels, heads, head_dim, ffn_dim):
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
        out_channels=channels, text_dim=TEXT_DIM, freq_dim=64, ffn_dim=ffn_dim, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024).eval()


def unipc(shift):
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, flow_shift=shift)


def run_reference(pipe, settings, noise):
    """diffusers' run from `noise`: (cond, uncond, final latents, video [1,T,3,H,W] in [0,1], timesteps)."""
    s = settings
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(s["prompt"], s["negative_prompt"], do_classifier_free_guidance=True,
                                          max_sequence_length=s["max_sequence_length"], device="cpu")
        common = dict(prompt=s["prompt"], negative_prompt=s["negative_prompt"], height=s["height"],
                      width=s["width"], num_frames=s["num_frames"], num_inference_steps=s["num_inference_steps"],
                      guidance_scale=s["guidance_scale"], max_sequence_length=s["max_sequence_length"])
        if "guidance_scale_2" in s:
            common["guidance_scale_2"] = s["guidance_scale_2"]
        latents = pipe(latents=noise.clone(), output_type="latent", **common).frames
        video = pipe(latents=noise.clone(), output_type="pt", **common).frames
    return cond, uncond, latents, video.float(), pipe.scheduler.timesteps.to(torch.int64)


def write(out, pipe, settings, noise, extra_json, tokenizer):
    cond, uncond, latents, video, timesteps = run_reference(pipe, settings, noise)
    # store the f16-rounded weights as float16; the text encoder stays f32
    for name in ("transformer", "transformer_2", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.half()
    pipe.save_pretrained(os.path.join(out, "model"), safe_serialization=True)
    # the saved tokenizer would carry the padding/truncation state the prompt encoding left on it; the tiny
    # pipeline's files are the same tokenizer without that state
    shutil.rmtree(os.path.join(out, "model", "tokenizer"))
    shutil.copytree(TOKENIZER, os.path.join(out, "model", "tokenizer"))
    tensors = {
        "noise": noise.contiguous(),
        "prompt_embeds": cond.contiguous(),
        "negative_prompt_embeds": uncond.contiguous(),
        "final_latents": latents.contiguous(),
        "video": video.contiguous(),
        "prompt_ids": torch.tensor(tokenizer(settings["prompt"])["input_ids"], dtype=torch.int64),
        "timesteps": timesteps.contiguous(),
    }
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({**settings, **extra_json, "sampler": "unipc", "dtype": "f32",
                   "diffusers": __import__("diffusers").__version__}, f, indent=2)
    clamped = (video <= 0.0).float().mean().item() + (video >= 1.0).float().mean().item()
    print("wrote", out, {k: tuple(v.shape) for k, v in tensors.items()},
          f"video std {video.std().item():.3f}, clamped {clamped:.3f}", file=sys.stderr)


def two_expert():
    gen = torch.Generator().manual_seed(2200)
    s = TWO_EXPERT
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    text_encoder = text_encoder_for(tokenizer)
    high = tiny_transformer(16, heads=2, head_dim=16, ffn_dim=64)
    low = tiny_transformer(16, heads=2, head_dim=16, ffn_dim=64)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[False, True, True], dropout=0.0).eval()
    for m in (text_encoder, high, low, vae):
        randomize_(m, gen)
    for m in (high, low, vae):
        round_to_f16_(m)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=high, transformer_2=low,
                       vae=vae, scheduler=unipc(s["flow_shift"]), boundary_ratio=s["boundary_ratio"])
    latent_frames = (s["num_frames"] - 1) // 4 + 1
    noise = torch.randn(1, 16, latent_frames, s["height"] // 8, s["width"] // 8, generator=gen)

    sched = unipc(s["flow_shift"])
    sched.set_timesteps(s["num_inference_steps"])
    boundary = s["boundary_ratio"] * 1000
    experts = ["high_noise" if t >= boundary else "low_noise" for t in sched.timesteps.tolist()]
    assert "high_noise" in experts and "low_noise" in experts, experts
    write(os.path.join(ROOT, "wan22_two_expert"), pipe, s, noise,
          {"expert_per_step": experts, "timesteps": sched.timesteps.tolist()}, tokenizer)


def ti2v():
    gen = torch.Generator().manual_seed(2205)
    s = TI2V
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    text_encoder = text_encoder_for(tokenizer)
    transformer = tiny_transformer(48, heads=2, head_dim=16, ffn_dim=64)
    randomize_(text_encoder, gen)
    randomize_(transformer, gen)
    z_dim = 48
    latents_mean = (0.3 * torch.randn(z_dim, generator=gen)).tolist()
    latents_std = (0.4 + torch.rand(z_dim, generator=gen)).tolist()
    vae = AutoencoderKLWan(base_dim=2, decoder_base_dim=4, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                           attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0,
                           latents_mean=latents_mean, latents_std=latents_std, is_residual=True,
                           in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4,
                           scale_factor_spatial=16).eval()
    randomize_vae22_(vae, gen)
    for m in (transformer, vae):
        round_to_f16_(m)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=unipc(s["flow_shift"]), expand_timesteps=True)
    latent_frames = (s["num_frames"] - 1) // 4 + 1
    noise = torch.randn(1, z_dim, latent_frames, s["height"] // 16, s["width"] // 16, generator=gen)
    write(os.path.join(ROOT, "wan22_ti2v"), pipe, s, noise, {"expand_timesteps": True}, tokenizer)


def main():
    torch.manual_seed(0)
    two_expert()
    ti2v()


if __name__ == "__main__":
    main()
