"""The SDGAN trainer: generator + hybrid discriminator + siamese identity encoder, jointly.

A run directory holds::

    config.json                  the training configuration (generator config included)
    log.csv                      one row of losses every ``log_every`` steps
    loss_curve.png               written with every checkpoint
    samples/step_0000200.png     sample grids (input | map | target | output | two other identities)
    checkpoints/step_0000500/    generator / discriminator / identity_encoder / optimizers .safetensors
                                 + state.json (step, optimizer hyper-parameters)
    checkpoints/latest.json      which checkpoint ``--resume`` continues from

Determinism: parameters are initialised from ``torch.manual_seed(seed)``, batch ``k`` is drawn from
``numpy.random.default_rng([seed, k])`` and the training step uses no other randomness, so a run
resumed from a checkpoint reproduces the uninterrupted run exactly (on the same device and threads).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sdgan_stream.errors import InputError, WeightsError
from sdgan_stream.models import (
    DiscriminatorConfig,
    GeneratorConfig,
    HybridDiscriminator,
    IdentityEncoder,
    SDGANGenerator,
    build_generator,
    identity_code,
    save_generator_bundle,
)
from sdgan_stream.semantic import colorize

from .dataset import AugmentConfig, Sampler, batch_to_tensors, make_sampler
from .losses import (
    VGG19Features,
    contrastive_loss,
    feature_matching_loss,
    identity_loss,
    lsgan_loss,
    masked_l1,
    perceptual_loss,
)
from .shards import FaceSet, load_faceset, read_manifest

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "Trainer", "export_run", "plot_losses"]

_SAMPLE_STEP = 2**40  # the fixed sample batch: a step index no run reaches
LOG_FIELDS = (
    "step", "seconds", "g_total", "g_gan", "g_quality", "g_fm", "g_vgg", "g_l1_face", "g_l1_context", "g_identity",
    "d_patch", "d_quality", "e_contrastive",
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored as ``config.json`` in the run directory)."""

    steps: int = 2000
    batch: int = 8
    seed: int = 0
    mode: str = "auto"  # identikit | identity | auto
    donors: str = "others"  # identikit regions from other people than the source only | any (see train.dataset)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    lr_e: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_gan: float = 1.0
    lambda_quality: float = 0.5
    lambda_fm: float = 10.0
    lambda_vgg: float = 20.0
    lambda_l1: float = 10.0
    lambda_context: float = 10.0
    lambda_identity: float = 1.0
    identity_margin: float = 1.0
    ndf: int = 32
    num_scales: int = 2
    encoder_width: int = 32
    encoder_dim: int = 128
    log_every: int = 10
    sample_every: int = 200
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    amp: bool = False
    vgg19_weights: str | None = None
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["generator"] = self.generator.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data.setdefault("donors", "any")  # runs configured before the option existed drew from every photo
        data["generator"] = GeneratorConfig.from_dict(data.get("generator", {}))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _checkpoint_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, RuntimeError, ValueError, KeyError, SafetensorError)


_CHECKPOINT_ERRORS = _checkpoint_errors()  # what a missing, truncated or foreign checkpoint raises


