"""CelebAMask-HQ in its published layout: photos, hand-labelled masks, identities, held-out people.

The data set as distributed (Lee et al., MaskGAN, CVPR 2020)::

    CelebAMask-HQ/
      CelebA-HQ-img/0.jpg ... 29999.jpg                      1024 x 1024 photos
      CelebAMask-HQ-mask-anno/0/00000_skin.png ...             512 x 512 binary masks, one file per class
                             .../14/29999_hair.png            present, folder k holds ids 2000k..2000k+1999
      CelebA-HQ-to-CelebA-mapping.txt                         "idx orig_idx orig_file" (header + 30000 rows)

Its 18 mask classes (the 19th is background) are painted in the order of the data set's own
``g_mask.py`` (a later class overwrites an earlier one where masks overlap), except ``eye_g``, which is
painted first so that eyes, brows and nose drawn over the glasses keep their class. They become the
project's 11 classes (:data:`sdgan_stream.semantic.CLASS_NAMES`) like this:

=========================  ================  ===========================================================
CelebAMask-HQ              project class     why
=========================  ================  ===========================================================
skin, nose, mouth,         same name         the classes SDGAN kept
u_lip, l_lip, hair
l_eye/r_eye, l_brow/r_brow l_/r_ by side     re-sided per image from the 68 landmarks: ``l_`` is
                                             image-left here (:mod:`sdgan_stream.types`), and the data
                                             set's own left/right is not consistent across images
eye_g (eyeglasses)         skin              the frames sit on the face the generator replaces
hat                        hair              covers the head outside the face, like hair
l_ear, r_ear, ear_r        background        outside the replaced region at inference (the landmark
(earring)                                    map's face stops at the jaw), so they stay context
neck, neck_l (necklace),   background        context, as in the landmark-drawn maps
cloth
=========================  ================  ===========================================================

Identities: the mapping file names each photo's CelebA original; CelebA's ``identity_CelebA.txt``
(a separate download, given as ``--identities file:PATH``) then names the person. Without it every
photo is its own identity. CelebA's official partition keeps people apart, so its test part
(originals 182638.jpg and later) is a held-out set of people even without the identity file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sdgan_stream.errors import InputError
from sdgan_stream.semantic import class_id

log = logging.getLogger(__name__)

__all__ = [
    "CELEBA_TEST_FIRST",
    "IMAGES",
    "MAPPING",
    "MASKS",
    "MASK_CLASSES",
    "PAINT_ORDER",
    "TO_PROJECT",
    "CelebAMaskPhoto",
    "is_celebamask_hq",
    "list_photos",
    "parsing_crop",
    "project_classes",
    "read_identity_file",
]

IMAGES = "CelebA-HQ-img"
MASKS = "CelebAMask-HQ-mask-anno"
MAPPING = "CelebA-HQ-to-CelebA-mapping.txt"
CELEBA_TEST_FIRST = 182638  # first original of CelebA's test partition (list_eval_partition.txt)

# The data set's class list, in the order of its g_mask.py.
MASK_CLASSES: tuple[str, ...] = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth", "u_lip", "l_lip",
    "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
PAINT_ORDER: tuple[str, ...] = ("eye_g",) + tuple(c for c in MASK_CLASSES if c != "eye_g")
# "eye" / "brow" are sided afterwards (see project_classes).
TO_PROJECT: dict[str, str] = {
    "skin": "skin", "nose": "nose", "eye_g": "skin", "l_eye": "eye", "r_eye": "eye", "l_brow": "brow",
    "r_brow": "brow", "l_ear": "background", "r_ear": "background", "mouth": "mouth", "u_lip": "u_lip",
    "l_lip": "l_lip", "hair": "hair", "hat": "hair", "ear_r": "background", "neck_l": "background",
    "neck": "background", "cloth": "background",
}
_MASK_NAME = re.compile(r"^(\d+)_([a-z_]+)\.png$")


@dataclass(frozen=True)
class CelebAMaskPhoto:
    """One photo of the data set: its id, image path, mask files and CelebA original (file name)."""

    index: int
    image: Path
    masks: tuple[tuple[str, str], ...]  # (class, png path), in PAINT_ORDER
    original: str | None


def is_celebamask_hq(root: Path) -> bool:
    return (root / IMAGES).is_dir() and (root / MASKS).is_dir()


def _read_mapping(root: Path) -> dict[int, str]:
    path = root / MAPPING
    if not path.is_file():
        return {}
    table: dict[int, str] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            table[int(parts[0])] = parts[2]
    return table


def read_identity_file(path: Path) -> dict[str, str]:
    """``file identity`` lines (CelebA's ``identity_CelebA.txt``) -> {file name: identity}."""
    if not path.is_file():
        raise InputError(f"identity file not found: {path}")
    table: dict[str, str] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            table[Path(parts[0]).name] = parts[1]
    return table


def list_photos(root: Path) -> list[CelebAMaskPhoto]:
    """Every photo of the published tree that has at least one mask file, in id order."""
    masks: dict[int, dict[str, str]] = {}
    for path in (root / MASKS).glob("*/*.png"):
        match = _MASK_NAME.match(path.name)
        if match and match.group(2) in TO_PROJECT:
            masks.setdefault(int(match.group(1)), {})[match.group(2)] = str(path)
    mapping = _read_mapping(root)
    if not mapping:
        log.warning("%s not found: no CelebA originals, so no identities or CelebA partition", root / MAPPING)
    photos = []
    for path in (root / IMAGES).iterdir():
        if not (path.stem.isdigit() and path.suffix.lower() in (".jpg", ".jpeg", ".png")):
            continue
        index = int(path.stem)
        files = masks.get(index)
        if not files:
            log.debug("no masks for %s: skipped", path.name)
            continue
        ordered = tuple((c, files[c]) for c in PAINT_ORDER if c in files)
        photos.append(CelebAMaskPhoto(index, path, ordered, mapping.get(index)))
    photos.sort(key=lambda p: p.index)
    if not photos:
        raise InputError(f"no CelebAMask-HQ photo with masks under {root} ({IMAGES}/N.jpg with {MASKS}/k/NNNNN_class.png)")
    return photos


def _mask_classes(masks: tuple[tuple[str, str], ...]) -> np.ndarray:
    """Paint the mask files into one map of indices into :data:`MASK_CLASSES` + 1 (0: background)."""
    painted: np.ndarray | None = None
    for name, path in masks:
        mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise InputError(f"unreadable mask {path}")
        if painted is None:
            painted = np.zeros(mask.shape, np.uint8)
        elif mask.shape != painted.shape:
            raise InputError(f"mask {path} is {mask.shape}, the photo's other masks {painted.shape}")
        painted[mask > 0] = MASK_CLASSES.index(name) + 1
    assert painted is not None  # list_photos keeps photos with at least one mask
    return painted


def project_classes(mask_classes: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
    """CelebAMask-HQ class map (indices into MASK_CLASSES + 1) -> the project's 11 classes; eyes and brows
    are sided by the face's midline from the 68 landmarks (same coordinates as the map)."""
    lut = np.zeros(len(MASK_CLASSES) + 1, np.uint8)
    sided: dict[str, list[int]] = {"eye": [], "brow": []}
    for k, name in enumerate(MASK_CLASSES, start=1):
        target = TO_PROJECT[name]
        if target in sided:
            sided[target].append(k)
        else:
            lut[k] = class_id(target)
    out = lut[mask_classes]
    p = np.asarray(landmarks68, np.float64)
    left_eye, right_eye = p[36:42].mean(0), p[42:48].mean(0)
    axis = right_eye - left_eye
    mid = (left_eye + right_eye) / 2
    ys, xs = np.mgrid[0 : out.shape[0], 0 : out.shape[1]]
    image_left = (xs - mid[0]) * axis[0] + (ys - mid[1]) * axis[1] < 0
    for part, ids in sided.items():
        where = np.isin(mask_classes, ids)
        out[where & image_left] = class_id(f"l_{part}")
        out[where & ~image_left] = class_id(f"r_{part}")
    return out


def parsing_crop(
    masks: tuple[tuple[str, str], ...], image_shape: tuple[int, int], matrix: np.ndarray, size: int, landmarks68_crop: np.ndarray
) -> np.ndarray:
    """The hand-labelled map of one photo cut like its aligned crop: (size, size) uint8 project classes.

    ``matrix`` maps image pixels to crop pixels (:class:`sdgan_stream.faceprep.PreparedFace`); the masks
    may be smaller than the photo (512 vs 1024 px) and are scaled onto it first. Nearest-neighbour
    throughout, so classes never blend.
    """
    painted = _mask_classes(masks)
    scale_x, scale_y = image_shape[1] / painted.shape[1], image_shape[0] / painted.shape[0]
    m = np.asarray(matrix, np.float64)
    mask_to_crop = np.concatenate([m[:, :2] * np.array([scale_x, scale_y]), m[:, 2:]], axis=1)
    cut = cv2.warpAffine(painted, mask_to_crop, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    return project_classes(cut, landmarks68_crop)

