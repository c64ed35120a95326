"""Training batches from a prepared :class:`~train.shards.FaceSet`.

Two ways to turn faces into (input, target identity, target image) examples, one batch format:

* :class:`IdentikitSampler` (tiny data sets, e.g. the offline sample photos): every example is a new
  geometry (landmark warp of a photo), the photo's own surroundings, and a target face composited
  by the recipe of a freshly drawn identity code from regions of the *other* people's photos (by
  default; ``donors="any"`` draws from all photos). Every example is paired.
* :class:`IdentitySampler` (real data sets with identity labels, CelebA/FFHQ-style): half the examples
  reconstruct the source with its own identity's code (paired), the other half ask for another
  identity's code (no pixel target: adversarial, identity and context losses only), as in SDGAN.

Both are deterministic: example ``i`` of global batch ``k`` is drawn from ``default_rng([seed, k, i, tag])``
alone, so a resumed run sees exactly the batches the uninterrupted run would have seen, and a process
of a distributed run draws only its own share of a global batch (``batch(k, size, start=, count=)``),
the same examples whatever the number of processes. :class:`IdentitySampler` takes its source faces
in epochs (:class:`EpochOrder`): every face once per epoch, in a fresh order each epoch, across all
processes together - what ``DistributedSampler`` guarantees, without its per-process padding.

Maps (``maps``, :class:`IdentitySampler`): ``landmarks`` draws every map from the 68 landmarks (what
inference sees), ``parsing`` uses a data set's hand-labelled maps (CelebAMask-HQ; warped with the
crop), ``mixed`` picks one of the two per example.

A batch is a dict of numpy arrays (N = batch size, S = crop size):

=================  ==================  ==================================================================
``target``         (N, S, S, 3) uint8  the image the generator should produce (the source when unpaired)
``labels``         (N, S, S) uint8     semantic map of target/source geometry
``region``         (N, S, S) float32   the region the generator replaces
``map_region``     (N, S, S) float32   the map's face alone (``region`` before the renderer's safety band)
``source``         (N, S, S, 3) uint8  the original person on this geometry (identity to move away from)
``positive``       (N, S, S, 3) uint8  another picture of the target identity (identity to move toward)
``positive_labels``(N, S, S) uint8
``code``           (N, Z) float32      target identity code (unit vector)
``paired``         (N,) float32        1 when ``target`` is the wanted output
``same_source``    (N,) float32        1 when the target identity is the source's own
=================  ==================  ==================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch

from sdgan_stream.errors import InputError
from sdgan_stream.faceprep import box_ellipse_mask, region_mask_from_labels, replaced_region
from sdgan_stream.models.identity import identity_code
from sdgan_stream.semantic import CLASS_NAMES, class_id, rasterize_semantic_map

from .identikit import FaceSource, compose_identikit, recipe_dims, recipe_from_code
from .shards import FaceSet
from .warp import DeformConfig, face_warp_maps, mirror_face, mirror_labels, random_deformation, remap, warp_image

log = logging.getLogger(__name__)

__all__ = [
    "AugmentConfig",
    "DONOR_RULES",
    "EpochOrder",
    "IdentikitSampler",
    "IdentitySampler",
    "MAP_SOURCES",
    "Sampler",
    "ShareOfBatches",
    "batch_to_tensors",
    "detector_like_box",
    "make_sampler",
    "training_region",
]


DONOR_RULES = ("others", "any")  # which photos an identikit face may borrow regions from (IdentikitSampler)
MAP_SOURCES = ("landmarks", "parsing", "mixed")  # where IdentitySampler's maps come from


@dataclass(frozen=True)
class AugmentConfig:
    """Scene-level augmentation (independent of identity)."""

    deform: DeformConfig = DeformConfig()
    flip: bool = True
    context_hue: float = 12.0  # degrees (OpenCV hue units are 2 degrees); context only, breaks context->face links
    context_prob: float = 0.5
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.2
    degrade_prob: float = 0.25  # downscale-upscale of the whole crop (video faces are often soft)


# Where a face detector puts its box, relative to the 68 points' extent (jaw width; brow top to chin height):
# CenterFace on the 21 training faces of the allow-list put the left edge at -0.02 (spread 0.14) widths,
# the right at -0.03 (0.17), the top at -0.35 (0.13) heights above the brows, the bottom at -0.04 (0.15);
# the turned faces make most of the spread, so training draws half of it around the mean. A tracker's
# predicted box is widened for its uncertainty by up to ~30%.
DETECTOR_BOX_MEAN = (-0.02, -0.03, -0.35, -0.04)  # x1, x2, y1, y2 offsets
DETECTOR_BOX_SPREAD = 0.07
DETECTOR_BOX_GROW = (1.0, 1.3)
_CROP_SPACE = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def detector_like_box(landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A box (x1, y1, x2, y2) where a face detector, or a tracker's prediction, could put one around the face
    of ``landmarks`` (68 points, crop pixels)."""
    points = np.asarray(landmarks, np.float64)
    left, right = points[:17, 0].min(), points[:17, 0].max()
    top, bottom = points[17:27, 1].min(), points[8, 1]
    width, height = right - left, bottom - top
    dx1, dx2, dy1, dy2 = np.asarray(DETECTOR_BOX_MEAN) + rng.normal(0.0, DETECTOR_BOX_SPREAD, 4)
    x1, x2, y1, y2 = left + dx1 * width, right + dx2 * width, top + dy1 * height, bottom + dy2 * height
    grow = rng.uniform(*DETECTOR_BOX_GROW)
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, abs(x2 - x1) / 2 * grow, abs(y2 - y1) / 2 * grow
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh])


