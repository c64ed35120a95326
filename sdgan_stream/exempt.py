"""People who stay visible (``--keep-faces DIR``: a presenter, the user themself), fail-closed.

A tracked face is left untouched only when the recognizer has matched it to a person of the keep list
at a strict threshold on ``confirmations`` checks in a row; it is re-checked every ``recheck_every``
frames, and one failed check anonymizes it again. A track can pass to someone else (two people cross,
or the kept person leaves and a stranger is detected near the track's predicted box), so a confirmed
face is checked again at once, on the frame itself, when its track was not detected on the frame before,
when its box jumped (:data:`JUMP_SHARE`, :data:`JUMP_SCALE`) or when another face is near it
(:data:`NEAR_SHARE`). Everything uncertain is anonymized: untracked faces, faces the tracker only
predicts or looks back to (their box may have drifted onto someone else), faces whose landmarks cannot
be fitted, and every face of a frame where the recognizer fails.

The folder holds one photo per person (``DIR/name.jpg``) or several (``DIR/name/*.jpg``); the largest
face of each photo is that person. A photo without a face is an error before any frame is written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .types import Face

log = logging.getLogger(__name__)

__all__ = ["ExemptFaces", "STRICTNESS"]

# The exempt threshold is this share of the recognizer's own same-person distance (dlib: 0.6 -> 0.42):
# being left visible by mistake is the costly error, so the match must be far inside "same person".
STRICTNESS = 0.7
# A confirmed face is checked again at once when its box centre moved more than this share of its width
# since the frame before, or its width changed by more than this factor, ...
JUMP_SHARE = 0.25
JUMP_SCALE = 1.5
# ... or when another face's box comes within this share of either face's width of its box.
NEAR_SHARE = 0.5
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class _TrackMatch:
    hits: int = 0  # consecutive checks that matched
    checked_at: int = -(10**9)
    last_seen: int = 0  # the last frame the track was detected
    box: np.ndarray | None = None  # its box then


def _jumped(before: np.ndarray, now: np.ndarray) -> bool:
    width_before, width_now = float(before[2] - before[0]), float(now[2] - now[0])
    centre_shift = float(np.hypot(*((now[:2] + now[2:]) - (before[:2] + before[2:])) / 2))
    scale = max(width_now, 1e-6) / max(width_before, 1e-6)
    return centre_shift > JUMP_SHARE * width_before or not 1 / JUMP_SCALE <= scale <= JUMP_SCALE


def _near_others(faces: Sequence[Face]) -> list[bool]:
    """Per face: whether another face's box lies within ``NEAR_SHARE`` of a face width of its box."""
    boxes = np.array([f.box for f in faces], np.float32).reshape(-1, 4)
    grown = boxes + NEAR_SHARE * (boxes[:, 2:3] - boxes[:, 0:1]) * np.array([-1, -1, 1, 1], np.float32)
    apart_x = (grown[:, None, 2] < boxes[None, :, 0]) | (boxes[None, :, 2] < grown[:, None, 0])
    apart_y = (grown[:, None, 3] < boxes[None, :, 1]) | (boxes[None, :, 3] < grown[:, None, 1])
    near = ~(apart_x | apart_y)
    np.fill_diagonal(near, False)
    return list(near.any(0) | near.any(1))


