"""SDGAN networks, identity codes and the weights bundle (tiny widths, 32 px: fast on CPU)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from sdgan_stream.errors import WeightsError
from sdgan_stream.models import (
    DiscriminatorConfig,
    GeneratorConfig,
    HybridDiscriminator,
    IdentityEncoder,
    build_generator,
    identity_code,
    identity_codes,
    load_generator_bundle,
    save_generator_bundle,
    starter_weights_path,
)
from sdgan_stream.models.discriminator import _gaussian_kernel, mscn
from sdgan_stream.semantic import mean_face_landmarks, one_hot, rasterize_semantic_map

TINY = GeneratorConfig(image_size=32, identity_dim=16, ngf=4, spade_hidden=8, style_dim=16)


def _inputs(config: GeneratorConfig, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    size = config.image_size
    labels = rasterize_semantic_map(mean_face_landmarks(size), size)
    semantic = torch.from_numpy(one_hot(labels))[None].repeat(batch, 1, 1, 1)
    region = torch.from_numpy(labels > 0).float()[None, None]
    image = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    masked = image * (1 - region)
    codes = torch.from_numpy(identity_codes(list(range(batch)), config.identity_dim))
    return masked, semantic, codes


@pytest.fixture(scope="module")
def tiny_generator() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_generator(TINY).eval()


def test_generator_shape_range_and_determinism(tiny_generator):
    masked, semantic, codes = _inputs(TINY)
    with torch.no_grad():
        a = tiny_generator(masked, semantic, codes)
        b = tiny_generator(masked, semantic, codes)
    assert a.shape == (2, 3, 32, 32)
    assert float(a.abs().max()) <= 1.0
    assert torch.equal(a, b), "same code and map must give the same face"


def test_identity_code_changes_the_face(tiny_generator):
    masked, semantic, codes = _inputs(TINY, batch=1)
    other = torch.from_numpy(identity_code(12345, TINY.identity_dim))[None]
    # Modulation starts as identity at init; give the style layers some weight as training would.
    g = build_generator(TINY).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for module in g.modules():
            if hasattr(module, "style") and isinstance(module.style, torch.nn.Linear):
                module.style.weight.normal_(0, 0.3)
        a = g(masked, semantic, codes)
        b = g(masked, semantic, other)
    assert float((a - b).abs().mean()) > 1e-3


def test_input_does_not_change(tiny_generator):
    masked, semantic, codes = _inputs(TINY)
    copies = [t.clone() for t in (masked, semantic, codes)]
    with torch.no_grad():
        tiny_generator(masked, semantic, codes)
    assert all(torch.equal(a, b) for a, b in zip(copies, (masked, semantic, codes)))


def test_black_blank_is_treated_like_grey_blank(tiny_generator):
    masked, semantic, codes = _inputs(TINY)
    hole = masked.abs().sum(1, keepdim=True) == 0
    black = torch.where(hole, torch.full_like(masked, -1.0), masked)
    with torch.no_grad():
        assert torch.allclose(tiny_generator(masked, semantic, codes), tiny_generator(black, semantic, codes))


def test_config_validation_and_roundtrip():
    with pytest.raises(ValueError):
        GeneratorConfig(image_size=100)
    assert GeneratorConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError):
        GeneratorConfig.from_dict({**TINY.to_dict(), "bogus": 1})
    assert GeneratorConfig(image_size=256).image_size == 256


def test_identity_code_properties():
    a = identity_code(7, 64)
    assert a.dtype == np.float32 and a.shape == (64,)
    assert np.isclose(np.linalg.norm(a), 1.0, atol=1e-5)
    assert np.array_equal(a, identity_code(7, 64))
    assert not np.allclose(a, identity_code(8, 64))
    assert np.isfinite(identity_code(-3, 8)).all() and np.isfinite(identity_code(2**70, 8)).all()
    with pytest.raises(ValueError):
        identity_code(1, 0)
    assert identity_codes([], 4).shape == (0, 4)


def test_bundle_roundtrip(tmp_path, tiny_generator):
    masked, semantic, codes = _inputs(TINY)
    out = save_generator_bundle(tmp_path / "bundle", tiny_generator, TINY, {"steps": 3})
    assert (out / "generator.safetensors").is_file() and (out / "config.json").is_file()
    for path in (out, out / "generator.safetensors"):
        g, cfg, meta = load_generator_bundle(path)
        assert cfg == TINY and meta["steps"] == 3
        with torch.no_grad():
            diff = (g(masked, semantic, codes) - tiny_generator(masked, semantic, codes)).abs().max()
        assert float(diff) < 2e-2  # float16 storage
    # The file alone carries its configuration.
    (out / "config.json").unlink()
    assert load_generator_bundle(out / "generator.safetensors")[1] == TINY


def test_bundle_errors(tmp_path, tiny_generator):
    with pytest.raises(WeightsError, match="not found"):
        load_generator_bundle(tmp_path / "missing")
    out = save_generator_bundle(tmp_path / "b", tiny_generator, TINY, {})
    weights = out / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(WeightsError):
        load_generator_bundle(out)
    out2 = save_generator_bundle(tmp_path / "c", tiny_generator, TINY, {})
    doc = json.loads((out2 / "config.json").read_text())
    doc["generator"]["ngf"] = 8
    (out2 / "config.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="do not match|shape"):
        load_generator_bundle(out2)
    (out2 / "config.json").write_text("{not json")
    with pytest.raises(WeightsError):
        load_generator_bundle(out2)


def test_starter_weights_load_and_run():
    g, cfg, meta = load_generator_bundle(None)
    assert starter_weights_path().is_dir()
    assert cfg.image_size == 128 and cfg.label_nc == 11
    masked, semantic, codes = _inputs(cfg, batch=1)
    with torch.no_grad():
        out = g(masked, semantic, codes)
    assert out.shape == (1, 3, 128, 128) and torch.isfinite(out).all()


def test_onnx_export_parity_dynamic_batch(tiny_generator):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    masked, semantic, codes = _inputs(TINY, batch=1)
    buffer = io.BytesIO()
    names = ["masked", "semantic", "identity"]
    torch.onnx.export(
        tiny_generator, (masked, semantic, codes), buffer, opset_version=17, dynamo=False,
        input_names=names, output_names=["face"], dynamic_axes={n: {0: "batch"} for n in names + ["face"]},
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    masked3, semantic3, codes3 = _inputs(TINY, batch=3, seed=2)
    (out,) = session.run(None, {"masked": masked3.numpy(), "semantic": semantic3.numpy(), "identity": codes3.numpy()})
    with torch.no_grad():
        ref = tiny_generator(masked3, semantic3, codes3).numpy()
    assert out.shape == (3, 3, 32, 32)
    assert np.abs(out - ref).max() < 1e-4


def test_discriminator_and_quality_branch():
    d = HybridDiscriminator(DiscriminatorConfig(ndf=4, quality_width=4))
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    semantic = torch.zeros(2, 11, 32, 32)
    patches, quality = d(image, semantic)
    assert len(patches) == 2 and quality.shape == (2, 1)
    assert all(scale[-1].shape[:2] == (2, 1) for scale in patches)
    flat = mscn(torch.full((1, 1, 16, 16), 0.5), _gaussian_kernel())
    assert float(flat.abs().max()) < 1e-3  # a flat image has no contrast structure


def test_identity_encoder_unit_embeddings():
    e = IdentityEncoder(input_size=32, width=4, embed_dim=8)
    out = e(torch.rand(3, 3, 32, 32) * 2 - 1, torch.ones(3, 1, 32, 32))
    assert out.shape == (3, 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_reshape_landmarks_is_deterministic_and_small():
    from sdgan_stream.models.identity import reshape_landmarks

    points = mean_face_landmarks(128)
    ipd = np.hypot(*(points[42:48].mean(0) - points[36:42].mean(0)))
    code = identity_code(5, 64)
    a = reshape_landmarks(points, code)
    assert np.array_equal(a, reshape_landmarks(points, code))
    assert np.array_equal(reshape_landmarks(points, code, strength=0.0), points)
    moved = np.linalg.norm(a - points, axis=1).mean() / ipd
    assert 0.005 < moved < 0.12
    assert not np.allclose(a, reshape_landmarks(points, identity_code(6, 64)))
