"""Training throughput: images per second per process, FLOPs per step, data-preparation rate.

Runs the real trainer (:class:`train.trainer.Trainer`, identity sampling) on a synthetic prepared set
(mean-face landmarks with jitter; the sampler's warps and maps cost what they cost on real faces):

* ``train``: ``--steps`` timed training steps after ``--warmup``, on batches prepared beforehand (the
  step alone: the data loader's cost is measured separately), images/s per process (per wall second
  and per second of the process's CPU time) and, under ``torchrun``, every process's figure;
* ``flops``: FLOPs of one training step (G, D, E forward and backward, all networks, every process),
  counted by ``torch.utils.flop_counter`` (convolutions and matrix products; elementwise ops are not
  counted), per example and per global step;
* ``data``: examples per second that one CPU core's sampler produces (how many ``--workers`` a GPU needs),
  per wall second and per second of the process's own CPU time (the fair figure on a shared machine);
* ``memory``: peak CUDA memory per process.

    python benchmarks/bench_train.py --size 128 --ngf 16 --batch 4 --threads 1 --json benchmarks/results/train_cpu.json
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_train.py --size 128 --ngf 16 --batch 2 --threads 1 \\
        --json benchmarks/results/train_cpu_2proc.json
    python benchmarks/bench_train.py --device cuda --precision bf16 --size 256 --ngf 32 --spade-hidden 64 --ndf 64 \\
        --encoder-width 32 --batch 8 --json benchmarks/results/train_gpu_256.json

On a GPU machine that lacks the data-side packages (OpenCV, SciPy, PyAV: the lent GPU machine has torch
only), make the batch here (``--save-batch FILE``), carry it, and give it with ``--batch-file FILE --stub
cv2,scipy,av,...``: the named modules are replaced by inert stand-ins so that the package imports; the
timed training step never calls them (a stand-in raises if anything does).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import platform
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Inert:
    """Stands in for anything of a stubbed module: attribute access and subscripts give more of it;
    calling it raises, so a stubbed module that is really used fails loudly."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> _Inert:
        return _inert_attribute(self._name, attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name} is stubbed on this machine (bench_train.py --stub) but was called")

    def __getitem__(self, key: Any) -> _Inert:
        return _Inert(f"{self._name}[]")


def _inert_attribute(owner: str, attr: str) -> _Inert:
    if attr.startswith("__"):  # introspection (inspect, pickle) must see a plain object, not a stand-in
        raise AttributeError(attr)
    return _Inert(f"{owner}.{attr}")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []  # a package: submodules are stubs too
        module.__getattr__ = lambda attr, _n=spec.name: _inert_attribute(_n, attr)  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install_stubs(names: str) -> None:
    roots = {n.strip() for n in names.split(",") if n.strip()}
    for name in list(sys.modules):
        if name.split(".")[0] in roots:
            del sys.modules[name]
    sys.meta_path.insert(0, _StubFinder(roots))


if "--stub" in sys.argv:  # before the package is imported
    install_stubs(sys.argv[sys.argv.index("--stub") + 1])

from sdgan_stream.models import GeneratorConfig  # noqa: E402
from train import distributed  # noqa: E402
from train.shards import FaceSet  # noqa: E402
from train.trainer import TrainConfig, Trainer  # noqa: E402


