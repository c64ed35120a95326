"""The identity guard: a generated face leaves the pipeline only once a face recognizer says it is
someone else than the person it replaces.

Per track the guard keeps the original face's embeddings from its best views (size, sharpness,
frontalness; a clearly better view is added), the identity seed it chose, and when it last checked.
When a track has no verified identity the renderer generates ``candidates`` faces with different
identity codes; the guard embeds them and keeps the one farthest from every stored view of the
original, provided it is at least ``min_distance`` away (on the recognizer's own scale, above its
same-person threshold). The kept identity is re-verified every ``recheck_every`` frames and after a
large change of size or pose; a failed check draws again; a track that cannot pass is covered
(reason ``identity_guard``) and retried ``retry_after`` frames later. State dies with the track.

With a :class:`~sdgan_stream.identity_ledger.IdentityLedger`, a new track first asks whether it is a
person seen before (left the frame and came back, or a broken track); on a strict match it is offered
that person's identity, which it verifies like any other seed before using it.

The guard never draws pixels. The renderer asks it which faces need a decision and tells it what
it generated; any recognizer failure is the renderer's to turn into a cover.

Recognizers are pluggable (:class:`Recognizer`): dlib's 128-D ResNet (default, shipped in
``face-recognition-models``) and insightface's ArcFace (:class:`ArcFaceRecognizer`) for users who hold
an insightface model pack or an ArcFace ONNX file. No model is ever downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .errors import WeightsError
from .identity_ledger import IdentityLedger, LedgerMatch
from .landmarks import landmarks5_from_68, yaw_ratio

log = logging.getLogger(__name__)

__all__ = [
    "ArcFaceRecognizer",
    "DlibRecognizer",
    "GUARD_PICKS",
    "GuardConfig",
    "IdentityGuard",
    "RECOGNIZERS",
    "Recognizer",
    "candidate_seed",
    "load_recognizer",
    "view_quality",
]

RECOGNIZERS: tuple[str, ...] = ("dlib", "insightface")
# Frames a new track stays covered while the identity ledger waits for views of detected faces (its
# look-back frames come first and hold no detection); past this it draws a new identity.
_LEDGER_PATIENCE = 50
GUARD_PICKS: tuple[str, ...] = ("farthest", "faithful")


class Recognizer(Protocol):
    """A face recognizer with its own distance scale.

    ``embed(image, landmarks68)``: (n, d) float32 embeddings of the n faces whose 68 landmarks
    (n, 68, 2) in ``image`` (RGB uint8) are given. ``distances(a, b)``: (len(a), len(b)) distances.
    ``same_person_distance``: under this the recognizer calls two faces one person.
    ``default_min_distance``: the guard's default margin on this recognizer's scale.
    """

    name: str
    same_person_distance: float
    default_min_distance: float

    def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray: ...

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


class DlibRecognizer:
    """dlib's 128-D face embedding (Euclidean distance; same person under 0.6, different people 0.63-0.9).

    Default margin 0.70: chosen from the held-out measurements in ``benchmarks/README.md`` (identity
    guard section): best-of-6 candidates reach it for nearly every held-out face, while 0.6-0.65 is
    where different people already meet.
    """

    name = "dlib"
    same_person_distance = 0.6
    default_min_distance = 0.70

    def __init__(self, *, models_dir: str | Path | None = None, recognizer=None) -> None:
        """``recognizer``: an already loaded :class:`~sdgan_stream.recognizer.FaceRecognizer` to share."""
        from .recognizer import FaceRecognizer

        self._recognizer = recognizer if recognizer is not None else FaceRecognizer(models_dir=models_dir)

    def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        return self._recognizer.embed_many(image, landmarks68)

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.asarray(a)[:, None, :] - np.asarray(b)[None, :, :], axis=2)

    def finds_face(self, image: np.ndarray, box: np.ndarray) -> bool:
        """Whether dlib's HOG frontal detector (a detector of another family than CenterFace, which found
        the face) finds a face at ``box`` on ``image``, the face scaled to ~110 px."""
        return self._recognizer.detect_near(image, box) is not None


class ArcFaceRecognizer:
    """insightface's ArcFace recognizer, loaded through insightface's own model zoo (no download).

    ``model`` is an ArcFace ``.onnx`` file or an insightface model pack: a folder, or a pack name under
    ``~/.insightface/models`` (e.g. ``buffalo_l``), whose recognition model is found by the zoo's own
    routing. Distance is 1 - cosine similarity: insightface's verification thresholds (similarity
    0.3-0.4 for its packs) put the same person under about 0.65; the default margin 0.80 (similarity
    0.2) was not measured here, since no ArcFace model can be had offline: measure on your material.
    """

    name = "insightface"
    same_person_distance = 0.65
    default_min_distance = 0.80

    def __init__(self, model: str | Path) -> None:
        try:
            from insightface.model_zoo import get_model
            from insightface.utils import face_align
        except ImportError as exc:
            raise WeightsError("the insightface recognizer needs the insightface package: pip install insightface") from exc
        self._align = face_align.norm_crop
        path = _find_recognition_model(Path(model).expanduser())
        try:
            zoo_model = get_model(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnx/onnxruntime raise many types on a corrupt file
            raise WeightsError(f"cannot load the insightface recognizer {path}: {exc}") from exc
        if zoo_model is None or getattr(zoo_model, "taskname", None) != "recognition":
            raise WeightsError(f"{path} is not a recognition model (insightface routes it as {type(zoo_model).__name__})")
        self._model = zoo_model
        self.path = path
        log.info("insightface recognizer %s (input %s)", path, zoo_model.input_size)

    def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        points = np.asarray(landmarks68, np.float32).reshape(-1, 68, 2)
        if not len(points):
            return np.zeros((0, int(self._model.output_shape[-1] or 512)), np.float32)
        bgr = np.ascontiguousarray(image[..., ::-1])  # insightface works on BGR, as OpenCV reads
        size = int(self._model.input_size[0])
        chips = [self._align(bgr, landmark=landmarks5_from_68(p), image_size=size) for p in points]
        features = np.asarray(self._model.get_feat(chips), np.float32).reshape(len(chips), -1)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return 1.0 - np.asarray(a) @ np.asarray(b).T


def _find_recognition_model(path: Path) -> Path:
    """An ArcFace ONNX file from a file path, a pack folder, or a pack name under ~/.insightface/models."""
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        path = Path("~/.insightface/models").expanduser() / path
    if path.is_file():
        return path
    if path.is_dir():
        # Recognition models are the ones with a square input of at least 112 px and one output; the
        # zoo decides in the constructor, so the largest .onnx that is not a detector is tried first.
        onnx_files = sorted(path.glob("*.onnx"), key=lambda p: p.stat().st_size, reverse=True)
        for candidate in onnx_files:
            if not any(tag in candidate.name.lower() for tag in ("det", "scrfd", "2d106", "1k3d68", "genderage")):
                return candidate
        raise WeightsError(f"no recognition model (.onnx) in the insightface pack {path}")
    raise WeightsError(f"insightface recognizer model not found: {path}")


def load_recognizer(name: str = "dlib", model: str | Path | None = None) -> Recognizer:
    """The recognizer by name; ``model`` (an ArcFace ONNX file or pack) implies insightface."""
    if model is not None:
        return ArcFaceRecognizer(model)
    if name == "dlib":
        return DlibRecognizer()
    if name == "insightface":
        return ArcFaceRecognizer("buffalo_l")
    raise ValueError(f"unknown recognizer {name!r}; choose from {', '.join(RECOGNIZERS)}")


# -- per-track state ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardConfig:
    """How hard the guard tries. ``min_distance=None`` takes the recognizer's default margin."""

    candidates: int = 6  # identity codes tried per decision
    min_distance: float | None = None
    recheck_every: int = 30  # frames between re-verifications of a kept identity
    retry_after: int = 10  # frames a failed track stays covered before it draws again
    views: int = 3  # best original views kept per track
    forget_after: int = 150  # frames without the track before its state is dropped
    # Which passing candidate is kept: "faithful", the one whose face keeps the original's landmarks best
    # (given landmark errors; otherwise the farthest), or "farthest" from the person. On held-out people
    # faithful kept a higher minimum distance (0.72 vs 0.69), more faces detectable (85% vs 79%) and a
    # lower landmark error (0.076 vs 0.090); the farthest face is often the least face-like one. The
    # renderer also tells faithful which candidates a second face detector still finds in the frame
    # (SdganRenderer._found_in_frame); those come first.
    pick: str = "faithful"

    def __post_init__(self) -> None:
        if self.pick not in GUARD_PICKS:
            raise ValueError(f"guard pick must be one of {', '.join(GUARD_PICKS)}, got {self.pick!r}")
        if self.candidates < 1:
            raise ValueError(f"the guard needs at least one candidate, got {self.candidates}")
        if self.recheck_every < 1 or self.retry_after < 1 or self.views < 1 or self.forget_after < 1:
            raise ValueError("guard frame counts must be positive")


