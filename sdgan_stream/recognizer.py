"""dlib's face recognizer, 68-point shape predictor and face detectors, for measuring anonymization.

Everything here comes from the ``face-recognition-models`` package (CC0 dlib models), loaded by file
path (the package's ``__init__`` needs ``pkg_resources``, so it is never imported):

- ``dlib_face_recognition_resnet_model_v1.dat``: a 128-D face embedding (ResNet, trained by dlib on
  ~3 million faces). Two photos of the same person are under 0.6 apart, different people 0.63-0.9.
  sdgan-stream's generator never trains against it, so it is a fair, independent judge of identity.
  dlib cuts the face chip; the network runs in onnxruntime (:mod:`~sdgan_stream.dlib_resnet`: dlib's
  own weights, the same descriptor to ~1e-6, ~25x faster here and without holding the GIL).
- ``shape_predictor_68_face_landmarks.dat``: 68 points (iBUG 300-W order), also used to cut the
  recognizer's aligned face chip.
- dlib's HOG frontal face detector (built into dlib) and ``mmod_human_face_detector.dat`` (CNN).

None of these is the product's detector (CenterFace) or landmark path, so an anonymizer cannot pass
by fooling its own models.

>>> import numpy as np
>>> recognizer = FaceRecognizer()
>>> recognizer.detect(np.zeros((120, 160, 3), np.uint8))
[]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from .dlib_resnet import CHIP_PADDING, CHIP_SIZE, DlibResNet
from .errors import WeightsError
from .landmarks import dlib_model_path

log = logging.getLogger(__name__)

__all__ = [
    "DlibDetectorKind",
    "FaceRecognizer",
    "FoundFace",
    "SAME_PERSON_DISTANCE",
    "interocular_distance",
    "landmark_error",
]

DlibDetectorKind = Literal["hog", "cnn"]

# dlib's documented decision threshold: embeddings closer than this are the same person.
SAME_PERSON_DISTANCE = 0.6
# Faces are scaled to about this width before a local detection: HOG's 80x80 window finds faces from
# ~70 px wide, and a fixed scale makes the check equally fair for small and large faces.
_LOCAL_FACE_PX = 110.0


@dataclass(frozen=True)
class FoundFace:
    """One detection: box (4,) float32 xyxy in image pixels, detector score, and which detector."""

    box: np.ndarray
    score: float
    detector: str


def interocular_distance(points68: np.ndarray) -> float:
    """Distance between the outer eye corners (points 36 and 45), the 300-W normalisation."""
    p = np.asarray(points68, np.float64)
    return float(np.hypot(*(p[45] - p[36])))


def landmark_error(points: np.ndarray, reference: np.ndarray) -> float:
    """Mean point-to-point distance of two 68-point sets, in units of the reference's inter-ocular distance."""
    p, r = np.asarray(points, np.float64), np.asarray(reference, np.float64)
    iod = interocular_distance(r)
    if iod <= 1e-6:
        return float("nan")
    return float(np.linalg.norm(p - r, axis=1).mean() / iod)


