"""Whole-clip passes through diffusers' AutoencoderKLWan, for training.

diffusers encodes a clip chunk by chunk (frame 0, then 4 frames at a time) and decodes it one latent frame at a
time, carrying each causal convolution's last frames in a cache between chunks. That is what inference needs
(memory), but in training the chunk loop multiplies the number of small kernels and Python calls by the number of
chunks, and autograd keeps every chunk's activations anyway. The same function can be computed over the whole
clip at once:

- every causal convolution over the whole clip with its zero front padding sees exactly the frames the cache
  would have given it;
- the temporal downsampler (`downsample3d`) keeps frame 0 as it is and convolves the whole sequence with
  stride 2 (windows 0-2, 2-4, ...), which are the windows the chunked pass forms from "last cached frame +
  next chunk";
- the temporal upsampler (`upsample3d`) passes latent frame 0 through unchanged and runs its causal
  convolution over latent frames 1.. only (the chunked pass marks frame 0 "Rep" and starts that convolution's
  cache from zeros), each output frame becoming two.

Only `WanResample.forward` needs a whole-clip version; every other module already runs its plain path when it
is called without a feature cache. `check()` (run this file) compares both passes on random weights.

Usage: posterior = encode(vae, video); video = decode(vae, z)    # video [B, 3, 1+4k, H, W], z [B, 16, 1+k, h, w]
"""

from __future__ import annotations

import contextlib

import torch
from diffusers.models.autoencoders import autoencoder_kl_wan as wan
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

_CHUNKED_RESAMPLE = wan.WanResample.forward


def _resample_whole_clip(self, x, feat_cache=None, feat_idx=[0]):  # noqa: B006 (diffusers' signature)
    if feat_cache is not None:
        return _CHUNKED_RESAMPLE(self, x, feat_cache, feat_idx)
    b, c, t, h, w = x.shape
    if self.mode == "upsample3d" and t > 1:
        later = self.time_conv(x[:, :, 1:])  # [B, 2C, T-1, H, W]: causal over latent frames 1..
        later = later.reshape(b, 2, c, t - 1, h, w)
        later = torch.stack((later[:, 0], later[:, 1]), 3).reshape(b, c, 2 * (t - 1), h, w)
        x = torch.cat([x[:, :, :1], later], 2)  # [B, C, 1 + 2(T-1), H, W]
    t = x.shape[2]
    x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    x = self.resample(x)
    x = x.view(b, t, x.size(1), x.size(2), x.size(3)).permute(0, 2, 1, 3, 4)
    if self.mode == "downsample3d" and t > 1:
        x = torch.cat([x[:, :, :1], self.time_conv(x)], 2)  # [B, C, 1 + (T-1)/2, H, W]
    return x


@contextlib.contextmanager
def _whole_clip_resample():
    wan.WanResample.forward = _resample_whole_clip
    try:
        yield
    finally:
        wan.WanResample.forward = _CHUNKED_RESAMPLE


def _check_supported(vae) -> None:
    cfg = vae.config
    if getattr(cfg, "is_residual", False) or getattr(cfg, "patch_size", None) is not None:
        raise ValueError("whole-clip passes cover the Wan2.1 VAE layout (no residual up/down blocks, no patching)")


def encode(vae, video: torch.Tensor) -> DiagonalGaussianDistribution:
    """video [B, 3, 1+4k, H, W] in [-1, 1] -> the posterior over [B, z_dim, 1+k, H/8, W/8]."""
    _check_supported(vae)
    with _whole_clip_resample():
        return DiagonalGaussianDistribution(vae.quant_conv(vae.encoder(video)))


def decode(vae, z: torch.Tensor) -> torch.Tensor:
    """z [B, z_dim, 1+k, h, w] -> video [B, 3, 1+4k, 8h, 8w], clamped to [-1, 1] like `vae.decode`."""
    _check_supported(vae)
    with _whole_clip_resample():
        return vae.decoder(vae.post_quant_conv(z)).clamp(-1.0, 1.0)


def passes(vae, chunked: bool):
    """(encode, decode) for training: diffusers' chunked passes, or the whole-clip ones above.
    encode(video) -> posterior; decode(z) -> video in [-1, 1]."""
    if chunked:
        return (lambda video: vae.encode(video).latent_dist), (lambda z: vae.decode(z).sample)
    return (lambda video: encode(vae, video)), (lambda z: decode(vae, z))


def check(frames: tuple[int, ...] = (1, 5, 17, 49), size: int = 32, tolerance: float = 1e-5) -> None:
    """Whole-clip against diffusers' chunked encode/decode, random weights, f32 on the CPU."""
    import sys
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train import VAE_CONFIG

    torch.manual_seed(0)
    vae = wan.AutoencoderKLWan(**VAE_CONFIG).eval()
    with torch.no_grad():  # random init leaves some parts at exact zeros; make every weight matter
        for p in vae.parameters():
            p.add_(0.02 * torch.randn_like(p))

    def rel(a, b):
        return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()

    worst = 0.0
    for t in frames:
        video = torch.rand(2, 3, t, size, size) * 2 - 1
        with torch.no_grad():
            chunked = vae.encode(video).latent_dist
            whole = encode(vae, video)
            z = chunked.mean
            errs = {
                "mean": rel(whole.mean, chunked.mean),
                "logvar": rel(whole.logvar, chunked.logvar),
                "decode": rel(decode(vae, z), vae.decode(z).sample),
            }
        print(f"{t:2d} frames: " + ", ".join(f"{k} rel. err {v:.1e}" for k, v in errs.items()))
        worst = max(worst, *errs.values())
    assert worst <= tolerance, f"whole-clip pass differs from the chunked one: {worst:.2e} > {tolerance:.0e}"
    print(f"ok: worst relative error {worst:.1e} (tolerance {tolerance:.0e})")


if __name__ == "__main__":
    check()
