"""Flicker of generated faces, in process: the renderer alone, no encoder, on the held-out clip.

Decodes the first ``--frames`` frames of a clip, finds and tracks the faces once (the anonymizer's own
analysis), then renders every frame with each variant of the sdgan renderer (identity guard off) and
measures ``evaluate``'s flicker (:func:`sdgan_stream.evaluate._flicker`: grey change inside each face box
between frame t and frame t+1 warped back with the original's optical flow) against the original's.

Variants: ``after`` (the defaults: landmarks filtered per track, replaced-region memory), ``before`` (both
off: the renderer before issue 13's flicker work), ``frozen_texture`` (defaults, and the generator's output
averaged with weight 0.999 on the previous frame's: what flicker is left when the painted face itself never
changes), ``no_smoothing`` (defaults without the per-track output average).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_flicker.py --clip /work/runs/heldout/heldout_clip.mp4 \\
        --frames 30 --out benchmarks/results/realism/flicker.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("before", "after", "frozen_texture", "no_smoothing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from sdgan_stream import render
    from sdgan_stream.api import build_anonymizer
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
    renderer = render.SdganRenderer.from_options(options)
    memory = render.REGION_MEMORY
    results = {}
    for name in args.variants.split(","):
        tested = renderer.for_new_stream()
        render.REGION_MEMORY = 0.0 if name == "before" else memory
        if name == "before":
            tested.stabilizer.jitter = 0.0
        elif name == "frozen_texture":
            tested.temporal_smoothing = 0.999
        elif name == "no_smoothing":
            tested.temporal_smoothing = 0.0
        start = time.perf_counter()
        outputs = []
        for image, frame_faces in zip(frames, faces):
            output = image.copy()
            tested.render(output, copy.deepcopy(frame_faces))
            outputs.append(output)
        render.REGION_MEMORY = memory
        anonymized, original = [], []
        for t in range(len(frames) - 1):
            grey = [_grey(x) for x in (frames[t], frames[t + 1], outputs[t], outputs[t + 1])]
            for face in faces[t]:
                a, o = _flicker(grey[0], grey[1], grey[2], grey[3], face.box)
                if np.isfinite(a):
                    anonymized.append(a)
                    original.append(o)
        results[name] = {"flicker": float(np.mean(anonymized)), "flicker_original": float(np.mean(original)),
                         "flicker_ratio": float(np.mean(anonymized) / np.mean(original)), "face_pairs": len(anonymized),
                         "render_seconds": round(time.perf_counter() - start, 1)}
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
