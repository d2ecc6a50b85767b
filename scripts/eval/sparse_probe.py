"""Where block-sparse attention loses quality on a trained model (CPU or GPU, diffusers).

Runs diffusers' WanPipeline on an exported model with the self-attention replaced by an emulation of
RainFusion 2.0 as vdit implements it (crates/rainfusion: tile or spatiotemporal permutation, first
frame moved to the end and kept dense, block-mean scores, top-k key blocks per query block, dense
warm-up steps, dense first/last layers), or by variants of its mask choice:

  rf         vdit's RainFusion 2.0 mask
  rf-diag    rf, and every query block also keeps its own key block
  rf-comp    rf, and each skipped key block still enters the softmax as one centroid key (its mean key,
             weighted by its token count) carrying its mean value: a coarse stand-in for the skipped mass
  oracle     the same number of key blocks per row, chosen by the true attention mass of each block
             (needs the full score matrix: an upper bound for any predictor at that density, not a method)

A config is `variant[:key=value,...]` with keys s (sparsity), ds (dense-step fraction), dl (dense layers
at each end), w (tile | spatiotemporal), b (block size); e.g. `rf-comp:s=0.8,ds=0.375`.

Reports
  --locality STEPS  during the first dense run, per layer and head, the share of attention mass that the
                    rf, rf-diag and oracle masks keep (mean over the sparse query rows);
  --configs LIST    (';'-separated) per prompt, one video per config from the same seed as the dense one; PSNR of the
                    decoded clip and latent cosine against dense, the analyser's verdict; then a table of
                    the mean / min PSNR per config.

Usage: python3 scripts/eval/sparse_probe.py models/vdit-tiny --prompts FILE --seed 42 \
           --configs "rf;oracle;rf-comp:ds=0.375" --locality 8,15,25 --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "train"))

from analyse import score  # noqa: E402
from rainfusion_torch import Layout, patch_self_attention  # noqa: E402

VARIANTS = ("rf", "rf-diag", "rf-comp", "oracle")


def parse_config(text: str) -> dict:
    variant, _, rest = text.partition(":")
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant '{variant}' (expected one of {', '.join(VARIANTS)})")
    cfg = {"name": text, "variant": variant, "s": 0.8, "ds": 0.25, "dl": 0, "w": "tile", "b": 128}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in cfg or key in ("name", "variant"):
            raise SystemExit(f"unknown key '{key}' in config '{text}'")
        cfg[key] = value if key == "w" else (int(value) if key in ("dl", "b") else float(value))
    return cfg


def block_sum(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, H, L, L] -> [B, H, L/block, L/block]: the sum of each block (L a multiple of block)."""
    b, h, l, _ = x.shape
    n = l // block
    return x.reshape(b, h, n, block, n, block).sum(dim=(3, 5))


