"""Synthetic captioned-video world for training the shipped vdit-tiny model.

Everything is procedural and deterministic by seed: `sample_scene(rng)` draws a scene description,
`caption(scene)` turns it into a sentence of the fixed grammar, `render(scene, size, frames)` draws it as
uint8 RGB frames [T, H, W, 3]. Trajectories are defined over normalised clip time (0 at the first frame,
1 at the last), so a 17-frame 128x128 clip and a 49-frame 256x256 clip of one scene show the same motion,
the longer one slower and sharper.

The palette and the background rules are a contract with the Rust analyser (crates/pipeline/src/eval.rs):
plain backgrounds are palette colours different from every object's colour, textured backgrounds are two
close muted tones, and objects stay inside the frame away from the border (the analyser estimates the
background from the border pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOURS = list(PALETTE)
SHAPES = ["circle", "square", "triangle"]
MOTIONS = ["left", "right", "up", "down", "growing", "shrinking", "still"]
FPS = 16

# Every word the grammar can produce; the tokenizer's vocabulary is built from this list.
WORDS = (
    ["a", "and", "on", "background", "textured", "moving", "standing", "still", "growing", "shrinking"]
    + ["left", "right", "up", "down"]
    + COLOURS
    + SHAPES
)


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    motion: str
    # Centre at clip start and end, in units of the frame side (0..1); y grows downwards.
    start: tuple[float, float]
    end: tuple[float, float]
    # Half-size at clip start and end, in units of the frame side.
    radius_start: float
    radius_end: float


@dataclass(frozen=True)
class Background:
    kind: str  # "plain" | "stripes" | "checker"
    colour: str | None  # palette name for plain backgrounds
    tones: tuple[tuple[int, int, int], tuple[int, int, int]] | None  # muted tones for textured ones
    period: float  # texture period in units of the frame side
    orientation: int  # 0 vertical stripes, 1 horizontal, 2 diagonal
    mentioned: bool  # whether the caption names the background


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background


def motion_phrase(motion: str) -> str:
    if motion in ("left", "right", "up", "down"):
        return f"moving {motion}"
    if motion == "still":
        return "standing still"
    return motion


def caption(scene: Scene) -> str:
    parts = [f"a {o.colour} {o.shape} {motion_phrase(o.motion)}" for o in scene.objects]
    text = " and ".join(parts)
    bg = scene.background
    if bg.mentioned:
        text += f" on a {bg.colour} background" if bg.kind == "plain" else " on a textured background"
    return text


def _object_path(rng: np.random.Generator, motion: str, small: bool) -> tuple:
    """Start/end centre and radius for one object so that its whole path stays inside the frame."""
    margin = 0.06  # keep clear of the border rows the analyser uses for the background
    if motion in ("growing", "shrinking"):
        r_small = rng.uniform(0.06, 0.09)
        r_big = r_small * rng.uniform(1.8, 2.2)
        if small:
            r_small, r_big = r_small * 0.8, r_big * 0.8
        r0, r1 = (r_small, r_big) if motion == "growing" else (r_big, r_small)
        lo, hi = r_big + margin, 1 - r_big - margin
        c = (rng.uniform(lo, hi), rng.uniform(lo, hi))
        return c, c, r0, r1
    r = rng.uniform(0.09, 0.14) * (0.8 if small else 1.0)
    lo, hi = r + margin, 1 - r - margin
    if motion == "still":
        c = (rng.uniform(lo, hi), rng.uniform(lo, hi))
        return c, c, r, r
    dist = min(rng.uniform(0.30, 0.45), hi - lo)
    along0 = rng.uniform(lo, hi - dist)
    across = rng.uniform(lo, hi)
    if motion == "right":
        return (along0, across), (along0 + dist, across), r, r
    if motion == "left":
        return (along0 + dist, across), (along0, across), r, r
    if motion == "down":
        return (across, along0), (across, along0 + dist), r, r
    return (across, along0 + dist), (across, along0), r, r  # up


def _paths_clear(a: SceneObject, b: SceneObject, steps: int = 9) -> bool:
    """True when the two objects keep a gap between them along the whole clip."""
    for t in np.linspace(0.0, 1.0, steps):
        ca = np.add(np.multiply(a.start, 1 - t), np.multiply(a.end, t))
        cb = np.add(np.multiply(b.start, 1 - t), np.multiply(b.end, t))
        ra = a.radius_start * (1 - t) + a.radius_end * t
        rb = b.radius_start * (1 - t) + b.radius_end * t
        # Square corners reach sqrt(2)*r from the centre.
        if np.linalg.norm(ca - cb) < 1.45 * (ra + rb) + 0.04:
            return False
    return True


def _sample_object(rng: np.random.Generator, colour: str, small: bool) -> SceneObject:
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    start, end, r0, r1 = _object_path(rng, motion, small)
    return SceneObject(colour, shape, motion, tuple(start), tuple(end), float(r0), float(r1))


def _sample_background(rng: np.random.Generator, object_colours: set[str]) -> Background:
    mentioned = bool(rng.random() < 0.75)
    if rng.random() < 0.7:
        choices = [c for c in COLOURS if c not in object_colours]
        colour = choices[rng.integers(len(choices))]
        return Background("plain", colour, None, 0.0, 0, mentioned)
    # Two close muted near-grey tones: far from every palette colour, close to each other, so the border median
    # of a textured frame stays near both tones.
    base = rng.integers(95, 146) + rng.integers(-10, 11, size=3)
    delta = rng.integers(14, 24) * rng.choice([-1, 1])
    second = np.clip(base + delta, 0, 255)
    kind = "stripes" if rng.random() < 0.5 else "checker"
    return Background(
        kind,
        None,
        (tuple(int(v) for v in base), tuple(int(v) for v in second)),
        float(rng.uniform(0.06, 0.14)),
        int(rng.integers(3)),
        mentioned,
    )


def sample_scene(rng: np.random.Generator, two_object_prob: float = 0.3) -> Scene:
    first_colour = COLOURS[rng.integers(len(COLOURS))]
    objects = [_sample_object(rng, first_colour, small=False)]
    if rng.random() < two_object_prob:
        others = [c for c in COLOURS if c != first_colour]
        second_colour = others[rng.integers(len(others))]
        for _ in range(30):
            a = _sample_object(rng, first_colour, small=True)
            b = _sample_object(rng, second_colour, small=True)
            if _paths_clear(a, b):
                objects = [a, b]
                break
    background = _sample_background(rng, {o.colour for o in objects})
    return Scene(tuple(objects), background)


def _background_image(bg: Background, size: int) -> np.ndarray:
    """[size, size, 3] float32 in 0..255."""
    if bg.kind == "plain":
        return np.broadcast_to(np.array(PALETTE[bg.colour], np.float32), (size, size, 3)).copy()
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    period = bg.period
    if bg.kind == "stripes":
        u = [x, y, (x + y) / np.sqrt(2.0)][bg.orientation]
        pick = (np.floor(u / (period / 2)) % 2).astype(bool)
    else:
        pick = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(bool)
    tone_a = np.array(bg.tones[0], np.float32)
    tone_b = np.array(bg.tones[1], np.float32)
    return np.where(pick[..., None], tone_b, tone_a)


def _coverage(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a shape of half-size r centred at the origin; dx, dy in frame units."""
    if shape == "circle":
        sd = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "square":
        sd = np.maximum(np.abs(dx), np.abs(dy)) - r * 0.9
    else:  # upward equilateral triangle of circumradius 1.2 r, centroid at the origin
        s3 = np.sqrt(3.0) / 2.0
        inradius = r * 0.6
        bottom = dy - inradius
        left = -s3 * dx - 0.5 * dy - inradius
        right = s3 * dx - 0.5 * dy - inradius
        sd = np.maximum(bottom, np.maximum(left, right))
    return np.clip(0.5 - sd / pixel, 0.0, 1.0)


