"""An MP4 made by ffmpeg (libx264, Constrained Baseline) for the demuxer test in crates/pipeline/tests/video_io.rs.

Our reader must handle a file it did not write: moov after mdat, an edit list, libx264's SEI, 12 fps.
ffmpeg's own decode of it is stored as a PNG strip (frames stacked vertically) to compare pixels with.
Needs an ffmpeg binary: `pip install imageio-ffmpeg` provides one (or set FFMPEG). Run from the
repository root:

    python scripts/reference/gen_video_fixtures.py
"""

import json
import os
import pathlib
import struct
import subprocess
import zlib

import numpy as np

OUT = pathlib.Path("tests/fixtures/video")
WIDTH, HEIGHT, FPS, SECONDS = 64, 48, 12, 1


def ffmpeg_binary() -> str:
    if "FFMPEG" in os.environ:
        return os.environ["FFMPEG"]
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_png(path: pathlib.Path, rgb: np.ndarray) -> None:
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def main() -> None:
    ffmpeg = ffmpeg_binary()
    OUT.mkdir(parents=True, exist_ok=True)
    mp4 = OUT / "ffmpeg_baseline.mp4"
    source = f"testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={SECONDS}"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-c:v", "libx264",
         "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-g", "5", str(mp4)],
        check=True,
    )
    decoded = subprocess.run(
        [ffmpeg, "-hide_banner", "-v", "error", "-i", str(mp4), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    frames = len(decoded) // (WIDTH * HEIGHT * 3)
    rgb = np.frombuffer(decoded, np.uint8).reshape(frames * HEIGHT, WIDTH, 3)
    write_png(OUT / "ffmpeg_baseline_decoded.png", rgb)
    meta = {"width": WIDTH, "height": HEIGHT, "fps": FPS, "frames": frames}
    (OUT / "ffmpeg_baseline.json").write_text(json.dumps(meta))
    print(f"wrote {mp4} ({mp4.stat().st_size} bytes): {meta}")


if __name__ == "__main__":
    main()