def synthetic_faceset(size: int, faces: int = 64, identities: int = 32, seed: int = 0) -> FaceSet:
    from sdgan_stream.semantic import colorize, mean_face_landmarks, rasterize_semantic_map

    rng = np.random.default_rng(seed)
    base = mean_face_landmarks(size)
    crops, labels, landmarks = [], [], []
    for _ in range(faces):
        points = base + rng.normal(0, size / 128, base.shape)
        label = rasterize_semantic_map(points, size)
        noise = rng.normal(0, 8, (size, size, 3))
        crops.append((colorize(label) * 0.6 + 80 * rng.uniform(0.5, 1.0, 3) + noise).clip(0, 255).astype(np.uint8))
        labels.append(label)
        landmarks.append(points)
    return FaceSet(crops=np.stack(crops), labels=np.stack(labels), landmarks=np.stack(landmarks),
                   identity=np.arange(faces) % identities, identities=tuple(f"p{i}" for i in range(identities)), size=size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(trainer: Trainer, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one training step of this process (counted on a real step; its update is undone after)."""
    from torch.utils.flop_counter import FlopCounterMode

    state = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in trainer._networks()}
    optimizers = [(o, o.state_dict()) for o in (trainer.opt_g, trainer.opt_d, trainer.opt_e)]
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batch)
    for name, module in trainer._networks():
        module.load_state_dict(state[name])
    for optimizer, saved in optimizers:
        optimizer.load_state_dict(saved)
    return int(counter.get_total_flops())


def data_rate(trainer: Trainer, examples: int) -> tuple[float, float]:
    """Examples per second one process prepares: per wall second, and per second of its own CPU time (with
    --threads 1, what one free core would give; the fair figure on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.sampler.batch(10_000, examples)
    return examples / (time.perf_counter() - wall), examples / (time.process_time() - cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--spade-hidden", type=int, default=32)
    parser.add_argument("--identity-dim", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=32)
    parser.add_argument("--encoder-width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="examples per process per step")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data-examples", type=int, default=32, help="examples timed for the data rate (0: skip)")
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--note", default="", help="free text stored in the JSON (machine load, ...)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--save-batch", metavar="FILE", default=None,
                        help="write one sampler batch of --batch examples (.npz) and exit")
    parser.add_argument("--batch-file", metavar="FILE", default=None,
                        help="train on this saved batch (every step) instead of the sampler's")
    parser.add_argument("--stub", metavar="MODULES", default="",
                        help="comma-separated modules this machine lacks, replaced by inert stand-ins (with --batch-file)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
        if not args.batch_file:  # the sampler's OpenCV calls share the cores
            import cv2

            cv2.setNumThreads(args.threads)
    context, device = distributed.setup(args.device)
    try:
        if args.batch_file:
            with np.load(args.batch_file, allow_pickle=False) as data:
                saved = {k: data[k] for k in data.files}
            if len(saved["target"]) != args.batch * context.world or saved["target"].shape[1] != args.size:
                raise SystemExit(f"{args.batch_file} holds {saved['target'].shape} examples, not {args.batch * context.world} "
                                 f"of {args.size} px")
            blank = np.zeros((2, args.size, args.size), np.uint8)
            faces = FaceSet(crops=np.zeros((2, args.size, args.size, 3), np.uint8), labels=blank,
                            landmarks=np.zeros((2, 68, 2)), identity=np.arange(2), identities=("a", "b"), size=args.size)
        else:
            faces = synthetic_faceset(args.size)
        generator = GeneratorConfig(image_size=args.size, identity_dim=args.identity_dim, ngf=args.ngf, spade_hidden=args.spade_hidden)
        config = TrainConfig(batch=args.batch * context.world, mode="identity", precision=args.precision, ndf=args.ndf,
                             encoder_width=args.encoder_width, generator=generator, sample_every=0, checkpoint_every=0)
        trainer = Trainer(data_dir="synthetic", run_dir="unused", config=config, device=device, faces=faces, dist=context,
                          accum=args.accum)
        if args.save_batch:
            np.savez_compressed(args.save_batch, **trainer.sampler.batch(0, args.batch * context.world))
            return 0
        params = {name: sum(p.numel() for p in m.parameters()) for name, m in trainer._networks() if name != "generator_ema"}
        if args.batch_file:
            from train.dataset import batch_to_tensors

            local = slice(context.rank * args.batch, (context.rank + 1) * args.batch)
            batches = [batch_to_tensors({k: v[local] for k, v in saved.items()}, device)] * (args.warmup + args.steps)
            args.data_examples = 0  # no sampler here
        else:  # prepared before the clock runs
            batches = [trainer.batch(step) for step in range(args.warmup + args.steps)]
        for batch in batches[: args.warmup]:
            trainer.train_step(batch)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for batch in batches[args.warmup :]:
            losses = trainer.train_step(batch)
        _sync(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        rate = args.batch * args.steps / seconds
        flops = None if args.no_flops else step_flops(trainer, batches[0])
        data_wall, data_cpu = data_rate(trainer, args.data_examples) if args.data_examples else (None, None)
        mine = {"rank": context.rank, "images_per_s": rate, "step_seconds": seconds / args.steps,
                "images_per_cpu_s": args.batch * args.steps / cpu_seconds, "flops_per_step": flops,
                "data_examples_per_s": data_wall, "data_examples_per_cpu_s": data_cpu,
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
        everyone = [mine]
        if context.active:
            everyone = [None] * context.world
            torch.distributed.all_gather_object(everyone, mine)
        if not context.is_main:
            return 0
        result = {
            "benchmark": "train_throughput",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "processes": context.world,
            "threads": torch.get_num_threads(),
            "config": {"size": args.size, "ngf": args.ngf, "spade_hidden": args.spade_hidden, "identity_dim": args.identity_dim,
                       "ndf": args.ndf, "encoder_width": args.encoder_width, "batch_per_process": args.batch,
                       "accum": args.accum, "precision": args.precision},
            "parameters": params,
            "per_process": everyone,
            "images_per_s_per_process": float(np.mean([p["images_per_s"] for p in everyone])),
            "images_per_s_total": float(np.sum([p["images_per_s"] for p in everyone])),
            "flops_per_example": None if flops is None else flops / args.batch,
            "last_losses": losses,
            "note": args.note,
        }
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n")
        return 0
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
