"""The generator's two ONNX parts (the SPADE modulations from the map, then the rest) against the whole graph.

Exports the starter generator whole and in its two parts (``engines.onnx_export``, ``part=``), runs each in an
onnxruntime session with one intra-op thread on the same random batch, and reports the median ms of each and the
largest difference between the whole graph's output and the two parts run one after the other. A face whose map
the backend has cached runs only the second part.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_map_cache.py [--batch 4] [--runs 10] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    from engines.onnx_export import export_onnx, part_names
    from sdgan_stream.models.bundle import load_generator_bundle

    generator, config, _ = load_generator_bundle(None)
    generator.eval()
    rng = np.random.default_rng(0)
    s = config.image_size
    masked = rng.uniform(-1, 1, (args.batch, 3, s, s)).astype(np.float32)
    masked[:, :, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 0
    semantic = np.ascontiguousarray(np.eye(config.label_nc, dtype=np.float32)[rng.integers(0, config.label_nc, (args.batch, s, s))].transpose(0, 3, 1, 2))
    identity = rng.standard_normal((args.batch, config.identity_dim)).astype(np.float32)
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("generator", "map", "modulated"):
            path = export_onnx(generator, config, Path(tmp) / f"{part}.onnx", part=part)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions[part] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {part: part_names(config, part)[0] for part in sessions}
    feeds = {"generator": [masked, semantic, identity], "map": [semantic]}
    modulations = sessions["map"].run(None, dict(zip(names["map"], feeds["map"])))
    feeds["modulated"] = [masked, semantic, identity, *modulations]
    outputs = {part: sessions[part].run(None, dict(zip(names[part], feeds[part]))) for part in sessions}
    times: dict[str, float] = {}
    for part, session in sessions.items():
        runs = []
        for _ in range(args.runs):
            started = time.perf_counter()
            session.run(None, dict(zip(names[part], feeds[part])))
            runs.append(1000 * (time.perf_counter() - started))
        times[part] = round(statistics.median(runs), 1)
    result = {
        "command": "python benchmarks/bench_map_cache.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "batch": args.batch,
        "runs": args.runs,
        "median_ms": times,
        "max_abs_difference_whole_vs_parts": float(np.abs(outputs["generator"][0] - outputs["modulated"][0]).max()),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
