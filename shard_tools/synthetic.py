"""A synthetic labelled video collection, written as real encoded files in the folder-per-class layout.

The class of a clip is the motion of its main object: direction and speed of travel, rotation, or growth.
Everything else is drawn at random per clip: the shape, its colours and texture, the background and a few still
distractor shapes, the start position, size and phase, and the speed within +-20%. Objects that leave the frame
come back on the other side (the motion is periodic), so clips of any length show the motion throughout.

A `Look` says what the random appearance is drawn from. The `study` preset (`PRESETS`) is the collection `train
study` calibrates on: four classes of fast motion (right, left, clockwise, counter-clockwise), a larger object,
smooth backgrounds and shading, and two disjoint looks, one for training clips and one, with other shapes,
textures and backgrounds, for test clips, so that only motion carries over. `still=True` writes each clip as one
of its frames repeated: the single-frame baseline sees exactly the appearance of the moving clip and none of its
motion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shard_tools.encode import CODECS, VideoWriter


@dataclass(frozen=True)
class Motion:
    name: str
    direction: float = 0.0  # degrees, counter-clockwise from 'right'
    speed: float = 0.0  # frame widths per second
    spin: float = 0.0  # turns per second, positive = clockwise on screen
    zoom: float = 0.0  # growth cycles per second (size sweeps 0.5x -> 1.6x, then restarts); negative = shrinking


MOTIONS = (  # classes in this order; `num_classes=k` uses the first k
    Motion("move_right", 0, 0.25), Motion("move_left", 180, 0.25),
    Motion("rotate_cw", spin=0.5), Motion("rotate_ccw", spin=-0.5),
    Motion("grow", zoom=0.3), Motion("shrink", zoom=-0.3),
    Motion("move_up", 90, 0.25), Motion("move_down", 270, 0.25),
    Motion("move_right_fast", 0, 0.6), Motion("move_left_fast", 180, 0.6),
    Motion("move_up_right", 45, 0.25), Motion("move_down_left", 225, 0.25),
    Motion("move_up_left", 135, 0.25), Motion("move_down_right", 315, 0.25),
    Motion("rotate_cw_fast", spin=1.2), Motion("rotate_ccw_fast", spin=-1.2),
)
SHAPES = ("disc", "square", "triangle", "diamond", "ellipse", "cross", "arrow", "bar")
TEXTURES = ("stripes", "checker", "halves", "ramp", "diagonal", "corner", "dome")
BACKGROUNDS = ("flat", "gradient", "blocks", "stripes", "rings", "plaid", "glow", "waves")
MIN_SCALE, MAX_SCALE = 0.5, 1.6


@dataclass(frozen=True)
class Look:
    """The choices a clip's random appearance is drawn from."""
    shapes: tuple[str, ...] = SHAPES[:6]
    textures: tuple[str, ...] = TEXTURES[:4]
    backgrounds: tuple[str, ...] = BACKGROUNDS[:4]
    radius: tuple[float, float] = (0.12, 0.22)  # of the short side
    noise: float = 4.0  # standard deviation of the still per-pixel background noise, in grey levels
    distractors: int = 2  # still shapes on the background: 0..this many
    object_range: tuple[float, float] = (0.0, 255.0)  # each colour channel of an object, drawn uniformly
    background_range: tuple[float, float] = (40.0, 193.0)  # each colour channel of the background


@dataclass(frozen=True)
class Preset:
    motions: tuple[Motion, ...]
    train: Look  # the look of the clips models train on
    test: Look  # the held-out look of the test clips


PRESETS = {
    "default": Preset(MOTIONS, Look(), Look()),
    "study": Preset(  # about 2 pixels and 9 degrees a frame at 64 x 64 and 25 fps
        # objects brighter than the background: a moving edge brightens ahead and darkens behind, whatever the
        # colours, which a single cube embedding (linear in its pixels) can tell apart (with the default colours
        # the tiny ViT stayed at chance); smooth backgrounds and object shading, little noise: what a masked cube
        # holds can be guessed from the visible ones around it, as in natural video (on the first study look, with
        # block and ring backgrounds, striped objects and per-pixel noise, tube-masked pre-training learned
        # nothing: README, Study)
        motions=(Motion("move_right", 0, 0.8), Motion("move_left", 180, 0.8), Motion("rotate_cw", spin=0.6),
                 Motion("rotate_ccw", spin=-0.6)),
        train=Look(shapes=("square", "triangle", "cross", "arrow"), textures=("halves", "ramp"),
                   backgrounds=("flat", "gradient", "glow"), radius=(0.22, 0.32), distractors=1, noise=1.0,
                   object_range=(150.0, 255.0), background_range=(20.0, 100.0)),
        test=Look(shapes=("diamond", "ellipse", "bar"), textures=("corner", "dome"),
                  backgrounds=("waves",), radius=(0.22, 0.32), distractors=1, noise=1.0,
                  object_range=(150.0, 255.0), background_range=(20.0, 100.0))),
}


