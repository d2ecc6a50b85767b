#!/usr/bin/env python3
"""Random-weight image-to-video pieces and their diffusers / transformers outputs, for vdit's i2v parity tests.

Three tiny `WanTransformer3DModel`s in the image-to-video forms diffusers knows, one tiny `CLIPVisionModelWithProjection`
(the class and hub layout of the `image_encoder/` folder of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers), and
`CLIPImageProcessor`'s preprocessing of a synthetic image.

Writes tests/fixtures/i2v/:
  wan21_i2v/      Wan2.1 I2V form: 36 latent channels in (16 noise + 4 mask + 16 encoded image), 16 out, an image
                  embedder (image_dim 40 -> dim 64: LayerNorm, Linear, gelu, Linear, LayerNorm) and, in every block's
                  cross-attention, add_k_proj / add_v_proj / norm_added_k over the image tokens (added_kv_proj_dim 64)
  flf2v/          the same plus pos_embed_seq_len 10 (Wan2.1 FLF2V: first and last image, 2 x 5 tokens, with a learned
                  position table added before the embedder)
  wan22_i2v/      Wan2.2 I2V-A14B form: 36 channels in, no image embedder, no image cross-attention
    each with config.json (diffusers), config_original.json (original WanModel: model_type "i2v" / "flf2v"),
    diffusion_pytorch_model.safetensors (diffusers keys, stored bf16; every parameter rounded to bf16 before the
    reference runs, so the f32 reference is exact for the stored values), original_keys.json for the two Wan2.1 forms
    (diffusers key -> original Wan key, checked against diffusers' single-file converter), and io.safetensors:
    latents [2,36,3,6,10], timesteps [2] = (999, 421), context [2,512,24] (512 rows: diffusers' attention processor
    splits image tokens from text by assuming 512 text rows), image [2,Li,40] in vdit's form (FLF2V: the first
    image's 5 tokens then the last image's 5, [2,10,40]; diffusers is called with the [4,5,40] the pipeline makes)
    and diffusers' velocity [2,16,3,6,10].
  clip_vision/    config.json + model.safetensors of a CLIPVisionModelWithProjection (hidden 32, 3 layers, 4 heads,
                  patch 14, 224 x 224, gelu, f32), and io.safetensors: hidden_states[-2] [1,257,32] (what
                  WanImageToVideoPipeline.encode_image keeps) for preprocess_down's pixel_values
  preprocess_down.safetensors  image [240,260,3] u8 (a synthetic RGB picture, height 240, width 260: downscaled)
                  and CLIPImageProcessor's pixel_values [1,3,224,224] for it (PIL backend: shortest side to 224 with
                  PIL bicubic, centre crop 224, 1/255, CLIP mean/std)
  preprocess_up.safetensors  image [100,150,3] u8 (upscaled) and resized [224,336,3] u8, PIL's bicubic resize of it
                  to 336 x 224 (before the crop), to hold the resampling itself to PIL bit for bit

Run from the repository root (CPU torch is enough):  python3 scripts/reference/gen_i2v_fixtures.py
"""
import json
import os
import sys

import numpy as np
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

try:  # transformers 5: the PIL backend by name (plain CLIPImageProcessor picks torchvision when installed)
    from transformers import CLIPImageProcessorPil as ClipProcessor
except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
    from transformers import CLIPImageProcessor as ClipProcessor

OUT = os.path.join("tests", "fixtures", "i2v")
MODEL = dict(num_attention_heads=2, attention_head_dim=32, text_dim=24, freq_dim=16, ffn_dim=96, num_layers=2)
DIM = 64
IMAGE_DIM = 40
IMAGE_TOKENS = 5  # per image (257 for CLIP ViT-H/14 at 224)
GRID = (3, 6, 10)
TEXT_LEN = 512
TIMESTEPS = [999.0, 421.0]
CASES = {
    "wan21_i2v": dict(image_dim=IMAGE_DIM, added_kv_proj_dim=DIM, pos_embed_seq_len=None, model_type="i2v"),
    "flf2v": dict(image_dim=IMAGE_DIM, added_kv_proj_dim=DIM, pos_embed_seq_len=2 * IMAGE_TOKENS, model_type="flf2v"),
    "wan22_i2v": dict(image_dim=None, added_kv_proj_dim=None, pos_embed_seq_len=None, model_type="i2v"),
}


