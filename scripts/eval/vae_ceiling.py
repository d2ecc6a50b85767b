"""The ceiling the VAE alone puts on prompt-faithfulness (CPU, deterministic).

Renders the held-out prompts with the world's own renderer (each prompt turned back into a scene with the
world's path/background samplers, several seeded variants per prompt), round-trips every clip through each
VAE (encode -> posterior mode -> decode, f32), and reports:
  - PSNR per frame index (whole frame and object pixels only): is the causal first frame better than the rest?
  - the mean-colour error of the object pixels per frame index (RGB distance, 0..441);
  - the analyser's colour / motion / count accuracy (scripts/eval/analyse.py) on originals and reconstructions,
    and the fraction of frames in which every expected colour is detected;
  - optionally (--noise), the same after adding Gaussian noise to the normalised latents (the units the
    transformer predicts in), i.e. how much transformer error the decoder tolerates.

Usage: python3 scripts/eval/vae_ceiling.py [--vae DIR|CKPT_DIR|FILE.safetensors ...] [--variants 2] [--big 3]
       [--noise 0.1,0.25,0.5] [--json OUT.json]
Defaults: the shipped models/vdit-tiny/vae and, when present, /work/main/.gpu/train/ckptA (vae-*.safetensors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "train"))

import world  # noqa: E402
from analyse import frame_objects, parse_caption, score  # noqa: E402

DEFAULT_VAES = [os.path.join(ROOT, "models", "vdit-tiny", "vae"), "/work/main/.gpu/train/ckptA"]


class SceneError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------- scenes
def scene_for_caption(text: str, rng: np.random.Generator) -> world.Scene:
    """A random scene of the world whose caption is exactly `text` (geometry from the world's own samplers)."""
    objects_spec = parse_caption(text)
    small = len(objects_spec) > 1
    bg_part = text.split(" on a ")[1] if " on a " in text else None
    for _ in range(200):
        objects = []
        for colour, shape, motion in objects_spec:
            start, end, r0, r1 = world._object_path(rng, motion, small)
            objects.append(world.SceneObject(colour, shape, motion, tuple(start), tuple(end), float(r0), float(r1)))
        if len(objects) == 2 and not world._paths_clear(objects[0], objects[1]):
            continue
        colours = {o.colour for o in objects}
        if bg_part is None:
            bg = dataclasses.replace(world._sample_background(rng, colours), mentioned=False)
        elif bg_part == "textured background":
            bg = world._sample_background(rng, colours)
            while bg.kind == "plain":
                bg = world._sample_background(rng, colours)
            bg = dataclasses.replace(bg, mentioned=True)
        else:
            bg = world.Background("plain", bg_part.split()[0], None, 0.0, 0, True)
        scene = world.Scene(tuple(objects), bg)
        if world.caption(scene) != text:
            raise SceneError(f"caption round trip failed: {text!r} -> {world.caption(scene)!r}")
        return scene
    raise SceneError(f"no clear two-object layout found for {text!r}")


def make_clips(variants: int, size: int, frames: int, seed: int, prompts: list[str]):
    """[(prompt, uint8 video [T,H,W,3], uint8 background-only video [T,H,W,3])]."""
    out = []
    for p_index, text in enumerate(prompts):
        for v in range(variants):
            rng = np.random.default_rng([seed, size, p_index, v])
            scene = scene_for_caption(text, rng)
            video = world.render(scene, size, frames)
            background = world.render(world.Scene((), scene.background), size, frames)
            out.append((text, video, background))
    return out


# ---------------------------------------------------------------------------------------------- VAE
def load_vae(spec: str):
    from diffusers import AutoencoderKLWan
    from safetensors.torch import load_file

    if os.path.isdir(spec) and os.path.exists(os.path.join(spec, "config.json")):
        vae = AutoencoderKLWan.from_pretrained(spec, torch_dtype=torch.float32)
    else:
        from train import VAE_CONFIG

        if os.path.isdir(spec):
            files = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                           if f.startswith("vae-") and f.endswith(".safetensors"))
        else:
            files = [spec]
        if not files:
            raise FileNotFoundError(f"no VAE weights in {spec}")
        state = {}
        for f in files:
            state.update({k: v.to(torch.float32) for k, v in load_file(f).items()})
        vae = AutoencoderKLWan(**VAE_CONFIG)
        vae.load_state_dict(state)
    return vae.to(torch.float32).eval()


