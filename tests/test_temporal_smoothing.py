"""Change-gated smoothing of the generator's output per (track, identity): the generated face changes
where the real face changed, and keeps its pixels where it did not."""

from __future__ import annotations

import numpy as np
import pytest

from sdgan_stream.faceprep import PreparedFace
from sdgan_stream.render import SdganRenderer
from sdgan_stream.types import Face

S = 64


class _NoBackend:
    device = "cpu"


def _renderer(**kwargs) -> SdganRenderer:
    """A renderer whose _smooth can be driven directly (no generator or landmark model is called)."""
    from sdgan_stream.anonymize import CoverRenderer
    from sdgan_stream.models.generator import GeneratorConfig

    return SdganRenderer(backend=_NoBackend(), config=GeneratorConfig(), landmarker=None, fallback=CoverRenderer(),  # type: ignore[arg-type]
                         frame_path="host", **kwargs)


def _prepared(crop: np.ndarray, *, seed: int = 3, track: int | None = 1) -> PreparedFace:
    face = Face(box=np.array([0, 0, S, S], np.float32), score=0.9, track_id=track, identity_seed=seed)
    return PreparedFace(face=face, matrix=np.eye(2, 3), crop=crop, labels=np.zeros((S, S), np.uint8),
                        region_mask=np.ones((S, S), np.float32), landmarks68_crop=np.zeros((68, 2), np.float32),
                        landmarks68=np.zeros((68, 2), np.float32))


def _still_crop() -> np.ndarray:
    return np.random.default_rng(0).integers(60, 200, (S, S, 3)).astype(np.uint8)


def _run(renderer: SdganRenderer, crops: list[np.ndarray], raws: list[np.ndarray], seeds: list[int] | None = None) -> list[np.ndarray]:
    outputs = []
    for i, (crop, raw) in enumerate(zip(crops, raws)):
        current: dict = {}
        outputs.append(renderer._smooth(raw[None], [_prepared(crop, seed=seeds[i] if seeds else 3)], current)[0])
        renderer._previous = current
    return outputs


def _noisy_outputs(frames: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(-1, 1, (3, S, S)).astype(np.float32) for _ in range(frames)]


def test_a_still_face_keeps_its_generated_pixels_however_noisy_the_generator() -> None:
    """The original does not change: the output changes by at most 1 - temporal_smoothing of the raw
    output's change, a fifth of what the plain running average let through."""
    raws = _noisy_outputs(8)
    crops = [_still_crop()] * 8
    gated = _run(_renderer(), crops, raws)
    plain = _run(_renderer(temporal_smoothing=0.5, change_gate=0.0), crops, raws)

    def change(outputs: list[np.ndarray]) -> float:
        return float(np.mean([np.abs(b - a).mean() for a, b in zip(outputs, outputs[1:])]))

    assert change(gated) < 0.25 * change(plain), (change(gated), change(plain))
    assert np.array_equal(gated[0], raws[0])  # a new track starts with its own output


def test_where_the_real_face_changed_the_new_output_comes_through_whole() -> None:
    """A blink or an opening mouth: the part of the original crop that changed takes this frame's output."""
    renderer = _renderer()
    still = _still_crop()
    opened = still.copy()
    opened[36:52, 20:44] = 20  # the mouth opens: a dark patch in the original
    raws = _noisy_outputs(2)
    first, second = _run(renderer, [still, opened], raws)
    inside = (slice(None), slice(40, 48), slice(24, 40))  # the patch's middle
    assert np.allclose(second[inside], raws[1][inside], atol=1e-5)
    far = (slice(None), slice(0, 16), slice(0, 16))  # away from the patch: mostly the last frame's
    assert np.abs(second[far] - first[far]).mean() < 0.15 * np.abs(raws[1][far] - first[far]).mean()


def test_a_new_identity_starts_fresh_without_the_old_ones_ghost() -> None:
    """The guard drew a new identity for the track: its first output is its own, nothing of the old face."""
    renderer = _renderer()
    raws = _noisy_outputs(3)
    outputs = _run(renderer, [_still_crop()] * 3, raws, seeds=[3, 3, 11])
    assert np.array_equal(outputs[2], raws[2])


def test_the_device_path_blends_tensors_like_arrays() -> None:
    torch = pytest.importorskip("torch")
    still = _still_crop()
    moved = np.roll(still, 5, axis=1)
    raws = _noisy_outputs(2)
    as_arrays = _run(_renderer(), [still, moved], raws)
    renderer = _renderer()
    as_tensors = []
    for crop, raw in zip([still, moved], raws):
        current: dict = {}
        as_tensors.append(renderer._smooth(torch.from_numpy(raw[None]), [_prepared(crop)], current)[0])
        renderer._previous = current
    assert isinstance(as_tensors[1], torch.Tensor)
    assert np.allclose(as_tensors[1].numpy(), as_arrays[1], atol=1e-6)


def test_a_negative_gate_is_refused() -> None:
    with pytest.raises(ValueError, match="change gate"):
        _renderer(change_gate=-1.0)


def _with_region(prepared: PreparedFace, region: np.ndarray) -> PreparedFace:
    import dataclasses

    return dataclasses.replace(prepared, region_mask=region.astype(np.float32))


def test_the_pasted_crop_keeps_its_pixels_only_where_both_frames_replaced_them() -> None:
    """Outside last frame's region its pasted crop holds the original's own pixels: where the region grew,
    they must not come back (privacy fails closed); where both frames replaced the face, a still face keeps
    the last frame's pasted pixels but for 1 - temporal_smoothing."""
    renderer = _renderer()
    crop = np.full((S, S, 3), 100, np.uint8)  # the original, still
    left = np.zeros((S, S), bool)
    left[:, : S // 2] = True
    first = np.where(left[..., None], np.full((S, S, 3), 200), 100).astype(np.uint8)  # generated on the left, original elsewhere
    pasted: dict = {}
    assert np.array_equal(renderer._steady_paste(first, _with_region(_prepared(crop), left), pasted), first)
    renderer._pasted = pasted
    second = np.full((S, S, 3), 150, np.uint8)  # the region now covers the whole crop
    out = renderer._steady_paste(second, _with_region(_prepared(crop), np.ones((S, S), bool)), {})
    assert (out[:, S // 2 :] == 150).all()  # newly replaced: this frame's pixels, none of the original's 100
    assert np.abs(out[:, : S // 2].astype(int) - 195).max() <= 1  # replaced twice: 0.9 x 200 + 0.1 x 150


def test_the_pasted_crop_of_a_new_identity_or_an_untracked_face_is_its_own() -> None:
    renderer = _renderer()
    crop, region = _still_crop(), np.ones((S, S), bool)
    pasted: dict = {}
    renderer._steady_paste(np.full((S, S, 3), 200, np.uint8), _with_region(_prepared(crop, seed=3), region), pasted)
    renderer._pasted = pasted
    fresh = np.full((S, S, 3), 40, np.uint8)
    assert np.array_equal(renderer._steady_paste(fresh, _with_region(_prepared(crop, seed=11), region), {}), fresh)
    assert np.array_equal(renderer._steady_paste(fresh, _with_region(_prepared(crop, track=None), region), {}), fresh)
