#!/usr/bin/env python3
"""Tiny random-weight Wan VAE encoders (Wan2.1 and Wan2.2 layouts) and diffusers' encodes of them.

Writes tests/fixtures/vae_encoder/{wan21,wan22}/:
  config.json                          diffusers AutoencoderKLWan config (random latents_mean / latents_std)
  diffusion_pytorch_model.safetensors  encoder + quant_conv weights (float16) under diffusers keys; no
                                       decoder, as the loader must need only these
  Wan2.1_VAE.pth / Wan2.2_VAE.pth      the same weights under the original Wan key names, saved with
                                       torch.save like Wan's own files
  reference.safetensors                the inputs and diffusers' outputs of three cases:
    `image`      [1,3,1,H,W] in [-1,1], a smooth random pattern plus noise
    `video`      [1,3,9,H,W] in [-1,1] (9 frames: three time chunks, 1 + 4 + 4)
    `{case}_mean`        vae.encode(x).latent_dist.mode()  (retrieve_latents(..., "argmax"))
    `{case}_normalized`  (mean - latents_mean) * (1 / latents_std), as WanImageToVideoPipeline.prepare_latents
    for case `image` (x = image), `video` (x = video) and `i2v` (x = image then 8 zero frames, the
    video_condition the image-to-video pipeline encodes for 9 frames).
    `video_mean_bf16`: diffusers' own bf16 encode of `video`, to state how far bf16 is from f32.

Layouts: the real Wan2.1 encoder (dim_mult [1,2,4,4], num_res_blocks 2, temporal downsampling in the
last two down stages, z 16, 8x in space) and the real Wan2.2 encoder (the same stages as residual down
blocks with parameter-free average-down shortcuts, 2x2 patchify in front so 12 input channels, z 48,
16x in space), both at encoder base_dim 4 (widths 4, 4, 8, 16, 16) with the weights rounded to float16
so the files stay small. H x W is 32 x 48 (latent 4 x 6 for Wan2.1, 2 x 3 for Wan2.2). The Wan2.1
original-key file is checked by converting it back with diffusers' own convert_wan_vae_to_diffusers;
the Wan2.2 one with an inverse written from the layout of diffusers' convert_vae_22 (scripts/
convert_wan_to_diffusers.py, not installed here), which renames encoder.downsamples.{b}.downsamples.{r}
to encoder.down_blocks.{b}.resnets.{r} and the stage's last entry to encoder.down_blocks.{b}.downsampler.

Run from the repository root:  python3 scripts/reference/gen_vae_encoder_fixtures.py
"""
import copy
import json
import os
import sys

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

OUT = os.path.join("tests", "fixtures", "vae_encoder")
NUM_RES_BLOCKS = 2
HEIGHT, WIDTH = 32, 48
FRAMES = 9

