"""Prompt-faithfulness analyser for clips of the synthetic world (training-time check).

Same rules as the shipped Rust analyser (crates/pipeline/src/eval.rs): background = median colour of the border
pixels of each frame; foreground = pixels far from it; objects = connected foreground components above a
minimum area; an object's colour = nearest palette entry to its mean colour; motion = centroid displacement
first -> last frame (left/right/up/down beyond a threshold), growing/shrinking by area ratio, else still; the count
must hold through the clip and an object that is not captioned as growing or shrinking must keep its size.

`score(caption, frames)` -> {"colour_ok", "motion_ok", "count_ok"} for frames uint8 [T, H, W, 3].
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
from world import PALETTE  # noqa: E402

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background estimate
MIN_AREA_FRACTION = 0.002  # of the frame
MOVE_THRESHOLD = 0.08  # centroid displacement, in frame sides
AREA_RATIO = 1.5  # last/first area beyond which an object grows (or 1/x shrinks)
# The shipped analyser's two consistency rules (AnalyserConfig::count_consistency, ::size_stability): the clip's
# object count must be seen in at least this share of the frames, and an object captioned as moving or still must keep
# its area within this ratio (largest over smallest of the medians of five consecutive sightings).
COUNT_CONSISTENCY = 2.0 / 3.0
SIZE_STABILITY = 1.6

_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], np.float32)
_OBJECT = re.compile(
    r"a (\w+) (\w+) (moving (?:left|right|up|down)|growing|shrinking|standing still)"
)


def parse_caption(caption: str) -> list[tuple[str, str, str]]:
    """[(colour, shape, motion)] with motion in left|right|up|down|growing|shrinking|still."""
    objects_part = caption.split(" on a ")[0]
    found = []
    for colour, shape, motion in _OBJECT.findall(objects_part):
        motion = motion.replace("moving ", "").replace("standing still", "still")
        found.append((colour, shape, motion))
    if not found:
        raise ValueError(f"caption outside the grammar: {caption!r}")
    return found


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a bool [H, W] mask: labels (0 = background, 1..n) and n.

    Min-label propagation (each foreground pixel takes the smallest label among itself and its neighbours
    until nothing changes) with pointer jumping: plain numpy, no scipy needed.
    """
    h, w = mask.shape
    big = h * w + 1
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce([padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1],
                                        padded[1:-1, :-2], padded[1:-1, 2:]])
        updated = np.where(mask, neighbours, big)
        # Pointer jumping: a label is the flat index (+1) of a pixel of the same component, so taking that
        # pixel's label halves the remaining distance each round.
        flat = updated.reshape(-1)
        updated = np.where(mask, flat[np.minimum(updated, h * w) - 1], big)
        if np.array_equal(updated, labels):
            break
        labels = updated
    roots, dense = np.unique(labels[mask], return_inverse=True)
    out = np.zeros((h, w), np.int64)
    out[mask] = dense + 1
    return out, len(roots)


def frame_objects(frame: np.ndarray) -> list[dict]:
    """Foreground components of one uint8 [H, W, 3] frame: colour name, area (pixels), centroid (x, y) in frame units."""
    h, w, _ = frame.shape
    pixels = frame.astype(np.float32)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    foreground = np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_DISTANCE
    labels, count = label_components(foreground)
    objects = []
    min_area = MIN_AREA_FRACTION * h * w
    for index in range(1, count + 1):
        mask = labels == index
        area = int(mask.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(mask)
        mean = pixels[mask].mean(axis=0)
        colour = _NAMES[int(np.argmin(np.linalg.norm(_RGB - mean, axis=1)))]
        objects.append({"colour": colour, "area": area, "centroid": ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)})
    return objects


def classify_motion(first: dict, last: dict) -> str:
    ratio = last["area"] / max(first["area"], 1)
    if ratio > AREA_RATIO:
        return "growing"
    if ratio < 1 / AREA_RATIO:
        return "shrinking"
    dx = last["centroid"][0] - first["centroid"][0]
    dy = last["centroid"][1] - first["centroid"][1]
    if max(abs(dx), abs(dy)) < MOVE_THRESHOLD:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def analyse(frames: np.ndarray) -> dict:
    """Objects seen in a clip: count (most common per-frame count) and, per colour, its motion."""
    per_frame = [frame_objects(f) for f in frames]
    counts = [len(objs) for objs in per_frame]
    count = int(np.bincount(counts).argmax()) if counts else 0
    tracks: dict[str, list[dict]] = {}
    for objs in per_frame:
        largest: dict[str, dict] = {}
        for o in objs:
            if o["colour"] not in largest or o["area"] > largest[o["colour"]]["area"]:
                largest[o["colour"]] = o
        for colour, o in largest.items():
            tracks.setdefault(colour, []).append(o)
    # A colour counts as an object when it is present in at least half of the frames.
    kept = {c: t for c, t in tracks.items() if len(t) * 2 >= len(frames)}
    motions = {c: classify_motion(t[0], t[-1]) for c, t in kept.items()}
    count_share = counts.count(count) / max(len(counts), 1)
    return {
        "count": count,
        "count_share": count_share,
        "motions": motions,
        "size_ranges": {c: size_range([o["area"] for o in t]) for c, t in kept.items()},
    }


def size_range(areas: list[int]) -> float:
    """Largest over smallest of the medians of five consecutive areas (fewer when the track is shorter)."""
    window = max(min(5, len(areas)), 1)
    smoothed = [float(np.median(areas[i:i + window])) for i in range(len(areas) - window + 1)]
    low = min(smoothed, default=0.0)
    return max(smoothed) / low if low > 0 else 1.0


def score(caption: str, frames: np.ndarray) -> dict:
    expected = parse_caption(caption)
    seen = analyse(frames)
    colour_ok = all(colour in seen["motions"] for colour, _, _ in expected)
    # Growing and shrinking change size by definition; anything else must keep it.
    keeps_size = all(
        motion in ("growing", "shrinking") or seen["size_ranges"].get(colour, 1.0) <= SIZE_STABILITY
        for colour, _, motion in expected
    )
    motion_ok = keeps_size and all(seen["motions"].get(colour) == motion for colour, _, motion in expected)
    return {
        "colour_ok": colour_ok,
        "motion_ok": motion_ok,
        "count_ok": seen["count"] == len(expected) and seen["count_share"] >= COUNT_CONSISTENCY,
        "seen": seen,
    }


def summarise(results: list[dict]) -> dict:
    n = max(len(results), 1)
    return {key: sum(r[key] for r in results) / n for key in ("colour_ok", "motion_ok", "count_ok")}


if __name__ == "__main__":
    # Self-check on rendered ground truth: the analyser must score the world's own clips (nearly) perfectly.
    from world import caption, render, sample_scene

    rng = np.random.default_rng(123)
    results = []
    for size, frames in ((128, 17), (256, 49)):
        for _ in range(60 if size == 128 else 10):
            scene = sample_scene(rng)
            text = caption(scene)
            r = score(text, render(scene, size, frames))
            if not (r["colour_ok"] and r["motion_ok"] and r["count_ok"]):
                print("miss", size, text, r["seen"])
            results.append(r)
    print("ground truth accuracy", summarise(results))
