"""Synthetic test and demo media made from real face photos that installed packages ship.

Nothing is downloaded: the faces come from scikit-image's ``astronaut`` (Eileen Collins, public domain)
and matplotlib's ``grace_hopper.jpg`` (public domain). Faces move over a textured background; each
clip records the true face box of every face on every frame, so tests and benchmarks can check covers
against ground truth rather than against our own detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import cv2
import numpy as np

__all__ = ["FacePhoto", "HeadTurn", "SyntheticClip", "allow_list_photos", "face_photos", "make_face_clip", "render_scene",
           "turn_head"]


@dataclass(frozen=True)
class FacePhoto:
    name: str
    image: np.ndarray  # RGB uint8, a head with some surroundings
    face_box: np.ndarray  # (4,) float32 xyxy of the face inside ``image`` (brows to chin, ear to ear)


@lru_cache(maxsize=1)
def face_photos() -> tuple[FacePhoto, ...]:
    """The real face photos available offline, cropped to the head with margin."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    hopper = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    sources = [
        # Face boxes measured once on the photos (CenterFace, checked by eye).
        ("astronaut", skimage.data.astronaut(), np.array([181.5, 58.2, 269.9, 177.8], np.float32)),
        ("grace_hopper", hopper, np.array([174.8, 131.5, 357.0, 336.3], np.float32)),
    ]
    return tuple(_head(name, image, box) for name, image, box in sources)


def _head(name: str, image: np.ndarray, box: np.ndarray) -> FacePhoto:
    """The face in ``box`` with some of its surroundings (hair, neck, background) as a FacePhoto."""
    box = np.asarray(box, np.float32)
    w, h = box[2] - box[0], box[3] - box[1]
    x1 = int(max(box[0] - 0.6 * w, 0))
    y1 = int(max(box[1] - 0.6 * h, 0))
    x2 = int(min(box[2] + 0.6 * w, image.shape[1]))
    y2 = int(min(box[3] + 0.5 * h, image.shape[0]))
    crop = np.ascontiguousarray(image[y1:y2, x1:x2])
    return FacePhoto(name, crop, box - np.array([x1, y1, x1, y1], np.float32))


def allow_list_photos(prepared_dir: str | Path, *, split: str = "heldout", one_per_person: bool = True) -> tuple[FacePhoto, ...]:
    """Faces of a ``prepare-data --package-photos`` folder, by split (``heldout`` or ``train``).

    Named ``person/file``; with ``one_per_person`` the largest face of each person. Evaluation clips
    of people the generator never saw are made from the ``heldout`` split.
    """
    import json

    from PIL import Image

    folder = Path(prepared_dir)
    faces = [f for f in json.loads((folder / "package_photos.json").read_text())["faces"] if f["split"] == split]
    if one_per_person:
        best: dict[str, dict] = {}
        for face in faces:
            width = face["box"][2] - face["box"][0]
            if face["person"] not in best or width > best[face["person"]]["box"][2] - best[face["person"]]["box"][0]:
                best[face["person"]] = face
        faces = [best[p] for p in sorted(best)]
    photos = []
    for face in faces:
        with Image.open(folder / face["photo"]) as im:
            image = np.asarray(im.convert("RGB"))
        photos.append(_head(f"{face['person']}/{Path(face['file']).name}", image, np.asarray(face["box"], np.float32)))
    return tuple(photos)