@dataclass
class _TrackState:
    views: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (quality, embedding), best first
    seed: int | None = None  # verified identity seed
    attempt: int = 0  # how many draws so far (new candidate seeds each time)
    checked_at: int = -(10**9)  # frame of the last verification or draw
    failed_at: int | None = None  # frame of the last failed draw (covered until retry_after)
    size_at_check: float = 0.0
    yaw_at_check: float = 0.5
    size_now: float = 0.0  # this frame's face, as given to decide()
    yaw_now: float = 0.5
    last_seen: int = 0
    ledger: str = "ask"  # re-entry: "ask" the ledger before the first draw, "done" once answered
    ledger_views: list[np.ndarray] = field(default_factory=list)  # embeddings of detected views, for the ledger
    waited: int = 0  # frames covered while the ledger waited for views
    distance: float = float("nan")  # the kept identity's distance at its last check
    candidate_distances: tuple[float, ...] = ()  # each candidate's distance at the last draw (nan: not embedded)


def candidate_seed(identity_seed: int, attempt: int, index: int) -> int:
    """The seed of candidate ``index`` of draw ``attempt`` for a track: deterministic, spread over 63 bits."""
    mixed = np.random.default_rng([int(identity_seed) % (1 << 63), attempt, index, 0x6A4D]).integers(1 << 62)
    return int(mixed)


