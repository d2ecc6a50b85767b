#!/usr/bin/env python3
"""Tiny random-weight image-to-video pipelines and their diffusers reference runs.

Writes four fixtures, each laid out like tests/fixtures/wan22_two_expert (see gen_wan22_pipelines.py), with the input
image(s) as PNG files next to the reference:

tests/fixtures/i2v_wan21/        Wan2.1-I2V in small: a diffusers WanImageToVideoPipeline folder (model/) with a tiny
                    CLIPVisionModelWithProjection `image_encoder/` (hidden 32, 3 layers, patch 14 at 224x224: 257
                    tokens, the ViT-H/14 geometry), `image_processor/` (CLIP's ViT-H settings), one transformer with
                    36 input channels and image cross-attention (image_dim 32), a Wan2.1-form VAE (z 16, 8x), UniPC
                    at shift 3; image.png (48x32, the video's size)
tests/fixtures/i2v_flf2v/        Wan2.1-FLF2V in small: the same with a transformer that has the two-image position
                    embedding (pos_embed_seq_len 514); image.png and last_image.png
tests/fixtures/i2v_wan22/        Wan2.2-I2V-A14B in small: two experts with 36 input channels and no image
                    cross-attention, no image encoder, boundary_ratio 0.9, UniPC at shift 5; image.png
tests/fixtures/i2v_resize/       source.png (90x60) and PIL's Lanczos resizes of it: stretched to 48x32 and 128x96 (diffusers'
                    VideoProcessor.preprocess) and covered then centre-cropped to 40x40 (Wan2.2 TI2V), to measure
                    vdit's resampling against
tests/fixtures/i2v_ti2v/         Wan2.2-TI2V-5B with an image: no model of its own, it runs
                    tests/fixtures/wan22_ti2v/model (a WanPipeline folder with expand_timesteps) through
                    WanImageToVideoPipeline, which is the diffusers class that takes an image for TI2V-5B
                    (WanPipeline takes none); image.png (64x32)

each with
  reference.safetensors   noise, final latents, decoded video [1,T,3,H,W] in [0, 1] (f32), and what diffusers built
                    on the way: image_embeds (CLIP's hidden_states[-2], when the model has an image encoder) and
                    condition (prepare_latents: mask + encoded video, or TI2V's first-frame latent)
  reference.json    every setting of the run and the image file names

Every input image already has the video's size, so neither diffusers nor vdit resamples it for the VAE (their
Lanczos filters differ slightly); CLIP's own resize to 224 is PIL's bicubic, which vdit reproduces exactly. The image
processor is transformers' PIL backend (`CLIPImageProcessorPil`): transformers 5 picks a torchvision backend for plain
`CLIPImageProcessor` when torchvision is installed, whose pixels differ by a few 1/255 steps.

Transformer and VAE weights are rounded to float16 and stored as float16 (the f32 reference is exact for the stored
values); the text and image encoders stay f32. Step counts and shifts are chosen so each reference crosses its
interesting points: the Wan2.2 case runs both experts.

Run from the repository root (CPU torch is enough):  python3 scripts/reference/gen_i2v_pipelines.py
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

try:  # transformers 5: the PIL backend by name
    from transformers import CLIPImageProcessorPil as ClipProcessor
except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
    from transformers import CLIPImageProcessor as ClipProcessor

# diffusers' I2V pipeline calls ftfy.fix_text on prompts unconditionally, where WanPipeline skips it when ftfy is not
# installed; use WanPipeline's cleaning (ftfy leaves this ASCII prompt as it is anyway)
import diffusers.pipelines.wan.pipeline_wan as _t2v_module  # noqa: E402
import diffusers.pipelines.wan.pipeline_wan_i2v as _i2v_module  # noqa: E402

_i2v_module.basic_clean = _t2v_module.basic_clean

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_tiny_pipeline import TEXT_DIM, randomize_  # noqa: E402
from gen_wan22_pipelines import TOKENIZER, round_to_f16_, text_encoder_for, unipc  # noqa: E402

ROOT = os.path.join("tests", "fixtures")
PROMPT = "a red circle moving right on a blue background"
NEGATIVE = "blurry, static"
CLIP_HIDDEN = 32
CLIP_TOKENS = 257  # (224 / 14)^2 + 1

COMMON = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=9, max_sequence_length=512)
WAN21 = dict(COMMON, height=32, width=48, num_inference_steps=4, guidance_scale=5.0, flow_shift=3.0)
FLF2V = dict(COMMON, height=32, width=48, num_inference_steps=4, guidance_scale=5.0, flow_shift=16.0)
WAN22 = dict(COMMON, height=32, width=48, num_inference_steps=6, guidance_scale=3.5, guidance_scale_2=2.0,
             boundary_ratio=0.9, flow_shift=5.0)
TI2V = dict(COMMON, height=32, width=64, num_inference_steps=4, guidance_scale=5.0, flow_shift=5.0)


def synthetic_image(width, height, seed):
    """An RGB picture with gradients, a disc and some noise, so every pixel and channel differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 255 * (((x - width * 0.6) ** 2 + (y - height * 0.4) ** 2) < (min(width, height) * 0.3) ** 2)
    rgb = np.stack([r, g, 0.5 * b + 0.5 * (255 - r)], -1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), "RGB")


