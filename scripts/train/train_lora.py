#!/usr/bin/env python3
"""Train a small LoRA on the shipped vdit-tiny model that changes something visible: red objects come out blue.

The data are clips of the synthetic world (world.py) at 128x128x17. In a clip whose caption names a red object,
that object is drawn blue (the caption still says red); every other clip is drawn as captioned, so the LoRA learns
the one mapping and leaves the rest alone. The base model is frozen; rank-8 LoRA factors on the cross-attention
(attn2) and feed-forward layers of every block are trained with the flow-matching loss the model was trained with
(x_t = (1 - s) x0 + s noise, target noise - x0, s from a shifted uniform). The file is saved in the diffusers/PEFT
form (`transformer.blocks.N.attn2.to_k.lora_A.weight`, ...) by diffusers' own `save_lora_weights`.

    python3 scripts/train/train_lora.py --out models/loras/vdit-tiny-red-to-blue.safetensors [--steps 400]

About a minute on a GPU (it uses CUDA when present); a CPU takes about 2 s a step. Check the effect with
    vdit eval --lora models/loras/vdit-tiny-red-to-blue.safetensors ...   (see the README)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import world  # noqa: E402

MODEL = os.path.join(HERE, "..", "..", "models", "vdit-tiny")
SIZE, FRAMES = 128, 17


def swapped_scene(rng):
    """(scene as drawn, caption): red objects drawn blue when the scene allows it."""
    while True:
        scene, text = world.training_scene(rng)
        if "red" not in text:
            return scene, text
        colours = {o.colour for o in scene.objects}
        if "blue" in colours or scene.background.colour == "blue":
            continue  # blue must stay distinguishable from the rest of the scene
        objects = tuple(dataclasses.replace(o, colour="blue") if o.colour == "red" else o for o in scene.objects)
        return dataclasses.replace(scene, objects=objects), text


def make_data(count, seed, red_share):
    """uint8 clips [N, T, H, W, 3] and captions; about `red_share` of them name a red object."""
    rng = np.random.default_rng(seed)
    clips, texts = [], []
    while len(texts) < count:
        scene, text = swapped_scene(rng)
        want_red = len(texts) < red_share * count
        if ("red" in text) != want_red:
            continue
        clips.append(world.render(scene, SIZE, FRAMES))
        texts.append(text)
    return np.stack(clips), texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--clips", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    start = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = WanPipeline.from_pretrained(MODEL, torch_dtype=torch.float32).to(device)
    vae, transformer = pipe.vae.eval(), pipe.transformer
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)

    clips, texts = make_data(args.clips, args.seed + 1000, red_share=0.5)
    with torch.no_grad():
        latents = []
        for i in range(0, len(clips), 16):
            video = torch.from_numpy(clips[i:i + 16]).to(device).float().permute(0, 4, 1, 2, 3) / 127.5 - 1.0
            z = vae.encode(video).latent_dist.mode()
            latents.append((z - mean) / std)
        latents = torch.cat(latents)
        context = torch.cat([pipe.encode_prompt(texts[i:i + 32], do_classifier_free_guidance=False,
                                                max_sequence_length=512, device=device)[0]
                             for i in range(0, len(texts), 32)])
    print(f"data: {len(texts)} clips, latents {tuple(latents.shape)}, {time.time() - start:.0f} s", flush=True)

    transformer.requires_grad_(False)
    targets = ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"]
    transformer.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights=True,
                                       target_modules=targets))
    params = [p for p in transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    shift = 3.0
    transformer.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(texts), (args.batch,), generator=gen)
        x0, ctx = latents[idx.to(device)], context[idx.to(device)]
        u = torch.rand(args.batch, generator=gen).to(device)
        sigma = shift * u / (1 + (shift - 1) * u)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        pred = transformer(xt, sigma * 1000.0, ctx, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)

    lora = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(transformer).items()}
    with tempfile.TemporaryDirectory() as tmp:
        WanPipeline.save_lora_weights(tmp, transformer_lora_layers=lora, weight_name="lora.safetensors")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        os.replace(os.path.join(tmp, "lora.safetensors"), args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB) in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