@dataclass
class SyntheticClip:
    path: Path
    width: int
    height: int
    fps: Fraction
    frame_count: int
    face_boxes: list[np.ndarray] = field(default_factory=list)  # per frame: (F, 4) true face boxes (display orientation)
    has_audio: bool = False
    rotation: int = 0


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([80 + 60 * xx / width, 110 + 50 * yy / height, 140 - 40 * xx / width], axis=2)
    image = base.astype(np.uint8)
    for _ in range(12):  # some edges and texture so encoders and detectors see a real scene
        color = tuple(int(c) for c in rng.integers(30, 220, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(20, width // 3)), y + int(rng.integers(20, height // 3))), color, -1)
    return cv2.GaussianBlur(image, (0, 0), 1.0)


def _placed_head(photo: FacePhoto, face_width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The photo scaled so its face is ``face_width`` wide: (patch, alpha, face box in patch)."""
    scale = face_width / float(photo.face_box[2] - photo.face_box[0])
    patch = cv2.resize(photo.image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    h, w = patch.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (w // 2, h // 2), (int(w * 0.48), int(h * 0.48)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(w, h) * 0.03)
    return patch, alpha, photo.face_box * scale


def render_scene(
    background: np.ndarray, heads: list[tuple[np.ndarray, np.ndarray, np.ndarray]], positions: list[tuple[float, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Composite heads at top-left ``positions``; returns the image and (F, 4) face boxes."""
    image = background.astype(np.float32)
    height, width = image.shape[:2]
    boxes = []
    for (patch, alpha, face_box), (x, y) in zip(heads, positions):
        x0, y0 = int(round(x)), int(round(y))
        h, w = patch.shape[:2]
        sx1, sy1 = max(0, -x0), max(0, -y0)
        dx1, dy1 = max(0, x0), max(0, y0)
        dx2, dy2 = min(width, x0 + w), min(height, y0 + h)
        if dx2 > dx1 and dy2 > dy1:
            a = alpha[sy1 : sy1 + dy2 - dy1, sx1 : sx1 + dx2 - dx1, None]
            p = patch[sy1 : sy1 + dy2 - dy1, sx1 : sx1 + dx2 - dx1].astype(np.float32)
            image[dy1:dy2, dx1:dx2] = a * p + (1 - a) * image[dy1:dy2, dx1:dx2]
        boxes.append(face_box + np.array([x0, y0, x0, y0], np.float32))
    return np.clip(image, 0, 255).astype(np.uint8), np.asarray(boxes, np.float32).reshape(-1, 4)


def make_face_clip(
    path: str | Path,
    *,
    width: int = 640,
    height: int = 360,
    frames: int = 40,
    fps: int = 25,
    faces: int = 2,
    face_width: float | None = None,
    audio: bool = True,
    seed: int = 0,
    variable_frame_rate: bool = False,
    rotation: int = 0,
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
    photos: tuple[FacePhoto, ...] | None = None,
) -> SyntheticClip:
    """Write a clip of real faces moving over a background, with a sine-tone AAC track.

    ``photos`` are the faces to use, in turn (default: :func:`face_photos`, the two in-package photos).
    ``variable_frame_rate`` spaces frames irregularly (1 or 2 ticks of a 1/(2*fps) time base);
    ``rotation`` stores the frames rotated and sets display-rotation metadata so players (and we)
    must undo it; the recorded face boxes are always in display orientation.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    photos = photos or face_photos()
    columns = math.ceil(math.sqrt(faces))
    face_width = face_width or min(width / columns, height / math.ceil(faces / columns)) / 2.6
    heads = []
    for i in range(faces):
        photo = photos[i % len(photos)]
        size = face_width * float(rng.uniform(0.85, 1.15))
        heads.append(_placed_head(photo, size))
    background = _background(width, height, rng)
    # Each head moves on its own Lissajous path inside its own grid cell, so faces never occlude each
    # other and every ground-truth box is fully visible.
    columns = math.ceil(math.sqrt(faces))
    rows = math.ceil(faces / columns)
    cell_w, cell_h = width / columns, height / rows
    paths = []
    for i, (patch, _, _) in enumerate(heads):
        h, w = patch.shape[:2]
        room_x, room_y = max(cell_w - w, 0.0), max(cell_h - h, 0.0)
        left, top = (i % columns) * cell_w + (cell_w - w) / 2, (i // columns) * cell_h + (cell_h - h) / 2
        paths.append(
            (left, top, 0.45 * room_x, 0.45 * room_y, rng.uniform(0.5, 1.5), rng.uniform(0, 2 * math.pi))
        )
    clip = SyntheticClip(path=path, width=width, height=height, fps=Fraction(fps), frame_count=frames, has_audio=audio, rotation=rotation)
    time_base = Fraction(1, 2 * fps) if variable_frame_rate else Fraction(1, fps)
    container = av.open(str(path), mode="w")
    try:
        stored_w, stored_h = (height, width) if rotation in (90, 270) else (width, height)
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, pix_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        if rotation:
            stream.set_display_rotation(rotation)
        audio_stream = container.add_stream("aac", rate=48000, layout="mono") if audio else None
        pts = 0
        for index in range(frames):
            t = index / fps
            positions = []
            for cx, cy, ax, ay, speed, phase in paths:
                positions.append((cx + ax * math.sin(speed * t * 2 + phase), cy + ay * math.cos(speed * t * 1.3 + phase)))
            image, boxes = render_scene(background, heads, positions)
            clip.face_boxes.append(boxes)
            stored = np.ascontiguousarray(np.rot90(image, k=-(rotation // 90))) if rotation else image
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = pts
            frame.time_base = time_base
            pts += int(rng.integers(1, 3)) if variable_frame_rate else 1
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if audio_stream is not None:
            _write_tone(container, audio_stream, seconds=float(pts * time_base))
    finally:
        container.close()
    return clip


def _write_tone(container: av.container.OutputContainer, stream: av.AudioStream, *, seconds: float) -> None:
    rate = 48000
    samples = int(rate * seconds)
    t = np.arange(samples, dtype=np.float32) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    chunk = 1024
    for start in range(0, samples, chunk):
        block = tone[start : start + chunk]
        frame = av.AudioFrame.from_ndarray(block[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


# -- turned heads (issue 13): a yaw-like warp of a frontal photo -----------------------------------------
@dataclass(frozen=True)
class HeadTurn:
    """A frontal face photo turned about a vertical axis as if painted on a cylinder.

    Columns within ``radius`` of ``centre_x`` are the cylinder: a point at angle phi (``x = centre_x +
    radius * sin(phi)``) moves to phi + yaw; what turns past the silhouette is hidden, and the side
    turning into view repeats the cylinder's edge. Nothing else changes. Not a 3D turn (the nose does
    not stand out of the face), but the face's outline, features and proportions go the way a turned
    head's do, with a known ground truth: :meth:`points` maps frontal points into the turned image.
    """

    image: np.ndarray  # (H, W, 3) uint8, the turned photo
    yaw_deg: float  # positive: the face turns towards image-right
    centre_x: float
    radius: float

    def points(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frontal (N, 2) points -> (turned points (N, 2), visible (N,) bool)."""
        p = np.asarray(points, np.float64).reshape(-1, 2).copy()
        u = np.clip((p[:, 0] - self.centre_x) / self.radius, -1.0, 1.0)
        on_cylinder = np.abs(p[:, 0] - self.centre_x) < self.radius
        phi = np.arcsin(u) + np.radians(self.yaw_deg)
        visible = ~on_cylinder | (np.abs(phi) <= np.pi / 2)
        p[on_cylinder, 0] = self.centre_x + self.radius * np.sin(np.clip(phi[on_cylinder], -np.pi / 2, np.pi / 2))
        return p, visible


def turn_head(image: np.ndarray, face_box: np.ndarray, yaw_deg: float, *, radius_factor: float = 0.65) -> HeadTurn:
    """Turn the face in ``face_box`` of a frontal photo by ``yaw_deg`` (see :class:`HeadTurn`); the
    cylinder's radius is ``radius_factor`` x the box width, about the head's half-width."""
    x1, _, x2, _ = (float(v) for v in face_box)
    centre, radius = (x1 + x2) / 2, radius_factor * (x2 - x1)
    height, width = image.shape[:2]
    xs = np.arange(width, dtype=np.float64)
    u = (xs - centre) / radius
    source = xs.copy()
    inside = np.abs(u) < 1.0
    phi = np.arcsin(np.clip(u[inside], -1.0, 1.0)) - np.radians(yaw_deg)
    source[inside] = centre + radius * np.sin(np.clip(phi, -np.pi / 2, np.pi / 2))
    map_x = np.broadcast_to(source.astype(np.float32)[None, :], (height, width))
    map_y = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], (height, width))
    turned = cv2.remap(image, np.ascontiguousarray(map_x), np.ascontiguousarray(map_y), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return HeadTurn(turned, float(yaw_deg), centre, radius)