class Probe:
    """State of one generation: which step and layer, what to do with self-attention, what to record."""

    def __init__(self, grid: tuple[int, int, int], steps: int, layers: int, device):
        self.grid, self.steps, self.layers, self.device = grid, steps, layers, device
        self.tokens = grid[0] * grid[1] * grid[2]
        self.layouts: dict[tuple[int, str], Layout] = {}
        self.cfg: dict | None = None  # None = dense
        self.step = 0
        self.layer = 0
        self.locality_steps: set[int] = set()
        self.locality: list[dict] = []
        self.kept_blocks = 0
        self.all_blocks = 0

    def configure(self, cfg: dict | None, locality_steps: set[int] = frozenset()):
        self.cfg, self.locality_steps = cfg, set(locality_steps)
        self.step, self.kept_blocks, self.all_blocks = 0, 0, 0
        # The dense run records locality with vdit's defaults (a smaller block where 128 does not fit a frame).
        frame_tokens = self.grid[1] * self.grid[2]
        c = cfg or {"b": math.gcd(128, frame_tokens), "s": 0.8, "ds": 0.25, "dl": 0, "w": "tile"}
        key = (c["b"], c["w"])
        if key not in self.layouts:
            try:
                self.layouts[key] = Layout(self.grid, c["b"], c["w"], self.device)
            except ValueError as e:
                raise SystemExit(str(e))
        self.layout = self.layouts[key]
        self.sparsity = c["s"]
        self.dense_steps = math.ceil(c["ds"] * self.steps - 1e-9)
        self.dense_layers = c["dl"]

    def mask(self, q: torch.Tensor, k: torch.Tensor, probs_blocks: torch.Tensor | None, variant: str) -> torch.Tensor:
        """q, k: [B, H, L, D] permuted -> block mask [B, H, nb, nb] (True = computed)."""
        return self.layout.block_mask(q, k, self.sparsity, scores=probs_blocks if variant == "oracle" else None,
                                      self_block=variant == "rf-diag")

    def attend(self, query, key, value, dense):
        """[B, L, H, D] each -> [B, L, H, D]; `dense` is diffusers' own attention."""
        out = self.emulate(query, key, value)
        return dense(query, key, value) if out is None else out.to(query.dtype)

    def emulate(self, query, key, value):
        """[B, L, H, D] each -> [B, L, H, D], or None where this call runs dense."""
        layer = self.layer
        self.layer += 1
        record = self.cfg is None and self.step in self.locality_steps
        dense_layer = layer < self.dense_layers or layer >= self.layers - self.dense_layers
        sparse = self.cfg is not None and self.step >= self.dense_steps and not dense_layer
        if not (record or sparse):
            return None
        lay = self.layout
        q, k, v = (lay.permute(x.transpose(1, 2)) for x in (query, key, value))  # [B, H, L, D] permuted
        variant = self.cfg["variant"] if sparse else None
        probs_blocks = None
        if record or variant == "oracle":
            probs = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
            probs_blocks = block_sum(probs, lay.block) / lay.block  # mean mass per query row [B,H,nb,nb]
            del probs
        if record:
            rows = slice(0, lay.forced_from)
            for name in ("rf", "rf-diag", "oracle"):
                kept = (probs_blocks * self.mask(q, k, probs_blocks, name))[..., rows, :].sum(-1).mean(-1)  # [B,H]
                for hd in range(kept.shape[1]):
                    self.locality.append({"step": self.step, "layer": layer, "head": hd, "mask": name,
                                          "kept_mass": float(kept[:, hd].mean())})
        if not sparse:
            return None
        m = self.mask(q, k, probs_blocks, "rf" if variant == "rf-comp" else variant)
        self.kept_blocks += int(m.sum())
        self.all_blocks += m.numel()
        token_mask = m.repeat_interleave(lay.block, -2).repeat_interleave(lay.block, -1)
        if variant == "rf-comp":
            out = self.compensated(q, k, v, m, token_mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=token_mask)
        return out[:, :, lay.inverse].transpose(1, 2)

    def compensated(self, q, k, v, m, token_mask):
        """Kept blocks exactly; each skipped block as one key = its mean key with log(token count) added
        to the score, and value = its mean value."""
        lay = self.layout
        keys = torch.cat([k, lay.block_means(k)], dim=2)
        values = torch.cat([v, lay.block_means(v)], dim=2)
        centroid_ok = (~m).repeat_interleave(lay.block, -2)  # [B, H, L, nb]
        bias = torch.cat([torch.where(token_mask, 0.0, -math.inf),
                          torch.where(centroid_ok, math.log(lay.block), -math.inf)], dim=-1)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias.to(q.dtype))


def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """Latents as the pipeline returns them -> [T, H, W, 3] floats in [0, 1]."""
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    with torch.no_grad():
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
    video = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    return np.clip(video, 0, 1)


def to_u8(video: np.ndarray) -> np.ndarray:
    return (video * 255).round().astype(np.uint8)


