"""The SDGAN renderer: landmarks -> aligned crops and semantic maps -> one batched generator call ->
paste-back, with a cover for every face the generator cannot serve.

Two frame paths share everything up to the maps (landmarks, maps and region masks are made on the
host): the host path crops, composites and pastes with numpy/OpenCV; the device path
(:class:`~sdgan_stream.backends.gpu_warp.DeviceFrameRenderer`, chosen when the backend runs on CUDA)
uploads the frame once, warps all crops, generates, colour-matches and pastes them back on the GPU
and downloads the frame once.

Per track and identity, the generated output and the pasted crop are blended with the last frame's
where the original face did not change (change-gated smoothing, ``change_gate``): the generator and the
gradient-domain paste change more from frame to frame than the face does. Before that, a tracked face
keeps the semantic map it was last generated from while its landmarks stay within a pixel of it
(``map_hold``: the generated identity moves with every pixel of the map), and the context pixels around it
where the original changed less than ``change_gate``; a face whose map, region and identity are then those of a
face generated before is served that output again without a generator call while the colour around its region
holds (``context_tolerance``).

A face falls back to the cover (and the outcome records why) when it is too small, out of frame, in
profile, when its landmarks fail, or when the region the generator would replace does not cover the
centre of the detected face (a landmark fit that wandered off must not leave the real face visible).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from .align import apply_matrix
from .anonymize import CoverRenderer, FaceOutcome
from .blend import paste_back
from .config import check_frame_path
from .faceprep import FaceFallback, PreparedFace, masked_input, prepare_faces, region_mask_from_labels
from .semantic import one_hot, rasterize_semantic_map
from .stabilize import DEFAULT_JITTER, LandmarkStabilizer, StabilizedLandmarker
from .types import Face

if TYPE_CHECKING:
    from .backends import GeneratorBackend
    from .identity_guard import IdentityGuard
    from .config import AnonymizeOptions
    from .landmarks import LandmarkDetector
    from .models.generator import GeneratorConfig

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHANGE_GATE", "DEFAULT_CONTEXT_TOLERANCE", "DEFAULT_MAP_HOLD", "MIN_CENTRE_COVERAGE", "SdganRenderer", "centre_coverage", "use_device_frames"]

FramePath = Literal["auto", "host", "device"]

# Share of the detected face's centre (the middle 60% of its box) the replaced region must cover.
MIN_CENTRE_COVERAGE = 0.9
# Per-frame decay of a track's replaced-region memory: a crop pixel stays replaced while
# max(this frame's region, REGION_MEMORY x last frame's memory) > 0.5, i.e. 6 frames after it left the
# region. The region's edge follows the detector's box and yaw estimate, which jitter by pixels from frame
# to frame; a region that changed shape every frame made the pasted face's edge flicker. It only ever
# adds to the region, never removes from it (privacy fails closed).
REGION_MEMORY = 0.9
# Change-gated smoothing (``change_gate``): the original crop's change is measured over a Gaussian of this
# share of the crop side (2 px at 128), so codec noise and a pixel of residual misalignment do not count
# as a change of the face.
CHANGE_BLUR = 2.0 / 128
# Mean RGB change (levels) of the original aligned crop at which a pixel takes this frame's generated
# output (and pasted crop) whole; below it the share falls to 1 - temporal_smoothing. With 0.9 smoothing,
# on issue 13's held-out clip (benchmarks/bench_flicker.py, 30 frames) the generated faces' change against
# the true motion fell from 1.06 grey levels (a plain 0.5 average of the output) to 0.76 (gated output)
# and 0.39 (gated output and pasted crop); the real faces change by 0.14 (the encoder's noise).
DEFAULT_CHANGE_GATE = 8.0
# Map hold (``map_hold``): a tracked face keeps the landmarks, semantic map and region it was last
# generated from until one of its 68 crop landmarks has moved this share of the crop side (1 px at 128)
# away from them. The generated identity follows the map far more than the face does: on issue 13's held-out
# clip (7 people, stabilized crop landmarks moving 0.05 px a frame, 0.1% of the map's pixels changing) the
# raw output's identity spread within a track was 0.106 (dlib; the real faces 0.030), 0.060 with the map
# of the track's first frame, 0.094 with a 0.5 px hold and 0.038 with 1 px. A blink or a mouth opening
# moves its points several pixels, so expression still comes through (cost: at most 1 px of landmark error,
# ~0.02 inter-ocular distances).
DEFAULT_MAP_HOLD = 1.0 / 128
# Output hold (``context_tolerance``): a tracked face whose map, region and identity are those of a face
# generated before is served that face again while the context around its region keeps its colour: the mean
# of every channel over a band of ``CONTEXT_BAND`` of the crop side around the region moved at most this many
# levels. The generator takes the colour and light of the face from its surroundings, not their texture, so a
# head moving over a textured background keeps its face; lighting that changes brings a new one.
DEFAULT_CONTEXT_TOLERANCE = 4.0
CONTEXT_BAND = 8.0 / 128


def crop_change(before: np.ndarray, now: np.ndarray) -> np.ndarray:
    """(S, S) float32: mean RGB change between two aligned (S, S, 3) crops, blurred over ``CHANGE_BLUR`` of the
    side so codec noise and a pixel of residual misalignment do not count (the change gate's measure)."""
    change = np.abs(now.astype(np.float32) - before.astype(np.float32)).mean(-1)
    return cv2.GaussianBlur(change, (0, 0), CHANGE_BLUR * now.shape[0])


def context_shift(before: np.ndarray, now: np.ndarray, region: np.ndarray) -> float:
    """Largest change (levels) of a channel's mean over the band of ``CONTEXT_BAND`` of the side around
    ``region`` ((S, S) bool) between two (S, S, 3) uint8 context inputs: the output hold's measure."""
    side = max(1, int(round(CONTEXT_BAND * region.shape[0])))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * side + 1, 2 * side + 1))
    band = (cv2.dilate(region.astype(np.uint8), kernel) > 0) & ~region
    if not band.any():  # the region fills the crop: no surroundings to compare
        return 0.0
    return float(np.abs(before[band].mean(0) - now[band].mean(0)).max())


