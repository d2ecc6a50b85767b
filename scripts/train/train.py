"""Train vdit-tiny on the GPU machine: VAE, then cached latents, then text encoder + transformer jointly.

Every stage runs against a wall-clock budget (the device lease is the scarce thing, not steps), and the
learning-rate schedules run over elapsed time. Checkpoints go to --out as bf16 safetensors shards of at most
15 MiB (the device returns at most 8 files of 16 MiB), so a later call can resume with --resume DIR:
the VAE is then reused (and its latents re-encoded, as the data is deterministic by seed) and the
transformer/text encoder continue from their EMA weights with a fresh optimiser.

Usage (device): python3 train.py --out $OUT --deadline 540 [--resume .gpu/train/ckpt]
Usage (CPU smoke test): python3 train.py --out /tmp/x --deadline 120 --smoke
Attention concentration, how models/vdit-tiny was made from the vdit-tiny v3 weights (vdit-tiny-plain, restored
    by `git checkout dda37b4 -- models/vdit-tiny-plain models/vdit-tiny-plain.toml`):
    vdit-tiny v4 (training runs 15-16): --resume models/vdit-tiny-plain --vae-more-seconds 0 --share256 0.6 --concentrate 0.1
    --concentrate-target 0.85 --lr 2e-4 --warmup 50 --ema 0.995, then --resume OUT --lr 1e-4 --warmup 20;
    vdit-tiny v5 (training runs A-C, each from the last): --vae-more-seconds 0 --concentrate 0.25 --concentrate-select predicted
    --warmup 20 --ema 0.995 with --concentrate-target 0.96 --share256 0.6 --lr 1e-4, then 0.97 / 0.5 / 1e-4,
    then 0.97 / 0.35 / 6e-5
Sparse-aware fine-tune (the v3 sparsity study's vdit-tiny-sparse, no longer shipped): --resume models/vdit-tiny-plain
    --vae-more-seconds 0 --eval-seconds 0 --sparse-train 1 --share256 0.6 --sparse-min 0.7 --sparse-max 0.9
    --sparse-weight 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "eval"))

import world  # noqa: E402

START = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - START:7.1f}s] {msg}", flush=True)


def render_chunk(job: tuple[int, int, int, int]) -> tuple[np.ndarray, list[str]]:
    seed, count, size, frames = job
    return world.render_batch(seed, count, size, frames)


# ---------------------------------------------------------------------------------------------- configs
VAE_CONFIG = dict(
    base_dim=32,
    z_dim=16,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
)
TEXT_CONFIG = dict(
    vocab_size=32,
    d_model=128,
    d_kv=32,
    d_ff=512,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=64,
    in_channels=16,
    out_channels=16,
    text_dim=128,
    freq_dim=256,
    ffn_dim=1024,
    num_layers=8,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
SHIFT = 3.0  # flow shift, the same as the shipped scheduler's
MAX_TEXT = 512  # Wan pads text embeddings to 512 rows
CAPTION_TOKENS = 32  # the grammar's longest caption is ~22 tokens with EOS


# ---------------------------------------------------------------------------------------------- utilities
def save_sharded(state: dict, out_dir: str, name: str, limit: int = 15 * 2**20) -> list[str]:
    """bf16 safetensors shards of at most `limit` bytes: <name>-<i>.safetensors."""
    import torch
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for key in sorted(state):
        t = state[key].detach().to("cpu", torch.bfloat16).contiguous()
        nbytes = t.numel() * 2
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[key] = t
        size += nbytes
    if current:
        shards.append(current)
    paths = []
    for i, shard in enumerate(shards):
        path = os.path.join(out_dir, f"{name}-{i}.safetensors")
        save_file(shard, path)
        paths.append(path)
    return paths


EXPORTED_WEIGHTS = {  # where export.py puts each part in the diffusers layout
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "transformer": "transformer/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}


def load_sharded(in_dir: str, name: str) -> dict | None:
    """A part's weights (f32) from a checkpoint folder (<name>-<i>.safetensors shards) or, when the
    folder is an export (models/vdit-tiny: model_index.json), from its diffusers layout."""
    import torch
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(in_dir) if f.startswith(name + "-") and f.endswith(".safetensors"))
    if not files and os.path.exists(os.path.join(in_dir, "model_index.json")):
        files = [EXPORTED_WEIGHTS[name]]
    if not files:
        return None
    state = {}
    for f in files:
        state.update({k: v.to(torch.float32) for k, v in load_file(os.path.join(in_dir, f)).items()})
    return state


def cosine_lr(base: float, fraction: float, warmup: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up over steps, then cosine over elapsed time fraction down to 10%."""
    warm = min(1.0, (step + 1) / warmup_steps)
    decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))
    return base * warm * decay