def tiny_clip(gen):
    config = CLIPVisionConfig(hidden_size=CLIP_HIDDEN, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, image_size=224, patch_size=14, hidden_act="gelu",
                              projection_dim=16, layer_norm_eps=1e-5)
    model = CLIPVisionModelWithProjection(config).eval()
    randomize_(model, gen)
    return model


def i2v_transformer(image_dim=None, pos_embed_seq_len=None):
    heads, head_dim = 2, 16
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=36,
        out_channels=16, text_dim=TEXT_DIM, freq_dim=64, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, image_dim=image_dim,
        added_kv_proj_dim=heads * head_dim if image_dim else None, pos_embed_seq_len=pos_embed_seq_len).eval()


def wan21_vae():
    # base_dim 4 (the text-to-video fixtures use 8): a quarter of the bytes, same structure
    return AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                            temperal_downsample=[False, True, True], dropout=0.0).eval()


def run_reference(pipe, s, noise, images):
    """diffusers' run from `noise`: final latents, video [1,T,3,H,W] in [0,1], image_embeds, condition."""
    first, last = images[0], (images[1] if len(images) > 1 else None)
    common = dict(image=first, last_image=last, prompt=s["prompt"], negative_prompt=s["negative_prompt"],
                  height=s["height"], width=s["width"], num_frames=s["num_frames"],
                  num_inference_steps=s["num_inference_steps"], guidance_scale=s["guidance_scale"],
                  max_sequence_length=s["max_sequence_length"])
    if "guidance_scale_2" in s:
        common["guidance_scale_2"] = s["guidance_scale_2"]
    with torch.no_grad():
        latents = pipe(latents=noise.clone(), output_type="latent", **common).frames
        video = pipe(latents=noise.clone(), output_type="pt", **common).frames
        extra = {}
        if pipe.image_encoder is not None:
            extra["image_embeds"] = pipe.encode_image(images if last is not None else first, "cpu")
        pre = lambda im: pipe.video_processor.preprocess(im, height=s["height"], width=s["width"]).float()
        out = pipe.prepare_latents(pre(first), 1, noise.shape[1], s["height"],
                                   s["width"], s["num_frames"], torch.float32, "cpu", None, noise.clone(),
                                   pre(last) if last is not None else None)
        extra["condition"] = out[1]
    return latents, video.float(), extra