class _FaceCheckFailed(Exception):
    """The second face detector failed on a candidate (see :meth:`IdentityGuard.choose`)."""


def _asked_once(found: Sequence[bool] | Callable[[int], bool] | None) -> Callable[[int], bool] | None:
    """``found`` as a function of a candidate's index that asks about each candidate at most once; a
    failure of the question raises ``_FaceCheckFailed``."""
    if found is None:
        return None
    ask = found if callable(found) else found.__getitem__
    answers: dict[int, bool] = {}

    def is_found(i: int) -> bool:
        if i not in answers:
            try:
                answers[i] = bool(ask(i))
            except Exception as error:
                raise _FaceCheckFailed from error
        return answers[i]

    return is_found


def _most_faithful(errors: Sequence[float], is_found: Callable[[int], bool] | None, passes: Callable[[int], bool],
                   nearest: np.ndarray) -> int | None:
    """The faithful pick: of the candidates that clear the margin (``passes``), those ``is_found`` first, then the
    lowest landmark error; of equally ranked ones the farthest (``nearest``). Candidates are asked about in order
    of their error and only until the pick is known: a face check pastes the candidate and runs a detector,
    ``passes`` embeds it."""
    found = is_found or (lambda i: True)
    by_error = sorted(range(len(errors)), key=lambda i: errors[i])
    best = next((i for i in by_error if found(i) and passes(i)), None)
    if best is None:  # none of the found ones clears the margin (every one was asked): the rest, most faithful first
        best = next((i for i in by_error if passes(i)), None)
    if best is None:
        return None
    tied = [i for i in by_error if errors[i] == errors[best] and found(i) == found(best) and passes(i)]
    return max(tied, key=lambda i: nearest[i])


def view_quality(crop: np.ndarray, landmarks68_crop: np.ndarray, face_width: float) -> float:
    """How good a view of the original face is for recognition: size (capped) x frontalness x sharpness."""
    frontal = max(0.0, 1.0 - 2.0 * abs(yaw_ratio(landmarks68_crop) - 0.5))
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    return min(face_width, 200.0) * (0.2 + frontal) * float(np.clip(sharpness / 100.0, 0.25, 1.0))