def centre_coverage(prepared: PreparedFace) -> float:
    """Fraction of the centre of the face's box that lies inside the region the generator replaces."""
    x1, y1, x2, y2 = (float(v) for v in prepared.face.box)
    w, h = x2 - x1, y2 - y1
    corners = np.array([[x1 + 0.2 * w, y1 + 0.2 * h], [x2 - 0.2 * w, y1 + 0.2 * h], [x2 - 0.2 * w, y2 - 0.2 * h], [x1 + 0.2 * w, y2 - 0.2 * h]])
    polygon = np.zeros_like(prepared.region_mask, np.uint8)
    cv2.fillConvexPoly(polygon, np.round(apply_matrix(corners, prepared.matrix)).astype(np.int32), 1)
    area = int(polygon.sum())
    if area == 0:  # the centre falls outside the crop entirely
        return 0.0
    return float((prepared.region_mask[polygon > 0] > 0.5).sum() / area)


def _to_network(images: list[np.ndarray]) -> np.ndarray:
    """uint8 (S, S, 3) images -> float32 (B, 3, S, S) in [-1, 1]."""
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


def _from_network(batch: np.ndarray) -> np.ndarray:
    """float32 (B, 3, S, S) in [-1, 1] -> uint8 (B, S, S, 3)."""
    return np.clip((batch.transpose(0, 2, 3, 1) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def use_device_frames(backend: GeneratorBackend, frame_path: FramePath) -> bool:
    """Whether frames go through the torch frame path: always for ``device``, on CUDA for ``auto``.

    On CPU the host path is the faster one (OpenCV's warps beat ``grid_sample`` there), so ``auto``
    keeps it; ``device`` on CPU exists to test the GPU path's logic where no GPU is.
    """
    check_frame_path(frame_path)
    return frame_path == "device" or (frame_path == "auto" and backend.device == "cuda")


class SdganRenderer:
    """Replaces faces with generated ones; every face it cannot serve gets ``fallback``."""

    name = "sdgan"

    def __init__(
        self,
        *,
        backend: GeneratorBackend,
        config: GeneratorConfig,
        landmarker: LandmarkDetector,
        fallback: CoverRenderer,
        batch_size: int = 16,
        temporal_smoothing: float = 0.9,
        change_gate: float = DEFAULT_CHANGE_GATE,
        map_hold: float = DEFAULT_MAP_HOLD,
        context_tolerance: float = DEFAULT_CONTEXT_TOLERANCE,
        reshape_strength: float = 3.5,
        landmark_jitter: float = DEFAULT_JITTER,
        frame_path: FramePath = "auto",
        guard: IdentityGuard | None = None,
        draws_per_frame: int = 0,
        prepares_in_analysis: bool | None = None,
    ) -> None:
        if not 0.0 <= temporal_smoothing < 1.0:
            raise ValueError(f"temporal smoothing must be in [0, 1), got {temporal_smoothing}")
        self.backend = backend
        self.temporal_smoothing = temporal_smoothing
        if change_gate < 0:
            raise ValueError(f"change gate must be >= 0, got {change_gate}")
        self.change_gate = change_gate
        if map_hold < 0:
            raise ValueError(f"map hold must be >= 0, got {map_hold}")
        self.map_hold = map_hold
        if context_tolerance < 0:
            raise ValueError(f"context tolerance must be >= 0, got {context_tolerance}")
        self.context_tolerance = context_tolerance
        self.reshape_strength = reshape_strength
        # (track id, identity seed) -> (last generated output (float, aligned), the original crop it was made for):
        # the raw generator output changes between frames more than the face does; blending it with the
        # last frame's per track steadies the face. Holds only the tracks drawn by the previous call, so
        # it cannot grow on long streams.
        self._previous: dict[tuple[int, int], tuple[Any, np.ndarray | None]] = {}
        self._regions: dict[int, np.ndarray] = {}  # track id -> replaced-region memory (crop space), last frame's tracks
        self._held: dict[int, PreparedFace] = {}  # track id -> last frame's steadied face; see _held_inputs
        # (track id, identity seed) -> the inputs and raw output of last frame's generated faces, and this
        # frame's so far: a face given the same inputs is served without a generator call (see _generate).
        self._generated: dict[tuple[int, int], _Generated] = {}
        self._generated_now: dict[tuple[int, int], _Generated] = {}
        self.reused_faces = 0  # faces served from _generated (for the job's stats and benchmarks)
        # (track id, identity seed) -> (last pasted crop (float), its replaced region, the original crop): the
        # gradient-domain paste takes its boundary from the surroundings, which change as the head moves
        # over them, and that changed the pasted face's colour every frame; see _steady_paste.
        self._pasted: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self.config = config
        self.landmarker = landmarker
        # Tracked faces' landmarks filtered over time (0: off): their jitter moved the crop, map and paste.
        self.stabilizer = LandmarkStabilizer(jitter=landmark_jitter)
        self.fallback = fallback
        self.batch_size = batch_size
        self.guard = guard
        # The guard's identity draws per frame (0: no limit); faces past it are covered until their turn, those
        # waiting longest first (track key -> the frame they started waiting; only this frame's waiting faces).
        if draws_per_frame < 0:
            raise ValueError(f"draws per frame must be >= 0 (0: no limit), got {draws_per_frame}")
        self.draws_per_frame = draws_per_frame
        self._frames_seen = 0
        self._waiting: dict[int, int] = {}
        self.last_generated: list[tuple[PreparedFace, np.ndarray]] = []  # for `inspect`: crops of the last call
        self._reshaped_this_frame: dict[tuple[int, int], PreparedFace] = {}  # see _reshaped
        # (id, id) of two crops -> (the crops, their share): see _new_share
        self._shares_this_frame: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._device_frames: Any = None
        if use_device_frames(backend, frame_path):
            from .backends.gpu_warp import DeviceFrameRenderer

            self._device_frames = DeviceFrameRenderer(backend=backend, label_nc=config.label_nc)
        log.info("SDGAN frame path: %s", "device (torch)" if self._device_frames is not None else "host (numpy/OpenCV)")
        # Landmarks, crops and maps (CPU work) in the analysis stage: with the generator on a GPU they run
        # beside the previous frame's generation. On CPU the analysis thread (detection) is already the
        # busier one, so by default they stay with rendering there.
        on_gpu = str(getattr(backend, "device", "cpu")).startswith("cuda")
        self.prepares_in_analysis = on_gpu if prepares_in_analysis is None else prepares_in_analysis

    @classmethod
    def from_options(cls, options: AnonymizeOptions, *, draws_per_frame: int = 0) -> SdganRenderer:
        from .backends import create_backend
        from .landmarks import LandmarkDetector
        from .models.bundle import load_generator_bundle

        generator, config, metadata = load_generator_bundle(options.weights)
        backend = create_backend(
            options.backend,
            generator,
            config,
            device=options.device,
            max_batch=options.batch_size,
            weights_id=str(metadata.get("weights_sha256", "")),
        )
        log.info("generator backend: %s on %s (%s)", backend.name, backend.device, backend.precision)
        guard = None
        if options.identity_guard:
            from .identity_guard import GuardConfig, IdentityGuard, load_recognizer
            from .identity_ledger import IdentityLedger

            recognizer = load_recognizer(options.recognizer, options.recognizer_model)
            guard = IdentityGuard(recognizer, GuardConfig(candidates=options.guard_candidates,
                                                          min_distance=options.min_identity_distance,
                                                          recheck_every=options.guard_recheck, pick=options.guard_pick),
                                  ledger=IdentityLedger.for_recognizer(recognizer))  # re-entries keep their identity
            log.info("identity guard: %s recognizer, %d candidates, margin %.2f, pick %s, re-check every %d frames",
                     recognizer.name, options.guard_candidates, guard.min_distance, options.guard_pick, options.guard_recheck)
        else:
            log.warning("identity guard off: generated faces are not checked against the people they replace")
        return cls(
            backend=backend,
            config=config,
            landmarker=LandmarkDetector(),
            fallback=CoverRenderer(method=options.fallback, margin=options.cover_margin),  # type: ignore[arg-type]
            batch_size=options.batch_size,
            frame_path=options.frame_path,  # type: ignore[arg-type]
            guard=guard,
            draws_per_frame=draws_per_frame,
        )

    def close(self) -> None:
        """Release the generator backend (onnxruntime's worker pool); the job that built it calls this."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def for_new_stream(self) -> SdganRenderer:
        """A renderer for another video that shares this one's loaded models (generator backend, landmark
        model, recognizer) and none of its per-stream state: smoothing history and the guard's per-track
        decisions are keyed by track ids, which restart with every stream (a cluster worker's next video), and the
        identity ledger's persons belong to one video."""
        clone = copy.copy(self)
        clone._clear_tracks()
        clone.reused_faces = 0
        clone.stabilizer = LandmarkStabilizer(jitter=self.stabilizer.jitter, floor=self.stabilizer.floor)
        clone.last_generated = []
        clone._frames_seen = 0
        if self.guard is not None:
            from .identity_guard import IdentityGuard

            ledger = self.guard.ledger.empty_copy() if self.guard.ledger is not None else None
            clone.guard = IdentityGuard(self.guard.recognizer, self.guard.config, ledger=ledger)
        return clone

    def forget_tracks(self) -> None:
        """Drop every per-track state in place: track ids start again after an input reconnect, and a new
        person given an old id must not inherit the old one's held inputs, smoothing or verified identity
        (the guard re-draws and verifies against the new person; its ledger, which knows people by face,
        stays). Called by the rendering stage. The landmark filter's history is reset too unless landmarks
        are fitted on the analysis thread (a GPU job): there it is bounded anyway (a filtered point never
        strays more than half its jitter scale from the fit)."""
        self._clear_tracks()
        if not self.prepares_in_analysis:
            self.stabilizer = LandmarkStabilizer(jitter=self.stabilizer.jitter, floor=self.stabilizer.floor)
        if self.guard is not None:
            self.guard.forget_tracks()

    def _clear_tracks(self) -> None:
        self._previous = {}
        self._regions = {}
        self._held = {}
        self._generated = {}
        self._generated_now = {}
        self._pasted = {}
        self._waiting = {}

    def prepare(self, image: np.ndarray, faces: Sequence[Face], *, steady: bool = True) -> list[PreparedFace | FaceFallback]:
        """Landmarks, aligned crop, semantic map and region of every face. Reads only ``image``; with
        ``steady`` the tracked faces' landmarks are smoothed per track (:mod:`sdgan_stream.stabilize`), so
        it must then run once per frame, in frame order, on one thread (the analysis thread, or rendering)."""
        landmarker = StabilizedLandmarker(self.landmarker, self.stabilizer) if steady else self.landmarker
        out = prepare_faces(image, faces, landmarker=landmarker, size=self.config.image_size,
                            with_crops=self._device_frames is None or self.guard is not None or self.change_gate > 0)
        if steady:
            self.stabilizer.end_frame()
        return out

    def render(self, image: np.ndarray, faces: Sequence[Face], prepared: object | None = None) -> list[FaceOutcome]:
        """Draw every face of ``faces``; ``prepared`` is :meth:`prepare`'s result for these faces (or for
        a superset of them) when the analysis stage made it; faces it lacks are prepared here."""
        # Covers are drawn last: a generated face's paste writes its crop's context (the original pixels, cut
        # before anything was drawn) in a feathered ring around its region, which would wipe out a neighbour's
        # cover drawn before it.
        to_cover: list[tuple[Face, str]] = []
        candidates: list[PreparedFace] = []
        self._reshaped_this_frame = {}
        self._shares_this_frame = {}
        self._generated_now = {}
        held: dict[int, PreparedFace] = {}
        for item in self._preparation(image, faces, prepared):
            if isinstance(item, FaceFallback):
                to_cover.append((item.face, item.reason))
            elif centre_coverage(item) < MIN_CENTRE_COVERAGE:
                to_cover.append((item.face, "region_misses_face"))
            else:  # held before the guard: the face it verifies is the face that is pasted
                candidates.append(self._held_inputs(item, held))
        self._held = held
        if self.guard is not None:
            candidates, refused = self._guarded(image, candidates)
            to_cover += refused
        # The generator sees each face with its (guard-chosen) identity seed; outcomes name the faces as given.
        regions: dict[int, np.ndarray] = {}
        ready = [self._as_pasted(prepared, regions) for prepared in candidates]
        self._regions = regions
        self.last_generated = []
        current: dict[tuple[int, int], Any] = {}
        if self._device_frames is not None:
            if ready:  # one upload and one download for the whole frame; the backend splits the batch itself
                generated = self._device_frames.render(image, ready, self._identity(ready),
                                                       adjust=lambda raw: self._smooth(raw, ready, current))
                self.last_generated = list(zip(ready, generated))
        else:
            pasted: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
            # no face's paste ring may bring back another's original (one face: nothing to keep it off)
            replaced = np.zeros(image.shape[:2], bool) if len(ready) > 1 else None
            for start in range(0, len(ready), self.batch_size):
                chunk = ready[start : start + self.batch_size]
                crops = self.generate_crops(chunk, smoothed_into=current)
                for prepared, crop in zip(chunk, crops):
                    paste_back(image, crop, prepared, replaced=replaced,
                               adjust=lambda colour, p=prepared: self._steady_paste(colour, p, pasted))
                    self.last_generated.append((prepared, crop))
            self._pasted = pasted
        outcomes = [self._cover(image, face, reason) for face, reason in to_cover]
        outcomes.extend(FaceOutcome(prepared.face.extra.get("original", prepared.face), self.name) for prepared in ready)
        self._previous = current
        self._generated = {key: made for key, made in self._generated_now.items() if key in current}
        return outcomes

    def _preparation(self, image: np.ndarray, faces: Sequence[Face], prepared: object | None) -> list[PreparedFace | FaceFallback]:
        """One prepared entry per face of ``faces``, in order: taken from ``prepared`` (matched by face
        object: a keep-faces filter may have removed some), the rest prepared now."""
        if not isinstance(prepared, list):  # when the analysis stage owns the smoothing state, it failed there
            return self.prepare(image, faces, steady=not self.prepares_in_analysis)
        made = {id(item.face): item for item in prepared}
        missing = [face for face in faces if id(face) not in made]
        if missing:  # the analysis stage owns the smoothing state: prepare these without it
            made.update((id(item.face), item) for item in self.prepare(image, missing, steady=False))
        return [made[id(face)] for face in faces]

    # -- identity guard ---------------------------------------------------------------------------
    def _guarded(self, image: np.ndarray, faces: list[PreparedFace]) -> tuple[list[PreparedFace], list[tuple[Face, str]]]:
        """The faces whose identity the guard verified (each carrying its chosen seed), and the faces to cover
        with the reason: ``identity_guard`` (refused; any failure of the recognizer refuses the faces it was
        deciding: fail closed) or ``identity_pending`` (its draw waits for a detection or its turn: ``_draws_now``)."""
        guard = self.guard
        assert guard is not None
        keys = [p.face.track_id if p.face.track_id is not None else -1 - i for i, p in enumerate(faces)]  # untracked: one frame
        guard.start_frame(on_screen=keys)
        kept: list[PreparedFace] = []
        refused: list[Face] = []
        to_verify: list[tuple[int, PreparedFace]] = []
        to_draw: list[tuple[int, PreparedFace]] = []
        for key, prepared in zip(keys, faces):
            try:
                new_view = guard.observe(key, prepared.crop, prepared.landmarks68_crop, prepared.face.width,
                                         detected=prepared.face.source == "detected")
                decision = guard.decide(key, prepared.face.width, prepared.landmarks68_crop, new_view=new_view)
            except Exception:  # a recognizer failure: this face cannot be verified, so it is covered
                log.exception("identity guard failed on a face: covering it")
                refused.append(prepared.face)
                continue
            if decision.action == "cover":
                refused.append(prepared.face)
            elif decision.action == "draw":
                to_draw.append((key, prepared))
            else:
                chosen = _with_seed(prepared, decision.seed)
                if decision.action == "verify":
                    to_verify.append((key, chosen))
                else:
                    kept.append(chosen)
        if to_verify:
            crops = self.generate_crops([self._as_pasted(p) for _, p in to_verify])
            for (key, prepared), crop in zip(to_verify, crops):
                points = self._reshaped_points(prepared)
                try:
                    passed = guard.verify(key, crop, points)
                except Exception:
                    log.exception("identity guard failed to verify a face: covering it")
                    refused.append(_original(prepared))
                    continue
                if passed:
                    kept.append(prepared)
                else:  # the kept identity drifted towards the person: draw a new one now
                    to_draw.append((key, _with_seed(prepared, None)))
        to_draw, waiting = self._draws_now(to_draw)
        for key, prepared in to_draw:
            chosen = self._draw(key, prepared, image)
            if chosen is None:
                refused.append(_original(prepared))
            else:
                kept.append(chosen)
        for key in range(-len(faces), 0):  # untracked faces have no tomorrow
            guard.forget(key)
        return kept, [(face, "identity_guard") for face in refused] + [(_original(p), "identity_pending") for p in waiting]

    def _draws_now(self, to_draw: list[tuple[int, PreparedFace]]) -> tuple[list[tuple[int, PreparedFace]], list[PreparedFace]]:
        """The faces to draw an identity for this frame, and the faces that wait (covered this frame; their guard
        state is untouched, so they ask again next frame):

        * a face at a track's predicted box waits for a detection: the box is a widened guess. When frames come
          sparsely (an overloaded live source), lost tracks coast and new ones are born for the same people, and
          drawing identities for those guesses made the renderer slower still (a 4-face clip, every 15th frame:
          45 draws, 17 failed, for 17 frames);
        * past ``draws_per_frame`` draws the rest wait their turn, longest waiting first: a crowd entering a live
          stream costs a few covered frames, not one long stall.
        """
        self._frames_seen += 1
        guesses = [prepared for _, prepared in to_draw if prepared.face.source == "predicted"]
        to_draw = [(key, prepared) for key, prepared in to_draw if prepared.face.source != "predicted"]
        budget = self.draws_per_frame
        if not budget or len(to_draw) <= budget:
            self._waiting = {}
            return to_draw, guesses
        by_wait = sorted(to_draw, key=lambda item: self._waiting.get(item[0], self._frames_seen))  # stable
        now, later = by_wait[:budget], by_wait[budget:]
        self._waiting = {key: self._waiting.get(key, self._frames_seen) for key, _ in later}
        return now, [prepared for _, prepared in later] + guesses

    def _draw(self, key: int, prepared: PreparedFace, image: np.ndarray) -> PreparedFace | None:
        """Generate the guard's candidate identities for one face and keep the one it accepts, if any."""
        guard = self.guard
        assert guard is not None
        seeds = guard.candidates(key, _original(prepared).identity_seed)
        options = [_with_seed(prepared, seed) for seed in seeds]
        crops = np.concatenate([self.generate_crops([self._as_pasted(p) for p in options[i : i + self.batch_size]])
                                for i in range(0, len(options), self.batch_size)])
        errors = found = None
        if guard.config.pick == "faithful":
            errors = [self._landmark_error(crop, prepared) for crop in crops]
            found = self._found_in_frame(image, crops, options, errors)
        try:
            seed = guard.choose(key, seeds, list(crops), [self._reshaped_points(p) for p in options],
                                landmark_errors=errors, found=found)
        except Exception:
            log.exception("identity guard failed to choose an identity: covering the face")
            return None
        return None if seed is None else _with_seed(prepared, seed)

    def _found_in_frame(self, image: np.ndarray, crops: np.ndarray, options: list[PreparedFace],
                        errors: list[float]) -> Callable[[int], bool] | None:
        """Whether the guard recognizer's own face detector (dlib HOG, not CenterFace) finds candidate ``i``
        pasted into the frame at the face's place and scale, as a function the guard asks only about the
        candidates its pick needs (each question pastes the candidate into a copy of the frame and runs the
        detector: ~30 ms); None when the recognizer has no detector.

        Some identity codes give faces that clear the margin and keep the landmarks but no longer read
        as a face at frame scale. On the held-out clip of issue 13, two of seven tracks kept such a face
        (HOG found it on 42% and 65% of their frames, every other track on 98-100%); with this check every
        track was found on 98-100%, and dlib's CNN detector, which the check does not use, found 0.89 of the
        faces instead of 0.84 (``benchmarks/results/realism/guard_detector_check.json``)."""
        assert self.guard is not None
        finds_face = getattr(self.guard.recognizer, "finds_face", None)
        if finds_face is None:
            return None

        def found(i: int) -> bool:
            if not np.isfinite(errors[i]):  # its landmarks failed: ranked last whatever a detector says
                return False
            trial = image.copy()
            paste_back(trial, crops[i], self._as_pasted(options[i]))
            return bool(finds_face(trial, options[i].face.box))

        return found

    def generate_crops(self, faces: list[PreparedFace], *, smoothed_into: dict[tuple[int, int], Any] | None = None) -> np.ndarray:
        """One generator call for ``faces``: composited (S, S, 3) uint8 crops (also used by ``inspect``).

        With ``smoothed_into``, each tracked face's output is blended with its previous frame's
        (:meth:`_smooth`) and stored there under its smoothing key.
        """
        raw = self._generate(faces)
        if smoothed_into is not None:
            raw = self._smooth(raw, faces, smoothed_into)
        out = _from_network(raw)
        # Inside the region: the generated face; outside: the original crop (paste-back feathers the edge).
        mask = np.stack([p.region_mask for p in faces])[..., None]
        crops = np.stack([p.crop for p in faces])
        return np.where(mask > 0.5, out, crops)

    def _generate(self, faces: list[PreparedFace]) -> np.ndarray:
        """The generator's raw output (B, 3, S, S) for ``faces``. A tracked face with the same map, region and
        identity as a face generated last frame (or earlier in this one) gets that output again without a
        generator call while its context kept its colour (:meth:`_serves_again`): a face whose map the hold
        keeps (``_held_inputs``), and the guard's chosen candidate in its final call."""
        contexts = [masked_input(p) for p in faces]
        rows: list[np.ndarray | None] = [None] * len(faces)
        for index, (prepared, context) in enumerate(zip(faces, contexts)):
            if prepared.face.track_id is None:
                continue
            key = _smoothing_key(prepared)
            known = self._generated_now.get(key) or self._generated.get(key)
            if known is not None and self._serves_again(known, prepared, context):
                rows[index] = known.raw
                self._generated_now[key] = known  # compared with the inputs it was made from, so no drift adds up
                self.reused_faces += 1
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            masked = _to_network([contexts[i] for i in missing])
            semantic = np.stack([one_hot(faces[i].labels, self.config.label_nc) for i in missing])
            identity = self._identity([faces[i] for i in missing])
            if getattr(self.backend, "caches_maps", False):  # a held map's half of the network is done once
                raw = self.backend.generate(masked, semantic, identity, map_keys=[faces[i].labels.tobytes() for i in missing])
            else:
                raw = self.backend.generate(masked, semantic, identity)
            for i, row in zip(missing, raw):
                rows[i] = np.array(row, copy=True)  # the backend may reuse its output buffer
                if faces[i].face.track_id is not None:
                    made = _Generated(contexts[i], faces[i].labels, faces[i].region_mask > 0, rows[i])
                    self._generated_now[_smoothing_key(faces[i])] = made
        return np.stack(rows) if rows else np.zeros((0, 3, self.config.image_size, self.config.image_size), np.float32)

    def _serves_again(self, known: _Generated, prepared: PreparedFace, context: np.ndarray) -> bool:
        """Whether ``known`` (same track and identity) is this face's output: same map and replaced region, and a
        context equal to its own or, with ``context_tolerance``, of the same colour around the region
        (:func:`context_shift`). The region must be the same: where it grew, the old output holds the
        generator's copy of what was context then, possibly an edge of the real face."""
        if not (np.array_equal(known.labels, prepared.labels) and np.array_equal(known.region, prepared.region_mask > 0)):
            return False
        if self.context_tolerance == 0:
            return np.array_equal(known.context, context)
        return context_shift(known.context, context, known.region) <= self.context_tolerance

    def _identity(self, faces: Sequence[PreparedFace]) -> np.ndarray:
        from .models.identity import identity_codes

        return identity_codes([p.face.identity_seed for p in faces], self.config.identity_dim)

    def _smooth(self, raw: Any, faces: Sequence[PreparedFace], current: dict[tuple[int, int], Any]) -> Any:
        """Each tracked face's raw output blended with its previous frame's (see :meth:`_new_share`); the
        result (B, 3, S, S), a new numpy array or device tensor like ``raw``, is stored in ``current`` under
        the faces' smoothing keys, with the original crop it was made for.

        Never writes into ``raw``: a backend may hand out its own output buffer (CUDA graphs reuse it
        on the next call), and tensors made under inference mode cannot be changed outside it.
        """
        rows = []
        for index, prepared in enumerate(faces):
            row = raw[index]
            previous = self._previous.get(_smoothing_key(prepared)) if prepared.face.track_id is not None else None
            if previous is not None and self.temporal_smoothing > 0:
                before, crop_before = previous
                share = self._new_share(crop_before, prepared.crop)
                if not isinstance(raw, np.ndarray) and not isinstance(share, float):
                    import torch

                    share = torch.from_numpy(share).to(device=row.device, dtype=row.dtype)
                row = before + share * (row - before)
            rows.append(row)
        if isinstance(raw, np.ndarray):
            smoothed = np.stack(rows) if rows else raw.copy()
        else:
            import torch

            smoothed = torch.stack(rows) if rows else raw.clone()
        for index, prepared in enumerate(faces):
            if prepared.face.track_id is not None:
                current[_smoothing_key(prepared)] = (smoothed[index], prepared.crop)
        return smoothed

    def _new_share(self, crop_before: np.ndarray | None, crop: np.ndarray | None) -> float | np.ndarray:
        """How much of this frame's generated face replaces the last frame's: ``1 - temporal_smoothing``
        everywhere, or with ``change_gate`` per crop pixel in proportion to how much the original aligned
        crop changed there since the last frame (mean RGB change, blurred over a few pixels: a blink or an
        opening mouth comes through at once, a still cheek keeps its generated pixels), from
        ``1 - temporal_smoothing`` up to 1 at ``change_gate`` levels. A (1, S, S) float32 array then.

        The generator's output (:meth:`_smooth`) and the pasted crop (:meth:`_steady_paste`) ask for the
        same pair of crops in one frame: it is computed once per frame and pair."""
        least = 1.0 - self.temporal_smoothing
        if self.change_gate <= 0 or crop_before is None or crop is None or crop_before.shape != crop.shape:
            return least
        key = (id(crop_before), id(crop))  # the entry holds both crops, so neither id can be reused meanwhile
        known = self._shares_this_frame.get(key)
        if known is not None:
            return known[2]
        share = np.clip(crop_change(crop_before, crop) / self.change_gate, least, 1.0)[None]
        self._shares_this_frame[key] = (crop_before, crop, share)
        return share

    def _steady_paste(self, colour: np.ndarray, prepared: PreparedFace,
                      pasted: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> np.ndarray:
        """A tracked face's blended crop (what the paste warps back) given the same change-gated blend with
        its last frame's as the generator's output (:meth:`_new_share`), and stored in ``pasted``.

        Only where the replaced region covered the pixel in both frames: elsewhere the last frame's crop
        holds the original's own pixels, which must not come back (privacy fails closed), so those pixels
        are this frame's as blended. Host frame path only.
        """
        if prepared.face.track_id is None or self.change_gate <= 0:
            return colour
        key = _smoothing_key(prepared)
        region = prepared.region_mask > 0.5
        steady = colour.astype(np.float32)
        previous = self._pasted.get(key)
        if previous is not None and previous[0].shape == steady.shape:
            before, region_before, crop_before = previous
            share = self._new_share(crop_before, prepared.crop)
            share = share[0][..., None] if isinstance(share, np.ndarray) else share
            both = (region & region_before)[..., None]
            steady = np.where(both, before + share * (steady - before), steady)
        pasted[key] = (steady, region, prepared.crop)
        return np.clip(steady + 0.5, 0, 255).astype(np.uint8)

    def _landmark_error(self, crop: np.ndarray, prepared: PreparedFace) -> float:
        """How far a generated crop's own 68 landmarks sit from the original face's, in inter-ocular distances."""
        from .landmarks import landmarks5_from_68

        points = prepared.landmarks68_crop
        box = np.concatenate([points.min(0), points.max(0)]).astype(np.float32)
        fit = self.landmarker.fit(crop, [Face(box=box, score=1.0, landmarks=landmarks5_from_68(points))])[0]
        if fit.points is None:
            return float("inf")
        iod = float(np.hypot(*(points[45] - points[36])))
        return float(np.linalg.norm(fit.points - points, axis=1).mean() / max(iod, 1e-6))

    def _reshaped_points(self, prepared: PreparedFace) -> np.ndarray:
        """The face's 68 crop landmarks moved by its identity code (jaw, chin, eyes, brows, nose, mouth)."""
        if self.reshape_strength <= 0:
            return prepared.landmarks68_crop
        from .models.identity import identity_code, reshape_landmarks

        code = identity_code(prepared.face.identity_seed, self.config.identity_dim)
        return reshape_landmarks(prepared.landmarks68_crop, code, strength=self.reshape_strength).astype(np.float32)

    def _reshaped(self, prepared: PreparedFace) -> PreparedFace:
        """The face's map redrawn from its reshaped landmarks, because face shape carries identity too. On
        the starter weights and a 720p clip of the two training people, strength 3.5 cut the faces dlib
        still matched from 15% (2.5) to 2%, at a median landmark error of 0.083 inter-ocular distances
        (0.064 at 2.5; the budget is 0.10). The replaced region is the union of the new and the original
        one, so coverage never shrinks."""
        if self.reshape_strength <= 0:
            return prepared
        # One map per face and identity per frame: the guard's check and the final call share it.
        key = (id(_original(prepared)), prepared.face.identity_seed)
        cached = self._reshaped_this_frame.get(key)
        if cached is not None:
            return cached if cached.face is prepared.face else dataclasses.replace(cached, face=prepared.face)
        points = self._reshaped_points(prepared)
        labels = rasterize_semantic_map(points, prepared.size)
        region = np.maximum(prepared.region_mask, region_mask_from_labels(labels, points))
        reshaped = dataclasses.replace(prepared, labels=labels, region_mask=region)
        self._reshaped_this_frame[key] = reshaped
        return reshaped

    def _as_pasted(self, prepared: PreparedFace, regions: dict[int, np.ndarray] | None = None) -> PreparedFace:
        """The face as the final generator call sees it: reshaped map, steadied region. The guard checks
        these same inputs, so the face it verified is the face pasted, and its output is reused there."""
        return self._steady_region(self._reshaped(prepared), {} if regions is None else regions)

    def _held_inputs(self, prepared: PreparedFace, held: dict[int, PreparedFace]) -> PreparedFace:
        """A tracked face with steadied generator inputs; what it was given is stored in ``held`` under the
        track id for the next frame.

        - The map: the crop landmarks, map and region of its last frame while none of its 68 crop landmarks
          moved more than ``map_hold`` of the crop side from them (:data:`DEFAULT_MAP_HOLD`). The held
          region's landmark part is then within that 1 px of this frame's, inside the region's own margin
          around the face (``REGION_DILATION``, ~5 px at 128). Its part drawn from the box follows the box:
          where the box is a guess (a track coasting on its widened prediction) the held region is joined
          with this frame's, so it never shrinks under it; a detected box's few pixels of jitter are left
          out (joined, they changed the region, and so the face, on most frames: identity spread 0.076 ->
          0.094 on the held-out clip).
        - The context (the crop around the replaced region): last frame's pixels where the original crop
          changed less than ``change_gate`` levels there (the same gate as the output smoothing): codec noise
          does not reach the generator, a moving background or hand does.

        Faces given the same inputs get the same generated face, reused without a generator call
        (:meth:`_generate`)."""
        if prepared.face.track_id is None:
            return prepared
        key = int(prepared.face.track_id)
        last = self._held.get(key)
        if last is None or last.labels.shape != prepared.labels.shape:
            held[key] = prepared
            return prepared
        steady = prepared
        moved = float(np.abs(prepared.landmarks68_crop - last.landmarks68_crop).max())
        if self.map_hold > 0 and moved <= self.map_hold * prepared.size:
            region = last.region_mask
            if prepared.face.source != "detected":  # a guessed box (coasting, widened): its region may only grow
                region = np.maximum(region, prepared.region_mask)
            steady = dataclasses.replace(steady, labels=last.labels, region_mask=region, landmarks68_crop=last.landmarks68_crop)
        before = last.context if last.context is not None else last.crop
        if self.change_gate > 0 and prepared.crop is not None and before is not None and before.shape == prepared.crop.shape:
            changed = crop_change(before, prepared.crop) >= self.change_gate
            steady = dataclasses.replace(steady, context=np.where(changed[..., None], prepared.crop, before))
        held[key] = steady
        return steady

    def _steady_region(self, prepared: PreparedFace, regions: dict[int, np.ndarray]) -> PreparedFace:
        """A tracked face's replaced region joined with its recent regions (see ``REGION_MEMORY``); the
        memory is stored in ``regions`` under the track id. In crop space, which the stabilized landmarks
        keep fixed to the face, so the union follows the head as it moves."""
        if prepared.face.track_id is None:
            return prepared
        key = int(prepared.face.track_id)
        memory = prepared.region_mask
        previous = self._regions.get(key)
        if previous is not None and previous.shape == memory.shape:
            memory = np.maximum(memory, REGION_MEMORY * previous)
        regions[key] = memory
        return dataclasses.replace(prepared, region_mask=(memory > 0.5).astype(np.float32))

    def _cover(self, image: np.ndarray, face: Face, reason: str) -> FaceOutcome:
        outcome = self.fallback.render(image, [face])[0]
        return FaceOutcome(face, outcome.method, reason)


@dataclasses.dataclass(frozen=True)
class _Generated:
    """A tracked face's generator inputs (masked context, map, replaced region as bool) and its raw output."""

    context: np.ndarray
    labels: np.ndarray
    region: np.ndarray
    raw: Any


def _original(prepared: PreparedFace) -> Face:
    """The face as the caller handed it in (outcomes must name the same object)."""
    return prepared.face.extra.get("original", prepared.face)


def _with_seed(prepared: PreparedFace, seed: int | None) -> PreparedFace:
    """``prepared`` drawing identity ``seed`` (None: the caller's own seed); remembers the original face."""
    original = _original(prepared)
    if seed is None:
        return dataclasses.replace(prepared, face=original)
    face = dataclasses.replace(original, identity_seed=int(seed), extra={**original.extra, "original": original})
    return dataclasses.replace(prepared, face=face)


def _smoothing_key(prepared: PreparedFace) -> tuple[int, int]:
    """Temporal smoothing runs per track and identity: a new identity starts without the old one's ghost."""
    return (int(prepared.face.track_id), int(prepared.face.identity_seed))  # type: ignore[arg-type]