def write(out, pipe, settings, noise, images, extra_json, save_model=True):
    latents, video, extra = run_reference(pipe, settings, noise, images)
    os.makedirs(out, exist_ok=True)
    if save_model:
        for name in ("transformer", "transformer_2", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.half()
        pipe.save_pretrained(os.path.join(out, "model"), safe_serialization=True)
        shutil.rmtree(os.path.join(out, "model", "tokenizer"))
        shutil.copytree(TOKENIZER, os.path.join(out, "model", "tokenizer"))
    names = ["image.png", "last_image.png"][: len(images)]
    for image, name in zip(images, names):
        image.save(os.path.join(out, name))
    tensors = {"noise": noise.contiguous(), "final_latents": latents.contiguous(), "video": video.contiguous()}
    tensors.update({k: v.float().contiguous() for k, v in extra.items()})
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({**settings, **extra_json, "images": names, "sampler": "unipc", "dtype": "f32",
                   "diffusers": __import__("diffusers").__version__}, f, indent=2)
    print("wrote", out, {k: tuple(v.shape) for k, v in tensors.items()}, f"video std {video.std().item():.3f}",
          file=sys.stderr)


def noise_for(s, channels, scale, gen):
    latent_frames = (s["num_frames"] - 1) // 4 + 1
    return torch.randn(1, channels, latent_frames, s["height"] // scale, s["width"] // scale, generator=gen)


def wan21(name, s, seed, last_frame):
    gen = torch.Generator().manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    text_encoder = text_encoder_for(tokenizer)
    transformer = i2v_transformer(image_dim=CLIP_HIDDEN,
                                  pos_embed_seq_len=2 * CLIP_TOKENS if last_frame else None)
    vae = wan21_vae()
    clip = tiny_clip(gen)
    for m in (text_encoder, transformer, vae):
        randomize_(m, gen)
    for m in (transformer, vae):
        round_to_f16_(m)
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                   scheduler=unipc(s["flow_shift"]), image_processor=ClipProcessor(),
                                   image_encoder=clip, transformer=transformer)
    images = [synthetic_image(s["width"], s["height"], seed)]
    if last_frame:
        images.append(synthetic_image(s["width"], s["height"], seed + 1).transpose(Image.FLIP_LEFT_RIGHT))
    write(os.path.join(ROOT, name), pipe, s, noise_for(s, 16, 8, gen), images, {})


def wan22():
    gen = torch.Generator().manual_seed(2290)
    s = WAN22
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    text_encoder = text_encoder_for(tokenizer)
    high, low = i2v_transformer(), i2v_transformer()
    vae = wan21_vae()
    for m in (text_encoder, high, low, vae):
        randomize_(m, gen)
    for m in (high, low, vae):
        round_to_f16_(m)
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                   scheduler=unipc(s["flow_shift"]), transformer=high, transformer_2=low,
                                   boundary_ratio=s["boundary_ratio"])
    sched = unipc(s["flow_shift"])
    sched.set_timesteps(s["num_inference_steps"])
    boundary = s["boundary_ratio"] * 1000
    experts = ["high_noise" if t >= boundary else "low_noise" for t in sched.timesteps.tolist()]
    assert "high_noise" in experts and "low_noise" in experts, (experts, sched.timesteps)
    images = [synthetic_image(s["width"], s["height"], 2290)]
    write(os.path.join(ROOT, "i2v_wan22"), pipe, s, noise_for(s, 16, 8, gen), images,
          {"expert_per_step": experts, "timesteps": sched.timesteps.tolist()})


def ti2v():
    gen = torch.Generator().manual_seed(2295)
    s = TI2V
    pipe = WanImageToVideoPipeline.from_pretrained(os.path.join(ROOT, "wan22_ti2v", "model"),
                                                   torch_dtype=torch.float32)
    assert pipe.config.expand_timesteps and pipe.image_encoder is None
    images = [synthetic_image(s["width"], s["height"], 2295)]
    write(os.path.join(ROOT, "i2v_ti2v"), pipe, s, noise_for(s, 48, 16, gen), images,
          {"expand_timesteps": True, "model": "tests/fixtures/wan22_ti2v/model"}, save_model=False)


def resize_fixtures():
    """PIL's resizes of one image, to measure vdit's Lanczos against: diffusers' VideoProcessor.preprocess stretch
    (Lanczos) down and up, and Wan2.2 TI2V's cover-then-centre-crop (Lanczos)."""
    out = os.path.join(ROOT, "i2v_resize")
    os.makedirs(out, exist_ok=True)
    source = synthetic_image(90, 60, 77)
    source.save(os.path.join(out, "source.png"))
    source.resize((48, 32), resample=Image.LANCZOS).save(os.path.join(out, "stretch_48x32.png"))
    source.resize((128, 96), resample=Image.LANCZOS).save(os.path.join(out, "stretch_128x96.png"))
    # cover 40x40 from 90x60: scale max(40/90, 40/60), round each side, crop about the centre
    scale = max(40 / 90, 40 / 60)
    covered = source.resize((round(90 * scale), round(60 * scale)), resample=Image.LANCZOS)
    x, y = (covered.width - 40) // 2, (covered.height - 40) // 2
    covered.crop((x, y, x + 40, y + 40)).save(os.path.join(out, "cover_crop_40x40.png"))
    print("wrote", out, file=sys.stderr)


def main():
    torch.manual_seed(0)
    resize_fixtures()
    wan21("i2v_wan21", WAN21, 2100, last_frame=False)
    wan21("i2v_flf2v", FLF2V, 2110, last_frame=True)
    wan22()
    ti2v()


if __name__ == "__main__":
    main()