def print_locality(rows: list[dict]) -> None:
    for step in sorted({r["step"] for r in rows}):
        print(f"step {step}: attention mass kept per sparse query row (mean over rows and CFG halves), per head")
        for name in ("rf", "rf-diag", "oracle"):
            cells = []
            for layer in sorted({r["layer"] for r in rows}):
                sel = [r for r in rows if r["step"] == step and r["layer"] == layer and r["mask"] == name]
                heads = sorted({r["head"] for r in sel})
                vals = [np.mean([r["kept_mass"] for r in sel if r["head"] == hd]) for hd in heads]
                cells.append(f"L{layer}:" + "/".join(f"{v:.2f}" for v in vals))
            print(f"  {name:8s} " + "  ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    ap.add_argument("--prompts", default=None, help="file with one prompt per line")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1, help="seed of the first prompt; prompt i uses seed + i")
    ap.add_argument("--configs", default="rf;oracle", help="configs separated by ';'")
    ap.add_argument("--locality", default="", help="steps at which the first dense run records locality")
    ap.add_argument("--deadline", type=float, default=0, help="start no new prompt after this many seconds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    prompts = list(args.prompt)
    if args.prompts:
        with open(args.prompts) as f:
            prompts += [line.strip() for line in f if line.strip()]
    prompts = prompts or ["a red circle moving right"]
    configs = [parse_config(c.strip()) for c in args.configs.split(";") if c.strip()]

    from diffusers import WanPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = WanPipeline.from_pretrained(args.model, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    tcfg = pipe.transformer.config
    pt, ph, pw = tcfg.patch_size
    lat_t = (args.frames - 1) // pipe.vae_scale_factor_temporal + 1
    lat_s = args.size // pipe.vae_scale_factor_spatial
    probe = Probe((lat_t // pt, lat_s // ph, lat_s // pw), args.steps, tcfg.num_layers, device)
    patch_self_attention(probe.tokens, probe.attend)
    pipe.transformer.register_forward_pre_hook(lambda *_: setattr(probe, "layer", 0))
    print(f"grid {probe.grid} = {probe.tokens} tokens; {len(prompts)} prompts, {len(configs)} configs, "
          f"device {device}", flush=True)

    def generate(prompt: str, seed: int):
        def on_step_end(_pipe, step, _t, kw):
            probe.step = step + 1
            return kw

        out = pipe(prompt=prompt, negative_prompt="", height=args.size, width=args.size,
                   num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
                   generator=torch.Generator(device="cpu").manual_seed(seed), output_type="latent",
                   callback_on_step_end=on_step_end)
        return out.frames, decode(pipe, out.frames)

    started = time.time()
    runs = []
    for i, prompt in enumerate(prompts):
        if args.deadline and time.time() - started > args.deadline:
            print(f"deadline: stopping after {i} of {len(prompts)} prompts", flush=True)
            prompts = prompts[:i]
            break
        seed = args.seed + i
        steps = {int(s) for s in args.locality.split(",") if s} if i == 0 else set()
        probe.configure(None, steps)
        dense_lat, dense_vid = generate(prompt, seed)
        dense_seen = score(prompt, to_u8(dense_vid))
        runs.append({"prompt": prompt, "seed": seed, "config": "dense", "analyser": dense_seen})
        print(f"[{time.time() - started:6.0f} s] {prompt!r} seed {seed}: dense {dense_seen['seen']}", flush=True)
        if i == 0 and probe.locality:
            print_locality(probe.locality)
        for cfg in configs:
            probe.configure(cfg)
            lat, vid = generate(prompt, seed)
            mse = float(((vid - dense_vid) ** 2).mean())
            r = {"prompt": prompt, "seed": seed, "config": cfg["name"],
                 "psnr_db": 10 * math.log10(1 / mse) if mse > 0 else math.inf,
                 "latent_cosine": float(F.cosine_similarity(lat.flatten(), dense_lat.flatten(), dim=0)),
                 "sparse_call_density": probe.kept_blocks / max(1, probe.all_blocks),
                 "analyser": score(prompt, to_u8(vid))}
            runs.append(r)
            print(f"    {cfg['name']:32s} PSNR {r['psnr_db']:6.2f} dB  cos {r['latent_cosine']:.4f}  "
                  f"density(sparse calls) {r['sparse_call_density']:.3f}  {r['analyser']['seen']}", flush=True)

    print(f"\n| config | mean PSNR dB | min | max | mean latent cos | colour+motion right | density in sparse calls |")
    print("|---|---|---|---|---|---|---|")
    ok = lambda r: r["analyser"]["colour_ok"] and r["analyser"]["motion_ok"]  # noqa: E731
    dense_ok = sum(ok(r) for r in runs if r["config"] == "dense")
    print(f"| dense | – | – | – | – | {dense_ok}/{len(prompts)} | 1.000 |")
    for cfg in configs:
        sel = [r for r in runs if r["config"] == cfg["name"]]
        p = [r["psnr_db"] for r in sel]
        print(f"| {cfg['name']} | {np.mean(p):.2f} | {min(p):.2f} | {max(p):.2f} | "
              f"{np.mean([r['latent_cosine'] for r in sel]):.4f} | {sum(ok(r) for r in sel)}/{len(sel)} | "
              f"{np.mean([r['sparse_call_density'] for r in sel]):.3f} |")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "sparse_probe.json"), "w") as f:
            json.dump({"args": vars(args), "runs": runs, "locality": probe.locality}, f, indent=1)


if __name__ == "__main__":
    main()