class ExemptFaces:
    """Splits a frame's faces into those to anonymize and those of keep-list people (see module docstring)."""

    def __init__(
        self,
        recognizer,
        people: dict[str, np.ndarray],
        *,
        landmarker,
        threshold: float | None = None,
        confirmations: int = 3,
        recheck_every: int = 15,
        forget_after: int = 150,
    ) -> None:
        if not people:
            raise InputError("the keep list holds no face")
        self.recognizer = recognizer
        self.landmarker = landmarker
        self.names = list(people)
        self.embeddings = [np.atleast_2d(people[name]) for name in self.names]
        self.threshold = STRICTNESS * recognizer.same_person_distance if threshold is None else threshold
        self.confirmations = confirmations
        self.recheck_every = recheck_every
        self.forget_after = forget_after
        self._tracks: dict[int, _TrackMatch] = {}
        self._frame = 0

    @classmethod
    def from_folder(cls, folder: str | Path, recognizer, *, detector, landmarker, **options) -> ExemptFaces:
        """Embed the largest face of every photo in ``folder`` (one person per file or per sub-folder)."""
        from PIL import Image, ImageOps, UnidentifiedImageError

        root = Path(folder)
        if not root.is_dir():
            raise InputError(f"keep-faces folder not found: {root}")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise InputError(f"no photos ({', '.join(_IMAGE_SUFFIXES)}) in the keep-faces folder {root}")
        people: dict[str, list[np.ndarray]] = {}
        for path in paths:
            try:
                with Image.open(path) as im:
                    image = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
            except (OSError, UnidentifiedImageError) as exc:
                raise InputError(f"cannot read keep-faces photo {path}: {exc}") from exc
            found = detector.detect(image)
            if not len(found):
                raise InputError(f"no face found in keep-faces photo {path}")
            largest = int(np.argmax(found.boxes[:, 2] - found.boxes[:, 0]))
            face = Face(box=found.boxes[largest], score=float(found.scores[largest]), landmarks=found.landmarks[largest])
            points = landmarker(image, [face])[0]
            if points is None:
                raise InputError(f"the face in keep-faces photo {path} cannot be measured (too small or turned away)")
            name = path.parent.name if path.parent != root else path.stem
            people.setdefault(name, []).append(recognizer.embed(image, points[None])[0])
        log.info("keep list: %d people from %d photos in %s", len(people), len(paths), root)
        return cls(recognizer, {k: np.stack(v) for k, v in people.items()}, landmarker=landmarker, **options)

    def forget_tracks(self) -> None:
        """Drop every track's confirmation (track ids start again: a new stream or an input reconnect)."""
        self._tracks = {}

    def split(self, image: np.ndarray, faces: Sequence[Face]) -> tuple[list[Face], list[Face]]:
        """(faces to anonymize, faces left visible) for one frame, given in display orientation."""
        self._frame += 1
        for key in [k for k, t in self._tracks.items() if self._frame - t.last_seen > self.forget_after]:
            del self._tracks[key]
        anonymize: list[Face] = []
        keep: list[Face] = []
        try:
            for face, crowded in zip(faces, _near_others(faces)):
                (keep if self._exempt(image, face, crowded=crowded) else anonymize).append(face)
        except Exception:  # a recognizer failure: nobody is exempt on this frame
            log.exception("keep-faces check failed: anonymizing every face of this frame")
            return list(faces), []
        return anonymize, keep

    def _exempt(self, image: np.ndarray, face: Face, *, crowded: bool = False) -> bool:
        if face.track_id is None or face.source != "detected":
            return False
        track = self._tracks.setdefault(face.track_id, _TrackMatch())
        confirmed = track.hits >= self.confirmations
        # the track may have passed to someone else since it was last seen (see the module docstring)
        handed_over = (self._frame - track.last_seen > 1 or crowded
                       or (track.box is not None and _jumped(track.box, np.asarray(face.box, np.float32))))
        track.last_seen, track.box = self._frame, np.asarray(face.box, np.float32).copy()
        # A match being confirmed is checked again on the next frame; a confirmed or a failed one waits
        # recheck_every frames (a crowd of strangers costs one embedding per person per interval).
        waiting = self._frame - track.checked_at < self.recheck_every
        if waiting and (track.hits == 0 or (confirmed and not handed_over)):
            return confirmed
        track.checked_at = self._frame
        points = self.landmarker(image, [face])[0]
        matched = points is not None and self._nearest(self.recognizer.embed(image, points[None])) < self.threshold
        track.hits = track.hits + 1 if matched else 0
        return track.hits >= self.confirmations

    def _nearest(self, embedding: np.ndarray) -> float:
        return float(min(self.recognizer.distances(embedding, known).min() for known in self.embeddings))