def randomize_(model, gen):
    """Every parameter random: matrices scaled by fan-in, biases small, norm weights around 1, tables O(0.3)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "scale_shift_table" in name or "pos_embed" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif ("norm" in name or "layrnorm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:  # CLIP's class embedding
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


def original_key(key):
    """Diffusers key -> original Wan key (Wan's wan/modules/model.py names; diffusers' convert_wan_to_diffusers.py
    maps them the other way)."""
    whole = {
        "condition_embedder.time_embedder.linear_1": "time_embedding.0",
        "condition_embedder.time_embedder.linear_2": "time_embedding.2",
        "condition_embedder.time_proj": "time_projection.1",
        "condition_embedder.text_embedder.linear_1": "text_embedding.0",
        "condition_embedder.text_embedder.linear_2": "text_embedding.2",
        "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
        "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
        "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
        "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
        "proj_out": "head.head",
    }
    if key == "scale_shift_table":
        return "head.modulation"
    if key == "condition_embedder.image_embedder.pos_embed":
        return "img_emb.emb_pos"
    for src, dst in whole.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    if not key.startswith("blocks."):
        return key  # patch_embedding.*
    _, index, rest = key.split(".", 2)
    block = {
        "scale_shift_table": "modulation",
        "norm2.weight": "norm3.weight",
        "norm2.bias": "norm3.bias",
        "ffn.net.0.proj.weight": "ffn.0.weight",
        "ffn.net.0.proj.bias": "ffn.0.bias",
        "ffn.net.2.weight": "ffn.2.weight",
        "ffn.net.2.bias": "ffn.2.bias",
    }
    if rest in block:
        return f"blocks.{index}.{block[rest]}"
    rest = rest.replace(".to_out.0.", ".to_out.")
    attn, layer, param = rest.split(".", 2)
    attn = {"attn1": "self_attn", "attn2": "cross_attn"}[attn]
    layer = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out": "o", "norm_q": "norm_q", "norm_k": "norm_k",
             "add_k_proj": "k_img", "add_v_proj": "v_img", "norm_added_k": "norm_k_img"}[layer]
    return f"blocks.{index}.{attn}.{layer}.{param}"


def transformer_cases(gen):
    frames, height, width = GRID
    latents = torch.randn(2, 36, frames, height, width, generator=gen)
    context = torch.randn(2, TEXT_LEN, MODEL["text_dim"], generator=gen)
    timesteps = torch.tensor(TIMESTEPS, dtype=torch.float32)
    outputs = {}
    for name, case in CASES.items():
        out = os.path.join(OUT, name)
        os.makedirs(out, exist_ok=True)
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), in_channels=36, out_channels=16, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, image_dim=case["image_dim"],
            added_kv_proj_dim=case["added_kv_proj_dim"], pos_embed_seq_len=case["pos_embed_seq_len"],
            **MODEL).eval()
        randomize_(model, gen)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        model.save_config(out)
        state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(out, "diffusion_pytorch_model.safetensors"))

        original_cfg = {
            "_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": case["model_type"],
            "dim": DIM, "eps": 1e-6, "ffn_dim": MODEL["ffn_dim"], "freq_dim": MODEL["freq_dim"], "in_dim": 36,
            "num_heads": MODEL["num_attention_heads"], "num_layers": MODEL["num_layers"], "out_dim": 16,
            "text_len": 512, "text_dim": MODEL["text_dim"],
        }
        with open(os.path.join(out, "config_original.json"), "w") as f:
            json.dump(original_cfg, f, indent=2)

        if case["image_dim"] is not None:
            mapping = {k: original_key(k) for k in state}
            assert len(set(mapping.values())) == len(mapping)
            # diffusers' single-file converter has no rule for `img_emb.emb_pos` (its conversion script
            # convert_wan_to_diffusers.py has: img_emb.emb_pos -> condition_embedder.image_embedder.pos_embed), so that
            # one key is left out of the round trip.
            checked = {k: v for k, v in mapping.items() if not k.endswith("pos_embed")}
            back = convert_wan_transformer_to_diffusers({"model.diffusion_model." + v: state[k] for k, v in checked.items()})
            assert set(back) == set(checked), sorted(set(back) ^ set(checked))
            for k in checked:
                assert torch.equal(back[k], state[k]), k
            with open(os.path.join(out, "original_keys.json"), "w") as f:
                json.dump(dict(sorted(mapping.items())), f, indent=1)

        io = dict(latents=latents, timesteps=timesteps, context=context)
        kwargs = {}
        if case["image_dim"] is not None:
            rows = case["pos_embed_seq_len"] or IMAGE_TOKENS
            image = torch.randn(2, rows, IMAGE_DIM, generator=gen)
            io["image"] = image
            # The pipeline's form: FLF2V encodes [first, last] as a batch of two and the embedder views the pair as
            # one row of 2 x 257 tokens.
            kwargs["encoder_hidden_states_image"] = image.reshape(-1, IMAGE_TOKENS, IMAGE_DIM)
        with torch.no_grad():
            io["velocity"] = model(latents, timesteps, context, return_dict=False, **kwargs)[0].float()
            if "image" in io:
                # The image path must matter, or a model that ignored it would pass.
                zero = model(latents, timesteps, context, return_dict=False,
                             encoder_hidden_states_image=torch.zeros_like(kwargs["encoder_hidden_states_image"]))[0]
                print(name, "velocity with a zero image differs by",
                      ((zero - io["velocity"]).norm() / io["velocity"].norm()).item(), file=sys.stderr)
        save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"))
        outputs[name] = io
        print(name, {k: tuple(v.shape) for k, v in io.items()}, "params", sum(v.numel() for v in state.values()),
              file=sys.stderr)


def synthetic_image(gen, h, w):
    """[h, w, 3] u8: smooth gradients, a checkerboard's sharp edges and some noise, so resampling differences show."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x / 17.0) * np.cos(y / 23.0)
    g = 255.0 * (x / (w - 1))
    b = np.where(((x // 25) + (y // 25)) % 2 == 0, 230.0, 20.0)
    noise = torch.randn(h, w, 3, generator=gen).numpy() * 12.0
    img = np.stack([r, g, b], axis=-1) + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def preprocessing_and_clip(gen):
    processor = ClipProcessor()  # the Wan2.1-I2V image_processor's settings are CLIP's defaults
    assert processor.size["shortest_edge"] == 224 and processor.crop_size["height"] == 224

    # Downscaling (PIL widens its filter by the scale factor): 240 x 260 -> 224 x 242 -> crop 224 x 224.
    down = synthetic_image(gen, 240, 260)
    pixel_values = processor(images=Image.fromarray(down), return_tensors="pt")["pixel_values"].float()
    save_file({"image": torch.from_numpy(down.copy()), "pixel_values": pixel_values.contiguous()},
              os.path.join(OUT, "preprocess_down.safetensors"))
    # Upscaling (the plain bicubic kernel): 100 x 150 -> 224 x 336, PIL's resize alone (before the crop).
    up = synthetic_image(gen, 100, 150)
    resized = np.asarray(Image.fromarray(up).resize((336, 224), resample=Image.BICUBIC))
    save_file({"image": torch.from_numpy(up.copy()), "resized": torch.from_numpy(resized.copy())},
              os.path.join(OUT, "preprocess_up.safetensors"))
    print("preprocess", tuple(down.shape), tuple(pixel_values.shape), tuple(up.shape), tuple(resized.shape),
          file=sys.stderr)

    out = os.path.join(OUT, "clip_vision")
    os.makedirs(out, exist_ok=True)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=224, patch_size=14, hidden_act="gelu", projection_dim=16,
                              layer_norm_eps=1e-5)
    model = CLIPVisionModelWithProjection(config).eval()
    randomize_(model, gen)
    model.save_pretrained(out, safe_serialization=True)
    with torch.no_grad():
        hidden = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    penultimate = hidden[-2].float()
    # The input is preprocess_down.safetensors' pixel_values.
    save_file({"penultimate": penultimate.contiguous()}, os.path.join(out, "io.safetensors"))
    apart = ((hidden[-1] - hidden[-2]).norm() / hidden[-2].norm()).item()
    print("clip penultimate", tuple(penultimate.shape), "last layer differs by", apart, file=sys.stderr)


def main():
    gen = torch.Generator().manual_seed(20261206)
    os.makedirs(OUT, exist_ok=True)
    transformer_cases(gen)
    preprocessing_and_clip(gen)


if __name__ == "__main__":
    main()