def latent_norm(vae):
    """Per-channel mean/std [1,16,1,1,1] from the shipped config (the transformer's latent units), or None."""
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is None or std is None or len(mean) != vae.config.z_dim:
        shipped = os.path.join(ROOT, "models", "vdit-tiny", "vae", "config.json")
        with open(shipped) as f:
            cfg = json.load(f)
        mean, std = cfg["latents_mean"], cfg["latents_std"]
    return (torch.tensor(mean).view(1, -1, 1, 1, 1), torch.tensor(std).view(1, -1, 1, 1, 1))


@torch.no_grad()
def roundtrip(vae, video: np.ndarray, noise: float, gen: torch.Generator, norm) -> tuple[np.ndarray, dict]:
    """uint8 [T,H,W,3] -> reconstruction uint8 [T,H,W,3] (through latent [1,16,1+(T-1)/4,H/8,W/8])."""
    dev = next(vae.parameters()).device
    x = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float().div(127.5).sub(1.0).to(dev)  # [1,3,T,H,W], [-1,1]
    posterior = vae.encode(x).latent_dist
    z = posterior.mode()
    # How noisy the posterior is relative to the spread of its mode (the decoder was trained on samples).
    stats = {"latent_std_ratio": float((posterior.std / (z.std() + 1e-8)).mean())}
    if noise > 0:
        mean, std = (t.to(dev) for t in norm)
        zn = (z - mean) / std
        zn = zn + noise * torch.randn(zn.shape, generator=gen).to(dev)
        z = zn * std + mean
    y = vae.decode(z).sample  # [1,3,T,H,W] in about [-1,1]
    rec = ((y[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return rec, stats


# ---------------------------------------------------------------------------------------------- metrics
def frame_colour_hits(text: str, clip: np.ndarray) -> np.ndarray:
    """bool [T]: every expected colour is among the frame's detected objects."""
    expected = {c for c, _, _ in parse_caption(text)}
    return np.array([expected <= {o["colour"] for o in frame_objects(f)} for f in clip])


def evaluate(clips, recs) -> dict:
    frames = clips[0][1].shape[0]
    mse = np.zeros(frames)
    obj_se = np.zeros(frames)
    obj_n = np.zeros(frames)
    colour_err = np.zeros(frames)
    colour_n = np.zeros(frames)
    hits_orig = np.zeros(frames)
    hits_rec = np.zeros(frames)
    orig_scores, rec_scores = [], []
    for (text, video, background), rec in zip(clips, recs):
        v = video.astype(np.float64) / 255.0
        r = rec.astype(np.float64) / 255.0
        mse += ((v - r) ** 2).mean(axis=(1, 2, 3))
        mask = np.any(video != background, axis=-1)  # [T,H,W] object pixels (incl. anti-aliased edge)
        obj_se += (((v - r) ** 2).mean(axis=-1) * mask).sum(axis=(1, 2))
        obj_n += mask.sum(axis=(1, 2))
        for t in range(frames):
            if mask[t].any():
                diff = video[t][mask[t]].astype(np.float64).mean(0) - rec[t][mask[t]].astype(np.float64).mean(0)
                colour_err[t] += np.linalg.norm(diff)
                colour_n[t] += 1
        hits_orig += frame_colour_hits(text, video)
        hits_rec += frame_colour_hits(text, rec)
        orig_scores.append(score(text, video))
        rec_scores.append(score(text, rec))
    n = len(clips)

    def acc(scores):
        out = {k: sum(s[k] for s in scores) / n for k in ("colour_ok", "motion_ok", "count_ok")}
        out["all_ok"] = sum(s["colour_ok"] and s["motion_ok"] and s["count_ok"] for s in scores) / n
        return out

    psnr = lambda m: (-10 * np.log10(np.maximum(m, 1e-12))).round(2).tolist()  # noqa: E731
    return {
        "clips": n,
        "psnr_per_frame": psnr(mse / n),
        "psnr_all": float(np.round(-10 * np.log10(mse.sum() / (n * frames)), 2)),
        "object_psnr_per_frame": psnr(obj_se / np.maximum(obj_n, 1)),
        "object_colour_err_per_frame": (colour_err / np.maximum(colour_n, 1)).round(1).tolist(),
        "frame_colour_hit_orig": (hits_orig / n).round(3).tolist(),
        "frame_colour_hit_rec": (hits_rec / n).round(3).tolist(),
        "analyser_orig": acc(orig_scores),
        "analyser_rec": acc(rec_scores),
        "misses": [{"prompt": c[0], "seen": s["seen"]} for c, s in zip(clips, rec_scores)
                   if not (s["colour_ok"] and s["motion_ok"] and s["count_ok"])],
    }


def fmt(values, width=6) -> str:
    return " ".join(f"{v:{width}.{1 if isinstance(v, float) else 0}f}" for v in values)


def report(name: str, res: dict) -> None:
    print(f"== {name}: {res['clips']} clips, PSNR {res['psnr_all']} dB", flush=True)
    print(f"  frame              {fmt(list(range(len(res['psnr_per_frame']))))}")
    print(f"  PSNR dB            {fmt(res['psnr_per_frame'])}")
    print(f"  object PSNR dB     {fmt(res['object_psnr_per_frame'])}")
    print(f"  obj colour err     {fmt(res['object_colour_err_per_frame'])}")
    print(f"  colour hit orig    {fmt([100 * x for x in res['frame_colour_hit_orig']])}")
    print(f"  colour hit rec     {fmt([100 * x for x in res['frame_colour_hit_rec']])}")
    print(f"  analyser originals {res['analyser_orig']}")
    print(f"  analyser recon     {res['analyser_rec']}")
    print(f"  posterior std / latent std {res['posterior_std_over_latent_std']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vae", action="append", default=None, help="diffusers VAE dir, checkpoint dir or shard file")
    ap.add_argument("--variants", type=int, default=2, help="scenes per held-out prompt at 128x128x17")
    ap.add_argument("--big", type=int, default=3, help="held-out prompts rendered once at 256x256x49 (0: none)")
    ap.add_argument("--noise", default="", help="comma list of latent noise std (normalised units), 128px only")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU machine: seconds instead of minutes)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vaes = args.vae or [p for p in DEFAULT_VAES if os.path.exists(p)]
    noises = [float(x) for x in args.noise.split(",") if x.strip()]

    small = make_clips(args.variants, 128, 17, args.seed, world.HELD_OUT_PROMPTS)
    # Spread the big prompts over the list (single objects, backgrounds, two objects).
    big_prompts = [world.HELD_OUT_PROMPTS[i] for i in np.linspace(0, len(world.HELD_OUT_PROMPTS) - 1,
                                                                   args.big).round().astype(int)] if args.big else []
    big = make_clips(1, 256, 49, args.seed, big_prompts)
    results = {}
    for spec in vaes:
        vae = load_vae(spec).to(args.device)
        norm = latent_norm(vae)
        name = os.path.relpath(spec, ROOT) if spec.startswith(ROOT) else spec
        runs = [("128x128x17", small, 0.0)] + [(f"128x128x17 latent noise {s}", small, s) for s in noises]
        if big:
            runs.append(("256x256x49", big, 0.0))
        for label, clips, noise in runs:
            t0 = time.time()
            gen = torch.Generator().manual_seed(args.seed)
            out = [roundtrip(vae, video, noise, gen, norm) for _, video, _ in clips]
            res = evaluate(clips, [rec for rec, _ in out])
            res["posterior_std_over_latent_std"] = round(float(np.mean([st["latent_std_ratio"] for _, st in out])), 3)
            res["seconds"] = round(time.time() - t0, 1)
            results[f"{name} {label}"] = res
            report(f"{name} {label} ({res['seconds']} s)", res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
