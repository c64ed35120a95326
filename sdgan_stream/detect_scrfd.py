"""insightface's SCRFD face detector as an optional alternative to CenterFace.

Nothing here downloads: the model is a file the user has, either an ``.onnx`` path or an insightface
model pack (a folder such as ``~/.insightface/models/buffalo_l`` holding ``det_10g.onnx``), named by
path or by pack name. When the ``insightface`` package is installed the model is loaded through its
``model_zoo`` (its own pre- and post-processing); otherwise it runs directly on onnxruntime with the
same decoding (distance-to-box and distance-to-keypoint on stride 8/16/32 or 8..128 anchor grids).

An unreadable or unsuitable file is a :class:`~sdgan_stream.errors.WeightsError` with a one-line
message, raised when the detector is built (before any frame is written).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from .detect import detector_session_options, nms, select_providers
from .errors import WeightsError
from .types import Detections

log = logging.getLogger(__name__)

__all__ = ["ScrfdDetector", "resolve_scrfd_model"]

_NMS_IOU = 0.4  # insightface's SCRFD default


def _insightface_root() -> Path:
    return Path(os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser() / "models"


def resolve_scrfd_model(name: str | os.PathLike[str]) -> Path:
    """The detection ``.onnx`` of ``name``: a file, a model pack folder, or a pack name under
    ``$INSIGHTFACE_HOME/models`` (default ``~/.insightface/models``). In a pack, the file whose name
    starts with ``det`` (insightface's naming), else the only ``.onnx`` there."""
    path = Path(name).expanduser()
    if not path.exists() and not path.suffix and os.sep not in str(name):
        path = _insightface_root() / str(name)
    if path.is_file():
        return path
    if path.is_dir():
        candidates = sorted(path.glob("*.onnx"))
        detection = [p for p in candidates if p.name.startswith("det")]
        if len(detection) >= 1:
            return detection[0]
        if len(candidates) == 1:
            return candidates[0]
        raise WeightsError(f"no SCRFD detection model (det*.onnx) in {path}")
    raise WeightsError(f"detector model not found: {name} (an .onnx file, a model pack folder, or a pack name under {_insightface_root()})")


def _read_session(path: Path, providers: list[str], intra_op_threads: int) -> object:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), detector_session_options(intra_op_threads), providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"cannot read detector model {path}: {first_line}") from None


