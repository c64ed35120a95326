"""Flicker of generated faces, in process: the renderer alone, no encoder, on the held-out clip, and where it
comes from.

Decodes the first ``--frames`` frames of a clip, finds and tracks the faces once (the anonymizer's own
analysis), then renders every frame with each variant of the sdgan renderer (identity guard off) and
measures two things per face and frame pair t -> t+1:

* ``flicker``: ``evaluate``'s measure (:func:`sdgan_stream.evaluate._flicker`: grey change inside the face box
  after warping frame t+1 back with the ORIGINAL's optical flow), against the original's. The flow is the
  original's, so a replaced face whose outline or texture differs from the original's leaves a residue
  even when it moves exactly with the head (``oracle_frozen_noblend`` shows that floor).
* ``true_change``: grey change in the middle 60% of the face box against the face's TRUE motion. The
  held-out clip (:func:`sdgan_stream.samples.make_face_clip`) moves photos by whole pixels, so the true
  motion is a whole-pixel shift, found by phase correlation refined by search. Only valid on such clips.

Variants (renderer defaults unless named):

* ``before``: the head's motion predicted from the noisy fit only, the output averaged 0.5 with the last
  frame's (the renderer before the change gate and the pixel motion);
* ``pixels``: motion measured on the pixels, plain 0.5 average;
* ``after``: the defaults (pixel motion, change-gated smoothing);
* ``frozen_texture``: the generator's output never changes (weight 0.999 on the last frame's, the change
  gate off, so the pasted crop is not smoothed either): what the alignment and the paste alone leave;
* ``oracle``: the landmarks are the first fit moved by the true shift (an exact alignment), the rest as
  ``after``: what the renderer would leave with perfect landmarks;
* ``oracle_frozen``: exact alignment and frozen texture: what the paste (cloning, colour) leaves;
* ``oracle_frozen_noblend``: the same pasted with ``method="none"`` (feathered alpha only).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_flicker.py --clip /tmp/realism/table/heldout_clip.mp4 \\
        --frames 30 --out benchmarks/results/realism/flicker_sources.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("before", "pixels", "after", "frozen_texture", "oracle", "oracle_frozen", "oracle_frozen_noblend")


def true_shift(before: np.ndarray, after: np.ndarray, box: np.ndarray) -> tuple[int, int]:
    """Whole-pixel shift of the face in ``box`` from grey frame ``before`` to ``after``: phase correlation
    around the box, refined by searching +-2 px for the least change in the box's middle 60%."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    xs, ys = slice(max(0, int(x1 - 0.2 * w)), int(x2 + 0.2 * w)), slice(max(0, int(y1 - 0.2 * w)), int(y2 + 0.2 * w))
    (dx, dy), _ = cv2.phaseCorrelate(before[ys, xs].astype(np.float64), after[ys, xs].astype(np.float64))
    inner = _inner(box)
    best = None
    for a in range(round(dx) - 2, round(dx) + 3):
        for b in range(round(dy) - 2, round(dy) + 3):
            moved = _shifted(inner, a, b, after.shape)
            if moved is None:
                continue
            change = float(np.abs(after[moved] - before[inner]).mean())
            if best is None or change < best[0]:
                best = (change, a, b)
    return (0, 0) if best is None else (best[1], best[2])


def _inner(box: np.ndarray) -> tuple[slice, slice]:
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    return slice(max(0, int(y1 + 0.2 * h)), int(y2 - 0.2 * h)), slice(max(0, int(x1 + 0.2 * w)), int(x2 - 0.2 * w))


def _shifted(window: tuple[slice, slice], dx: int, dy: int, shape: tuple[int, ...]) -> tuple[slice, slice] | None:
    ys, xs = window
    if ys.start + dy < 0 or xs.start + dx < 0 or ys.stop + dy > shape[0] or xs.stop + dx > shape[1]:
        return None
    return slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)


