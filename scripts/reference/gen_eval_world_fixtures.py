"""Clips of the training world (scripts/train/world.py) for the Rust analyser test (crates/pipeline/tests/eval.rs).

Renders random scenes with the training code's own renderer, at 128x128x17 (the default generation
size) and a few at 256x256x49 (the `vdit compare` grid), so the analyser is checked on exactly what the
model is trained to produce: anti-aliased circles, squares and triangles, plain and textured (stripes,
checker, diagonal) backgrounds, one or two objects. Each clip is one PNG strip (frames stacked
vertically: size x size*frames); captions.json lists the file, caption, frames and size of each. Run from the repository root:

    python scripts/reference/gen_eval_world_fixtures.py
"""

import json
import pathlib
import sys
import zlib
import struct

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "train"))
import world  # noqa: E402  (scripts/train/world.py)

OUT = ROOT / "tests" / "fixtures" / "eval_world"
# (seed, clips, frame side, frames): the default generation grid and the `vdit compare` grid.
SETS = [(1123, 60, 128, 17), (4956, 4, 256, 49)]


def write_png(path: pathlib.Path, rgb: np.ndarray) -> None:
    """Minimal RGB8 PNG writer (numpy only, no Pillow needed)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    path.write_bytes(png)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    entries = []
    for seed, count, size, frames in SETS:
        clips, captions = world.render_batch(seed, count, size, frames)
        for i, (clip, text) in enumerate(zip(clips, captions)):
            name = f"clip_{size}_{i:02d}.png"
            write_png(OUT / name, clip.reshape(frames * size, size, 3))
            entries.append({"file": name, "caption": text, "frames": frames, "size": size})
    (OUT / "captions.json").write_text(json.dumps(entries, indent=1))
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(entries)} clips to {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