class FaceRecognizer:
    """dlib detectors, 68 landmarks and 128-D embeddings on RGB uint8 images.

    ``detector`` picks the face detector for :meth:`detect` and :meth:`detect_near`: ``"hog"``
    (dlib's frontal HOG detector, ~0.1 s per 720p frame) or ``"cnn"`` (the MMOD CNN, more robust to
    pose, ~10x slower on CPU). ``upsample`` is how often the whole image is doubled before a full-frame
    detection; ``None`` picks 1 for frames up to 720 px tall (faces from ~40 px) and 0 above.
    """

    def __init__(
        self,
        *,
        detector: DlibDetectorKind = "hog",
        upsample: int | None = None,
        models_dir: str | Path | None = None,
    ) -> None:
        import dlib

        if detector not in ("hog", "cnn"):
            raise ValueError(f"unknown dlib detector {detector!r}; choose hog or cnn")

        def model(name: str) -> str:
            path = Path(models_dir) / name if models_dir is not None else dlib_model_path(name)
            if not path.is_file():
                raise WeightsError(f"dlib model not found at {path}")
            return str(path)

        self.detector_kind = detector
        self.upsample = upsample
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(model("shape_predictor_68_face_landmarks.dat"))
        self._network = DlibResNet(model("dlib_face_recognition_resnet_model_v1.dat"))
        if detector == "cnn":
            self._cnn = dlib.cnn_face_detection_model_v1(model("mmod_human_face_detector.dat"))
            self._hog = None
        else:
            self._hog = dlib.get_frontal_face_detector()
            self._cnn = None
        log.info("dlib %s recognizer with the %s face detector", dlib.__version__, detector)

    # -- detection ------------------------------------------------------------------------------
    def _auto_upsample(self, image: np.ndarray) -> int:
        if self.upsample is not None:
            return self.upsample
        return 1 if image.shape[0] <= 720 else 0

    def _run(self, image: np.ndarray, upsample: int) -> list[FoundFace]:
        image = np.ascontiguousarray(image)
        if self._cnn is not None:
            found = [(d.rect, float(d.confidence)) for d in self._cnn(image, upsample)]
        else:
            rects, scores, _ = self._hog.run(image, upsample, 0.0)
            found = list(zip(rects, (float(s) for s in scores)))
        h, w = image.shape[:2]
        out = []
        for rect, score in found:
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], np.float32)
            box[0::2] = np.clip(box[0::2], 0, w)
            box[1::2] = np.clip(box[1::2], 0, h)
            out.append(FoundFace(box, score, self.detector_kind))
        return out

    def detect(self, image: np.ndarray, *, upsample: int | None = None) -> list[FoundFace]:
        """Faces on a whole RGB image, best first."""
        _check_image(image)
        found = self._run(image, self._auto_upsample(image) if upsample is None else upsample)
        return sorted(found, key=lambda f: -f.score)

    def detect_near(self, image: np.ndarray, box: np.ndarray, *, context: float = 0.8) -> FoundFace | None:
        """The detection that matches the face expected at ``box``, or ``None``.

        The region around ``box`` (grown by ``context`` of its size on every side) is scaled so the face
        is ~110 px wide, then searched; a detection matches when its centre lies inside ``box`` and its
        size is within 0.5-2x of the box's. Any detector convention (dlib, CenterFace, ground truth)
        can provide ``box``.
        """
        _check_image(image)
        x1, y1, x2, y2 = (float(v) for v in box)
        bw, bh = x2 - x1, y2 - y1
        if bw < 2 or bh < 2:
            return None
        h, w = image.shape[:2]
        rx1, ry1 = int(max(x1 - context * bw, 0)), int(max(y1 - context * bh, 0))
        rx2, ry2 = int(min(x2 + context * bw, w)), int(min(y2 + context * bh, h))
        if rx2 - rx1 < 8 or ry2 - ry1 < 8:
            return None
        scale = _LOCAL_FACE_PX / max(bw, 1.0)
        region = image[ry1:ry2, rx1:rx2]
        size = (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))
        resized = cv2.resize(region, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        best: FoundFace | None = None
        for found in self._run(resized, 0):
            fb = found.box / scale + np.array([rx1, ry1, rx1, ry1], np.float32)
            cx, cy = (fb[0] + fb[2]) / 2, (fb[1] + fb[3]) / 2
            size_ratio = (fb[2] - fb[0]) / bw
            if x1 <= cx <= x2 and y1 <= cy <= y2 and 0.5 <= size_ratio <= 2.0:
                if best is None or found.score > best.score:
                    best = FoundFace(fb.astype(np.float32), found.score, found.detector)
        return best

    # -- landmarks and identity -----------------------------------------------------------------
    def _rect(self, box: np.ndarray):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        return self._dlib.rectangle(x1, y1, max(x2 - 1, x1 + 1), max(y2 - 1, y1 + 1))

    def shape(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The 68 landmarks (68, 2) float32 of the face in ``box``. The predictor always answers,
        also on a face that is blurred or gone, which is what makes it a measure of what is left."""
        _check_image(image)
        detection = self._predictor(np.ascontiguousarray(image), self._rect(box))
        return np.array([(p.x, p.y) for p in detection.parts()], np.float32)

    def embed(self, image: np.ndarray, points68: np.ndarray) -> np.ndarray:
        """The 128-D embedding (float32) of the face chip that ``points68`` aligns (dlib's own chip cut)."""
        return self.embed_many(image, np.asarray(points68)[None])[0]

    def embed_many(self, image: np.ndarray, points68: np.ndarray) -> np.ndarray:
        """(N, 128) float32 embeddings of the N faces whose (N, 68, 2) landmarks are given, in one network call."""
        _check_image(image)
        points = np.asarray(points68, np.float64).reshape(-1, 68, 2)
        if not len(points):
            return np.zeros((0, 128), np.float32)
        image = np.ascontiguousarray(image)
        chips = np.stack([self._dlib.get_face_chip(image, self._detection(p), size=CHIP_SIZE, padding=CHIP_PADDING) for p in points])
        return self._network.descriptors(chips)

    def _detection(self, points68: np.ndarray):
        """dlib's ``full_object_detection`` of 68 points (the box around them, as dlib's chip cut wants)."""
        dlib = self._dlib
        x1, y1 = points68.min(0)
        x2, y2 = points68.max(0)
        parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in points68])
        return dlib.full_object_detection(self._rect(np.array([x1, y1, x2, y2])), parts)


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