def render(scene: Scene, size: int, frames: int) -> np.ndarray:
    """uint8 [frames, size, size, 3]."""
    pixel = 1.0 / size
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    background = np.clip(np.rint(_background_image(scene.background, size)), 0, 255).astype(np.uint8)
    video = np.empty((frames, size, size, 3), np.uint8)
    video[:] = background
    for f in range(frames):
        t = f / (frames - 1) if frames > 1 else 0.0
        for obj in scene.objects:
            cx = obj.start[0] * (1 - t) + obj.end[0] * t
            cy = obj.start[1] * (1 - t) + obj.end[1] * t
            r = obj.radius_start * (1 - t) + obj.radius_end * t
            # Only the pixels of the object's bounding box (plus an anti-aliasing pixel) can change.
            reach = 1.5 * r + 2 * pixel
            x0, x1 = max(int((cx - reach) * size), 0), min(int((cx + reach) * size) + 1, size)
            y0, y1 = max(int((cy - reach) * size), 0), min(int((cy + reach) * size) + 1, size)
            dx = coords[None, x0:x1] - np.float32(cx)
            dy = coords[y0:y1, None] - np.float32(cy)
            alpha = _coverage(obj.shape, dx, dy, np.float32(r), pixel)[..., None]
            colour = np.array(PALETTE[obj.colour], np.float32)
            window = video[f, y0:y1, x0:x1].astype(np.float32)
            blended = window * (1 - alpha) + colour * alpha
            video[f, y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return video


# Prompts held out of training (exact captions never generated for training) and used by scripts/eval.
HELD_OUT_PROMPTS = [
    "a red circle moving right",
    "a blue square moving left",
    "a green triangle moving up",
    "a yellow circle moving down",
    "a purple square growing",
    "a orange triangle shrinking",
    "a white circle standing still on a black background",
    "a black square moving right on a white background",
    "a red triangle moving left on a blue background",
    "a green circle moving down on a purple background",
    "a blue triangle moving right on a textured background",
    "a yellow square moving up on a textured background",
    "a purple circle moving left on a orange background",
    "a orange square moving down on a green background",
    "a white triangle growing on a red background",
    "a red square shrinking on a yellow background",
    "a blue circle moving up and a yellow square moving down",
    "a green square moving right and a red circle moving left on a black background",
]
HELD_OUT = frozenset(HELD_OUT_PROMPTS)


def training_scene(rng: np.random.Generator) -> tuple[Scene, str]:
    """A scene whose caption is not one of the held-out prompts."""
    while True:
        scene = sample_scene(rng)
        text = caption(scene)
        if text not in HELD_OUT:
            return scene, text


def render_batch(seed: int, count: int, size: int, frames: int) -> tuple[np.ndarray, list[str]]:
    """`count` training clips from one seed: uint8 [count, frames, size, size, 3] and their captions."""
    rng = np.random.default_rng(seed)
    clips = np.empty((count, frames, size, size, 3), np.uint8)
    texts = []
    for i in range(count):
        scene, text = training_scene(rng)
        clips[i] = render(scene, size, frames)
        texts.append(text)
    return clips, texts


if __name__ == "__main__":
    import sys

    rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for _ in range(10):
        print(caption(sample_scene(rng)))