def to_video(clips, device):
    """uint8 [N,T,H,W,3] (numpy or torch) -> float [N,3,T,H,W] in [-1,1] on device."""
    import torch

    x = torch.as_tensor(clips).to(device, non_blocking=True)
    return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------------------------- VAE
def probe_vae_step_time(vae, source, crop: tuple[int, int], batches: tuple[int, ...], steps: int = 8) -> dict:
    """ms per forward+backward of the VAE loss on one fixed crop shape, chunked vs whole-clip passes.

    Gradients are thrown away (no optimiser step), so the probe leaves the weights as they are."""
    import torch
    import vae_wholeclip

    ct, cs = crop
    report = {}
    for chunked in (True, False):
        encode, decode = vae_wholeclip.passes(vae, chunked)
        for batch in batches:
            video = to_video(source[:batch, :ct, :cs, :cs], source.device)
            times = []
            for i in range(steps + 3):
                torch.cuda.synchronize() if video.is_cuda else None
                t = time.time()
                with torch.autocast(video.device.type, dtype=torch.bfloat16, enabled=video.is_cuda):
                    recon = decode(encode(video).sample())
                (recon.float() - video).abs().mean().backward()
                torch.cuda.synchronize() if video.is_cuda else None
                if i >= 3:  # the first calls autotune cuDNN for the shape
                    times.append(time.time() - t)
            vae.zero_grad(set_to_none=True)
            report[f"{'chunked' if chunked else 'whole-clip'} batch {batch}"] = round(1000 * float(np.median(times)), 1)
    log(f"VAE step-time probe (crop {ct}x{cs}x{cs}, fwd+bwd, median of {steps}): {report}")
    return report