@dataclass(frozen=True)
class GuardDecision:
    """What the renderer must do for one tracked face this frame."""

    action: str  # "keep" (use seed), "verify" (use seed, then check), "draw" (try candidates), "cover"
    seed: int | None = None


class IdentityGuard:
    """Per-track identity verification; see the module docstring. Not thread-safe (one per renderer)."""

    def __init__(self, recognizer: Recognizer, config: GuardConfig = GuardConfig(), *,
                 ledger: IdentityLedger | None = None) -> None:
        """``ledger``: remembers persons across tracks, so a new track of someone seen before re-uses their
        identity (:mod:`sdgan_stream.identity_ledger`); None: every track draws its own."""
        self.recognizer = recognizer
        self.config = config
        self.ledger = ledger
        self.min_distance = recognizer.default_min_distance if config.min_distance is None else config.min_distance
        if self.min_distance <= recognizer.same_person_distance:
            log.warning("identity guard margin %.2f is not above %s's same-person distance %.2f",
                        self.min_distance, recognizer.name, recognizer.same_person_distance)
        self._states: dict[int, _TrackState] = {}
        self._frame = 0
        self._on_screen: set[int] | None = None
        self._proposals: dict[int, int] = {}  # track -> identity base shared with other segments' tracks
        self.counts = {"draws": 0, "verifications": 0, "failed_draws": 0, "failed_verifications": 0, "embeddings": 0,
                       "reused_identities": 0, "kept_proposed_identities": 0}

    def propose(self, proposals: Mapping[int, int]) -> None:
        """Identity bases for tracks that a cluster run found to be one person with tracks of other
        segments (:mod:`sdgan_stream.segment_identities`): such a track skips the ledger, draws its base's
        candidates, and keeps the first that passes, so that every segment showing this person tends
        to keep the same one. Verified like any draw."""
        self._proposals = {int(k): int(v) for k, v in proposals.items()}

    # -- frame bookkeeping -----------------------------------------------------------------------
    def start_frame(self, on_screen: Collection[int] | None = None) -> None:
        """A new frame; ``on_screen``: the keys of all its faces (None: those the guard is asked about
        before a new track's ledger question), so no fake identity is given to two faces at once."""
        self._frame += 1
        self._on_screen = None if on_screen is None else set(on_screen)
        stale = [k for k, s in self._states.items() if self._frame - s.last_seen > self.config.forget_after]
        for key in stale:
            del self._states[key]
        if self.ledger is not None:
            self.ledger.forget_old(self._frame)

    def forget(self, key: int) -> None:
        """Drop one face's state (an untracked face lives for one frame)."""
        self._states.pop(key, None)

    def forget_tracks(self) -> None:
        """Drop every track's state (track ids start again after an input reconnect). The ledger stays: it
        knows people by their faces, not by track ids, and still verifies what it offers."""
        self._states = {}
        self._on_screen = None

    @property
    def tracks(self) -> int:
        return len(self._states)

    def distance_of(self, key: int) -> float:
        """The track's kept identity's distance to the person at its last check (NaN: unknown track)."""
        state = self._states.get(key)
        return state.distance if state is not None else float("nan")

    def seed_of(self, key: int) -> int | None:
        """The track's verified identity seed (None: none yet, or an unknown track)."""
        state = self._states.get(key)
        return state.seed if state is not None else None

    def candidate_distances_of(self, key: int) -> tuple[float, ...]:
        """Each candidate's distance to the person at the track's last draw (nan: not embedded, see :meth:`choose`)."""
        state = self._states.get(key)
        return state.candidate_distances if state is not None else ()

    def _state(self, key: int) -> _TrackState:
        state = self._states.setdefault(key, _TrackState())
        state.last_seen = self._frame
        return state

    # -- original views --------------------------------------------------------------------------
    def observe(self, key: int, crop: np.ndarray, landmarks68_crop: np.ndarray, face_width: float, *,
                detected: bool = True) -> bool:
        """Offer a view of the original face; embeds it when it is clearly better than the kept ones (or
        when the ledger still needs views: only of ``detected`` faces, since a look-back or predicted box
        may hold no face). Returns True when the kept identity must be checked again against the new view."""
        state = self._state(key)
        quality = view_quality(crop, landmarks68_crop, face_width)
        better = not state.views or quality > 1.25 * state.views[0][0]
        for_ledger = (detected and state.ledger == "ask" and self.ledger is not None and len(self.ledger) > 0
                      and len(state.ledger_views) < self.ledger.min_views)
        if not better and not for_ledger:
            return False
        embedding = self._embed(crop, landmarks68_crop[None])[0]
        if for_ledger:
            state.ledger_views.append(embedding)
        if not better:
            return False
        state.views = sorted([*state.views, (quality, embedding)], key=lambda v: -v[0])[: self.config.views]
        return state.seed is not None

    # -- decisions -------------------------------------------------------------------------------
    def decide(self, key: int, face_width: float, landmarks68_crop: np.ndarray, *, new_view: bool = False) -> GuardDecision:
        """What to do with this track's face this frame (its size and pose are remembered for the check)."""
        state = self._state(key)
        state.size_now, state.yaw_now = face_width, yaw_ratio(landmarks68_crop)
        if state.seed is None:
            if state.failed_at is not None and self._frame - state.failed_at < self.config.retry_after:
                return GuardDecision("cover")
            # untracked faces (key < 0) live one frame; a proposed identity (segment cuts) skips the ledger
            if state.ledger == "ask" and self.ledger is not None and key >= 0 and key not in self._proposals:
                reused = self._ask_ledger(key, state)
                if reused is not None:
                    return reused
            return GuardDecision("draw")
        if self.ledger is not None:
            self.ledger.seen(state.seed, self._frame)
        ratio = face_width / max(state.size_at_check, 1e-6)
        due = (self._frame - state.checked_at >= self.config.recheck_every or new_view
               or not 1 / 1.5 <= ratio <= 1.5 or abs(state.yaw_now - state.yaw_at_check) > 0.15)
        return GuardDecision("verify" if due else "keep", state.seed)

    def _ask_ledger(self, key: int, state: _TrackState) -> GuardDecision | None:
        """Before a new track's first draw: the identity of the person it matches in the ledger, to be
        verified like any seed (``verify``); ``cover`` while the ledger waits for views of detected faces
        (the track's look-back frames, then one more frame); None: draw."""
        assert self.ledger is not None
        if not len(self.ledger):
            answer = LedgerMatch("none")
        elif not state.ledger_views:  # look-back or predicted boxes only so far: wait for a detection
            answer = LedgerMatch("pending")
        else:
            keys = self._on_screen if self._on_screen is not None else [k for k, s in self._states.items() if s.last_seen == self._frame]
            on_screen = {self._states[k].seed for k in keys if k != key and k in self._states and self._states[k].seed is not None}
            answer = self.ledger.match(np.stack(state.ledger_views), frame=self._frame, exclude=on_screen)
        if answer.kind == "pending" and state.waited < _LEDGER_PATIENCE:
            state.waited += 1
            return GuardDecision("cover")  # a few frames covered beat a second fake face for one person
        state.ledger = "done"
        if answer.kind != "match":
            return None
        self.counts["reused_identities"] += 1
        log.info("identity guard: track %s matches a person seen before: re-using their identity", key)
        state.seed = answer.seed
        return GuardDecision("verify", answer.seed)

    def candidates(self, key: int, identity_seed: int) -> list[int]:
        state = self._state(key)
        base = self._proposals.get(key, identity_seed)
        return [candidate_seed(base, state.attempt, k) for k in range(self.config.candidates)]

    def choose(self, key: int, seeds: Sequence[int], crops: Sequence[np.ndarray], landmarks68_crop: Sequence[np.ndarray],
               *, landmark_errors: Sequence[float] | None = None,
               found: Sequence[bool] | Callable[[int], bool] | None = None) -> int | None:
        """Keep one candidate face (generated crops and their landmarks) that clears the margin: the
        farthest, or with ``pick="faithful"`` the one with the lowest ``landmark_errors`` (how far each
        candidate's own landmarks are from the original's), taking first the candidates a second face
        detector still ``found`` in the frame when that is given. None: the track is covered.

        Candidates are embedded only as far as the pick needs (an embedding is the guard's main cost):
        a faithful pick tries them from the best landmarks down and stops at the first that passes (and
        its equals), a proposed identity (segment cuts) in seed order; only ``farthest`` embeds them all.
        ``found`` may be a function of the candidate's index: it is then asked as far as the pick needs too
        (most faithful first), and if it raises, the landmarks alone decide.
        """
        state = self._state(key)
        state.attempt += 1
        self.counts["draws"] += 1
        nearest = np.full(len(seeds), np.nan)

        def passes(i: int) -> bool:
            if np.isnan(nearest[i]):
                nearest[i] = self._nearest_original(state, [crops[i]], [landmarks68_crop[i]])[0]
            return bool(nearest[i] >= self.min_distance)

        if key in self._proposals:  # the same pick in every segment that passes the same candidates
            best = next((i for i in range(len(seeds)) if passes(i)), None)
            if best is not None:
                self.counts["kept_proposed_identities"] += 1
        elif self.config.pick == "faithful" and landmark_errors is not None:
            try:
                best = _most_faithful(landmark_errors, _asked_once(found), passes, nearest)
            except _FaceCheckFailed:  # a preference between faces that all clear the margin: never a reason to cover
                log.exception("identity guard: the face check of the candidates failed; picking by landmarks alone")
                best = _most_faithful(landmark_errors, None, passes, nearest)
        else:
            passing = [i for i in range(len(seeds)) if passes(i)]
            best = max(passing, key=lambda i: nearest[i]) if passing else None
        state.candidate_distances = tuple(float(d) for d in nearest)
        self._checked(state)
        if best is not None:
            state.seed, state.failed_at, state.distance = int(seeds[best]), None, float(nearest[best])
            self._remember(key, state)
            return state.seed
        self.counts["failed_draws"] += 1  # every candidate was embedded to find that out
        state.seed, state.failed_at, state.distance = None, self._frame, float(np.max(nearest))
        log.info("identity guard: track %s has no candidate %.2f from the original (best %.3f): covered",
                 key, self.min_distance, state.distance)
        return None

    def verify(self, key: int, crop: np.ndarray, landmarks68_crop: np.ndarray) -> bool:
        """Check the kept identity on this frame's generated face; a failure clears it (the next frame draws)."""
        state = self._state(key)
        self.counts["verifications"] += 1
        distance = float(self._nearest_original(state, [crop], [landmarks68_crop])[0])
        self._checked(state)
        state.distance = distance
        if distance >= self.min_distance:
            self._remember(key, state)
            return True
        self.counts["failed_verifications"] += 1
        log.info("identity guard: track %s kept identity fell to %.3f from the original: drawing again", key, distance)
        state.seed = None
        return False

    def _remember(self, key: int, state: _TrackState) -> None:
        """Tell the ledger which person this verified identity replaces (the track's views as of now).
        Untracked faces (key < 0) are not remembered: they have no track to come back to."""
        if self.ledger is not None and state.seed is not None and key >= 0:
            self.ledger.remember(seed=state.seed, embeddings=np.stack([e for _, e in state.views]), frame=self._frame)

    def _checked(self, state: _TrackState) -> None:
        state.checked_at, state.size_at_check, state.yaw_at_check = self._frame, state.size_now, state.yaw_now

    def _nearest_original(self, state: _TrackState, crops: Sequence[np.ndarray], points: Sequence[np.ndarray]) -> np.ndarray:
        """Per generated face, its distance to the nearest kept view of the original."""
        if not state.views:
            raise RuntimeError("identity guard: no view of the original face was embedded")
        embeddings = np.concatenate([self._embed(c, p[None]) for c, p in zip(crops, points)])
        originals = np.stack([e for _, e in state.views])
        return self.recognizer.distances(embeddings, originals).min(axis=1)

    def _embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        self.counts["embeddings"] += len(landmarks68)
        return self.recognizer.embed(image, landmarks68)
