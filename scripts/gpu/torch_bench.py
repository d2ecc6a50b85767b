"""PyTorch/diffusers side of the GPU benchmark: the same shapes `vdit bench` times, with random
weights, bf16, median of CUDA-event timings after warm-up. Writes JSON rows in vdit bench's format
(bench, case, shape, median_s, tflops, density) so scripts/gpu/report.py can print one table.

    python3 scripts/gpu/torch_bench.py --out torch.json [--skip-vae]

With --pipeline DIR it times the whole run a user waits for instead: diffusers' `WanPipeline` loaded from the
random-weight model folder DIR (scripts/gpu/make_random_model.py) onto the GPU, the prompt encode, the guided
steps and the VAE decode with its post-processing to arrays (no file written), once from a fresh process (the
imports counted) and once more with the pipeline still loaded; peak GPU memory beside each:

    python3 scripts/gpu/torch_bench.py --pipeline DIR --steps 50 --guidance 5 --out torch_pipeline.json

With --i2v it times the image-to-video shapes: the Wan2.1-I2V-14B forward and the Wan2.1 VAE encode (832x480x81).

With --hunyuan15 it times one HunyuanVideo 1.5 transformer forward (the 8.3B text-to-video shape, random weights,
bf16) at --width x --height x --frames (default 848x480x121; `--size 1280x720` style via --width/--height), batch 1
(the pipeline runs each guidance branch as its own forward), on the inputs the pipeline hands it: latents, Qwen
prompt states padded to 1000 rows with --text-len valid, ByT5 states padded to 256 with --glyph-len valid, all-zero
image tokens (text-to-video). Peak memory as --memory measures it. --tiny runs a one-block toy of it on the CPU, to
check the script before a GPU run:

    python3 scripts/gpu/torch_bench.py --hunyuan15 --tiny --out /tmp/hy_tiny.json

With --hunyuan15-vae it times one HunyuanVideo 1.5 VAE decode (diffusers' AutoencoderKLHunyuanVideo15 at its config
defaults, the released model's VAE: 32 latent channels, ×16 space, ×4 time; random bf16 weights) of random latents
[1, 32, 31, 30, 53] (848x480x121; --latent FxHxW to change), once whole (the default) and once after enable_tiling()
(its default 256-pixel tiles), the rows `vdit bench vae --vae hunyuanvideo-1.5 [--tiling]` gives. --tiny runs the
same two decodes on the CPU with widths /16 (`vdit bench vae --base-dim 8`) at latent 2x2x18, to check the script:

    python3 scripts/gpu/torch_bench.py --hunyuan15-vae --tiny --out /tmp/hy_vae_tiny.json

With --memory it measures the memory rows of the 24 GB issue, three ways each, so that vdit's figure (the device's used
memory, sampled) has a like-for-like PyTorch figure beside the allocator's own: the Wan2.1-14B forward at
--width x --height x --frames (batch --batch) and the Wan2.1 VAE decode at the same size.
"""
import time

START = time.time()  # before torch is imported: a user waits for the imports too
import argparse
import json
import statistics

import torch


