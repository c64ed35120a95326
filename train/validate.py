"""Validation on held-out people: does the generator, as it is now, anonymize faces it never saw?

Every ``val_every`` steps the generator that would be exported (the EMA copy when there is one) replaces
the faces of a fixed set of held-out crops (a prepared folder: ``prepare-data --holdout`` writes one)
with a target identity that is nobody's in the training data, exactly as inference does (landmark map,
region blanked, composited back). dlib's recognizer (:mod:`sdgan_stream.recognizer`), which training
never sees, then measures on each crop:

* ``identity_distance``: embedding distance original -> generated (higher is more anonymous; dlib calls
  two faces one person under 0.6), and ``leak_rate``, the share of faces under that threshold;
* ``landmark_error``: dlib's 68 points on the generated face vs on the original, in inter-ocular
  distances (expression and pose kept: lower is better);
* ``detection_rate``: the share of generated faces dlib's detector still finds as a face (beside
  ``detection_rate_original``, the same on the originals).

The same definitions as ``sdgan-stream evaluate``; results go to ``val.csv``, ``val_curve.png`` and a
grid per validation (``samples/val_step_N.png``: original | generated).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdgan_stream.models.identity import identity_code

from .dataset import batch_to_tensors, training_region
from .shards import load_faceset

log = logging.getLogger(__name__)

__all__ = ["VAL_FIELDS", "Validator", "plot_validation"]

VAL_FIELDS = ("step", "faces", "identity_distance", "leak_rate", "landmark_error", "detection_rate", "detection_rate_original")
_CODE_SEED = 7_000_003  # target identities of validation: seeds no training identity uses


@dataclass
class _Original:
    box: np.ndarray
    points: np.ndarray
    embedding: np.ndarray
    detected: bool


class Validator:
    """Measures a generator on ``count`` held-out faces of the prepared folder ``data_dir``."""

    def __init__(self, data_dir: str | Path, *, count: int = 32, code_dim: int, batch: int = 16) -> None:
        faces = load_faceset(data_dir)
        pick = np.unique(np.linspace(0, len(faces) - 1, min(count, len(faces))).round().astype(int))
        self.crops = faces.crops[pick]
        self.labels = faces.labels[pick]
        self.landmarks = faces.landmarks[pick]
        # the region inference replaces (map's face, turned-head margin, a detector-like box), fixed per face
        self.regions = np.stack([training_region(l, p, np.random.default_rng(i))
                                 for i, (l, p) in enumerate(zip(self.labels, self.landmarks))])
        self.codes = np.stack([identity_code(_CODE_SEED + i, code_dim) for i in range(len(pick))])
        self.batch = batch
        self.size = faces.size
        self._recognizer: Any = None
        self._originals: list[_Original] | None = None
        log.info("validation on %d held-out faces of %d people from %s", len(pick),
                 len(np.unique(faces.identity[pick])), data_dir)

    def __len__(self) -> int:
        return len(self.crops)

    def _recognizer_and_originals(self) -> tuple[Any, list[_Original]]:
        if self._recognizer is None:
            from sdgan_stream.recognizer import FaceRecognizer

            self._recognizer = FaceRecognizer()
            self._originals = []
            for crop, points in zip(self.crops, self.landmarks):
                box = np.concatenate([points.min(0), points.max(0)]).astype(np.float32)
                found = self._recognizer.detect_near(crop, box)
                shape = self._recognizer.shape(crop, found.box if found is not None else box)
                self._originals.append(_Original(box, shape, self._recognizer.embed(crop, shape), found is not None))
        assert self._originals is not None
        return self._recognizer, self._originals

    @torch.no_grad()
    def generate(self, generator: torch.nn.Module, device: torch.device) -> np.ndarray:
        """The held-out crops with their faces replaced, (N, S, S, 3) uint8."""
        was_training = generator.training
        generator.eval()
        out = []
        for start in range(0, len(self), self.batch):
            part = slice(start, start + self.batch)
            n = len(self.crops[part])
            batch = batch_to_tensors({
                "target": self.crops[part], "labels": self.labels[part], "region": self.regions[part],
                "source": self.crops[part], "positive": self.crops[part], "positive_labels": self.labels[part],
                "code": self.codes[part], "paired": np.zeros(n, np.float32), "same_source": np.zeros(n, np.float32),
            }, device)
            fake = generator(batch["masked"], batch["semantic"], batch["code"]).float()
            composite = fake * batch["region"] + batch["target"] * (1 - batch["region"])
            out.append(((composite.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
        generator.train(was_training)
        return np.concatenate(out)

    def measure(self, generated: np.ndarray) -> dict[str, float]:
        from sdgan_stream.recognizer import SAME_PERSON_DISTANCE, landmark_error

        recognizer, originals = self._recognizer_and_originals()
        distances, errors, detected = [], [], []
        for image, original in zip(generated, originals):
            found = recognizer.detect_near(image, original.box)
            points = recognizer.shape(image, found.box if found is not None else original.box)
            distances.append(float(np.linalg.norm(recognizer.embed(image, points) - original.embedding)))
            errors.append(landmark_error(points, original.points))
            detected.append(found is not None)
        d = np.array(distances)
        return {
            "faces": len(d),
            "identity_distance": float(d.mean()),
            "leak_rate": float((d < SAME_PERSON_DISTANCE).mean()),
            "landmark_error": float(np.nanmean(errors)),
            "detection_rate": float(np.mean(detected)),
            "detection_rate_original": float(np.mean([o.detected for o in originals])),
        }

    def run(self, generator: torch.nn.Module, device: torch.device, step: int, run_dir: Path) -> dict[str, float]:
        """Generate, measure, append to ``run_dir/val.csv``, write the grid and the curve; returns the row."""
        import cv2

        generated = self.generate(generator, device)
        row = {"step": step, **self.measure(generated)}
        path = run_dir / "val.csv"
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=VAL_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})
        shown = min(8, len(generated))
        grid = np.concatenate([np.concatenate([self.crops[i], generated[i]], axis=1) for i in range(shown)], axis=0)
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(run_dir / "samples" / f"val_step_{step:07d}.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        plot_validation(path, run_dir / "val_curve.png")
        log.info("validation at step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step"))
        return row


def plot_validation(csv_path: str | Path, png_path: str | Path) -> None:
    """Identity distance, landmark error and detection rate over the steps, from ``val.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (
        ("identity distance to the original (dlib; > 0.6: another person)", ("identity_distance", "leak_rate")),
        ("landmark error (inter-ocular distances)", ("landmark_error",)),
        ("detection rate (dlib)", ("detection_rate", "detection_rate_original")),
    )
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            ax.plot(steps, [float(r[key]) for r in rows], marker="o", label=key)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.6, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    fig.savefig(str(png_path), dpi=80)
    plt.close(fig)