def _flatten_optimizer(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            name = f"{prefix}.{index}.{key}"
            if isinstance(value, Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, Tensor], info: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        head, index, key = name.split(".", 2)
        if head == prefix:
            state.setdefault(int(index), {})[key] = value
    for name, value in info["scalars"].items():
        head, index, key = name.split(".", 2)
        if head == prefix:
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


class Trainer:
    """Owns the networks, optimizers, sampler and run directory of one training run."""

    def __init__(
        self,
        *,
        data_dir: str | Path,
        run_dir: str | Path,
        config: TrainConfig,
        device: str | torch.device = "cpu",
        faces: FaceSet | None = None,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.faces = faces if faces is not None else load_faceset(self.data_dir)
        self.manifest = read_manifest(self.data_dir) if faces is None else {"count": len(self.faces)}
        gcfg = config.generator
        if self.faces.size != gcfg.image_size:
            raise InputError(
                f"the data set has {self.faces.size} px crops but the generator is configured for {gcfg.image_size} px"
            )
        self.sampler: Sampler = make_sampler(
            self.faces, mode=config.mode, code_dim=gcfg.identity_dim, seed=config.seed, augment=AugmentConfig(),
            donors=config.donors,
        )
        torch.manual_seed(config.seed)
        self.generator: SDGANGenerator = build_generator(gcfg).to(self.device)
        self.discriminator = HybridDiscriminator(
            DiscriminatorConfig(label_nc=gcfg.label_nc, ndf=config.ndf, num_scales=config.num_scales)
        ).to(self.device)
        self.encoder = IdentityEncoder(width=config.encoder_width, embed_dim=config.encoder_dim).to(self.device)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=betas)
        self.opt_e = torch.optim.Adam(self.encoder.parameters(), lr=config.lr_e, betas=betas)
        self.vgg = VGG19Features(config.vgg19_weights).to(self.device) if config.vgg19_weights else None
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        if config.amp and not self.use_amp:
            log.warning("--amp needs a CUDA device; training in float32 on %s", self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.init_source: str | None = None  # the checkpoint a fine-tuning run started from (init_from)
        self._start_seconds = 0.0
        self._fixed: dict[str, Tensor] | None = None

    # ----------------------------------------------------------------- run directory

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def _write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        document = {"train": self.config.to_dict(), "data": str(self.data_dir), "manifest_count": self.manifest.get("count"),
                    "init_from": self.init_source}
        (self.run_dir / "config.json").write_text(json.dumps(document, indent=2) + "\n")

    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        path = self.checkpoint_root / f"step_{self.step:07d}"
        path.mkdir(parents=True, exist_ok=True)
        for name, module in (("generator", self.generator), ("discriminator", self.discriminator), ("identity_encoder", self.encoder)):
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path / f"{name}.safetensors"))
        tensors: dict[str, Tensor] = {}
        info: dict[str, Any] = {}
        for prefix, opt in (("g", self.opt_g), ("d", self.opt_d), ("e", self.opt_e)):
            t, i = _flatten_optimizer(opt, prefix)
            tensors.update(t)
            info[prefix] = i
        save_file(tensors, str(path / "optimizers.safetensors"))
        state = {
            "step": self.step,
            "seconds": self.elapsed(),
            "optimizers": info,
            "scaler": self.scaler.state_dict() if self.use_amp else None,
            "config": self.config.to_dict(),
            "init_from": self.init_source,
        }
        (path / "state.json").write_text(json.dumps(state, indent=1) + "\n")
        (self.checkpoint_root / "latest.json").write_text(json.dumps({"step": self.step, "dir": path.name}) + "\n")
        self._prune_checkpoints()
        log.info("checkpoint %s", path)
        return path

    def _prune_checkpoints(self) -> None:
        dirs = sorted(p for p in self.checkpoint_root.glob("step_*") if p.is_dir())
        for old in dirs[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def init_from(self, path: str | Path) -> None:
        """Start this run from another run's networks (fine-tuning): weights only, at step 0, with fresh
        optimizers. ``path`` is a checkpoint folder, a run folder (its latest checkpoint), or an exported
        generator bundle (``generator.safetensors`` alone: discriminator and encoder start fresh)."""
        from safetensors.torch import load_file

        path = Path(path)
        try:
            if (path / "checkpoints" / "latest.json").is_file():
                path = path / "checkpoints" / json.loads((path / "checkpoints" / "latest.json").read_text())["dir"]
            networks = [("generator", self.generator), ("discriminator", self.discriminator), ("identity_encoder", self.encoder)]
            if not (path / "discriminator.safetensors").exists():
                log.info("%s holds a generator only: discriminator and identity encoder start fresh", path)
                networks = networks[:1]
            for name, module in networks:
                # load_state_dict copies into the module's own dtype (a bundle stores float16)
                module.load_state_dict(load_file(str(path / f"{name}.safetensors"), device=str(self.device)))
        except _CHECKPOINT_ERRORS as exc:
            raise WeightsError(f"cannot start from {path}: {exc}") from exc
        self.init_source = str(path)
        log.info("networks initialised from %s", path)

    def load_checkpoint(self, path: str | Path | None = None) -> int:
        """Restore networks, optimizers and the step counter (``None``: the latest checkpoint of the run)."""
        from safetensors.torch import load_file

        if path is None:
            latest = self.checkpoint_root / "latest.json"
            if not latest.is_file():
                raise WeightsError(f"nothing to resume: no checkpoint in {self.checkpoint_root}")
            path = self.checkpoint_root / json.loads(latest.read_text())["dir"]
        path = Path(path)
        try:
            for name, module in (("generator", self.generator), ("discriminator", self.discriminator), ("identity_encoder", self.encoder)):
                module.load_state_dict(load_file(str(path / f"{name}.safetensors"), device=str(self.device)))
            tensors = load_file(str(path / "optimizers.safetensors"), device=str(self.device))
            state = json.loads((path / "state.json").read_text())
        except _CHECKPOINT_ERRORS as exc:
            raise WeightsError(f"cannot resume from {path}: {exc}") from exc
        for prefix, opt in (("g", self.opt_g), ("d", self.opt_d), ("e", self.opt_e)):
            _restore_optimizer(opt, prefix, tensors, state["optimizers"][prefix])
        if self.use_amp and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.init_source = state.get("init_from")
        self._start_seconds = float(state.get("seconds", 0.0))
        log.info("resumed %s at step %d", path, self.step)
        return self.step

    # ----------------------------------------------------------------- training

    def elapsed(self) -> float:
        return self._start_seconds + (time.monotonic() - self._t0 if hasattr(self, "_t0") else 0.0)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One update of D, E and G on one batch; returns the loss values."""
        c = self.config
        amp = torch.autocast("cuda", enabled=self.use_amp)
        G, D, E = self.generator, self.discriminator, self.encoder
        G.train()
        with amp:
            fake = G(batch["masked"], batch["semantic"], batch["code"])

        # Discriminator: real = target images (identikit composites or real photos), fake = generated.
        D.requires_grad_(True)
        with amp:
            real_patch, real_quality = D(batch["target"], batch["semantic"])
            fake_patch, fake_quality = D(fake.detach(), batch["semantic"])
            d_patch = 0.5 * (lsgan_loss(real_patch, True) + lsgan_loss(fake_patch, False))
            d_quality = 0.5 * (lsgan_loss(real_quality, True) + lsgan_loss(fake_quality, False))
            d_loss = d_patch + c.lambda_quality * d_quality
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(d_loss).backward()
        self.scaler.step(self.opt_d)

        # Siamese identity encoder on real images: target~positive share the target identity when paired;
        # source~positive share it only when the target identity is the source's own.
        E.requires_grad_(True)
        with amp:
            e_target = E(batch["target"], batch["face"])
            e_positive = E(batch["positive"], batch["positive_face"])
            e_source = E(batch["source"], batch["face"])
            e_loss = contrastive_loss(e_target, e_positive, batch["paired"], c.identity_margin) + contrastive_loss(
                e_source, e_positive, batch["same_source"], c.identity_margin
            )
        self.opt_e.zero_grad(set_to_none=True)
        self.scaler.scale(e_loss).backward()
        self.scaler.step(self.opt_e)

        # Generator.
        D.requires_grad_(False)
        E.requires_grad_(False)
        with amp:
            g_patch, g_quality_out = D(fake, batch["semantic"])
            g_gan = lsgan_loss(g_patch, True)
            g_quality = lsgan_loss(g_quality_out, True)
            paired = batch["paired"]
            g_fm = feature_matching_loss(g_patch, real_patch, paired) if paired.sum() > 0 else fake.new_zeros(())
            g_vgg = (
                perceptual_loss(self.vgg, fake, batch["target"], paired) if self.vgg is not None and paired.sum() > 0 else fake.new_zeros(())
            )
            g_l1_face = masked_l1(fake, batch["target"], batch["region"], paired) if paired.sum() > 0 else fake.new_zeros(())
            g_l1_context = masked_l1(fake, batch["target"], 1 - batch["region"])
            e_fake = E(fake, batch["face"])
            # Toward the target identity (its other picture), away from the source unless they are one person.
            g_identity = identity_loss(
                e_fake, e_positive.detach(), e_source.detach(), 1 - batch["same_source"], c.identity_margin
            )
            g_loss = (
                c.lambda_gan * g_gan
                + c.lambda_quality * g_quality
                + c.lambda_fm * g_fm
                + c.lambda_vgg * g_vgg
                + c.lambda_l1 * g_l1_face
                + c.lambda_context * g_l1_context
                + c.lambda_identity * g_identity
            )
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(g_loss).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        values = {
            "g_total": g_loss, "g_gan": g_gan, "g_quality": g_quality, "g_fm": g_fm, "g_vgg": g_vgg,
            "g_l1_face": g_l1_face, "g_l1_context": g_l1_context, "g_identity": g_identity,
            "d_patch": d_patch, "d_quality": d_quality, "e_contrastive": e_loss,
        }
        return {k: float(v.detach()) for k, v in values.items()}

    def batch(self, step: int) -> dict[str, Tensor]:
        return batch_to_tensors(self.sampler.batch(step, self.config.batch), self.device)

    def train(
        self,
        *,
        steps: int | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> dict[str, float]:
        """Train until ``steps`` (default: the configured total); returns the last losses."""
        c = self.config
        total = c.steps if steps is None else steps
        self._write_config()
        self._t0 = time.monotonic()
        last: dict[str, float] = {}
        log_path = self.run_dir / "log.csv"
        new_log = not log_path.exists()
        with log_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            if new_log:
                writer.writeheader()
            while self.step < total:
                losses = self.train_step(self.batch(self.step))
                self.step += 1
                last = losses
                if self.step % c.log_every == 0 or self.step == total:
                    writer.writerow({"step": self.step, "seconds": round(self.elapsed(), 2), **{k: round(v, 5) for k, v in losses.items()}})
                    handle.flush()
                if on_step is not None:
                    on_step(self.step, losses)
                if c.sample_every and (self.step % c.sample_every == 0 or self.step == total):
                    self.write_samples()
                if c.checkpoint_every and (self.step % c.checkpoint_every == 0 or self.step == total):
                    self.save_checkpoint()
                    plot_losses(log_path, self.run_dir / "loss_curve.png")
        return last

    # ----------------------------------------------------------------- samples and export

    @torch.no_grad()
    def sample_grid(self, count: int = 6) -> np.ndarray:
        """Rows of: masked input | map | target | output (own code) | output with two other codes."""
        if self._fixed is None:
            self._fixed = batch_to_tensors(self.sampler.batch(_SAMPLE_STEP, count), self.device)
        b = self._fixed
        G = self.generator
        was_training = G.training
        G.eval()
        dim = self.config.generator.identity_dim
        other = [torch.from_numpy(np.stack([identity_code(1000 * k + i, dim) for i in range(count)])).to(self.device) for k in (1, 2)]
        outs = [G(b["masked"], b["semantic"], b["code"])] + [G(b["masked"], b["semantic"], z) for z in other]
        G.train(was_training)
        region = b["region"]
        composited = [o * region + b["target"] * (1 - region) for o in outs]

        def img(t: Tensor) -> np.ndarray:
            return ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()

        labels = b["semantic"].argmax(1).cpu().numpy()
        columns = [img(b["masked"]), colorize(labels), img(b["target"])] + [img(x) for x in composited]
        rows = [np.concatenate([col[i] for col in columns], axis=1) for i in range(count)]
        return np.concatenate(rows, axis=0)

    def write_samples(self) -> Path:
        import cv2

        path = self.run_dir / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(self.sample_grid(), cv2.COLOR_RGB2BGR))
        return path

    def export(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the inference bundle that ``anonymize --weights PATH`` loads."""
        meta = {
            "steps": self.step,
            "train_seconds": round(self.elapsed(), 1),
            "data": str(self.data_dir),
            "data_faces": len(self.faces),
            "data_identities": self.faces.num_identities,
            "sampling": self.config.mode,
            "donors": self.config.donors,
            "init_from": self.init_source,
            "seed": self.config.seed,
            **(metadata or {}),
        }
        return save_generator_bundle(path, self.generator, self.config.generator, meta)


def export_run(run_dir: str | Path, out: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Export the latest checkpoint of a run as an inference bundle (no data set needed)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    latest = run_dir / "checkpoints" / "latest.json"
    if not latest.is_file():
        raise WeightsError(f"no checkpoint to export in {run_dir}")
    ckpt = run_dir / "checkpoints" / json.loads(latest.read_text())["dir"]
    state = json.loads((ckpt / "state.json").read_text())
    config = TrainConfig.from_dict(state["config"])
    generator = build_generator(config.generator)
    generator.load_state_dict(load_file(str(ckpt / "generator.safetensors")))
    meta = {"steps": state["step"], "train_seconds": round(float(state.get("seconds", 0)), 1), **(metadata or {})}
    return save_generator_bundle(out, generator, config.generator, meta)


def plot_losses(csv_path: str | Path, png_path: str | Path) -> None:
    """Loss curves (generator terms, discriminator, encoder) from ``log.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    steps = np.array([float(r["step"]) for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    groups = (
        ("generator", ("g_l1_face", "g_l1_context", "g_fm", "g_gan", "g_quality", "g_identity", "g_vgg")),
        ("discriminator", ("d_patch", "d_quality")),
        ("identity encoder", ("e_contrastive",)),
    )
    for ax, (title, keys) in zip(axes, groups):
        for key in keys:
            values = np.array([float(r[key]) for r in rows])
            if not np.any(values):
                continue
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(png_path), dpi=80)
    plt.close(fig)
