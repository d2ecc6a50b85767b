"""Export a training checkpoint (the files train.py writes to $OUT) as the diffusers-layout vdit-tiny model, bf16.

Usage: python3 scripts/train/export.py CKPT_DIR models/vdit-tiny
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tokenizer import save_tokenizer  # noqa: E402
from train import SHIFT, TEXT_CONFIG, TRANSFORMER_CONFIG, VAE_CONFIG, load_sharded  # noqa: E402


def main(ckpt: str, out: str) -> None:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with open(os.path.join(ckpt, "meta.json")) as f:
        meta = json.load(f)
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(out, exist_ok=True)

    vae = AutoencoderKLWan(**VAE_CONFIG, latents_mean=meta["latents_mean"], latents_std=meta["latents_std"])
    vae.load_state_dict(load_sharded(ckpt, "vae"))
    vae.to(torch.bfloat16).save_pretrained(os.path.join(out, "vae"))

    transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    transformer.load_state_dict(load_sharded(ckpt, "transformer"))
    transformer.to(torch.bfloat16).save_pretrained(os.path.join(out, "transformer"))

    text_encoder = UMT5EncoderModel(UMT5Config(**TEXT_CONFIG))
    state = load_sharded(ckpt, "text_encoder")
    missing, unexpected = text_encoder.load_state_dict(state, strict=False)
    assert not unexpected and all("embed_tokens" in k for k in missing), (missing, unexpected)
    text_encoder.to(torch.bfloat16).save_pretrained(os.path.join(out, "text_encoder"))

    save_tokenizer(os.path.join(out, "tokenizer"))
    UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=SHIFT
    ).save_pretrained(os.path.join(out, "scheduler"))

    import diffusers

    model_index = {
        "_class_name": "WanPipeline",
        "_diffusers_version": diffusers.__version__,
        "boundary_ratio": None,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(model_index, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "training_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(out) for n in names)
    print(f"exported to {out}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
