"""A png of evenly spaced frames from video files, one clip per row (for model cards and the README).

Usage: python3 scripts/eval/frame_strip.py OUT.png CLIP.mp4 [CLIP.mp4 ...] [--frames 5]
Reads what `vdit generate`, `vdit eval` and `vdit compare` write (PyAV decodes the mp4s).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def read_frames(path: str) -> np.ndarray:
    """[T, H, W, 3] uint8."""
    import av

    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def row(clip: np.ndarray, count: int) -> np.ndarray:
    """`count` frames from first to last, side by side: [H, count * W, 3]."""
    picks = np.linspace(0, len(clip) - 1, count).round().astype(int)
    return np.concatenate([clip[i] for i in picks], axis=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("clips", nargs="+")
    ap.add_argument("--frames", type=int, default=5, help="frames per clip")
    args = ap.parse_args()
    rows = [row(read_frames(p), args.frames) for p in args.clips]
    widths = {r.shape[1] for r in rows}
    if len(widths) != 1:
        sys.exit(f"clips differ in size: row widths {sorted(widths)}")
    from PIL import Image

    tmp = args.out + ".tmp.png"
    Image.fromarray(np.concatenate(rows)).save(tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(rows)} clips x {args.frames} frames")


if __name__ == "__main__":
    main()