def training_region(labels: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The region the renderer would replace on this face (:func:`sdgan_stream.faceprep.replaced_region`: the
    map's face, a turned head's margin and a detector-like box's ellipse). Trained on the map's face alone, the
    generator painted the rest, hair and background it had never been asked for, as a dark ring."""
    box = box_ellipse_mask(detector_like_box(landmarks, rng), _CROP_SPACE, labels.shape[0])
    return replaced_region(labels, landmarks, yaw_deg=None, box_mask=box)


class Sampler(Protocol):
    code_dim: int

    def batch(self, step: int, size: int, *, start: int = 0, count: int | None = None) -> dict[str, np.ndarray]:
        """Examples ``start .. start + count`` (default: all) of global batch ``step`` of ``size`` examples."""
        ...


def _example_rng(seed: int, step: int, index: int, tag: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, index, tag])


def _share(size: int, start: int, count: int | None) -> range:
    count = size - start if count is None else count
    if start < 0 or count < 0 or start + count > size:
        raise ValueError(f"examples {start}..{start + count} are not inside a batch of {size}")
    return range(start, start + count)


class EpochOrder:
    """The face that global example ``g`` of a run starts from: a fresh permutation of all faces per epoch."""

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, example: int) -> int:
        epoch, position = divmod(example, self.count)
        if epoch not in self._cache:
            if len(self._cache) > 2:  # a batch spans at most two epochs
                self._cache.clear()
            self._cache[epoch] = np.random.default_rng([self.seed, epoch, 3]).permutation(self.count)
        return int(self._cache[epoch][position])


def _colour_jitter(images: list[np.ndarray], rng: np.random.Generator, cfg: AugmentConfig) -> list[np.ndarray]:
    """The same brightness/contrast/saturation change on several images of one scene."""
    b = 1 + rng.uniform(-cfg.brightness, cfg.brightness)
    c = 1 + rng.uniform(-cfg.contrast, cfg.contrast)
    s = 1 + rng.uniform(-cfg.saturation, cfg.saturation)
    out = []
    for image in images:
        x = image.astype(np.float32)
        grey = x.mean(axis=2, keepdims=True)
        x = grey + (x - grey) * s
        x = (x - 128) * c + 128
        out.append(np.clip(x * b + 0.5, 0, 255).astype(np.uint8))
    return out


def _shift_hue(image: np.ndarray, degrees: float) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(degrees / 2))) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _degrade(images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    size = images[0].shape[0]
    small = max(16, int(size / rng.uniform(1.3, 2.5)))
    return [
        cv2.resize(cv2.resize(im, (small, small), interpolation=cv2.INTER_AREA), (size, size), interpolation=cv2.INTER_LINEAR)
        for im in images
    ]


def _face_sources(faces: FaceSet, flip: bool) -> list[FaceSource]:
    sources = [
        FaceSource(faces.identities[faces.identity[i]], faces.crops[i], faces.landmarks[i], int(faces.identity[i]))
        for i in range(len(faces))
    ]
    if flip:
        sources += [FaceSource(s.name + "~mirror", *mirror_face(s.crop, s.landmarks), s.identity) for s in sources]
    return sources


class IdentikitSampler:
    """Paired examples whose target identities are identikit composites (see module docstring)."""

    def __init__(
        self, faces: FaceSet, *, code_dim: int, augment: AugmentConfig = AugmentConfig(), seed: int = 0, donors: str = "others"
    ) -> None:
        if code_dim < recipe_dims():
            raise ValueError(f"the identikit needs identity codes of at least {recipe_dims()} dimensions")
        if donors not in DONOR_RULES:
            raise ValueError(f"donors must be one of {', '.join(DONOR_RULES)}, got {donors!r}")
        self.faces = faces
        self.code_dim = code_dim
        self.augment = augment
        self.seed = seed
        self.sources = _face_sources(faces, augment.flip)
        self.shapes = [s.landmarks for s in self.sources]
        self.size = faces.size
        # "others": a target face takes no region from the person whose surroundings it sits in. With a
        # handful of photos the generator otherwise learns to redraw that person from the context and
        # the map (it did: dlib still matched the starter's faces to their source); this is the data
        # side of SDGAN's "away from the source" identity loss. "any": every source may give a region.
        self.donors = donors
        self._donor_sets = {}
        for identity in sorted({s.identity for s in self.sources}):
            others = [s for s in self.sources if s.identity != identity]
            if donors == "others" and not others:
                log.warning("identikit: only one person in the data set, so faces borrow from that person's photos too")
            self._donor_sets[identity] = others if donors == "others" and others else self.sources

    def _geometry(self, rng: np.random.Generator) -> tuple[FaceSource, np.ndarray, np.ndarray]:
        base = self.sources[int(rng.integers(len(self.sources)))]
        landmarks = random_deformation(base.landmarks, rng, size=self.size, other_shapes=self.shapes, config=self.augment.deform)
        context = warp_image(base.crop, base.landmarks, landmarks)
        if rng.random() < self.augment.context_prob:
            context = _shift_hue(context, rng.uniform(-self.augment.context_hue, self.augment.context_hue))
        return base, landmarks, context

    def example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        code = identity_code(int(rng.integers(1 << 62)), self.code_dim)
        base, landmarks, context = self._geometry(rng)
        donors = self._donor_sets[base.identity]
        recipe = recipe_from_code(code, len(donors))
        labels = rasterize_semantic_map(landmarks, self.size)
        target = compose_identikit(donors, recipe, landmarks, context, labels=labels)
        source = context  # the photo's own person, warped onto this geometry
        _, pos_landmarks, pos_context = self._geometry(rng)
        pos_labels = rasterize_semantic_map(pos_landmarks, self.size)
        positive = compose_identikit(donors, recipe, pos_landmarks, pos_context, labels=pos_labels)
        target, source = _colour_jitter([target, source], rng, self.augment)
        (positive,) = _colour_jitter([positive], rng, self.augment)
        if rng.random() < self.augment.degrade_prob:
            target, source = _degrade([target, source], rng)
        return {
            "target": target,
            "labels": labels,
            "region": training_region(labels, landmarks, rng),
            "map_region": region_mask_from_labels(labels, landmarks),
            "source": source,
            "positive": positive,
            "positive_labels": pos_labels,
            "code": code,
            "paired": np.float32(1.0),
            "same_source": np.float32(0.0),
        }

    def batch(self, step: int, size: int, *, start: int = 0, count: int | None = None) -> dict[str, np.ndarray]:
        return _stack([self.example(_example_rng(self.seed, step, i, 1)) for i in _share(size, start, count)])


class IdentitySampler:
    """SDGAN's setting on a labelled data set: reconstruct with the own code, or swap to another identity's."""

    def __init__(
        self,
        faces: FaceSet,
        *,
        code_dim: int,
        augment: AugmentConfig = AugmentConfig(),
        seed: int = 0,
        paired_fraction: float = 0.5,
        maps: str = "landmarks",
    ) -> None:
        if maps not in MAP_SOURCES:
            raise ValueError(f"maps must be one of {', '.join(MAP_SOURCES)}, got {maps!r}")
        if maps != "landmarks" and faces.parsing is None:
            raise InputError(f"maps {maps!r} needs hand-labelled maps: prepare a data set that has them (CelebAMask-HQ)")
        self.faces = faces
        self.code_dim = code_dim
        self.augment = augment
        self.seed = seed
        self.paired_fraction = paired_fraction
        self.maps = maps
        self.size = faces.size
        self.order = EpochOrder(len(faces), seed)
        self.by_identity = [np.nonzero(faces.identity == i)[0] for i in range(faces.num_identities)]
        self.codes = np.stack([identity_code(1_000_003 + i, code_dim) for i in range(faces.num_identities)])

    def _view(self, index: int, rng: np.random.Generator, parsing: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        crop, landmarks = self.faces.crops[index], self.faces.landmarks[index]
        labels = self.faces.parsing[index] if parsing and self.faces.parsing is not None else None
        if self.augment.flip and rng.random() < 0.5:
            crop, landmarks = mirror_face(crop, landmarks)
            labels = mirror_labels(labels) if labels is not None else None
        # Real data: milder warps (their variety is real), no shape mixing.
        new = random_deformation(landmarks, rng, size=self.size, config=_MILD)
        maps = face_warp_maps(landmarks, new, self.size)
        labels = rasterize_semantic_map(new, self.size) if labels is None else remap(labels, maps, cv2.INTER_NEAREST)
        return remap(crop, maps), new, labels

    def example(self, rng: np.random.Generator, index: int) -> dict[str, np.ndarray]:
        """The example built on face ``index`` (:class:`EpochOrder`) with randomness from ``rng``."""
        src_id = int(self.faces.identity[index])
        parsing = self.maps == "parsing" or (self.maps == "mixed" and rng.random() < 0.5)
        image, landmarks, labels = self._view(index, rng, parsing)
        paired = rng.random() < self.paired_fraction or self.faces.num_identities < 2
        if paired:
            tgt_id = src_id
        else:
            tgt_id = int(rng.integers(self.faces.num_identities - 1))
            tgt_id += tgt_id >= src_id
        members = self.by_identity[tgt_id]
        pos_index = int(members[rng.integers(len(members))])
        positive, _, pos_labels = self._view(pos_index, rng, parsing)
        (image,) = _colour_jitter([image], rng, self.augment)
        (positive,) = _colour_jitter([positive], rng, self.augment)
        return {
            "target": image,
            "labels": labels,
            "region": training_region(labels, landmarks, rng),
            "map_region": region_mask_from_labels(labels, landmarks),
            "source": image,
            "positive": positive,
            "positive_labels": pos_labels,
            "code": self.codes[tgt_id],
            "paired": np.float32(1.0 if paired else 0.0),
            "same_source": np.float32(1.0 if paired else 0.0),
        }

    def batch(self, step: int, size: int, *, start: int = 0, count: int | None = None) -> dict[str, np.ndarray]:
        return _stack(
            [self.example(_example_rng(self.seed, step, i, 2), self.order(step * size + i)) for i in _share(size, start, count)]
        )


_MILD = DeformConfig(
    shape_mix=(0.0, 0.0), jaw_width=(0.96, 1.04), chin_drop=(-0.03, 0.03), mouth_open_prob=0.0,
    smile=(-0.02, 0.03), mouth_width=(0.96, 1.04), eye_open=(0.85, 1.15), brow_raise=(-0.02, 0.03),
    nose_length=(0.97, 1.03), yaw_shift=(-0.03, 0.03), rotation_deg=(-4.0, 4.0), scale=(0.97, 1.03),
    shift=(-0.015, 0.015),
)


def _stack(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def make_sampler(
    faces: FaceSet,
    *,
    mode: str,
    code_dim: int,
    seed: int,
    augment: AugmentConfig = AugmentConfig(),
    donors: str = "others",
    maps: str = "landmarks",
) -> Sampler:
    """``mode``: ``identikit``, ``identity``, or ``auto`` (identikit below 20 identities); ``donors``: see
    :class:`IdentikitSampler`; ``maps``: see :class:`IdentitySampler` (identikit faces always use landmark maps)."""
    if mode == "auto":
        mode = "identikit" if faces.num_identities < 20 else "identity"
    if mode == "identikit":
        if maps != "landmarks":
            log.warning("identikit sampling draws its maps from landmarks: --maps %s applies to identity sampling only", maps)
        return IdentikitSampler(faces, code_dim=code_dim, augment=augment, seed=seed, donors=donors)
    if mode == "identity":
        return IdentitySampler(faces, code_dim=code_dim, augment=augment, seed=seed, maps=maps)
    raise ValueError(f"unknown sampling mode {mode!r}; use identikit, identity or auto")


def _no_collate(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return batch


def _worker_threads(_worker_id: int) -> None:
    cv2.setNumThreads(1)  # the loader's processes are the parallelism


class ShareOfBatches(torch.utils.data.Dataset):
    """Item ``k``: this process's share (examples ``start .. start + count``) of global batch ``k``.

    A map-style data set indexed by step, so a ``DataLoader`` over ``range(first, last)`` prepares the
    coming batches in worker processes while the accelerator trains; the batches are the same with
    any number of workers because each depends on its step alone.
    """

    def __init__(self, sampler: Sampler, global_batch: int, start: int, count: int) -> None:
        _share(global_batch, start, count)
        self.sampler = sampler
        self.global_batch = global_batch
        self.start = start
        self.count = count

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        return self.sampler.batch(step, self.global_batch, start=self.start, count=self.count)

    def loader(self, steps: range, *, workers: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self, sampler=steps, batch_size=None, collate_fn=_no_collate, num_workers=workers,
            prefetch_factor=4 if workers else None, worker_init_fn=_worker_threads if workers else None,
        )


def _to_unit(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _one_hot(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(labels.astype(np.int64)).to(device)
    return torch.nn.functional.one_hot(t, len(CLASS_NAMES)).permute(0, 3, 1, 2).float()


def _face_mask(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    face = (labels != class_id("background")) & (labels != class_id("hair"))
    return torch.from_numpy(face.astype(np.float32)).to(device)[:, None]


def batch_to_tensors(batch: dict[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Numpy batch -> the generator's tensor convention (see :mod:`sdgan_stream.models.generator`)."""
    device = torch.device(device)
    target = _to_unit(batch["target"], device)
    region = torch.from_numpy(batch["region"]).to(device)[:, None]
    tensors = {
        "target": target,
        "masked": target * (1 - region),
        "semantic": _one_hot(batch["labels"], device),
        "region": region,
        "face": _face_mask(batch["labels"], device),
        "source": _to_unit(batch["source"], device),
        "positive": _to_unit(batch["positive"], device),
        "positive_face": _face_mask(batch["positive_labels"], device),
        "code": torch.from_numpy(batch["code"]).to(device).float(),
        "paired": torch.from_numpy(batch["paired"]).to(device).float(),
        "same_source": torch.from_numpy(batch["same_source"]).to(device).float(),
    }
    if "map_region" in batch:  # the samplers' batches have it (a teacher's input); hand-made ones may not
        map_region = torch.from_numpy(batch["map_region"]).to(device)[:, None]
        tensors["map_region"] = map_region
        tensors["teacher_masked"] = target * (1 - map_region)  # what a generator trained on the map's face alone saw
    return tensors