def train_vae(args, device, pool, budget: float, init_state: dict | None = None, lr: float | None = None):
    import torch
    import vae_wholeclip
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0 if init_state is None else 1)
    vae = AutoencoderKLWan(**VAE_CONFIG)
    if init_state is not None:
        vae.load_state_dict(init_state)
    vae.to(device)
    lr = lr or args.vae_lr
    log(f"VAE params {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M, budget {budget:.0f}s")
    # A fixed pool of clips at both render sizes; random crops of it form the batches.
    n128, n256 = (64, 4) if args.smoke else (3000, 240)
    offset = 0 if init_state is None else 500
    jobs = [(10_000 + offset + i, 100, 128, 17) for i in range(n128 // 100)] if not args.smoke else [(10_000, 64, 128, 17)]
    jobs += [(20_000 + offset + i, 20, 256, 49) for i in range(n256 // 20)] if not args.smoke else [(20_000, 4, 256, 49)]
    pool128, pool256 = [], []
    for clips, _ in pool.imap(render_chunk, jobs):
        (pool128 if clips.shape[2] == 128 else pool256).append(torch.from_numpy(clips).to(device))
    pool128, pool256 = torch.cat(pool128), torch.cat(pool256)
    log(f"VAE data: {tuple(pool128.shape)} + {tuple(pool256.shape)}")
    probe = None
    if args.vae_probe:
        probe = probe_vae_step_time(vae, pool128, (args.vae_crop_t, args.vae_crop_s), (16, 32))

    crop_t, crop_s, batch = (args.vae_crop_t, args.vae_crop_s, args.vae_batch) if not args.smoke else (5, 32, 2)
    crop_t256 = (args.vae_crop_t256 or crop_t) if not args.smoke else 9
    crop_s256 = (args.vae_crop_s256 or crop_s) if not args.smoke else 32
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    vae_encode, vae_decode = vae_wholeclip.passes(vae, args.vae_chunked)
    gen = torch.Generator(device="cpu").manual_seed(1)
    t0, step, history, running = time.time(), 0, [], []
    while True:
        elapsed = time.time() - t0
        if elapsed > budget or (args.smoke and step >= 3):
            break
        # Three quarters of the crops from 128-px clips, a quarter from 256-px ones (sharper, slower edges).
        big = torch.rand(1, generator=gen).item() < 0.25
        source = pool256 if big else pool128
        # Long clips (256 px, 49 frames) may take longer, narrower crops: the causal cache must see
        # as many latent frames in training as at inference.
        ct, cs = (crop_t256, crop_s256) if big else (crop_t, crop_s)
        ct = min(ct, source.shape[1])
        idx = torch.randint(len(source), (batch,), generator=gen)
        t_start = torch.randint(source.shape[1] - ct + 1, (1,), generator=gen).item()
        y = torch.randint(source.shape[2] - cs + 1, (1,), generator=gen).item()
        x = torch.randint(source.shape[3] - cs + 1, (1,), generator=gen).item()
        crop = source[idx.to(device), t_start : t_start + ct, y : y + cs, x : x + cs]
        video = to_video(crop, device)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, elapsed / budget, 0, step, 100)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            posterior = vae_encode(video)
            z = posterior.sample()
            recon = vae_decode(z)
        recon = recon.float()
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        l1 = (recon - video).abs().mean()
        mse = (recon - video).pow(2).mean()
        if args.vae_fg_weight > 0:
            # Objects are a few % of the pixels: weight pixels away from their frame's median colour
            # (the plain or near-grey textured background) so the loss is not the background's.
            median = video.flatten(3).median(dim=3).values[..., None, None]  # [B,3,T,1,1]
            fg = ((video - median).abs().amax(dim=1, keepdim=True) > 0.15).float()  # [B,1,T,H,W]
            w = 1.0 + args.vae_fg_weight * fg
            w = w / w.mean()
            loss = (w * ((recon - video).abs() + (recon - video).pow(2))).mean() + args.vae_kl * kl
        else:
            loss = l1 + mse + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running.append((l1.item(), mse.item(), kl.item()) if step % 10 == 0 else None)
        step += 1
        if step % 100 == 0 or step == 1:
            vals = np.array([r for r in running if r is not None])
            running = []
            psnr = -10 * math.log10(vals[:, 1].mean() / 4.0)  # MSE on [-1,1] -> PSNR on [0,1]
            history.append({"step": step, "seconds": round(time.time() - t0, 1), "l1": float(vals[:, 0].mean()),
                            "mse": float(vals[:, 1].mean()), "psnr_db": round(psnr, 2), "kl": float(vals[:, 2].mean())})
            log(f"VAE step {step}: {history[-1]}")
    log(f"VAE trained {step} steps in {time.time() - t0:.0f}s ({(time.time() - t0) / max(step, 1) * 1000:.0f} ms/step)")
    # Round to bf16 now so the latents we cache come from exactly the weights we ship.
    with torch.no_grad():
        for p in vae.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return vae, {"steps": step, "seconds": round(time.time() - t0, 1), "history": history,
                 "crop": [crop_t, crop_s, crop_s], "crop256": [crop_t256, crop_s256, crop_s256], "batch": batch,
                 "kl": args.vae_kl, "fg_weight": args.vae_fg_weight, "lr": lr,
                 "passes": "chunked" if args.vae_chunked else "whole-clip", "step_time_probe_ms": probe}



# ---------------------------------------------------------------------------------------------- latents
def vae_fingerprint(vae) -> str:
    """A short hash of the VAE's weights: cached latents are only valid for the VAE that encoded them."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def load_latent_cache(path: str, fingerprint: str, plan: list) -> dict | None:
    """The cache written by save_latent_cache when it belongs to this VAE and this data plan, else None."""
    import torch

    if not os.path.exists(path):
        return None
    cache = torch.load(path, map_location="cpu", weights_only=False)
    if cache.get("fingerprint") != fingerprint or cache.get("plan") != plan:
        log(f"latent cache {path} is for another VAE or data plan: not used")
        return None
    return cache


def save_latent_cache(path: str, cache: dict) -> None:
    """Write atomically (temp file, then rename): a cut-off call must not leave half a cache behind."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(cache, path + ".tmp")
    os.replace(path + ".tmp", path)


def encode_latents(args, device, pool, vae, budget: float):
    """Render the training clips and encode them (posterior mean). Returns {size: (latents bf16, captions)}.

    With --latent-cache FILE (in a folder that outlives the training run), the clips already
    encoded by this same VAE are loaded and the budget goes to the next render jobs, so the data grows
    from training run to training run instead of being rendered and encoded again."""
    import torch
    import vae_wholeclip

    if args.smoke:
        plan = [(128, 17, 4, 2), (256, 49, 1, 1)]
    else:
        plan = [(128, 17, 200, args.clips128 // 200), (256, 49, 24, args.clips256 // 24)]
    jobs = []
    base = 1_000_000 * (args.data_seed + 1)
    # Interleave the two sizes so a cut-short budget still leaves both.
    for size, frames, chunk, count in plan:
        for i in range(count):
            jobs.append((i / count, (base + size * 1000 + i, chunk, size, frames)))
    jobs = [job for _, job in sorted(jobs, key=lambda j: j[0])]
    out = {128: ([], []), 256: ([], [])}
    t0 = time.time()
    vae.eval()
    cache_key = [list(p) for p in plan] + [base]
    fingerprint = vae_fingerprint(vae) if args.latent_cache else None
    cache = load_latent_cache(args.latent_cache, fingerprint, cache_key) if args.latent_cache else None
    done = loaded = 0
    if cache is not None:
        done = loaded = cache["jobs_done"]
        for size in out:
            if size in cache["latents"]:
                out[size][0].append(cache["latents"][size].to(device))
                out[size][1].extend(cache["texts"][size])
        log(f"latent cache: {done} of {len(jobs)} render jobs loaded in {time.time() - t0:.0f}s")
    vae_encode, _ = vae_wholeclip.passes(vae, args.vae_chunked)
    # A sliding window of outstanding render jobs: when the budget runs out we stop submitting and drain
    # the few in flight (Pool.terminate with large results in flight can deadlock). The jobs kept are
    # always a prefix of the job list (results are taken in order), which is what the cache records.
    pending = [pool.apply_async(render_chunk, (job,)) for job in jobs[done : done + args.workers]]
    next_job = done + len(pending)
    with torch.no_grad():
        while pending:
            clips, texts = pending.pop(0).get()
            if time.time() - t0 > budget:
                continue  # draining
            done += 1
            if next_job < len(jobs):
                pending.append(pool.apply_async(render_chunk, (jobs[next_job],)))
                next_job += 1
            size = clips.shape[2]
            step = 100 if size == 128 else 8
            for i in range(0, len(clips), step):
                video = to_video(clips[i : i + step], device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    z = vae_encode(video).mode()
                out[size][0].append(z.to(torch.bfloat16))
            out[size][1].extend(texts)
    if done < len(jobs):
        log(f"latent budget reached after {done} of {len(jobs)} render jobs")
    pool.close()
    pool.join()
    result = {}
    for size, (latents, texts) in out.items():
        if latents:
            result[size] = (torch.cat(latents), texts)
            log(f"latents {size}px: {tuple(result[size][0].shape)}")
    log(f"encoded in {time.time() - t0:.0f}s")
    if args.latent_cache and done > loaded:
        save_latent_cache(args.latent_cache, {
            "fingerprint": fingerprint, "plan": cache_key, "jobs_done": done,
            "latents": {size: lat.cpu() for size, (lat, _) in result.items()},
            "texts": {size: texts for size, (_, texts) in result.items()}})
        log(f"latent cache saved ({done} jobs) at {time.time() - t0:.0f}s")
    return result


def latent_stats(data) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over all cached latents (stored in vae/config.json)."""
    import torch

    flat = torch.cat([lat.float().transpose(0, 1).reshape(16, -1) for lat, _ in data.values()], dim=1)
    return flat.mean(dim=1).tolist(), flat.std(dim=1).tolist()


# ---------------------------------------------------------------------------------------------- transformer
def build_text_side():
    from tokenizer import build_tokenizer
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    tok = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), pad_token="<pad>", eos_token="</s>",
                                  unk_token="<unk>", model_max_length=512)
    return tok, UMT5EncoderModel(UMT5Config(**TEXT_CONFIG))


def tokenise(tok, texts: list[str], device):
    import torch

    enc = tok(texts, padding="max_length", max_length=CAPTION_TOKENS, truncation=True, add_special_tokens=True,
              return_attention_mask=True, return_tensors="pt")
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def encode_text(text_encoder, ids, mask):
    """[B, CAPTION_TOKENS] -> context [B, 512, d] exactly as WanPipeline builds it: rows past the caption are zero."""
    import torch.nn.functional as F

    hidden = text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = hidden * mask[..., None].to(hidden.dtype)
    return F.pad(hidden, (0, 0, 0, MAX_TEXT - hidden.shape[1]))


def train_transformer(args, device, data, stats, budget: float, resume: str | None, out_dir: str, save_cb):
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(args.data_seed + 7)
    tok, text_encoder = build_text_side()
    transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    if resume:
        for name, model in (("transformer", transformer), ("text_encoder", text_encoder)):
            state = load_sharded(resume, name)
            if state is not None:
                missing, unexpected = model.load_state_dict(state, strict=False)
                # umT5 ties shared/embed_tokens; everything else must match.
                assert not unexpected and all("embed_tokens" in k for k in missing), (missing, unexpected)
                log(f"resumed {name} from {resume}")
    transformer.to(device).train()
    text_encoder.to(device).train()
    n_tf = sum(p.numel() for p in transformer.parameters())
    n_te = sum(p.numel() for p in text_encoder.parameters())
    log(f"transformer {n_tf / 1e6:.2f} M params, text encoder {n_te / 1e6:.2f} M; budget {budget:.0f}s")

    mean = torch.tensor(stats[0], device=device).view(1, 16, 1, 1, 1)
    std = torch.tensor(stats[1], device=device).view(1, 16, 1, 1, 1)
    buckets = []
    for size, (latents, texts) in sorted(data.items()):
        ids, mask = tokenise(tok, texts, device)
        batch = (args.batch128 if size == 128 else args.batch256) if not args.smoke else 2
        buckets.append({"size": size, "latents": latents, "ids": ids, "mask": mask, "batch": batch})
    empty_ids, empty_mask = tokenise(tok, [""], device)
    weights = torch.tensor([1.0 if b["size"] == 128 else args.share256 / (1 - args.share256) for b in buckets])

    # Token grid of the largest clips (the one --sparse-train and --concentrate work on): latent [T, H, W] over
    # the patch size.
    grid = tuple(n // p for n, p in zip(buckets[-1]["latents"].shape[2:], TRANSFORMER_CONFIG["patch_size"]))
    sparse = None
    if args.sparse_train > 0:
        import rainfusion_torch

        try:
            sparse = rainfusion_torch.SparseTraining(grid, device, block=args.sparse_block)
        except ValueError as e:
            raise SystemExit(f"--sparse-train on the {grid} token grid of the largest clips: {e}")
        log(f"sparse training on grid {grid}: {args.sparse_train:.0%} of its steps, sparsity "
            f"{args.sparse_min}-{args.sparse_max}, consistency weight {args.sparse_weight}")

    concentration = None
    if args.concentrate > 0:
        import rainfusion_torch

        try:
            concentration = rainfusion_torch.AttentionConcentration(
                grid, device, sparsity=args.concentrate_sparsity, query_blocks=args.concentrate_blocks,
                rows=args.concentrate_rows, block=args.sparse_block, select=args.concentrate_select)
        except ValueError as e:
            raise SystemExit(f"--concentrate on the {grid} token grid of the largest clips: {e}")
        log(f"concentration on grid {grid}: kept mass at sparsity {args.concentrate_sparsity} in the blocks chosen "
            f"by {args.concentrate_select} pushed to {args.concentrate_target} with weight {args.concentrate}")

    params = list(transformer.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone().float() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    gen = torch.Generator(device="cpu").manual_seed(args.data_seed + 11)
    t0, step, history, running, last_save = time.time(), 0, [], {}, time.time()

    def publish_ema():
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)

    def snapshot():
        saved = [p.detach().clone() for p in params]
        publish_ema()
        save_cb(transformer, text_encoder, {"steps": step, "seconds": round(time.time() - t0, 1), "history": history})
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)

    while True:
        elapsed = time.time() - t0
        if elapsed > budget or (args.smoke and step >= 4):
            break
        bucket = buckets[int(torch.multinomial(weights, 1, generator=gen))] if len(buckets) > 1 else buckets[0]
        b = bucket["batch"]
        idx = torch.randint(len(bucket["latents"]), (b,), generator=gen).to(device)
        x0 = (bucket["latents"][idx].float() - mean) / std
        ids, mask = bucket["ids"][idx].clone(), bucket["mask"][idx].clone()
        drop = torch.rand(b, generator=gen).to(device) < args.text_drop
        ids[drop], mask[drop] = empty_ids[0], empty_mask[0]
        # Shifted sigma sampling: half uniform, half logit-normal, then the inference shift.
        u = torch.where(torch.rand(b, generator=gen) < 0.5, torch.rand(b, generator=gen),
                        torch.sigmoid(torch.randn(b, generator=gen))).to(device)
        sigma = SHIFT * u / (1 + (SHIFT - 1) * u)
        noise = torch.randn_like(x0)
        s = sigma.view(b, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        for group in opt.param_groups:
            group["lr"] = cosine_lr(args.lr, (elapsed + args.lr_offset) / (budget + args.lr_offset), 0, step,
                                    args.warmup)
        sparse_step = (sparse is not None and bucket is buckets[-1]
                       and float(torch.rand(1, generator=gen)) < args.sparse_train)
        measure = concentration.record() if concentration is not None and bucket is buckets[-1] \
            else contextlib.nullcontext()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            context = encode_text(text_encoder, ids, mask)
            with measure:
                pred = transformer(xt, sigma * 1000.0, context, return_dict=False)[0]
            if sparse_step:
                # The same inputs under RainFusion's mask; trained towards the (detached) dense answer.
                sparsity = args.sparse_min + (args.sparse_max - args.sparse_min) * float(torch.rand(1, generator=gen))
                with sparse.active(sparsity):
                    pred_sparse = transformer(xt, sigma * 1000.0, context, return_dict=False)[0]
        loss = fm_loss = (pred.float() - (noise - x0)).pow(2).mean()
        if sparse_step:
            gap = (pred_sparse.float() - pred.detach().float()).pow(2).mean()
            loss = loss + args.sparse_weight * gap
            running.setdefault("sparse_gap", []).append(gap.detach())
        if concentration is not None and concentration.kept:
            kept = torch.stack(concentration.kept)  # [layers, B, H, R]
            concentration.kept = []
            shortfall = (args.concentrate_target - kept).clamp(min=0).mean()
            loss = loss + args.concentrate * shortfall
            running.setdefault("kept_mass", []).append(kept.detach().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1 - decay)
        if step % 5 == 0:
            running.setdefault(f"loss{bucket['size']}", []).append(fm_loss.detach())
        step += 1
        if step % 200 == 0 or step == 1:
            entry = {"step": step, "seconds": round(time.time() - t0, 1)}
            for name, losses in running.items():
                entry[name] = round(float(torch.stack(losses).mean()), 4)
            running = {}
            history.append(entry)
            log(f"DiT step {step}: {entry}")
        if time.time() - last_save > 100:
            snapshot()
            last_save = time.time()
    log(f"transformer trained {step} steps in {time.time() - t0:.0f}s "
        f"({(time.time() - t0) / max(step, 1) * 1000:.0f} ms/step)")
    publish_ema()
    transformer.eval()
    text_encoder.eval()
    return transformer, text_encoder, tok, {"steps": step, "seconds": round(time.time() - t0, 1), "history": history}


# ---------------------------------------------------------------------------------------------- eval
def quick_eval(args, device, vae, transformer, text_encoder, tok, stats, out_dir, budget: float):
    """Generate the held-out prompts with diffusers' WanPipeline and score them with the analyser."""
    import torch
    import frame_strip
    from analyse import score, summarise
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from PIL import Image

    vae.register_to_config(latents_mean=stats[0], latents_std=stats[1])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=SHIFT)
    pipe = WanPipeline(tokenizer=tok, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.time()
    report = {}
    prompts = world.HELD_OUT_PROMPTS if not args.smoke else world.HELD_OUT_PROMPTS[:2]
    if budget <= 0:
        log("eval skipped (--eval-seconds 0)")
        return {"skipped": True}
    for size, frames in ((128, 17), (256, 49)):
        if time.time() - t0 > budget:
            break
        chosen = prompts if size == 128 else prompts[:6]
        with torch.no_grad():
            video = pipe(prompt=chosen, negative_prompt=[""] * len(chosen), height=size, width=size,
                         num_frames=frames, num_inference_steps=2 if args.smoke else 30, guidance_scale=5.0,
                         generator=torch.Generator(device="cpu").manual_seed(42), output_type="np").frames
        clips = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
        results = [score(p, c) for p, c in zip(chosen, clips)]
        for p, r in zip(chosen, results):
            log(f"  {size}px {'ok ' if r['colour_ok'] and r['motion_ok'] else 'BAD'} {p!r} -> {r['seen']}")
        report[f"{size}x{frames}"] = summarise(results)
        log(f"eval {size}px x {frames}: {report[f'{size}x{frames}']}")
        strip = np.concatenate([frame_strip.row(c, 5) for c in clips[:6]])
        Image.fromarray(strip).save(os.path.join(out_dir, f"samples{size}.png"))
    return report


# ---------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", default=None,
                    help="a folder holding an earlier call's checkpoint files, or an export (models/vdit-tiny)")
    ap.add_argument("--resume-dit", default=None,
                    help="take the transformer and text encoder from this folder instead of --resume "
                         "(e.g. a VAE-only checkpoint in --resume, the shipped model here)")
    ap.add_argument("--deadline", type=float, default=540, help="seconds from start for the whole run")
    ap.add_argument("--vae-seconds", type=float, default=170)
    ap.add_argument("--latent-seconds", type=float, default=60)
    ap.add_argument("--eval-seconds", type=float, default=40)
    ap.add_argument("--clips128", type=int, default=16000)
    ap.add_argument("--clips256", type=int, default=1920)
    ap.add_argument("--share256", type=float, default=0.25, help="fraction of transformer steps on 256x49")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--vae-lr", type=float, default=6e-4)
    ap.add_argument("--vae-kl", type=float, default=1e-4)
    ap.add_argument("--vae-more-seconds", type=float, default=0.0, help="on resume, train the VAE this much longer")
    ap.add_argument("--vae-more-lr", type=float, default=3e-4)
    ap.add_argument("--vae-crop-t", type=int, default=9, help="frames per VAE training crop (1 + 4k)")
    ap.add_argument("--vae-crop-s", type=int, default=64)
    ap.add_argument("--vae-crop-t256", type=int, default=0, help="frames per crop of the 256-px clips (0: --vae-crop-t)")
    ap.add_argument("--vae-crop-s256", type=int, default=0, help="pixels per side of those crops (0: --vae-crop-s)")
    ap.add_argument("--vae-fg-weight", type=float, default=0.0,
                    help="extra loss weight of object pixels (away from the frame's median colour); 0: plain L1+MSE")
    ap.add_argument("--vae-only", action="store_true", help="train (or continue) the VAE, save it and stop")
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-chunked", action="store_true",
                    help="encode/decode chunk by chunk as diffusers does at inference (default: whole-clip passes, "
                         "the same function in fewer, larger kernels; scripts/train/vae_wholeclip.py checks it)")
    ap.add_argument("--latent-cache", default=None,
                    help="file keeping the encoded training latents between runs on the same machine "
                         "(reused only for the same VAE weights; the latent budget then encodes more clips)")
    ap.add_argument("--vae-probe", action="store_true",
                    help="before VAE training, time a step with chunked and whole-clip passes at batch 16 and 32")
    ap.add_argument("--restat", action="store_true", help="recompute latent stats on resume (VAE changed)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch128", type=int, default=128, help="transformer batch of 128x17 latents")
    ap.add_argument("--batch256", type=int, default=32, help="transformer batch of 256x49 latents")
    ap.add_argument("--lr-offset", type=float, default=0.0, help="seconds of cosine already spent (resume)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--text-drop", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--sparse-train", type=float, default=0.0,
                    help="share of the steps on the largest clips that also run the transformer under RainFusion's "
                         "block mask (scripts/train/rainfusion_torch.py) and add the gap to the dense prediction to "
                         "the loss; 0: dense training only")
    ap.add_argument("--sparse-min", type=float, default=0.5, help="sparsity drawn uniformly from [min, max]")
    ap.add_argument("--sparse-max", type=float, default=0.9)
    ap.add_argument("--sparse-weight", type=float, default=1.0, help="weight of the sparse-dense gap in the loss")
    ap.add_argument("--sparse-block", type=int, default=128)
    ap.add_argument("--concentrate", type=float, default=0.0,
                    help="weight of the attention-concentration term on the 256x49 grid (0: off): how far the share "
                         "of a query row's dense attention mass inside the key blocks RainFusion would keep (chosen "
                         "by --concentrate-select) falls below --concentrate-target joins the loss (dense attention "
                         "unchanged)")
    ap.add_argument("--concentrate-target", type=float, default=0.9)
    ap.add_argument("--concentrate-sparsity", type=float, default=0.8)
    ap.add_argument("--concentrate-blocks", type=int, default=2, help="query blocks sampled per layer and step")
    ap.add_argument("--concentrate-rows", type=int, default=64, help="rows sampled in each of those blocks")
    ap.add_argument("--concentrate-select", choices=["mass", "predicted"], default="mass",
                    help="which key blocks count as kept: the heaviest by true attention mass, or the ones "
                         "RainFusion's block-mean predictor picks (both plus the first-frame sink)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps, for a CPU check")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    deadline = START + args.deadline

    # Fork the renderers before CUDA starts: they only run numpy.
    pool = mp.get_context("fork").Pool(args.workers)
    import torch
    from diffusers import AutoencoderKLWan

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    log(f"device {device} torch {torch.__version__}")
    meta = {"configs": {"vae": VAE_CONFIG, "text_encoder": TEXT_CONFIG, "transformer": TRANSFORMER_CONFIG},
            "shift": SHIFT, "args": vars(args)}
    previous = {}
    resume_meta = None
    for name in ("meta.json", "training_meta.json"):  # a checkpoint folder, or an export
        if args.resume and os.path.exists(os.path.join(args.resume, name)):
            resume_meta = os.path.join(args.resume, name)
            break
    if resume_meta:
        with open(resume_meta) as f:
            previous = json.load(f)
        meta["previous_runs"] = previous.get("previous_runs", []) + [
            {k: previous.get(k) for k in ("vae", "transformer", "eval", "args")}]

    def write_meta():
        with open(os.path.join(args.out, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)

    vae_state = load_sharded(args.resume, "vae") if args.resume else None
    if vae_state is not None:
        meta["vae"] = previous.get("vae", {})
        log("resumed VAE")
        if args.vae_more_seconds > 0:
            vae, more = train_vae(args, device, pool, args.vae_more_seconds, vae_state, args.vae_more_lr)
            meta["vae"]["continued"] = more
        else:
            vae = AutoencoderKLWan(**VAE_CONFIG)
            vae.load_state_dict(vae_state)
            vae.to(device)
    else:
        vae, meta["vae"] = train_vae(args, device, pool, args.vae_seconds)
    save_sharded(vae.state_dict(), args.out, "vae")
    write_meta()
    if args.vae_only:
        log("VAE only: done (check it with scripts/eval/vae_ceiling.py --vae OUT before training the DiT)")
        return

    data = encode_latents(args, device, pool, vae, args.latent_seconds)
    keep_stats = "latents_mean" in previous and not args.restat
    stats = (previous["latents_mean"], previous["latents_std"]) if keep_stats else latent_stats(data)
    meta["latents_mean"], meta["latents_std"] = stats
    meta["data"] = {f"{s}px": len(t) for s, (_, t) in data.items()}
    log(f"latent stats mean {np.round(stats[0], 3).tolist()} std {np.round(stats[1], 3).tolist()}")
    write_meta()

    def save_models(transformer, text_encoder, info):
        save_sharded(transformer.state_dict(), args.out, "transformer")
        save_sharded(text_encoder.state_dict(), args.out, "text_encoder")
        meta["transformer"] = info
        write_meta()

    budget = deadline - time.time() - args.eval_seconds - 15
    transformer, text_encoder, tok, meta["transformer"] = train_transformer(
        args, device, data, stats, budget, args.resume_dit or args.resume, args.out, save_models)
    save_models(transformer, text_encoder, meta["transformer"])
    del data
    torch.cuda.empty_cache() if device.type == "cuda" else None
    try:
        meta["eval"] = quick_eval(args, device, vae, transformer, text_encoder, tok, stats, args.out,
                                  args.eval_seconds)
    except Exception as e:  # the checkpoint is already saved; an eval failure must not lose it
        log(f"eval failed: {e!r}")
        meta["eval"] = {"error": repr(e)}
    write_meta()
    log("done")


if __name__ == "__main__":
    main()
