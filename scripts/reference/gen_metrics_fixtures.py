"""Reference values for crates/pipeline/src/metrics.rs (PSNR, SSIM, latent cosine similarity).

Independent numpy implementation: SSIM here uses a full 2-D 11x11 Gaussian window applied with
sliding_window_view (the Rust code filters separably), population statistics, and the valid
window positions only, which is what scikit-image's structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255) averages. Run from the repository root:

    python scripts/reference/gen_metrics_fixtures.py
"""

import json
import pathlib

import numpy as np

OUT = pathlib.Path("tests/fixtures/metrics/reference.json")


def luma(frame):
    f = frame.astype(np.float64)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def gaussian_window(size=11, sigma=1.5):
    r = np.arange(size) - size // 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w2 = np.outer(g, g)
    return w2 / w2.sum()


def ssim_frame(x, y, data_range=255.0):
    win = gaussian_window()

    def local_mean(img):
        views = np.lib.stride_tricks.sliding_window_view(img, win.shape)
        return np.einsum("ijkl,kl->ij", views, win)

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = local_mean(x), local_mean(y)
    vx = local_mean(x * x) - mx * mx
    vy = local_mean(y * y) - my * my
    cxy = local_mean(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def main():
    rng = np.random.default_rng(20261123)
    frames, height, width = 3, 19, 23
    # Smooth-ish content (so SSIM is informative) plus independent noise on the second clip.
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            np.stack(
                [
                    120 + 80 * np.sin(xx / 4.0 + t) * np.cos(yy / 5.0),
                    100 + 60 * np.cos(xx / 3.0 - yy / 6.0 + t),
                    rng.uniform(0, 255, size=(height, width)),
                ],
                axis=-1,
            )
            for t in range(frames)
        ]
    )
    a = np.clip(np.rint(base), 0, 255).astype(np.uint8)
    b = np.clip(np.rint(base + rng.normal(0, 12, size=base.shape)), 0, 255).astype(np.uint8)

    latent_a = rng.standard_normal((1, 4, 2, 3, 5)).astype(np.float32)
    latent_b = (0.8 * latent_a + 0.6 * rng.standard_normal(latent_a.shape)).astype(np.float32)
    cos = float(
        np.dot(latent_a.ravel().astype(np.float64), latent_b.ravel().astype(np.float64))
        / (np.linalg.norm(latent_a.astype(np.float64)) * np.linalg.norm(latent_b.astype(np.float64)))
    )

    ref = {
        "width": width,
        "height": height,
        "frames": frames,
        "a": a.reshape(frames, -1).tolist(),
        "b": b.reshape(frames, -1).tolist(),
        "psnr": psnr(a, b),
        "psnr_per_frame": [psnr(a[t], b[t]) for t in range(frames)],
        "ssim_per_frame": [ssim_frame(luma(a[t]), luma(b[t])) for t in range(frames)],
        "latent_shape": list(latent_a.shape),
        "latent_a": latent_a.ravel().tolist(),
        "latent_b": latent_b.ravel().tolist(),
        "cosine": cos,
    }
    ref["ssim"] = float(np.mean(ref["ssim_per_frame"]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(ref))
    print(f"wrote {OUT}: psnr {ref['psnr']:.4f} ssim {ref['ssim']:.6f} cosine {cos:.6f}")


if __name__ == "__main__":
    main()