def make_collection(root, num_classes: int = 4, clips_per_class: int = 4, num_frames: int = 48,
                    size: tuple[int, int] = (128, 160), fps: int = 25, codec: str = "vp9", seed: int = 0,
                    motions: tuple[Motion, ...] = MOTIONS, look: Look = Look(), still: bool = False) -> list[Path]:
    """Write `root/<class_name>/<class_name>_<i>.<ext>` clips; returns their paths (class by class).

    size is (height, width). The container follows the codec: h264 -> .mp4, mpeg4 -> .avi, vp9 -> .webm,
    mjpeg -> .mkv. Clip i of class c depends only on (seed, c, i); `motions` are the classes (the first
    `num_classes`), `look` what their appearance is drawn from; `still` writes one random frame of each clip
    repeated `num_frames` times.
    """
    if not 1 <= num_classes <= len(motions):
        raise ValueError(f"num_classes must be 1..{len(motions)} (the motions are {[m.name for m in motions]}), "
                         f"got {num_classes}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    height, width = size
    if height % 2 or width % 2 or height < 16 or width < 16:
        raise ValueError(f"size must be even and at least 16x16 (height, width), got {size}")
    if clips_per_class < 1 or num_frames < 1:
        raise ValueError(f"clips_per_class and num_frames must be positive, got {clips_per_class}, {num_frames}")
    root = Path(root)
    paths = []
    for label, kind in enumerate(motions[:num_classes]):
        folder = root / kind.name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(clips_per_class):
            path = folder / f"{kind.name}_{i:03d}.{CODECS[codec].extension}"
            rng = np.random.default_rng([seed, label, i])
            frames = list(draw_clip(kind, rng, num_frames, height, width, fps, look))
            if still:
                frames = [frames[np.random.default_rng([seed, label, i, 1]).integers(num_frames)]] * num_frames
            with VideoWriter(path, codec, width, height, fps, gop=min(32, num_frames)) as writer:
                for frame in frames:
                    writer.write(frame)
            paths.append(path)
    return paths


def draw_clip(motion: Motion, rng: np.random.Generator, num_frames: int, height: int, width: int, fps: float,
              look: Look = Look()):
    """Yields (H, W, 3) uint8 frames of one clip."""
    background = draw_background(rng, height, width, look)
    for shape_rng in (np.random.default_rng(rng.integers(1 << 62))
                      for _ in range(rng.integers(0, look.distractors + 1))):
        still = Sprite(shape_rng, height, width, 0.6, look)
        background = still.paint(background, *still.start, angle=still.angle, scale=1.0)
    sprite = Sprite(rng, height, width, 1.0, look)
    jitter = rng.uniform(0.8, 1.2)
    phase = rng.uniform()
    radians = np.deg2rad(motion.direction)
    velocity = motion.speed * jitter * width * np.array([np.cos(radians), -np.sin(radians)])  # pixels/s, (x, y)
    for t in np.arange(num_frames) / fps:
        x, y = sprite.start + velocity * t
        angle = sprite.angle + 2 * np.pi * motion.spin * jitter * t
        scale = 1.0
        if motion.zoom:
            cycle = (phase + abs(motion.zoom) * jitter * t) % 1.0
            scale = MIN_SCALE * (MAX_SCALE / MIN_SCALE) ** (cycle if motion.zoom > 0 else 1.0 - cycle)
        yield sprite.paint(background, x, y, angle=angle, scale=scale)


class Sprite:
    """A textured shape, drawn at (x, y) with a rotation and a scale; positions wrap around the frame."""

    REACH = 1.2  # every shape lies within this radius in object coordinates

    def __init__(self, rng: np.random.Generator, height: int, width: int, scale: float, look: Look = Look()):
        self.height, self.width = height, width
        self.shape = look.shapes[rng.integers(len(look.shapes))]
        self.texture = look.textures[rng.integers(len(look.textures))]
        self.colours = random_colours(rng, 2, *look.object_range)
        self.radius = scale * rng.uniform(*look.radius) * min(height, width)
        self.frequency = rng.uniform(2.0, 4.0)  # texture periods across the radius
        self.start = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        self.angle = rng.uniform(0, 2 * np.pi)

    def paint(self, background: np.ndarray, x: float, y: float, angle: float, scale: float) -> np.ndarray:
        """A copy of the (H, W, 3) uint8 background with the sprite drawn on it."""
        r = self.radius * scale
        dx = (np.arange(self.width) + 0.5 - x + self.width / 2) % self.width - self.width / 2  # wrapped offsets
        dy = (np.arange(self.height) + 0.5 - y + self.height / 2) % self.height - self.height / 2
        cols, rows = np.flatnonzero(abs(dx) <= self.REACH * r), np.flatnonzero(abs(dy) <= self.REACH * r)
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = dx[cols][None, :], dy[rows][:, None]  # (1, w) and (h, 1): only the box around the sprite
        u, v = (c * dx + s * dy) / r, (-s * dx + c * dy) / r  # (h, w) object coordinates, shape spans ~[-1, 1]
        inside = shape_mask(self.shape, u, v)
        mix = texture(self.texture, u[inside] * self.frequency, v[inside] * self.frequency)[:, None]  # (n, 1)
        frame = background.copy()
        box = frame[np.ix_(rows, cols)]  # (h, w, 3)
        box[inside] = (self.colours[0] * (1 - mix) + self.colours[1] * mix).astype(np.uint8)
        frame[np.ix_(rows, cols)] = box
        return frame


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "disc":
        return u * u + v * v <= 1
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.8
    if shape == "triangle":  # equilateral, pointing up in object coordinates
        return (v <= 0.5) & (np.sqrt(3) * u - v <= 1) & (-np.sqrt(3) * u - v <= 1)
    if shape == "diamond":
        return abs(u) + abs(v) <= 1
    if shape == "ellipse":
        return u * u + (v / 0.55) ** 2 <= 1
    if shape == "cross":
        return ((abs(u) <= 0.35) & (abs(v) <= 1)) | ((abs(v) <= 0.35) & (abs(u) <= 1))
    if shape == "arrow":  # a shaft and a head, pointing along +u
        return ((u >= -1) & (u <= 0.2) & (abs(v) <= 0.25)) | ((u >= 0.2) & (abs(v) <= 0.9 * (1 - u) / 0.8))
    if shape == "bar":
        return (abs(u) <= 1) & (abs(v) <= 0.3)
    raise ValueError(f"unknown shape {shape!r}")


def texture(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if kind == "stripes":
        return (np.floor(u) % 2).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    if kind == "halves":
        return (u > 0).astype(np.float32)
    if kind == "ramp":
        return np.clip(0.5 + u / 8, 0, 1)
    if kind == "diagonal":
        return (np.floor((u + v) / 1.4) % 2).astype(np.float32)
    if kind == "corner":  # one quadrant of the other colour
        return ((u > 0) & (v > 0)).astype(np.float32)
    if kind == "dome":  # smooth, from the centre outwards
        return np.clip((u * u + v * v) / 16, 0, 1).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def draw_background(rng: np.random.Generator, height: int, width: int, look: Look = Look()) -> np.ndarray:
    """A still (H, W, 3) uint8 background."""
    kind = look.backgrounds[rng.integers(len(look.backgrounds))]
    low, high = look.background_range  # by default darker than the objects on average
    first, second = random_colours(rng, 2) * (high - low) / 255 + low
    y, x = np.mgrid[:height, :width].astype(np.float32)
    if kind == "flat":
        mix = np.zeros((height, width), np.float32)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * x / width + np.sin(angle) * y / height
        mix = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
    elif kind == "blocks":
        cell = int(rng.integers(8, 24))
        grid = rng.uniform(size=(height // cell + 1, width // cell + 1)).astype(np.float32)
        mix = np.kron(grid, np.ones((cell, cell), np.float32))[:height, :width]
    elif kind == "stripes":
        period = rng.uniform(10, 30)
        mix = (np.floor((x + y * rng.uniform(-1, 1)) / period) % 2).astype(np.float32) * 0.5
    elif kind == "rings":
        cy, cx, period = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(8, 20)
        mix = (np.floor(np.hypot(x - cx, y - cy) / period) % 2).astype(np.float32) * 0.6
    elif kind == "glow":  # a soft light somewhere in the frame
        cy, cx, spread = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.3, 0.6) * max(height, width)
        mix = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * spread ** 2))
    elif kind == "waves":  # two slow crossing waves, periods of one to two frame widths
        mix = np.zeros((height, width), np.float32)
        for _ in range(2):
            angle, period, phase = rng.uniform(0, np.pi), rng.uniform(1.0, 2.0) * width, rng.uniform(0, 2 * np.pi)
            mix += 0.25 * (1 + np.cos(2 * np.pi * (np.cos(angle) * x + np.sin(angle) * y) / period + phase))
    else:  # plaid: two crossing sets of soft bars
        period = rng.uniform(10, 24)
        mix = (0.25 * (1 + np.cos(2 * np.pi * x / period)) * 0.5 + 0.25 * (1 + np.cos(2 * np.pi * y / period))
               * 0.5).astype(np.float32) * 2
    noise = rng.normal(0, look.noise, (height, width, 1)).astype(np.float32)
    return np.clip(first * (1 - mix[..., None]) + second * mix[..., None] + noise, 0, 255).astype(np.uint8)


def random_colours(rng: np.random.Generator, count: int, low: float = 0.0, high: float = 255.0) -> np.ndarray:
    """(count, 3) float32 colours with channels in [low, high], well apart from each other."""
    while True:
        colours = rng.uniform(low, high, (count, 3)).astype(np.float32)
        spread = np.abs(colours[:, None] - colours[None]).sum(-1) + np.eye(count) * 1e9
        if spread.min() > 150 * (high - low) / 255:
            return colours
