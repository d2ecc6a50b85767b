"""Prompt-faithfulness of an exported diffusers-layout model over the held-out prompts (CPU or GPU).

Generates each held-out prompt with diffusers' WanPipeline from the model directory, scores it with the
analyser (analyse.py), prints per-prompt results and the accuracy, writes a JSON report and a png strip.

Usage: python3 scripts/eval/eval_model.py models/vdit-tiny [--size 128 --frames 17 --steps 30 --limit N --out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "train"))

import frame_strip  # noqa: E402
from analyse import score, summarise  # noqa: E402
from world import HELD_OUT_PROMPTS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--limit", type=int, default=len(HELD_OUT_PROMPTS))
    ap.add_argument("--out", default=None, help="folder for report.json and strip.png")
    args = ap.parse_args()

    from diffusers import WanPipeline
    from PIL import Image

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = WanPipeline.from_pretrained(args.model, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    prompts = HELD_OUT_PROMPTS[: args.limit]
    results, strips = [], []
    for i, prompt in enumerate(prompts):
        video = pipe(prompt=prompt, negative_prompt="", height=args.size, width=args.size, num_frames=args.frames,
                     num_inference_steps=args.steps, guidance_scale=args.guidance,
                     generator=torch.Generator(device="cpu").manual_seed(args.seed + i), output_type="np").frames[0]
        clip = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
        r = score(prompt, clip)
        results.append(r)
        ok = r["colour_ok"] and r["motion_ok"]
        print(f"{'ok ' if ok else 'BAD'} {prompt!r} -> {r['seen']}", flush=True)
        strips.append(frame_strip.row(clip, 5))
    summary = summarise(results)
    print(f"accuracy over {len(prompts)} held-out prompts at {args.size}x{args.size}x{args.frames}: {summary}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump({"settings": vars(args), "summary": summary,
                       "prompts": [{"prompt": p, **{k: v for k, v in r.items()}} for p, r in zip(prompts, results)]},
                      f, indent=1, default=str)
        Image.fromarray(np.concatenate(strips)).save(os.path.join(args.out, "strip.png"))


if __name__ == "__main__":
    main()
