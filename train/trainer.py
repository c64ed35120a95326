"""The SDGAN trainer: generator + hybrid discriminator + siamese identity encoder, jointly.

A run directory holds::

    config.json                  the training configuration (generator config included)
    log.csv                      one row of losses every ``log_every`` steps, with images/s per process
    loss_curve.png               written with every checkpoint (losses and throughput)
    val.csv, val_curve.png       validation on held-out people (``val_data``, see train.validate)
    samples/step_0000200.png     sample grids (input | map | target | output | two other identities)
    checkpoints/step_0000500/    generator / generator_ema / discriminator / identity_encoder / optimizers
                                 .safetensors + state.json (step, optimizer hyper-parameters)
    checkpoints/latest.json      which checkpoint ``--resume`` continues from

Scale: ``torchrun`` starts several processes (:mod:`train.distributed`), each network is wrapped in
DistributedDataParallel, and every process trains on its own share of each global batch of
``config.batch`` examples (split further into ``accum`` micro-batches); process 0 alone writes the run
directory. Weighted loss terms are normalised by the *global* batch, so the gradient is the same
whether a batch runs in one process or many: a run may resume on a different number of processes.
Precision: float32, bfloat16 autocast, or float16 autocast with a GradScaler (CUDA). An exponential
moving average of the generator (``ema_decay``) is what samples, validation and export use.

Determinism: parameters are initialised from ``torch.manual_seed(seed)``, example ``i`` of batch ``k`` is
drawn from ``numpy.random.default_rng([seed, k, i, ...])`` and the training step uses no other
randomness, so a run resumed from a checkpoint reproduces the uninterrupted run exactly (on the same
device, threads and number of processes; across numbers of processes up to float summation order).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
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

from .dataset import AugmentConfig, Sampler, ShareOfBatches, batch_to_tensors, make_sampler
from .distributed import DistContext, all_reduce_mean, all_reduce_sum, any_process, wrap
from .losses import (
    VGG19Features,
    contrastive_loss,
    feature_matching_per_sample,
    identity_loss,
    lsgan_loss,
    masked_l1,
    masked_l1_per_sample,
    perceptual_per_sample,
    weighted_mean,
)
from .shards import FaceSet, load_faceset, read_manifest

log = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "TrainConfig", "Trainer", "export_run", "plot_losses"]

_SAMPLE_STEP = 2**40  # the fixed sample batch: a step index no run reaches
LOSS_FIELDS = (
    "g_total", "g_gan", "g_quality", "g_fm", "g_vgg", "g_l1_face", "g_l1_context", "g_identity", "g_teacher",
    "d_patch", "d_quality", "e_contrastive",
)
LOG_FIELDS = ("step", "seconds", *LOSS_FIELDS, "images_per_s", "processes")
PRECISIONS = ("fp32", "bf16", "fp16")


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
    # A frozen teacher generator (a bundle, run or checkpoint folder): inside the map's face the student is
    # pulled toward the teacher's face, made from the teacher's own input (only the map's face blanked);
    # elsewhere it learns as usual. Teaches a new region to a trained generator without changing its faces.
    teacher: str | None = None
    lambda_teacher: float = 20.0
    ndf: int = 32
    num_scales: int = 2
    encoder_width: int = 32
    encoder_dim: int = 128
    log_every: int = 10
    sample_every: int = 200
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler, CUDA only)
    ema_decay: float = 0.999  # EMA of the generator for samples, validation and export; 0: none
    maps: str = "landmarks"  # landmarks | parsing | mixed (see train.dataset.IdentitySampler)
    vgg19_weights: str | None = None
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["generator"] = self.generator.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data.setdefault("donors", "any")  # runs configured before the option existed drew from every photo
        # Runs configured before these options: "amp" meant float16 on CUDA; no EMA copy was kept.
        data.setdefault("precision", "fp16" if data.get("amp") else "fp32")
        data.setdefault("ema_decay", 0.0)
        data["generator"] = GeneratorConfig.from_dict(data.get("generator", {}))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _checkpoint_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, RuntimeError, ValueError, KeyError, SafetensorError)


_CHECKPOINT_ERRORS = _checkpoint_errors()  # what a missing, truncated or foreign checkpoint raises


def _networks_folder(path: str | Path) -> Path:
    """The folder holding a run's networks: ``path`` itself (a checkpoint folder or an exported bundle), or a
    run folder's latest checkpoint."""
    path = Path(path)
    latest = path / "checkpoints" / "latest.json"
    if latest.is_file():
        try:
            return path / "checkpoints" / json.loads(latest.read_text())["dir"]
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsError(f"cannot read {latest}: {exc}") from exc
    return path