def cuda_time(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return statistics.median(samples), samples


def row(bench, case, shape, median_s, samples, tflops=None, density=None, peak=None):
    return dict(bench=bench, case=case, shape=shape, median_s=median_s, samples_s=samples,
                tflops=tflops, density=density, peak_gpu_bytes=peak, impl="pytorch")


class DeviceUsedSampler:
    """The device's used memory (total - free, as `vdit bench` reads it) sampled on a side thread every `interval`
    seconds; `peak()` stops it. Counts the CUDA context and the caching allocator's reserve, which
    `max_memory_allocated` does not."""

    def __init__(self, interval=2e-4):
        import threading

        self.peak_bytes, self.running = 0, True

        def sample():
            while self.running:
                free, total = torch.cuda.mem_get_info()
                self.peak_bytes = max(self.peak_bytes, total - free)
                time.sleep(interval)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()

    def peak(self):
        self.running = False
        self.thread.join()
        return self.peak_bytes


def device_used():
    free, total = torch.cuda.mem_get_info()
    return total - free


def memory_rows(args):
    """Peak memory of the 14B forward and of the VAE decode, each as the allocator's peak, its reserve's peak, the
    device's used memory sampled (vdit's measure) and the device's used memory before the work (weights + context)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    rows = []
    lat = (args.frames - 1) // 4 + 1
    shape = f"{args.width}x{args.height}x{args.frames} B{args.batch}"

    def measured(bench, case, label, fn, iters):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = device_used()
        sampler = DeviceUsedSampler()
        med, s = cuda_time(fn, 1, iters)
        r = row(bench, case, label, med, s, peak=torch.cuda.max_memory_allocated())
        r.update(peak_reserved_bytes=torch.cuda.max_memory_reserved(), peak_device_bytes=sampler.peak(),
                 resident_device_bytes=before)
        gib = 2 ** 30
        print(f"{case:<32} {med:8.3f} s  allocated {r['peak_gpu_bytes'] / gib:6.2f} GiB  reserved "
              f"{r['peak_reserved_bytes'] / gib:6.2f} GiB  device used {r['peak_device_bytes'] / gib:6.2f} GiB "
              f"({before / gib:.2f} GiB before)", flush=True)
        return r

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):  # Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        ).eval()
    torch.set_default_dtype(torch.float32)
    x = torch.randn(args.batch, 16, lat, args.height // 8, args.width // 8, device="cuda", dtype=torch.bfloat16)
    t = torch.full((args.batch,), 999.0, device="cuda")
    ctx = torch.randn(args.batch, 512, 4096, device="cuda", dtype=torch.bfloat16)

    @torch.no_grad()
    def forward():
        model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)

    rows.append(measured("transformer", "diffusers dense t2v-14b", f"40L×40H×128d {shape}", forward, args.iters))
    del model, x, ctx
    torch.cuda.empty_cache()

    torch.manual_seed(0)
    vae = AutoencoderKLWan().to("cuda", torch.bfloat16).eval()
    z = torch.randn(1, 16, lat, args.height // 8, args.width // 8, device="cuda", dtype=torch.bfloat16)

    @torch.no_grad()
    def decode():
        vae.decode(z, return_dict=False)

    rows.append(measured("vae", "diffusers bf16", f"B1 latent {lat}x{args.height // 8}x{args.width // 8}", decode,
                         max(1, args.iters - 1)))
    return rows


# Pipeline padding of HunyuanVideo 1.5 (diffusers' pipeline_hunyuan_video1_5.py: tokenizer_max_length,
# tokenizer_2_max_length, vision_num_semantic_tokens).
HY15_PROMPT_ROWS, HY15_GLYPH_ROWS, HY15_IMAGE_ROWS = 1000, 256, 729


def hunyuan15_flops(cfg, video, prompt, glyph):
    """FLOPs of one forward per sample on the valid tokens, the count `vdit bench transformer --preset
    hunyuanvideo-1.5` uses (crates/cli/src/commands/bench.rs, hunyuan15_flops): the blocks' linear layers
    2·N·(4·dim² + 2·dim·mlp) and joint attention 4·N²·dim over N = video + prompt + glyph, per layer; the token
    refiner, the ByT5 projection, the patch embedding and the output head. diffusers also carries the padding rows
    (masked), which this count leaves out, so both rows' TFLOP/s are useful work."""
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    mlp = int(dim * cfg["mlp_ratio"])
    per_token = 4 * dim * dim + 2 * dim * mlp
    n = video + prompt + glyph
    blocks = cfg["num_layers"] * (2 * n * per_token + 4 * n * n * dim)
    refiner = 2 * prompt * cfg["text_embed_dim"] * dim + cfg["num_refiner_layers"] * (
        2 * prompt * per_token + 4 * prompt * prompt * dim)
    h = 2048  # diffusers' ByT5 projection width (fixed in code)
    glyph_f = 2 * glyph * (cfg["text_embed_2_dim"] * h + h * h + h * dim)
    patch = cfg["patch_size_t"] * cfg["patch_size"] ** 2
    io = 2 * video * dim * (cfg["in_channels"] + cfg["out_channels"]) * patch
    return float(blocks + refiner + glyph_f + io)


def hunyuan15_rows(args):
    """One HunyuanVideo 1.5 text-to-video forward per size in args.sizes (diffusers'
    HunyuanVideo15Transformer3DModel, random weights), a warm-up first; an out-of-memory size gives a row that says
    so (median NaN) and the next size still runs."""
    from diffusers import HunyuanVideo15Transformer3DModel

    cuda = not args.tiny
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    # The released 480p/720p t2v transformer config (diffusers' defaults are that shape; task_type and
    # target_size only steer the pipeline). --tiny: one block of 2 heads × 16, RoPE axes 4 + 6 + 6.
    cfg = dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
               num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm",
               text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0,
               rope_axes_dim=(16, 56, 56), target_size=480, task_type="t2v", use_meanflow=False)
    if args.tiny:
        cfg.update(num_attention_heads=2, attention_head_dim=16, num_layers=1, rope_axes_dim=(4, 6, 6))
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(device):  # drawn where it runs: 8.3B parameters on the host would take minutes
        model = HunyuanVideo15Transformer3DModel(**cfg).eval()
    torch.set_default_dtype(torch.float32)
    b = args.batch
    layers, heads, hd = cfg["num_layers"], cfg["num_attention_heads"], cfg["attention_head_dim"]

    def valid_prefix(valid, rows):
        mask = torch.zeros(b, rows, dtype=torch.int64, device=device)
        mask[:, :valid] = 1
        return mask

    rows = []
    for width, height in args.sizes:
        lat = ((args.frames - 1) // 4 + 1, height // 16, width // 16)
        video = lat[0] * lat[1] * lat[2]
        x = torch.randn(b, cfg["in_channels"], *lat, device=device, dtype=dtype)
        inputs = dict(
            hidden_states=x, timestep=torch.full((b,), 500.0, device=device, dtype=dtype),  # as the pipeline casts it
            encoder_hidden_states=torch.randn(b, HY15_PROMPT_ROWS, cfg["text_embed_dim"], device=device, dtype=dtype),
            encoder_attention_mask=valid_prefix(args.text_len, HY15_PROMPT_ROWS),
            encoder_hidden_states_2=torch.randn(b, HY15_GLYPH_ROWS, cfg["text_embed_2_dim"], device=device,
                                                dtype=dtype),
            encoder_attention_mask_2=valid_prefix(args.glyph_len, HY15_GLYPH_ROWS),
            image_embeds=torch.zeros(b, HY15_IMAGE_ROWS, cfg["image_embed_dim"], device=device, dtype=dtype),
            return_dict=False)
        label = (f"{layers}L×{heads}H×{hd}d B{b} {width}x{height}x{args.frames} "
                 f"(L{video}, text {args.text_len}+{args.glyph_len}) hunyuanvideo-1.5")
        flops = b * hunyuan15_flops(cfg, video, args.text_len, args.glyph_len)

        @torch.no_grad()
        def forward():
            out = model(**inputs)[0]
            assert out.shape == (b, cfg["out_channels"], *lat), out.shape

        if not cuda:
            med, s = wall_time(forward, args.warmup, args.iters)
            rows.append(row("transformer", "diffusers dense", label, med, s, flops / med / 1e12, 1.0))
            print(f"{label}: {med * 1e3:.1f} ms (CPU toy)", flush=True)
            continue
        try:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = device_used()
            sampler = DeviceUsedSampler()
            med, s = cuda_time(forward, args.warmup, args.iters)
            r = row("transformer", "diffusers dense", label, med, s, flops / med / 1e12, 1.0,
                    peak=torch.cuda.max_memory_allocated())
            r.update(peak_reserved_bytes=torch.cuda.max_memory_reserved(), peak_device_bytes=sampler.peak(),
                     resident_device_bytes=before)
            gib = 2 ** 30
            print(f"diffusers {label}: {med:.3f} s, {r['tflops']:.1f} TFLOP/s, allocated "
                  f"{r['peak_gpu_bytes'] / gib:.2f} GiB, reserved {r['peak_reserved_bytes'] / gib:.2f} GiB, device "
                  f"used {r['peak_device_bytes'] / gib:.2f} GiB ({before / gib:.2f} GiB before)", flush=True)
        except torch.cuda.OutOfMemoryError as err:
            sampler.peak()
            r = row("transformer", "diffusers dense: out of memory", label, float("nan"), [],
                    peak=torch.cuda.max_memory_allocated())
            print(f"diffusers {label}: out of memory: {str(err).splitlines()[0]}", flush=True)
        rows.append(r)
        del x, inputs
        torch.cuda.empty_cache()
    return rows


def hunyuan15_vae_rows(args):
    """One HunyuanVideo 1.5 VAE decode of the same latents whole and with enable_tiling(), a warm-up before each
    timed decode; an out-of-memory decode gives a row that says so (median NaN) and the next still runs."""
    from diffusers import AutoencoderKLHunyuanVideo15

    cuda = not args.tiny
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    cfg = {}  # the config defaults are the released VAE (hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v)
    if args.tiny:  # `vdit bench vae --base-dim 8`: every width × 8/128
        cfg.update(block_out_channels=(8, 16, 32, 64, 64))
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(device):
        vae = AutoencoderKLHunyuanVideo15(**cfg).eval()
    torch.set_default_dtype(torch.float32)
    f, h, w = args.latent
    z = torch.randn(1, vae.config.latent_channels, f, h, w, device=device, dtype=dtype)
    frames, scale = 1 + vae.temporal_compression_ratio * (f - 1), vae.spatial_compression_ratio
    label = f"HunyuanVideo 1.5 B1 latent {f}x{h}x{w} → {frames} frames {w * scale}x{h * scale}"

    @torch.no_grad()
    def decode():
        out = vae.decode(z, return_dict=False)[0]
        assert out.shape == (1, 3, frames, h * scale, w * scale), out.shape

    rows = []
    for tiled in (False, True):
        if tiled:
            vae.enable_tiling()
        case = "diffusers tiled" if tiled else "diffusers whole frames"
        if not cuda:
            med, s = wall_time(decode, args.warmup, args.iters)
            rows.append(row("vae", case, label, med, s))
            print(f"{case} {label}: {med * 1e3:.1f} ms (CPU toy)", flush=True)
            continue
        sampler = None
        try:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = device_used()
            sampler = DeviceUsedSampler()
            med, s = cuda_time(decode, args.warmup, args.iters)
            r = row("vae", case, label, med, s, peak=torch.cuda.max_memory_allocated())
            r.update(peak_reserved_bytes=torch.cuda.max_memory_reserved(), peak_device_bytes=sampler.peak(),
                     resident_device_bytes=before)
            gib = 2 ** 30
            print(f"{case} {label}: {med:.3f} s, allocated {r['peak_gpu_bytes'] / gib:.2f} GiB, reserved "
                  f"{r['peak_reserved_bytes'] / gib:.2f} GiB, device used {r['peak_device_bytes'] / gib:.2f} GiB "
                  f"({before / gib:.2f} GiB before)", flush=True)
        except torch.cuda.OutOfMemoryError as err:
            if sampler is not None:
                sampler.peak()
            r = row("vae", f"{case}: out of memory", label, float("nan"), [], peak=torch.cuda.max_memory_allocated())
            print(f"{case} {label}: out of memory: {str(err).splitlines()[0]}", flush=True)
        rows.append(r)
        torch.cuda.empty_cache()
    return rows


def wall_time(fn, warmup, iters):
    """cuda_time's counterpart on the CPU (--tiny)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def attention_rows(args):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, l, d = 1, 12, 32760, 128
    q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = 4.0 * l * l * d * h * b
    rows = []
    for name, backend in [("torch SDPA cuDNN", SDPBackend.CUDNN_ATTENTION),
                          ("torch SDPA FlashAttention-2", SDPBackend.FLASH_ATTENTION)]:
        def run():
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v)
        med, s = cuda_time(run, args.warmup, args.iters)
        rows.append(row("attention", name + " dense", f"B{b} H{h} L{l} D{d}", med, s, flops / med / 1e12, 1.0))
    return rows


def flex_rows(args):
    """FlexAttention over random block lists (the diagonal block kept, the rest drawn at random),
    at the kept fractions `vdit bench` times. L = 32768 (FlexAttention wants whole 128-blocks)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    b, h, l, d, bs = 1, 12, 32768, 128, 128
    nb = l // bs
    q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flex = torch.compile(flex_attention, dynamic=False)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    for density in (0.5, 0.25, 0.2, 0.1):
        keep = max(1, round(nb * density))
        scores = torch.rand(b, h, nb, nb, generator=gen)
        diag = torch.arange(nb)
        scores[:, :, diag, diag] = 2.0
        full_idx = scores.argsort(dim=-1, descending=True)[..., :keep].sort(dim=-1).values
        full_idx = torch.cat([full_idx, torch.zeros(b, h, nb, nb - keep, dtype=full_idx.dtype)], dim=-1)
        full_num = torch.full((b, h, nb), keep, dtype=torch.int32)
        partial_num = torch.zeros((b, h, nb), dtype=torch.int32)
        mask = BlockMask.from_kv_blocks(partial_num.cuda(), torch.zeros_like(full_idx, dtype=torch.int32).cuda(),
                                        full_num.cuda(), full_idx.to(torch.int32).cuda(), BLOCK_SIZE=bs)
        med, s = cuda_time(lambda: flex(q, k, v, block_mask=mask), args.warmup + 1, args.iters)
        kept = keep / nb
        flops = 4.0 * l * l * d * h * b * kept
        rows.append(row("attention", f"FlexAttention block-sparse {density:g}", f"B{b} H{h} L{l} D{d}", med, s,
                        flops / med / 1e12, kept))
    return rows


def transformer_rows(args):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
        out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    ).to("cuda", torch.bfloat16).eval()
    x = torch.randn(2, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor([999.0, 500.0], device="cuda")
    ctx = torch.randn(2, 512, 4096, device="cuda", dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()

    @torch.no_grad()
    def run():
        model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)

    med, s = cuda_time(run, args.warmup, args.iters)
    peak = torch.cuda.max_memory_allocated()
    del model
    torch.cuda.empty_cache()
    return [row("transformer", "diffusers dense", "30L×12H×128d B2 832x480x81 (L32760, text 512)", med, s,
                peak=peak)]


def vae_rows(args):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan().to("cuda", torch.bfloat16).eval()  # defaults = Wan2.1 VAE (base 96)
    z = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()

    @torch.no_grad()
    def run():
        vae.decode(z, return_dict=False)

    med, s = cuda_time(run, 1, max(1, args.iters - 1))
    peak = torch.cuda.max_memory_allocated()
    return [row("vae", "diffusers bf16", "B1 latent 21x60x104 → 81 frames 832x480", med, s, peak=peak)]


def wan_vae_size_rows(args):
    """diffusers' Wan2.1 VAE decode (bf16, random weights, whole frames) at each WxH of --wan-vae, 81 frames by
    default: time (one warm-up, --iters timed) and peak memory three ways (allocated, reserved, device used)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan().to("cuda", torch.bfloat16).eval()
    frames = args.frames or 81
    lat = (frames - 1) // 4 + 1
    rows = []
    for size in args.wan_vae.split(","):
        width, height = (int(v) for v in size.split("x"))
        z = torch.randn(1, 16, lat, height // 8, width // 8, device="cuda", dtype=torch.bfloat16)

        @torch.no_grad()
        def run():
            vae.decode(z, return_dict=False)

        run()  # warm-up, outside the peaks
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = device_used()
        sampler = DeviceUsedSampler()
        med, s = cuda_time(run, 0, args.iters)
        r = row("vae", "diffusers bf16", f"Wan2.1 B1 latent {lat}x{height // 8}x{width // 8} → {frames} frames "
                f"{width}x{height}", med, s, peak=torch.cuda.max_memory_allocated())
        r.update(peak_reserved_bytes=torch.cuda.max_memory_reserved(), peak_device_bytes=sampler.peak(),
                 resident_device_bytes=before)
        gib = 2 ** 30
        print(f"diffusers Wan2.1 VAE {width}x{height}x{frames}: {med:.3f} s, allocated "
              f"{r['peak_gpu_bytes'] / gib:.2f} GiB, reserved {r['peak_reserved_bytes'] / gib:.2f} GiB, device used "
              f"{r['peak_device_bytes'] / gib:.2f} GiB ({before / gib:.2f} GiB before)", flush=True)
        rows.append(r)
        del z
        torch.cuda.empty_cache()
    return rows


# Wan2.2 shapes (diffusers configs of Wan-AI/Wan2.2-T2V-A14B-Diffusers and Wan2.2-TI2V-5B-Diffusers).
WAN22_TRANSFORMERS = {
    "a14b expert": (dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                         out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                         cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
                    (2, 16, 21, 90, 160), "40L×40H×128d B2 1280x720x81 (L75600, text 512)"),
    "ti2v-5b": (dict(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48,
                     out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30,
                     cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
                (2, 48, 31, 44, 80), "30L×24H×128d B2 1280x704x121 (L27280, text 512)"),
}


def wan22_rows(args):
    """One A14B expert forward and one TI2V-5B forward (batch 2), and the Wan2.2 VAE decode, in bf16."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    rows = []
    for name, (config, shape, label) in WAN22_TRANSFORMERS.items():
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = WanTransformer3DModel(**config).to(torch.bfloat16).eval()
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
        t = torch.tensor([999.0, 500.0], device="cuda")
        ctx = torch.randn(2, 512, 4096, device="cuda", dtype=torch.bfloat16)
        torch.cuda.reset_peak_memory_stats()

        @torch.no_grad()
        def run():
            model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)

        med, s = cuda_time(run, 1, args.iters)
        rows.append(row("transformer", f"diffusers {name} dense", label, med, s, peak=torch.cuda.max_memory_allocated()))
        print(f"{rows[-1]['case']:<36} {med * 1e3:10.1f} ms", flush=True)
        del model, x, ctx
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2,
                               in_channels=12, out_channels=12, scale_factor_spatial=16,
                               latents_mean=[0.0] * 48, latents_std=[1.0] * 48).to(torch.bfloat16).eval()
    z = torch.randn(1, 48, 31, 44, 80, device="cuda", dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()

    @torch.no_grad()
    def decode():
        vae.decode(z, return_dict=False)

    med, s = cuda_time(decode, 1, max(1, args.iters - 1))
    rows.append(row("vae", "diffusers Wan2.2 VAE bf16", "B1 latent 31x44x80 → 121 frames 1280x704", med, s,
                    peak=torch.cuda.max_memory_allocated()))
    print(f"{rows[-1]['case']:<36} {med * 1e3:10.1f} ms", flush=True)
    return rows


def i2v_rows(args):
    """Image-to-video shapes: one Wan2.1-I2V-14B forward at 832x480x81 (batch 2, 36 channels in, the CLIP image
    tokens' cross-attention), and the Wan2.1 VAE encode of an 81-frame 832x480 video (the I2V conditioning)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    rows = []
    torch.manual_seed(0)
    vae = AutoencoderKLWan().to("cuda", torch.bfloat16).eval()
    video = torch.rand(1, 3, args.frames, args.height, args.width, device="cuda", dtype=torch.bfloat16) * 2 - 1
    torch.cuda.reset_peak_memory_stats()

    @torch.no_grad()
    def encode():
        vae.encode(video, return_dict=False)

    med, s = cuda_time(encode, 1, max(1, args.iters - 1))
    rows.append(row("vae-encode", "diffusers bf16", f"B1 {args.frames} frames {args.width}x{args.height}", med, s,
                    peak=torch.cuda.max_memory_allocated()))
    del vae
    torch.cuda.empty_cache()

    # Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer/config.json; built in bf16 on the GPU (14B parameters in f32 on
    # the host would take minutes to draw).
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120,
            rope_max_seq_len=1024,
        ).eval()
    torch.set_default_dtype(torch.float32)
    lat = (args.frames - 1) // 4 + 1
    x = torch.randn(2, 36, lat, args.height // 8, args.width // 8, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor([999.0, 999.0], device="cuda")
    ctx = torch.randn(2, 512, 4096, device="cuda", dtype=torch.bfloat16)
    img = torch.randn(2, 257, 1280, device="cuda", dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()

    @torch.no_grad()
    def forward():
        model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, encoder_hidden_states_image=img,
              return_dict=False)

    med, s = cuda_time(forward, args.warmup, args.iters)
    tokens = lat * (args.height // 16) * (args.width // 16)
    rows.append(row("transformer", "diffusers dense i2v-14b",
                    f"40L×40H×128d B2 {args.width}x{args.height}x{args.frames} (L{tokens}, text 512, image 257)",
                    med, s, peak=torch.cuda.max_memory_allocated()))
    del model
    torch.cuda.empty_cache()
    return rows


def step_list_scheduler(step_list, shift):
    """Euler on a distilled model's step list: WanPipeline asks for N steps, this hands the scheduler the sigmas
    t/1000 (which it then shifts)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sigmas = [float(t) / 1000.0 for t in step_list.split(",")]

    class StepListEuler(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            super().set_timesteps(sigmas=sigmas, device=device)

    return StepListEuler(num_train_timesteps=1000, shift=shift)


def pipeline_rows(args):
    """The whole run, twice: from this fresh process (imports and loading counted), then warm."""
    from diffusers import WanPipeline

    imports_s = time.time() - START
    rows = []
    pipe = None
    for run in ("first run", "warm run"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        if pipe is None:
            pipe = WanPipeline.from_pretrained(args.pipeline, torch_dtype=torch.bfloat16).to("cuda")
            if args.lora:
                pipe.load_lora_weights(args.lora, adapter_name="lora")
                if args.fuse_lora:
                    pipe.fuse_lora()
            if args.step_list:
                pipe.scheduler = step_list_scheduler(args.step_list, args.shift)
            torch.cuda.synchronize()
        load_s = time.time() - t0
        marks = {}
        encode = pipe.encode_prompt

        def timed_encode(*a, **k):
            t = time.time()
            out = encode(*a, **k)
            torch.cuda.synchronize()
            marks["encode"] = time.time() - t
            return out

        pipe.encode_prompt = timed_encode
        steps = []

        def on_step(_pipe, i, t, kwargs):
            torch.cuda.synchronize()
            steps.append(time.time())
            return kwargs

        t1 = time.time()
        frames = pipe(prompt="a cat walks on the grass, realistic style", negative_prompt="static, blurred",
                      height=args.height, width=args.width, num_frames=args.frames,
                      num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np",
                      callback_on_step_end=on_step).frames
        torch.cuda.synchronize()
        t2 = time.time()
        pipe.encode_prompt = encode
        denoise_s = steps[-1] - (t1 + marks["encode"])
        total_s = t2 - t0 + (imports_s if run == "first run" else 0.0)
        stages = dict(imports_s=imports_s if run == "first run" else 0.0, load_s=load_s,
                      encode_s=marks["encode"], denoise_s=denoise_s, decode_s=t2 - steps[-1], write_s=None,
                      total_s=total_s)
        print(f"diffusers {run}: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if v is not None)
              + f"; frames {tuple(frames.shape)}; peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB",
              flush=True)
        rows.append(row("pipeline", f"diffusers {run}",
                        f"{args.width}x{args.height}x{args.frames}, {args.steps} steps, guidance {args.guidance}"
                        + (f", LoRA {'fused' if args.fuse_lora else 'unfused'}" if args.lora else ""),
                        total_s, [total_s], peak=torch.cuda.max_memory_allocated()) | dict(stages=stages))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--pipeline", help="time the whole WanPipeline run from this model folder instead")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--width", type=int, help="default 832 (--hunyuan15: 848)")
    p.add_argument("--height", type=int, help="default 480")
    p.add_argument("--frames", type=int, help="default 81 (--hunyuan15: 121)")
    p.add_argument("--wan22", action="store_true",
                   help="time the Wan2.2 shapes instead (A14B expert and TI2V-5B forwards, the Wan2.2 VAE)")
    p.add_argument("--i2v", action="store_true",
                   help="time the image-to-video shapes instead (I2V-14B forward, the Wan2.1 VAE encode)")
    p.add_argument("--hunyuan15", action="store_true",
                   help="time the HunyuanVideo 1.5 transformer forward (8.3B t2v, batch --batch) at each --sizes")
    p.add_argument("--wan-vae", metavar="WxH[,WxH...]",
                   help="diffusers' Wan2.1 VAE decode alone at these sizes (--frames frames), time and peak memory")
    p.add_argument("--hunyuan15-vae", action="store_true",
                   help="time the HunyuanVideo 1.5 VAE decode of --latent, whole and with enable_tiling()")
    p.add_argument("--latent", default=None,
                   help="--hunyuan15-vae: latent FRAMESxHEIGHTxWIDTH (default 31x30x53: 848x480x121; --tiny 2x2x18)")
    p.add_argument("--sizes", default=None,
                   help="--hunyuan15: comma-separated WIDTHxHEIGHT list (default: --width x --height, 848x480)")
    p.add_argument("--text-len", type=int, default=256, help="--hunyuan15: valid Qwen prompt tokens of 1000")
    p.add_argument("--glyph-len", type=int, default=0, help="--hunyuan15: valid ByT5 glyph tokens of 256")
    p.add_argument("--tiny", action="store_true",
                   help="--hunyuan15: a one-block toy on the CPU; --hunyuan15-vae: widths /16 (script check)")
    p.add_argument("--memory", action="store_true",
                   help="the memory rows: the Wan2.1-14B forward and the VAE decode at --width/--height/--frames")
    p.add_argument("--batch", type=int, default=1, help="--memory: the forward's batch")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--skip-vae", action="store_true")
    p.add_argument("--lora", help="--pipeline: load this LoRA (load_lora_weights; unfused unless --fuse-lora)")
    p.add_argument("--fuse-lora", action="store_true")
    p.add_argument("--step-list", help="--pipeline: a distilled step list, e.g. 1000,750,500,250 (Euler)")
    p.add_argument("--shift", type=float, default=5.0, help="--pipeline with --step-list: the shift")
    args = p.parse_args()
    # Unset sizes: HunyuanVideo 1.5's 480p (848x480x121) or Wan's (832x480x81).
    args.width = args.width or (848 if args.hunyuan15 else 832)
    args.height = args.height or 480
    args.frames = args.frames or (121 if args.hunyuan15 else 81)
    if args.wan_vae:
        rows = wan_vae_size_rows(args)
        json.dump(dict(impl="pytorch", torch=torch.__version__, rows=rows), open(args.out, "w"), indent=1)
        return
    if args.hunyuan15_vae:
        args.latent = [int(v) for v in (args.latent or ("2x2x18" if args.tiny else "31x30x53")).split("x")]
        rows = hunyuan15_vae_rows(args)
        json.dump(dict(impl="pytorch", torch=torch.__version__, rows=rows), open(args.out, "w"), indent=1)
        return
    if args.hunyuan15:
        if args.tiny and args.sizes is None:
            args.sizes = "64x32"
            args.frames = 5
        args.sizes = [tuple(int(v) for v in s.split("x")) for s in (args.sizes or f"{args.width}x{args.height}")
                      .split(",")]
        rows = hunyuan15_rows(args)
        json.dump(dict(impl="pytorch", torch=torch.__version__, rows=rows), open(args.out, "w"), indent=1)
        return
    if args.pipeline or args.wan22 or args.i2v or args.memory:
        rows = (pipeline_rows(args) if args.pipeline else wan22_rows(args) if args.wan22
                else i2v_rows(args) if args.i2v else memory_rows(args))
        json.dump(dict(impl="pytorch", torch=torch.__version__, rows=rows), open(args.out, "w"), indent=1)
        return
    rows = attention_rows(args)
    try:
        rows += flex_rows(args)
    except Exception as err:  # FlexAttention is optional: the rest of the table must still come out
        print(f"FlexAttention rows skipped: {err!r}")
    rows += transformer_rows(args)
    if not args.skip_vae:
        rows += vae_rows(args)
    for r in rows:
        print(f"{r['bench']:<12} {r['case']:<36} {r['median_s'] * 1e3:10.2f} ms")
    json.dump(dict(impl="pytorch", torch=torch.__version__, rows=rows), open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