class ScrfdDetector:
    """SCRFD faces, boxes and 5 keypoints, at the scale of the image it is handed.

    Dynamic-shape models see the image padded to a multiple of 32 (full resolution); a model with a
    fixed input size gets the image letterboxed into it (see :mod:`sdgan_stream.detect_passes` for
    tiling large frames).
    """

    def __init__(self, model: str | os.PathLike[str], *, threshold: float = 0.5, provider: str | None = None,
                 intra_op_threads: int = 0, use_insightface: bool | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.path = resolve_scrfd_model(model)
        self.providers = select_providers(provider)
        self._session = _read_session(self.path, self.providers, intra_op_threads)
        inputs = self._session.get_inputs()  # type: ignore[attr-defined]
        outputs = self._session.get_outputs()  # type: ignore[attr-defined]
        if len(inputs) != 1 or len(outputs) not in (6, 9, 10, 15):
            raise WeightsError(f"{self.path} is not an SCRFD detector ({len(inputs)} input(s), {len(outputs)} outputs)")
        self._input_name = inputs[0].name
        self._output_names = [o.name for o in outputs]
        shape = inputs[0].shape
        self.fixed_size = (int(shape[3]), int(shape[2])) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
        self._levels = 3 if len(outputs) in (6, 9) else 5
        self._strides = (8, 16, 32) if self._levels == 3 else (8, 16, 32, 64, 128)
        self._anchors = 2 if self._levels == 3 else 1
        self._keypoints = len(outputs) in (9, 15)
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}
        if use_insightface is None:
            use_insightface = importlib.util.find_spec("insightface") is not None
        self._zoo_model = self._load_with_insightface() if use_insightface else None
        log.info("SCRFD detector %s via %s (%s)", self.path.name, "insightface" if self._zoo_model else "onnxruntime",
                 self.providers[0])

    def _load_with_insightface(self) -> object | None:
        from insightface.model_zoo import model_zoo

        try:
            model = model_zoo.get_model(str(self.path), providers=self.providers)
        except Exception as error:  # insightface asserts and raises freely; its failure is not ours to hide
            raise WeightsError(f"insightface cannot load {self.path}: {error}") from None
        if model is None or getattr(model, "taskname", None) != "detection":
            raise WeightsError(f"insightface does not see a detection model in {self.path}")
        model.prepare(ctx_id=0 if "CUDAExecutionProvider" in self.providers else -1, nms_thresh=_NMS_IOU, nms_threshold=_NMS_IOU)
        return model

    # -- detection --------------------------------------------------------------------------------
    def _input_size(self, width: int, height: int) -> tuple[int, int, float]:
        if self.fixed_size is not None:
            scale = min(self.fixed_size[0] / width, self.fixed_size[1] / height)
            return self.fixed_size[0], self.fixed_size[1], scale
        return -(-width // 32) * 32, -(-height // 32) * 32, 1.0

    def detect(self, image: np.ndarray) -> Detections:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        height, width = image.shape[:2]
        if self._zoo_model is not None:
            in_w, in_h, _ = self._input_size(width, height)
            return _as_detections(*self._zoo_detect(image, in_w, in_h))
        return self._detect_onnxruntime(image)

    def _zoo_detect(self, image: np.ndarray, in_w: int, in_h: int) -> tuple[np.ndarray, np.ndarray | None]:
        # insightface reads BGR (it swaps to RGB for the network). How SCRFD.detect takes its threshold
        # changed across releases: det_thresh= (2.x), threshold= (0.7), or only the det_thresh attribute.
        import inspect

        model = self._zoo_model
        bgr = np.ascontiguousarray(image[..., ::-1])
        parameters = inspect.signature(model.detect).parameters  # type: ignore[attr-defined]
        for name in ("det_thresh", "threshold"):
            if name in parameters:
                return model.detect(bgr, input_size=(in_w, in_h), **{name: self.threshold})  # type: ignore[attr-defined]
        model.det_thresh = self.threshold  # type: ignore[attr-defined]
        return model.detect(bgr, input_size=(in_w, in_h))  # type: ignore[attr-defined]

    def _detect_onnxruntime(self, image: np.ndarray) -> Detections:
        import cv2

        height, width = image.shape[:2]
        in_w, in_h, scale = self._input_size(width, height)
        new_w, new_h = min(in_w, max(1, round(width * scale))), min(in_h, max(1, round(height * scale)))
        resized = image if scale == 1.0 else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        blob = np.zeros((1, 3, in_h, in_w), np.float32)
        blob[0, :, :new_h, :new_w] = (resized.transpose(2, 0, 1).astype(np.float32) - 127.5) / 128.0  # RGB
        outputs = self._session.run(self._output_names, {self._input_name: blob})  # type: ignore[attr-defined]
        boxes, scores, points = [], [], []
        n = self._levels
        for level, stride in enumerate(self._strides):
            level_scores = np.asarray(outputs[level]).reshape(-1)
            level_boxes = np.asarray(outputs[level + n]).reshape(-1, 4) * stride
            centres = self._anchor_centres(in_h // stride, in_w // stride, stride)
            keep = np.flatnonzero(level_scores >= self.threshold)
            if not keep.size:
                continue
            c = centres[keep]
            d = level_boxes[keep]
            boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], 1))
            scores.append(level_scores[keep])
            if self._keypoints:
                k = np.asarray(outputs[level + 2 * n]).reshape(-1, 10)[keep].reshape(-1, 5, 2) * stride
                points.append(c[:, None, :] + k)
        if not boxes:
            return Detections.empty()
        all_boxes = np.concatenate(boxes) / scale
        all_scores = np.concatenate(scores).astype(np.float32)
        if self._keypoints:
            all_points = np.concatenate(points) / scale
        else:  # no keypoints in this model: the tracker fills a template from the box
            all_points = np.full((len(all_boxes), 5, 2), np.nan, np.float32)
        keep = nms(all_boxes, all_scores, _NMS_IOU)
        return Detections(all_boxes[keep].astype(np.float32), all_scores[keep], all_points[keep].astype(np.float32))

    def _anchor_centres(self, rows: int, cols: int, stride: int) -> np.ndarray:
        key = (rows, cols, stride)
        centres = self._centres.get(key)
        if centres is None:
            grid = np.stack(np.mgrid[:rows, :cols][::-1], axis=-1).astype(np.float32).reshape(-1, 2) * stride
            centres = np.repeat(grid, self._anchors, axis=0)  # anchors of one cell are consecutive
            if len(self._centres) < 64:
                self._centres[key] = centres
        return centres


def _as_detections(boxes: np.ndarray, keypoints: np.ndarray | None) -> Detections:
    if boxes is None or len(boxes) == 0:
        return Detections.empty()
    boxes = np.asarray(boxes, np.float32)
    points = (np.asarray(keypoints, np.float32).reshape(-1, 5, 2) if keypoints is not None
              else np.full((len(boxes), 5, 2), np.nan, np.float32))
    return Detections(boxes[:, :4].copy(), boxes[:, 4].copy(), points)