def _load_network(folder: Path, name: str, module: torch.nn.Module, device: torch.device, *, purpose: str) -> None:
    """``module`` takes the weights of ``folder/<name>.safetensors`` (copied into its own dtype: a bundle
    stores float16); a missing, truncated or mismatched file is a WeightsError naming ``purpose``."""
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(folder / f"{name}.safetensors"), device=str(device)))
    except _CHECKPOINT_ERRORS as exc:
        raise WeightsError(f"cannot {purpose} {folder}: {exc}") from exc


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
    """Owns the networks, optimizers, sampler and run directory of one training run (one process of it).

    ``dist`` says which process of a ``torchrun`` group this is (default: the only one); ``accum`` splits
    this process's share of each batch into that many micro-batches whose gradients add up.
    """

    def __init__(
        self,
        *,
        data_dir: str | Path,
        run_dir: str | Path,
        config: TrainConfig,
        device: str | torch.device = "cpu",
        faces: FaceSet | None = None,
        dist: DistContext | None = None,
        accum: int = 1,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.dist = dist or DistContext()
        if accum < 1 or config.batch % (self.dist.world * accum):
            raise InputError(
                f"a batch of {config.batch} does not split into {self.dist.world} processes x {accum} micro-batches; "
                "the batch must be a multiple of their product"
            )
        self.accum = accum
        self.local_batch = config.batch // self.dist.world
        self.faces = faces if faces is not None else load_faceset(self.data_dir)
        self.manifest = read_manifest(self.data_dir) if faces is None else {"count": len(self.faces)}
        gcfg = config.generator
        if self.faces.size != gcfg.image_size:
            raise InputError(
                f"the data set has {self.faces.size} px crops but the generator is configured for {gcfg.image_size} px"
            )
        self.sampler: Sampler = make_sampler(
            self.faces, mode=config.mode, code_dim=gcfg.identity_dim, seed=config.seed, augment=AugmentConfig(),
            donors=config.donors, maps=config.maps,
        )
        torch.manual_seed(config.seed)
        self.generator: SDGANGenerator = build_generator(gcfg).to(self.device)
        self.discriminator = HybridDiscriminator(
            DiscriminatorConfig(label_nc=gcfg.label_nc, ndf=config.ndf, num_scales=config.num_scales)
        ).to(self.device)
        self.encoder = IdentityEncoder(width=config.encoder_width, embed_dim=config.encoder_dim).to(self.device)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False) if config.ema_decay > 0 else None
        # What trains: the DDP wrappers in a distributed run (their forward synchronises gradients).
        self._g, self._d, self._e = (wrap(m, self.dist, self.device) for m in (self.generator, self.discriminator, self.encoder))
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=betas)
        self.opt_e = torch.optim.Adam(self.encoder.parameters(), lr=config.lr_e, betas=betas)
        self.vgg = VGG19Features(config.vgg19_weights).to(self.device) if config.vgg19_weights else None
        self.teacher = self._load_teacher(config.teacher) if config.teacher else None
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]
        if self.autocast_dtype is torch.float16 and self.device.type != "cuda":
            log.warning("float16 training needs a CUDA device; training in float32 on %s (bf16 works on CPU)", self.device)
            self.autocast_dtype = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype is torch.float16)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolutions
        self.step = 0
        self.init_source: str | None = None  # the checkpoint a fine-tuning run started from (init_from)
        self.validator: Any = None  # a train.validate.Validator, on the main process (set by the caller)
        self.val_every = 0
        self.stopped_early = False  # max_hours ran out before the last step
        self._start_seconds = 0.0
        self._fixed: dict[str, Tensor] | None = None

    @property
    def export_generator(self) -> SDGANGenerator:
        """The generator that samples, validation and export use: the EMA copy when there is one."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    def _networks(self) -> list[tuple[str, torch.nn.Module]]:
        networks = [("generator", self.generator), ("discriminator", self.discriminator), ("identity_encoder", self.encoder)]
        if self.generator_ema is not None:
            networks.append(("generator_ema", self.generator_ema))
        return networks

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
        """Write a checkpoint (networks as plain modules, not their DDP wrappers: any number of processes
        can resume it). Call it on the main process only."""
        from safetensors.torch import save_file

        path = self.checkpoint_root / f"step_{self.step:07d}"
        path.mkdir(parents=True, exist_ok=True)
        for name, module in self._networks():
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
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "config": self.config.to_dict(),
            "init_from": self.init_source,
            "processes": self.dist.world,
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

    def _reset_ema(self) -> None:
        if self.generator_ema is not None:
            self.generator_ema.load_state_dict(self.generator.state_dict())

    def init_from(self, path: str | Path) -> None:
        """Start this run from another run's networks (fine-tuning): weights only, at step 0, with fresh
        optimizers. ``path`` is a checkpoint folder, a run folder (its latest checkpoint), or an exported
        generator bundle (``generator.safetensors`` alone: discriminator and encoder start fresh)."""
        path = _networks_folder(path)
        networks = [("generator", self.generator), ("discriminator", self.discriminator), ("identity_encoder", self.encoder)]
        if not (path / "discriminator.safetensors").exists():
            log.info("%s holds a generator only: discriminator and identity encoder start fresh", path)
            networks = networks[:1]
        for name, module in networks:
            _load_network(path, name, module, self.device, purpose="start from")
        self._reset_ema()
        self.init_source = str(path)
        log.info("networks initialised from %s", path)

    def _load_teacher(self, path: str | Path) -> SDGANGenerator:
        """The frozen teacher generator (``TrainConfig.teacher``), of this run's generator shape."""
        folder = _networks_folder(path)
        teacher = build_generator(self.config.generator).to(self.device)
        _load_network(folder, "generator", teacher, self.device, purpose="use as the teacher")
        log.info("teacher generator from %s (weight %g inside the map's face)", folder, self.config.lambda_teacher)
        return teacher.eval().requires_grad_(False)

    def load_checkpoint(self, path: str | Path | None = None) -> int:
        """Restore networks, optimizers and the step counter (``None``: the latest checkpoint of the run).
        Every process loads the same files, so the replicas start equal."""
        from safetensors.torch import load_file

        if path is None:
            latest = self.checkpoint_root / "latest.json"
            if not latest.is_file():
                raise WeightsError(f"nothing to resume: no checkpoint in {self.checkpoint_root}")
            path = self.checkpoint_root / json.loads(latest.read_text())["dir"]
        path = Path(path)
        try:
            for name, module in self._networks():
                if name == "generator_ema" and not (path / f"{name}.safetensors").exists():
                    self._reset_ema()  # a checkpoint written without an EMA copy: start it here
                    continue
                module.load_state_dict(load_file(str(path / f"{name}.safetensors"), device=str(self.device)))
            tensors = load_file(str(path / "optimizers.safetensors"), device=str(self.device))
            state = json.loads((path / "state.json").read_text())
        except _CHECKPOINT_ERRORS as exc:
            raise WeightsError(f"cannot resume from {path}: {exc}") from exc
        for prefix, opt in (("g", self.opt_g), ("d", self.opt_d), ("e", self.opt_e)):
            _restore_optimizer(opt, prefix, tensors, state["optimizers"][prefix])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.init_source = state.get("init_from")
        self._start_seconds = float(state.get("seconds", 0.0))
        log.info("resumed %s at step %d (written by %s process(es), continued by %d)", path, self.step,
                 state.get("processes", 1), self.dist.world)
        return self.step

    # ----------------------------------------------------------------- training

    def elapsed(self) -> float:
        return self._start_seconds + (time.monotonic() - self._t0 if hasattr(self, "_t0") else 0.0)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _accumulating(self, wrapped: torch.nn.Module, index: int) -> contextlib.AbstractContextManager[Any]:
        """DDP's ``no_sync`` for every micro-batch but the last: gradients are exchanged once per step."""
        if index < self.accum - 1 and hasattr(wrapped, "no_sync"):
            return wrapped.no_sync()
        return contextlib.nullcontext()

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One update of D, E and G on this process's share of a global batch; returns the losses of the
        whole global batch (every process's share, averaged)."""
        c = self.config
        G, D, E = self._g, self._d, self._e
        micro = [{k: v[i :: self.accum] for k, v in batch.items()} for i in range(self.accum)]
        pieces = self.accum * self.dist.world
        # Paired-only terms are means over the paired examples of the *global* batch: each piece divides by
        # the global count / pieces, so the pieces' gradients average to the whole batch's.
        paired_total = float(all_reduce_sum(batch["paired"].sum().reshape(1), self.dist))
        paired_norm = max(paired_total, 1.0) / pieces
        sums: dict[str, Tensor] = {}

        def record(**values: Tensor) -> None:
            for key, value in values.items():
                sums[key] = sums.get(key, 0) + value.detach().float() / self.accum

        self.generator.train()
        fakes: list[Tensor | None] = []
        real_features: list[list[list[Tensor]]] = []

        # Discriminator: real = target images (identikit composites or real photos), fake = generated;
        # one forward over both (instance norms only, so this equals two separate calls).
        self.discriminator.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        for k, mb in enumerate(micro):
            with self._accumulating(D, k):
                with self._autocast():
                    if self.accum == 1:  # keep the graph: the generator's update reuses this output
                        fake = G(mb["masked"], mb["semantic"], mb["code"])
                    else:  # regenerated in the generator's phase (memory stays one micro-batch deep)
                        with torch.no_grad():
                            fake = self.generator(mb["masked"], mb["semantic"], mb["code"])
                    n = fake.shape[0]
                    patch, quality = D(torch.cat([mb["target"], fake.detach()]), torch.cat([mb["semantic"], mb["semantic"]]))
                    d_patch = 0.5 * (lsgan_loss([[s[-1][:n]] for s in patch], True) + lsgan_loss([[s[-1][n:]] for s in patch], False))
                    d_quality = 0.5 * (lsgan_loss(quality[:n], True) + lsgan_loss(quality[n:], False))
                    d_loss = d_patch + c.lambda_quality * d_quality
                self.scaler.scale(d_loss / self.accum).backward()
            fakes.append(fake if self.accum == 1 else None)
            real_features.append([[f[:n].detach() for f in scale] for scale in patch])
            record(d_patch=d_patch, d_quality=d_quality)
        self.scaler.step(self.opt_d)

        # Siamese identity encoder on real images: target~positive share the target identity when paired;
        # source~positive share it only when the target identity is the source's own.
        self.encoder.requires_grad_(True)
        self.opt_e.zero_grad(set_to_none=True)
        anchors: list[tuple[Tensor, Tensor]] = []
        for k, mb in enumerate(micro):
            with self._accumulating(E, k):
                with self._autocast():
                    e_target, e_positive, e_source = E(
                        torch.cat([mb["target"], mb["positive"], mb["source"]]),
                        torch.cat([mb["face"], mb["positive_face"], mb["face"]]),
                    ).chunk(3)
                    e_loss = contrastive_loss(e_target, e_positive, mb["paired"], c.identity_margin) + contrastive_loss(
                        e_source, e_positive, mb["same_source"], c.identity_margin
                    )
                self.scaler.scale(e_loss / self.accum).backward()
            anchors.append((e_positive.detach(), e_source.detach()))
            record(e_contrastive=e_loss)
        self.scaler.step(self.opt_e)

        # Generator, judged by the just-updated D and E (their plain modules: no gradient exchange for them).
        self.discriminator.requires_grad_(False)
        self.encoder.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        has_paired = paired_total > 0
        for k, mb in enumerate(micro):
            with self._accumulating(G, k):
                with self._autocast():
                    fake = fakes[k] if fakes[k] is not None else G(mb["masked"], mb["semantic"], mb["code"])
                    zero = fake.new_zeros((), dtype=torch.float32)
                    paired = mb["paired"]
                    g_patch, g_quality_out = self.discriminator(fake, mb["semantic"])
                    g_gan = lsgan_loss(g_patch, True)
                    g_quality = lsgan_loss(g_quality_out, True)
                    g_fm = weighted_mean(feature_matching_per_sample(g_patch, real_features[k]), paired, paired_norm) if has_paired else zero
                    g_vgg = (
                        weighted_mean(perceptual_per_sample(self.vgg, fake, mb["target"]), paired, paired_norm)
                        if self.vgg is not None and has_paired else zero
                    )
                    g_l1_face = (
                        weighted_mean(masked_l1_per_sample(fake, mb["target"], mb["region"]), paired, paired_norm)
                        if has_paired else zero
                    )
                    g_l1_context = masked_l1(fake, mb["target"], 1 - mb["region"])
                    # Toward the target identity (its other picture), away from the source unless they are one person.
                    e_positive, e_source = anchors[k]
                    g_identity = identity_loss(
                        self.encoder(fake, mb["face"]), e_positive, e_source, 1 - mb["same_source"], c.identity_margin
                    )
                    if self.teacher is not None:
                        with torch.no_grad():
                            taught = self.teacher(mb["teacher_masked"], mb["semantic"], mb["code"])
                        g_teacher = masked_l1(fake, taught, mb["map_region"])
                    else:
                        g_teacher = zero
                    g_loss = (
                        c.lambda_gan * g_gan
                        + c.lambda_quality * g_quality
                        + c.lambda_fm * g_fm
                        + c.lambda_vgg * g_vgg
                        + c.lambda_l1 * g_l1_face
                        + c.lambda_context * g_l1_context
                        + c.lambda_identity * g_identity
                        + c.lambda_teacher * g_teacher
                    )
                self.scaler.scale(g_loss / self.accum).backward()
            record(g_total=g_loss, g_gan=g_gan, g_quality=g_quality, g_fm=g_fm, g_vgg=g_vgg, g_l1_face=g_l1_face,
                   g_l1_context=g_l1_context, g_identity=g_identity, g_teacher=g_teacher)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self._update_ema()
        values = all_reduce_mean(torch.stack([sums[k] for k in LOSS_FIELDS]), self.dist)
        return dict(zip(LOSS_FIELDS, values.tolist()))

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.generator_ema is None:
            return
        # Warm-up (as in timm's ModelEmaV2 / StyleGAN's ramp): short runs are not dominated by the initialisation.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for ema, live in zip(self.generator_ema.parameters(), self.generator.parameters()):
            ema.lerp_(live.detach(), 1 - decay)
        for ema, live in zip(self.generator_ema.buffers(), self.generator.buffers()):
            ema.copy_(live)

    def _share(self) -> ShareOfBatches:
        return ShareOfBatches(self.sampler, self.config.batch, self.dist.rank * self.local_batch, self.local_batch)

    def batch(self, step: int) -> dict[str, Tensor]:
        """This process's share of global batch ``step``, as tensors on the device."""
        return batch_to_tensors(self._share()[step], self.device)

    def _batches(self, steps: range, workers: int) -> Iterator[dict[str, Tensor]]:
        loader = self._share().loader(steps, workers=workers)
        for numpy_batch in loader:
            yield batch_to_tensors(numpy_batch, self.device)

    def train(
        self,
        *,
        steps: int | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        max_hours: float | None = None,
        workers: int = 0,
    ) -> dict[str, float]:
        """Train until ``steps`` (default: the configured total), or until ``max_hours`` of wall time in this
        call have passed (then a checkpoint is written and ``stopped_early`` set); returns the last losses.
        ``workers``: data loader processes that prepare the coming batches (0: in this process)."""
        c = self.config
        total = c.steps if steps is None else steps
        main = self.dist.is_main
        if main:
            self._write_config()
        self._t0 = time.monotonic()
        last: dict[str, float] = {}
        with contextlib.ExitStack() as stack:
            writer = stack.enter_context(_LogWriter(self.run_dir / "log.csv")) if main else None
            window = (time.monotonic(), self.step)
            for batch in self._batches(range(self.step, total), workers):
                losses = self.train_step(batch)
                self.step += 1
                last = losses
                if writer is not None and (self.step % c.log_every == 0 or self.step == total):
                    now = time.monotonic()
                    rate = self.local_batch * (self.step - window[1]) / max(now - window[0], 1e-9)
                    window = (now, self.step)
                    writer.row({"step": self.step, "seconds": round(self.elapsed(), 2), **{k: round(v, 5) for k, v in losses.items()},
                                "images_per_s": round(rate, 3), "processes": self.dist.world})
                if on_step is not None:
                    on_step(self.step, losses)
                if main and c.sample_every and (self.step % c.sample_every == 0 or self.step == total):
                    self.write_samples()
                if main and self.validator is not None and self.val_every and (self.step % self.val_every == 0 or self.step == total):
                    self.validator.run(self.export_generator, self.device, self.step, self.run_dir)
                out_of_time = max_hours is not None and any_process(
                    time.monotonic() - self._t0 > max_hours * 3600, self.dist, self.device
                )
                if main and (out_of_time or c.checkpoint_every and (self.step % c.checkpoint_every == 0 or self.step == total)):
                    self.save_checkpoint()
                    plot_losses(self.run_dir / "log.csv", self.run_dir / "loss_curve.png")
                if out_of_time and self.step < total:
                    self.stopped_early = True
                    log.warning("--max-hours %.3g reached at step %d of %d: checkpoint written, --resume continues",
                                max_hours, self.step, total)
                    break
        return last

    # ----------------------------------------------------------------- samples and export

    @torch.no_grad()
    def sample_grid(self, count: int = 6) -> np.ndarray:
        """Rows of: masked input | map | target | output (own code) | output with two other codes."""
        if self._fixed is None:
            self._fixed = batch_to_tensors(self.sampler.batch(_SAMPLE_STEP, count), self.device)
        b = self._fixed
        G = self.export_generator
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
        """Write the inference bundle that ``anonymize --weights PATH`` loads (the EMA generator when kept)."""
        meta = {
            "steps": self.step,
            "train_seconds": round(self.elapsed(), 1),
            "data": str(self.data_dir),
            "data_faces": len(self.faces),
            "data_identities": self.faces.num_identities,
            "sampling": self.config.mode,
            "donors": self.config.donors,
            "maps": self.config.maps,
            "init_from": self.init_source,
            "seed": self.config.seed,
            "ema_decay": self.config.ema_decay,
            "batch": self.config.batch,
            "precision": self.config.precision,
            **(metadata or {}),
        }
        return save_generator_bundle(path, self.export_generator, self.config.generator, meta)


class _LogWriter:
    """Appends rows to ``log.csv``; an existing log keeps its own columns (runs from before new columns)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _LogWriter:
        fields: tuple[str, ...] = LOG_FIELDS
        if self.path.exists():
            with self.path.open(newline="") as handle:
                header = next(csv.reader(handle), None)
            fields = tuple(header) if header else LOG_FIELDS
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._handle = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=fields, extrasaction="ignore")
        if new:
            self._writer.writeheader()
        return self

    def row(self, values: dict[str, Any]) -> None:
        self._writer.writerow(values)
        self._handle.flush()

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def export_run(run_dir: str | Path, out: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Export the latest checkpoint of a run as an inference bundle (no data set needed); its EMA
    generator when the run kept one."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    latest = run_dir / "checkpoints" / "latest.json"
    if not latest.is_file():
        raise WeightsError(f"no checkpoint to export in {run_dir}")
    ckpt = run_dir / "checkpoints" / json.loads(latest.read_text())["dir"]
    state = json.loads((ckpt / "state.json").read_text())
    config = TrainConfig.from_dict(state["config"])
    generator = build_generator(config.generator)
    weights = ckpt / "generator_ema.safetensors"
    generator.load_state_dict(load_file(str(weights if weights.is_file() else ckpt / "generator.safetensors")))
    meta = {"steps": state["step"], "train_seconds": round(float(state.get("seconds", 0)), 1),
            "ema_decay": config.ema_decay if weights.is_file() else 0.0, **(metadata or {})}
    return save_generator_bundle(out, generator, config.generator, meta)


def plot_losses(csv_path: str | Path, png_path: str | Path) -> None:
    """Loss curves (generator terms, discriminator, encoder) and throughput from ``log.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    steps = np.array([float(r["step"]) for r in rows])
    groups = [
        ("generator", ("g_l1_face", "g_l1_context", "g_fm", "g_gan", "g_quality", "g_identity", "g_vgg")),
        ("discriminator", ("d_patch", "d_quality")),
        ("identity encoder", ("e_contrastive",)),
    ]
    if rows[0].get("images_per_s"):  # logs from before throughput was logged have no such column
        groups.append(("throughput (images/s per process)", ("images_per_s",)))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4))
    for ax, (title, keys) in zip(axes, groups):
        for key in keys:
            values = np.array([float(r[key] or 0) for r in rows])
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