class OracleLandmarker:
    """Each track's first dlib fit, moved by the face's true shift every frame: an exact alignment."""

    def __init__(self, landmarker, shifts: dict[tuple[int, int], tuple[int, int]]) -> None:  # noqa: ANN001
        self.landmarker, self.shifts, self.frame, self._points = landmarker, shifts, 0, {}

    def fit(self, image: np.ndarray, faces):  # noqa: ANN001, ANN201
        from sdgan_stream.landmarks import LandmarkFit

        out = []
        for face, fit in zip(faces, self.landmarker.fit(image, faces)):
            key = face.track_id
            if fit.points is None or key is None:
                out.append(fit)
                continue
            if key in self._points:
                self._points[key] = self._points[key] + np.asarray(self.shifts.get((self.frame, key), (0, 0)), np.float32)
            else:
                self._points[key] = fit.points.copy()
            out.append(LandmarkFit(self._points[key].copy(), None))
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from sdgan_stream import render
    from sdgan_stream.api import build_anonymizer
    from sdgan_stream.blend import paste_back
    from sdgan_stream.config import AnonymizeOptions
    from sdgan_stream.evaluate import _flicker, _grey
    from sdgan_stream.io.source import VideoFileSource

    options = AnonymizeOptions(method="sdgan", identity_guard=False, seed=1)
    frames, faces = [], []
    with VideoFileSource(args.clip) as source:
        analyser = build_anonymizer(options, source.info, renderer=object())  # analysis only
        for frame in source.frames():
            if frame.index >= args.frames:
                break
            frames.append(frame.image.copy())
            faces.append(analyser.analyse(frame.image))
    greys = [_grey(image) for image in frames]
    # the true shift of each face from frame t-1 to t, keyed (t, track)
    shifts = {(t, face.track_id): true_shift(greys[t - 1], greys[t], face.box) for t in range(1, len(frames)) for face in faces[t]}
    renderer = render.SdganRenderer.from_options(options)
    results = {}
    for name in args.variants.split(","):
        tested = renderer.for_new_stream()
        oracle = None
        if name in ("before", "pixels"):
            tested.temporal_smoothing, tested.change_gate = 0.5, 0.0
        if name == "before":
            tested.stabilizer.begin_frame = lambda image: None  # no frames: the motion comes from the fit
        if name.startswith("oracle"):
            oracle = OracleLandmarker(renderer.landmarker, shifts)
            tested.landmarker, tested.stabilizer.jitter = oracle, 0.0
        if "frozen" in name:
            tested.temporal_smoothing, tested.change_gate = 0.999, 0.0
        if name.endswith("noblend"):
            render.paste_back = lambda image, crop, prepared, **_: paste_back(image, crop, prepared, method="none")
        start = time.perf_counter()
        outputs = []
        try:
            for t, (image, frame_faces) in enumerate(zip(frames, faces)):
                if oracle is not None:
                    oracle.frame = t
                output = image.copy()
                tested.render(output, copy.deepcopy(frame_faces))
                outputs.append(_grey(output))
        finally:
            render.paste_back = paste_back
        seconds = time.perf_counter() - start
        flicker, flicker_original, change, change_original = [], [], [], []
        for t in range(len(frames) - 1):
            for face in faces[t]:
                a, o = _flicker(greys[t], greys[t + 1], outputs[t], outputs[t + 1], face.box)
                if np.isfinite(a):
                    flicker.append(a)
                    flicker_original.append(o)
                inner = _inner(face.box)
                moved = _shifted(inner, *true_shift(greys[t], greys[t + 1], face.box), greys[t].shape)
                if moved is not None:
                    change.append(float(np.abs(outputs[t + 1][moved] - outputs[t][inner]).mean()))
                    change_original.append(float(np.abs(greys[t + 1][moved] - greys[t][inner]).mean()))
        results[name] = {"flicker": float(np.mean(flicker)), "flicker_original": float(np.mean(flicker_original)),
                         "flicker_ratio": float(np.mean(flicker) / np.mean(flicker_original)),
                         "true_change": float(np.mean(change)), "true_change_original": float(np.mean(change_original)),
                         "face_pairs": len(flicker), "render_seconds": round(seconds, 1)}
        print(name, json.dumps(results[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "clip": str(args.clip), "frames": len(frames), "variants": results,
        "machine": f"{platform.machine()}, 2 cores shared, Python {platform.python_version()}",
        "command": "python benchmarks/bench_flicker.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
