"""Generator backends: registry, auto-selection, parity against eager FP32, caches, GPU warp helpers.

Parity metric everywhere: relative L2 error ``||y - y_ref|| / ||y_ref||`` against eager FP32 on the
same (tiny, random-weight) generator; FP32 backends within 1e-4, FP16 within 1e-2. The tiny config has
a 8x8 bottleneck: the FP32-vs-FP64 noise floor of eager itself is ~1e-5 there (a 2x2 bottleneck
amplifies rounding to ~5e-5, too close to the tolerance for a stable test).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch

from sdgan_stream.backends import (
    AUTO_ORDER,
    BACKEND_NAMES,
    GeneratorBackend,
    available_backends,
    batch_buckets,
    bucket_for,
    create_backend,
    select_backend,
)
from sdgan_stream.errors import BackendUnavailableError
from sdgan_stream.models.generator import GeneratorConfig, build_generator

pytestmark = pytest.mark.filterwarnings("ignore:.*script_method.*:DeprecationWarning")  # torch's own exporter internals

FP32_TOL, FP16_TOL = 1e-4, 1e-2
TINY = GeneratorConfig(image_size=32, ngf=8, spade_hidden=8, identity_dim=8, style_dim=8, n_down=2)
HAS_CUDA = torch.cuda.is_available()


def rel_l2(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def make_inputs(config: GeneratorConfig, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = config.image_size
    masked = rng.uniform(-1, 1, (batch, 3, s, s)).astype(np.float32)
    masked[:, :, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 0  # the blanked face region
    semantic = np.ascontiguousarray(np.eye(config.label_nc, dtype=np.float32)[rng.integers(0, config.label_nc, (batch, s, s))].transpose(0, 3, 1, 2))
    identity = rng.standard_normal((batch, config.identity_dim)).astype(np.float32)
    identity /= np.linalg.norm(identity, axis=1, keepdims=True)
    return masked, semantic, identity


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, GeneratorConfig]:
    torch.manual_seed(0)
    return build_generator(TINY).eval().requires_grad_(False), TINY


@pytest.fixture(scope="module")
def reference(tiny) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    generator, config = tiny
    inputs = make_inputs(config, 3)
    with torch.no_grad():
        out = generator(*(torch.from_numpy(a) for a in inputs)).numpy()
    return inputs, out


@pytest.fixture()
def cache(tmp_path):
    from engines.cache import ArtifactCache

    return ArtifactCache(tmp_path / "cache")


# -- registry and selection -------------------------------------------------------------------------
def test_buckets() -> None:
    assert batch_buckets(16) == (1, 2, 4, 8, 16)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    assert batch_buckets(1) == (1,)
    assert [bucket_for(n, batch_buckets(16)) for n in (1, 2, 3, 5, 9, 16)] == [1, 2, 4, 8, 16, 16]
    with pytest.raises(ValueError):
        bucket_for(17, batch_buckets(16))


def test_available_backends_on_cpu_names_every_backend_with_a_reason() -> None:
    found = available_backends("cpu")
    assert set(found) == set(BACKEND_NAMES)
    assert found["eager"] is None and found["onnxruntime"] is None
    assert "GPU" in found["tensorrt"]


def test_unknown_backend_lists_the_usable_ones(tiny) -> None:
    generator, config = tiny
    with pytest.raises(BackendUnavailableError, match="unknown generator backend 'fast'.*usable on cpu: eager"):
        create_backend("fast", generator, config, device="cpu")


def test_missing_backend_is_an_error_with_reason_and_alternatives(tiny) -> None:
    generator, config = tiny
    with pytest.raises(BackendUnavailableError, match="'tensorrt' is not available on cpu: TensorRT runs on NVIDIA GPUs only.*Usable here: eager"):
        create_backend("tensorrt", generator, config, device="cpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU message")
def test_asking_for_cuda_without_a_gpu_is_an_error(tiny) -> None:
    generator, config = tiny
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        create_backend("eager", generator, config, device="cuda")


def test_auto_on_cpu_picks_onnxruntime_and_says_why(tiny, cache, caplog) -> None:
    generator, config = tiny
    chosen, skipped = select_backend("cpu")
    assert chosen == AUTO_ORDER["cpu"][0] == "onnxruntime"
    assert set(skipped) == {"compile", "tensorrt"}
    with caplog.at_level(logging.INFO, logger="sdgan_stream.backends"):
        backend = create_backend("auto", generator, config, device="cpu", max_batch=4, cache=cache)
    assert backend.name == "onnxruntime" and backend.device == "cpu" and backend.precision == "fp32"
    line = next(r.getMessage() for r in caplog.records if "auto ->" in r.getMessage())
    assert "onnxruntime" in line and "skipped compile:" in line and "tensorrt:" in line


def test_auto_falls_back_when_the_first_choice_fails_and_says_so(tiny, monkeypatch, caplog) -> None:
    from sdgan_stream.backends import onnx_runtime

    def broken(*args, **kwargs):
        raise RuntimeError("export exploded")

    monkeypatch.setattr(onnx_runtime, "OnnxRuntimeBackend", broken)
    generator, config = tiny
    with caplog.at_level(logging.INFO, logger="sdgan_stream.backends"):
        backend = create_backend("auto", generator, config, device="cpu")
    assert backend.name == "eager"
    assert any("export exploded" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# -- parity and behaviour of every backend usable here ------------------------------------------------
CPU_BACKENDS = [
    pytest.param("eager", id="eager"),
    pytest.param("onnxruntime", id="onnxruntime"),
    # torch.compile on CPU: ~15 s with a warm Inductor cache, 60-100 s cold on the shared 2-core machine.
    pytest.param("compile", id="compile", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_cpu_backend_matches_eager_fp32(name: str, tiny, reference, cache) -> None:
    if available_backends("cpu")[name] is not None:
        pytest.skip(available_backends("cpu")[name])
    generator, config = tiny
    inputs, expected = reference
    options = {"cache": cache} if name == "onnxruntime" else {}
    # max_batch 2 with 3 faces: a full chunk and a remainder (compile: max 4, one padded bucket).
    backend = create_backend(name, generator, config, device="cpu", max_batch=4 if name == "compile" else 2, **options)
    assert isinstance(backend, GeneratorBackend)
    assert (backend.name, backend.device, backend.precision) == (name, "cpu", "fp32")
    out = backend.generate(*inputs)
    assert out.shape == expected.shape and out.dtype == np.float32
    assert rel_l2(out, expected) <= FP32_TOL
    tensor_out = backend.generate_tensors(*(torch.from_numpy(a) for a in inputs))
    assert isinstance(tensor_out, torch.Tensor) and tensor_out.dtype == torch.float32
    np.testing.assert_allclose(tensor_out.numpy(), out, atol=1e-6)
    # a single face, and no faces
    assert rel_l2(backend.generate(*(a[:1] for a in inputs)), expected[:1]) <= FP32_TOL
    empty = backend.generate(*(a[:0] for a in inputs))
    assert empty.shape == (0, 3, config.image_size, config.image_size)


def test_onnxruntime_splits_a_batch_across_cores_with_the_same_result(tiny, reference, cache) -> None:
    generator, config = tiny
    inputs, expected = reference
    split = create_backend("onnxruntime", generator, config, device="cpu", threads=2, cache=cache)
    intra = create_backend("onnxruntime", generator, config, device="cpu", threads=2, parallel="intra", cache=cache)
    assert (split.parallel, intra.parallel) == ("batch", "intra")
    out = split.generate(*inputs)  # 3 faces: slices of 2 and 1 run side by side
    np.testing.assert_allclose(out, intra.generate(*inputs), atol=1e-6)
    assert rel_l2(out, expected) <= FP32_TOL
    split.close()


def test_backend_leaves_the_callers_generator_alone(tiny) -> None:
    generator, config = tiny
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    create_backend("eager", generator, config, device="cpu")
    assert next(generator.parameters()).is_contiguous()  # not switched to channels_last
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())


def test_wrong_shapes_are_rejected_with_the_expected_shape(tiny) -> None:
    generator, config = tiny
    backend = create_backend("eager", generator, config, device="cpu")
    masked, semantic, identity = make_inputs(config, 2)
    with pytest.raises(ValueError, match=r"semantic must have shape \(B, 11, 32, 32\)"):
        backend.generate(masked, semantic[:, :5], identity)
    with pytest.raises(ValueError, match="identity"):
        backend.generate(masked, semantic, identity[:1])


def test_eager_fp16_is_refused_on_cpu(tiny) -> None:
    generator, config = tiny
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        create_backend("eager", generator, config, device="cpu", precision="fp16")


# -- caches ------------------------------------------------------------------------------------------
def test_onnx_export_is_cached_by_weights(tiny, cache, reference) -> None:
    from engines.onnx_export import cached_onnx_model

    generator, config = tiny
    first = cached_onnx_model(generator, config, cache=cache)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx_model(generator, config, cache=cache) == first and first.stat().st_mtime_ns == stamp
    other = build_generator(config).eval()  # different random weights -> a different entry
    assert cached_onnx_model(other, config, cache=cache) != first
    assert len(cache.entries("onnx")) == 2
    backend = create_backend("onnxruntime", generator, config, device="cpu", cache=cache, map_cache=0)
    assert backend.model_path == first  # one graph
    for _ in range(2):  # on CPU the generator runs as two parts (map, modulated): exported once, then cached
        create_backend("onnxruntime", generator, config, device="cpu", cache=cache)
        assert len(cache.entries("onnx")) == 4


def test_onnx_map_cache_gives_the_whole_graphs_output(tiny, cache) -> None:
    """Faces that share a map key (a held map) share the map's half of the network, within a call and across
    calls, and get what the one-graph run gives them; the cache keeps only ``map_cache`` maps."""
    generator, config = tiny
    whole = create_backend("onnxruntime", generator, config, device="cpu", cache=cache, map_cache=0)
    split = create_backend("onnxruntime", generator, config, device="cpu", cache=cache, map_cache=2)
    assert split.caches_maps and not whole.caches_maps
    masked, semantic, identity = make_inputs(config, 3)
    semantic[2] = semantic[0]  # faces 0 and 2: one map (two identities, two contexts)
    expected = whole.generate(masked, semantic, identity)
    np.testing.assert_allclose(split.generate(masked, semantic, identity), expected, atol=1e-5)  # no keys: no cache
    assert split.map_cache_hits == 0 and not split._map_cache
    keys = ["a", "b", "a"]
    np.testing.assert_allclose(split.generate(masked, semantic, identity, map_keys=keys), expected, atol=1e-5)
    assert split.map_cache_hits == 1  # face 2 took face 0's
    again = split.generate(masked[::-1].copy(), semantic[::-1].copy(), identity[::-1].copy(), map_keys=keys[::-1])
    np.testing.assert_allclose(again, expected[::-1], atol=1e-5)
    assert split.map_cache_hits == 4
    other = make_inputs(config, 1, seed=5)
    np.testing.assert_allclose(split.generate(*other, map_keys=["c"]), whole.generate(*other), atol=1e-5)
    assert list(split._map_cache) == ["a", "c"]  # "b", the least recently used, made room
    with pytest.raises(ValueError, match="map_keys"):
        split.generate(masked, semantic, identity, map_keys=["a"])


def test_cache_ignores_an_entry_whose_manifest_does_not_match(tmp_path) -> None:
    from engines.cache import ArtifactCache, ArtifactKey

    cache = ArtifactCache(tmp_path)
    key = ArtifactKey(kind="tensorrt", weights="0" * 64, shapes={"batch": [1, 4, 16]}, precision="fp16",
                      runtime="tensorrt-10.0", device="sm_90 H100")
    path = cache.store(key, ".engine", lambda p: p.write_bytes(b"engine"))
    assert cache.lookup(key, ".engine") == path
    manifest = path.with_name(path.name + ".json")
    manifest.write_text(manifest.read_text().replace("sm_90", "sm_80"))
    assert cache.lookup(key, ".engine") is None
    # every field is part of the key
    for change in ({"precision": "fp32"}, {"runtime": "tensorrt-10.1"}, {"device": "sm_89 L4"}, {"shapes": {"batch": [1, 4, 8]}}):
        assert ArtifactKey(**{**key.as_dict(), **change}).filename(".engine") != key.filename(".engine")


def test_cache_keeps_only_the_newest_entries(tmp_path) -> None:
    from engines.cache import ArtifactCache, ArtifactKey

    cache = ArtifactCache(tmp_path, keep=2)
    paths = []
    for i in range(3):
        key = ArtifactKey(kind="onnx", weights=f"{i:064d}", precision="fp32")
        paths.append(cache.store(key, ".onnx", lambda p: p.write_bytes(b"x")))
    assert len(cache.entries("onnx")) == 2
    assert [p.exists() for p in paths] == [False, True, True]


def test_weights_digest_follows_the_values(tiny) -> None:
    from engines.cache import weights_digest

    generator, config = tiny
    clone = build_generator(config)
    clone.load_state_dict(generator.state_dict())
    assert weights_digest(clone) == weights_digest(generator)
    with torch.no_grad():
        next(clone.parameters()).view(-1)[0] += 1e-3
    assert weights_digest(clone) != weights_digest(generator)


def test_build_engine_says_why_it_cannot_run_here(capsys) -> None:
    import argparse

    from sdgan_stream.build_engine import add_build_engine_parser

    parser = argparse.ArgumentParser()
    add_build_engine_parser(parser.add_subparsers())
    args = parser.parse_args(["build-engine"])
    from engines.tensorrt_build import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT is available here; the tensorrt-marked test builds a real engine")
    assert args.handler(args) == 1
    err = capsys.readouterr().err
    assert "cannot build a TensorRT engine on this machine" in err and reason in err


# -- GPU and TensorRT (skipped where absent) ---------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name,precision", [("eager", "fp16"), ("eager", "fp32"), ("compile", "fp16"), ("onnxruntime", "fp32")])
def test_cuda_backend_matches_eager_fp32(name: str, precision: str, tiny, reference, cache) -> None:
    reason = available_backends("cuda")[name]
    if reason is not None:
        pytest.skip(reason)
    generator, config = tiny
    inputs, expected = reference
    options = {"cache": cache} if name == "onnxruntime" else {"precision": precision}
    backend = create_backend(name, generator, config, device="cuda", max_batch=4, **options)
    assert backend.device == "cuda" and backend.precision == precision
    out = backend.generate(*inputs)
    assert rel_l2(out, expected) <= (FP16_TOL if precision == "fp16" else FP32_TOL)
    on_gpu = backend.generate_tensors(*(torch.from_numpy(a).cuda() for a in inputs))
    assert on_gpu.is_cuda and on_gpu.dtype == torch.float32
    np.testing.assert_allclose(on_gpu.cpu().numpy(), out, atol=1e-3 if precision == "fp16" else 1e-5)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_builds_caches_and_matches(tiny, reference, cache) -> None:
    reason = available_backends("cuda" if HAS_CUDA else "cpu")["tensorrt"]
    if reason is not None:
        pytest.skip(reason)
    generator, config = tiny
    inputs, expected = reference
    backend = create_backend("tensorrt", generator, config, device="cuda", max_batch=4, cache=cache)
    assert backend.precision == "fp16" and not backend.engine_info.from_cache
    assert rel_l2(backend.generate(*inputs), expected) <= FP16_TOL
    again = create_backend("tensorrt", generator, config, device="cuda", max_batch=4, cache=cache)
    assert again.engine_info.from_cache and again.engine_info.path == backend.engine_info.path


# -- GPU pre/post-processing, checked on CPU tensors against OpenCV ------------------------------------
def _similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(np.radians(degrees)), scale * np.sin(np.radians(degrees))
    return np.array([[c, -s, tx], [s, c, ty]])


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    rng = np.random.default_rng(1)
    return cv2.GaussianBlur(rng.integers(0, 256, (90, 120, 3)).astype(np.uint8), (0, 0), 1.5)


MATRICES = np.stack([_similarity(1.3, 10, 5, -3), _similarity(0.9, -20, -10, 8), _similarity(2.0, 0, -30, -20),
                     _similarity(1.0, 35, 40, -40)])  # the last one reaches past the frame edge


def test_warp_crops_matches_cv2_warp_affine(scene) -> None:
    from sdgan_stream.backends.gpu_warp import warp_crops

    frame = torch.from_numpy(scene).permute(2, 0, 1).float()
    crops = warp_crops(frame, MATRICES, 48)
    assert crops.shape == (4, 3, 48, 48)
    for crop, matrix in zip(crops, MATRICES):
        expected = cv2.warpAffine(scene, matrix, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # cv2 rounds to uint8 and quantizes coordinates to 1/32 px: half a grey level apart at most.
        assert np.abs(crop.permute(1, 2, 0).numpy() - expected).max() <= 0.51


def test_warp_crops_antialiases_large_faces_like_align(scene) -> None:
    from sdgan_stream.align import warp_to_crop
    from sdgan_stream.backends.gpu_warp import warp_crops

    matrix = _similarity(0.3, 15, 10, 5)  # the face shrinks 3.3x into the crop
    ours = warp_crops(torch.from_numpy(scene).permute(2, 0, 1).float(), matrix[None], 24)[0].permute(1, 2, 0).numpy()
    expected = warp_to_crop(scene, matrix, 24).astype(np.float32)
    aliased = cv2.warpAffine(scene, matrix, (24, 24), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Different low-pass filters (box supersampling vs area + linear), but far closer than plain bilinear.
    assert np.abs(ours - expected).mean() < 0.75 * np.abs(aliased.astype(np.float32) - expected).mean()


def test_feather_alpha_matches_blend() -> None:
    from sdgan_stream import blend
    from sdgan_stream.backends.gpu_warp import feather_alpha

    masks = np.zeros((2, 40, 40), np.float32)
    cv2.circle(masks[0], (18, 21), 10, 1, -1)
    cv2.ellipse(masks[1], (20, 20), (14, 8), 30, 0, 360, 1, -1)
    ours = feather_alpha(torch.from_numpy(masks)[:, None], 4.5)[:, 0].numpy()
    for got, mask in zip(ours, masks):
        assert np.abs(got - blend.feather_alpha(mask, 4.5)).max() < 0.05  # cv2's distance is a 5x5-mask approximation


def test_paste_crops_matches_the_opencv_paste(scene) -> None:
    from sdgan_stream.align import warp_to_image
    from sdgan_stream.backends.gpu_warp import paste_crops

    rng = np.random.default_rng(2)
    crops = cv2.GaussianBlur(rng.integers(0, 256, (2 * 32, 32, 3)).astype(np.uint8), (0, 0), 1.0).reshape(2, 32, 32, 3)
    alpha = np.zeros((32, 32), np.float32)
    cv2.circle(alpha, (16, 16), 11, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 2.0)
    matrices = MATRICES[[0, 3]]  # inside the frame, and one cut by the edge
    expected = scene.astype(np.float32)
    for crop, matrix in zip(crops, matrices):  # blend.paste_back's compositing, colour step left out
        patch, (x1, y1, x2, y2) = warp_to_image(crop, matrix, scene.shape, interpolation=cv2.INTER_LINEAR)
        warped_alpha, _ = warp_to_image(alpha, matrix, scene.shape, interpolation=cv2.INTER_LINEAR)
        a = np.clip(warped_alpha, 0, 1)[..., None]
        expected[y1:y2, x1:x2] = expected[y1:y2, x1:x2] * (1 - a) + patch.astype(np.float32) * a
    frame = torch.from_numpy(scene).permute(2, 0, 1).float().clone()
    out = paste_crops(frame, torch.from_numpy(crops).permute(0, 3, 1, 2).float(),
                      torch.from_numpy(alpha)[None, None].expand(2, 1, 32, 32), matrices, mode="bilinear")
    assert out.data_ptr() == frame.data_ptr()  # in place
    diff = np.abs(out.permute(1, 2, 0).numpy() - expected)
    assert diff.max() < 2.0 and diff.mean() < 0.1


def test_seamless_blend_matches_blend() -> None:
    """The device twin of blend.blend_crop (cloning + skin colour shift) on real maps and regions."""
    from sdgan_stream import blend
    from sdgan_stream.backends.gpu_warp import seamless_blend, seamless_plan
    from sdgan_stream.faceprep import prepare_faces
    from sdgan_stream.landmarks import LandmarkDetector
    from sdgan_stream.samples import face_photos
    from sdgan_stream.types import Face

    faces = []
    for photo in face_photos():
        (prepared,) = prepare_faces(photo.image, [Face(box=photo.face_box, score=0.9)], landmarker=LandmarkDetector(), size=64)
        faces.append(prepared)
    rng = np.random.default_rng(4)
    generated = [np.clip(p.crop[:, ::-1].astype(np.int16) + rng.integers(-40, 40, 3), 0, 255).astype(np.uint8) for p in faces]
    composite = [np.where(p.region_mask[..., None] > 0.5, g, p.crop) for p, g in zip(faces, generated)]
    as_tensor = lambda images: torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()  # noqa: E731
    ours = seamless_blend(as_tensor(composite), as_tensor([p.crop for p in faces]), seamless_plan(faces))
    for got, p, g in zip(ours.permute(0, 2, 3, 1).numpy(), faces, composite):
        expected = blend.blend_crop(g, p).astype(np.float32)
        # float32 torch Lab and cloning against cv2's Lab and float64 cloning, then 8-bit rounding
        assert np.abs(got - expected).mean() < 0.5 and np.abs(got - expected).max() < 4.0


class _PaletteGenerator:
    """A stand-in backend whose output depends only on the semantic map, so both render paths get the same face."""

    name, device, torch_device, precision, max_batch = "palette", "cpu", "cpu", "fp32", 16
    palette = torch.tensor(np.random.default_rng(5).uniform(-0.2, 0.6, (3, 11)), dtype=torch.float32)

    def generate_tensors(self, masked, semantic, identity):  # noqa: ANN001
        return torch.einsum("ck,bkhw->bchw", self.palette, semantic)

    def generate(self, masked, semantic, identity):  # noqa: ANN001
        return self.generate_tensors(*(torch.from_numpy(a) for a in (masked, semantic, identity))).numpy()


def test_device_frame_renderer_matches_the_cpu_render_path() -> None:
    from sdgan_stream.backends.gpu_warp import DeviceFrameRenderer
    from sdgan_stream.blend import paste_back
    from sdgan_stream.faceprep import FaceFallback, masked_input, prepare_faces
    from sdgan_stream.landmarks import LandmarkDetector
    from sdgan_stream.models.identity import identity_codes
    from sdgan_stream.render import _from_network, _to_network
    from sdgan_stream.samples import face_photos
    from sdgan_stream.semantic import one_hot
    from sdgan_stream.types import Face

    image = np.full((400, 700, 3), 90, np.uint8)
    faces, x = [], 10
    for photo in face_photos():  # real faces, so the landmarks, maps and regions are real
        scale = min(1.0, 380 / photo.image.shape[0])
        placed = cv2.resize(photo.image, None, fx=scale, fy=scale)
        image[10 : 10 + placed.shape[0], x : x + placed.shape[1]] = placed
        box = photo.face_box * scale + np.array([x, 10, x, 10], np.float32)
        faces.append(Face(box=box.astype(np.float32), score=0.9, identity_seed=len(faces)))
        x += placed.shape[1] + 10
    prepared = [p for p in prepare_faces(image, faces, landmarker=LandmarkDetector(), size=64) if not isinstance(p, FaceFallback)]
    assert len(prepared) == 2
    identity = identity_codes([p.face.identity_seed for p in prepared], 8)
    backend = _PaletteGenerator()

    expected = image.copy()  # SdganRenderer's numpy path
    out = _from_network(backend.generate(_to_network([masked_input(p) for p in prepared]),
                                         np.stack([one_hot(p.labels, 11) for p in prepared]), identity))
    crops = np.where(np.stack([p.region_mask for p in prepared])[..., None] > 0.5, out, np.stack([p.crop for p in prepared]))
    for p, crop in zip(prepared, crops):
        paste_back(expected, crop, p)

    got = image.copy()
    seen = []
    composited = DeviceFrameRenderer(backend=backend, label_nc=11).render(got, prepared, identity,
                                                                         adjust=lambda t: seen.append(t.shape) or t)
    assert seen == [(2, 3, 64, 64)]
    assert composited.shape == crops.shape
    changed = np.abs(expected.astype(int) - image.astype(int)).sum(2) > 0
    diff = np.abs(got.astype(int) - expected.astype(int))[changed]
    # Same geometry and blend; the filters differ (antialiasing, bicubic, float vs 8-bit Lab) at sharp edges.
    assert diff.mean() < 2.5 and np.percentile(diff, 99) < 25
    # where the host's 8-bit crop rounds back to the frame exactly, the device's float cloning may be a level or two off
    assert np.array_equal(got[~changed], image[~changed]) or np.abs(got[~changed].astype(int) - image[~changed]).max() <= 3