RESNET_PARTS = (("norm1.", "residual.0."), ("conv1.", "residual.2."), ("norm2.", "residual.3."),
                ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut."))


def randomize_(module, gen):
    """Every parameter random: norm gammas around 1, biases small, conv weights ~ 1/sqrt(fan_in),
    rounded to float16 (the dtype the files store) so the f32 reference uses exactly the stored
    weights."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in**0.5))
            p.copy_(p.half().float())


def resnet_to_original(rest):
    for new, old in RESNET_PARTS:
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest  # a resample's own names (resample.1.*, time_conv.*) are the same in both


def to_original_key(key, residual):
    """diffusers key -> original Wan2.1_VAE.pth / Wan2.2_VAE.pth key (encoder side)."""
    if key.startswith("quant_conv."):
        return "conv1." + key[len("quant_conv."):]
    parts = key.split(".")
    assert parts[0] == "encoder", key
    tail = lambda n: ".".join(parts[n:])  # noqa: E731
    if parts[1] == "conv_in":
        return "encoder.conv1." + tail(2)
    if parts[1] == "norm_out":
        return "encoder.head.0." + tail(2)
    if parts[1] == "conv_out":
        return "encoder.head.2." + tail(2)
    if parts[1] == "mid_block":
        if parts[2] == "attentions":
            return "encoder.middle.1." + tail(4)
        return f"encoder.middle.{2 * int(parts[3])}." + resnet_to_original(tail(4))
    assert parts[1] == "down_blocks", key
    if not residual:
        # Wan2.1: one flat list of resnets and resamples, numbered alike in both namings
        return f"encoder.downsamples.{parts[2]}." + resnet_to_original(tail(3))
    # Wan2.2: each stage a module whose `downsamples` holds its resnets, then its resample
    if parts[3] == "resnets":
        return f"encoder.downsamples.{parts[2]}.downsamples.{parts[4]}." + resnet_to_original(tail(5))
    assert parts[3] == "downsampler", key
    return f"encoder.downsamples.{parts[2]}.downsamples.{NUM_RES_BLOCKS}." + tail(4)


def from_original22_key(key):
    """Original Wan2.2 encoder key -> diffusers, as convert_vae_22 renames (string replacements)."""
    fixed = {"conv1.": "quant_conv.", "encoder.conv1.": "encoder.conv_in.",
             "encoder.head.0.": "encoder.norm_out.", "encoder.head.2.": "encoder.conv_out.",
             "encoder.middle.1.": "encoder.mid_block.attentions.0."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    for index in ("0", "2"):
        old = f"encoder.middle.{index}."
        if key.startswith(old):
            rest = key[len(old):]
            for new_part, old_part in RESNET_PARTS:
                if rest.startswith(old_part):
                    rest = new_part + rest[len(old_part):]
            return f"encoder.mid_block.resnets.{int(index) // 2}." + rest
    assert key.startswith("encoder.downsamples."), key
    new = key.replace("encoder.downsamples.", "encoder.down_blocks.", 1)
    if ".residual." in new or ".shortcut." in new:
        new = new.replace(".downsamples.", ".resnets.")
        for new_part, old_part in RESNET_PARTS:
            new = new.replace("." + old_part, "." + new_part)
        return new
    parts = new.split(".")
    assert parts[3] == "downsamples", key
    return ".".join(parts[:3] + ["downsampler"] + parts[5:])


def smooth_image(gen):
    """[1, 3, 1, H, W] in [-1, 1]: low-frequency colour pattern plus a little noise (a photo-like
    mix of smooth regions and texture)."""
    coarse = torch.rand(1, 3, 4, 6, generator=gen) * 2 - 1
    smooth = torch.nn.functional.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bilinear",
                                             align_corners=False)
    image = (smooth + 0.2 * torch.randn(1, 3, HEIGHT, WIDTH, generator=gen)).clamp(-1, 1)
    return image.unsqueeze(2)


def build(name, z_dim, residual, gen):
    latents_mean = (0.3 * torch.randn(z_dim, generator=gen)).tolist()
    latents_std = (0.4 + torch.rand(z_dim, generator=gen)).tolist()
    patch = 2 if residual else None
    vae = AutoencoderKLWan(base_dim=4, decoder_base_dim=None, z_dim=z_dim, dim_mult=[1, 2, 4, 4],
                           num_res_blocks=NUM_RES_BLOCKS, attn_scales=[],
                           temperal_downsample=[False, True, True], dropout=0.0,
                           latents_mean=latents_mean, latents_std=latents_std,
                           is_residual=residual, in_channels=12 if residual else 3,
                           out_channels=12 if residual else 3, patch_size=patch,
                           scale_factor_temporal=4, scale_factor_spatial=16 if residual else 8).eval()
    randomize_(vae, gen)

    image = smooth_image(gen)
    video = torch.cat([smooth_image(gen) for _ in range(FRAMES)], dim=2)
    # consecutive frames share most of their content, as in a real video
    video = (0.6 * video + 0.4 * image).clamp(-1, 1)
    i2v = torch.cat([image, image.new_zeros(1, 3, FRAMES - 1, HEIGHT, WIDTH)], dim=2)

    mean_t = torch.tensor(latents_mean).view(1, z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(latents_std).view(1, z_dim, 1, 1, 1)
    tensors = {"image": image, "video": video}
    with torch.no_grad():
        for case, x in (("image", image), ("video", video), ("i2v", i2v)):
            mean = vae.encode(x).latent_dist.mode()
            tensors[f"{case}_mean"] = mean
            tensors[f"{case}_normalized"] = (mean - mean_t) * inv_std
        # a copy: casting the model itself would round the weights the files store
        bf16 = copy.deepcopy(vae).to(torch.bfloat16).encode(video.bfloat16()).latent_dist.mode().float()
    tensors["video_mean_bf16"] = bf16
    ref = tensors["video_mean"]
    bf16_err = ((bf16 - ref).norm() / ref.norm()).item()

    state = {k: v.half().contiguous() for k, v in vae.state_dict().items()
             if k.startswith(("encoder.", "quant_conv."))}
    original = {to_original_key(k, residual): v for k, v in state.items()}
    assert len(original) == len(state)
    if residual:
        back = {from_original22_key(k): v for k, v in original.items()}
    else:
        back = convert_wan_vae_to_diffusers(dict(original))
    assert set(back) == set(state), sorted(set(back) ^ set(state))

    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    vae.save_config(out)
    with open(os.path.join(out, "config.json")) as f:
        json.load(f)  # written by save_config; make sure it parses
    save_file(state, os.path.join(out, "diffusion_pytorch_model.safetensors"))
    torch.save(original, os.path.join(out, "Wan2.2_VAE.pth" if residual else "Wan2.1_VAE.pth"))
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(out, "reference.safetensors"))
    params = sum(v.numel() for v in state.values())
    print(f"wrote {out}: {params} encoder params, video {tuple(video.shape)} -> mean "
          f"{tuple(tensors['video_mean'].shape)}, mean std {ref.std().item():.3f}, "
          f"diffusers bf16 vs f32: {bf16_err:.3e}", file=sys.stderr)


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1717)
    build("wan21", 16, False, gen)
    build("wan22", 48, True, gen)


if __name__ == "__main__":
    main()
