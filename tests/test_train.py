"""Training module: augmentation, sampling, losses, trainer (tiny synthetic faces at 32 px, CPU)."""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest
import torch

from sdgan_stream.errors import InputError, WeightsError
from sdgan_stream.models import GeneratorConfig, identity_code, load_generator_bundle
from sdgan_stream.semantic import class_id, colorize, mean_face_landmarks, rasterize_semantic_map
from train.dataset import EpochOrder, IdentikitSampler, IdentitySampler, batch_to_tensors
from train.identikit import FaceSource, compose_identikit, recipe_dims, recipe_from_code
from train.losses import contrastive_loss, lsgan_loss, masked_l1
from train.shards import FaceSet, ShardWriter, load_faceset
from train.trainer import TrainConfig, Trainer, export_run
from train.warp import mirror_face, mirror_labels, piecewise_affine_maps, random_deformation, warp_image

SIZE = 32
TINY_G = GeneratorConfig(image_size=SIZE, identity_dim=16, ngf=4, spade_hidden=8, style_dim=16)


def _tiny_faceset(identities: int = 3, per_identity: int = 1) -> FaceSet:
    rng = np.random.default_rng(0)
    base = mean_face_landmarks(SIZE)
    crops, labels, landmarks, ids = [], [], [], []
    for i in range(identities):
        for _ in range(per_identity):
            lm = base + rng.normal(0, 0.3, base.shape)
            lab = rasterize_semantic_map(lm, SIZE)
            tint = rng.uniform(0.5, 1.0, 3)
            image = (colorize(lab) * 0.6 + 80 * tint + rng.normal(0, 8, (SIZE, SIZE, 3))).clip(0, 255).astype(np.uint8)
            crops.append(image)
            labels.append(lab)
            landmarks.append(lm)
            ids.append(i)
    return FaceSet(
        crops=np.stack(crops), labels=np.stack(labels), landmarks=np.stack(landmarks), identity=np.asarray(ids),
        identities=tuple(f"p{i}" for i in range(identities)), size=SIZE,
    )


def _config(**overrides) -> TrainConfig:
    base = dict(
        steps=4, batch=2, ndf=4, encoder_width=4, encoder_dim=8, log_every=1, sample_every=0, checkpoint_every=0,
        generator=TINY_G,
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- geometry and identikit


def test_mirror_twice_is_identity():
    faces = _tiny_faceset(1)
    image, lm = faces.crops[0], faces.landmarks[0]
    img2, lm2 = mirror_face(*mirror_face(image, lm))
    assert np.array_equal(img2, image) and np.allclose(lm2, lm)
    _, mirrored = mirror_face(image, lm)
    assert mirrored[36, 0] < mirrored[45, 0]  # image-left eye stays on the left after re-indexing


def test_piecewise_affine_identity_and_deformation():
    faces = _tiny_faceset(1)
    lm = faces.landmarks[0]
    mx, my = piecewise_affine_maps(lm, lm, SIZE)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    assert np.allclose(mx, xs, atol=1e-3) and np.allclose(my, ys, atol=1e-3)
    rng = np.random.default_rng(0)
    new = random_deformation(lm, rng, size=SIZE)
    assert new.shape == (68, 2) and np.isfinite(new).all()
    assert warp_image(faces.crops[0], lm, new).shape == (SIZE, SIZE, 3)


def test_recipe_is_a_function_of_the_code():
    code = identity_code(3, 32)
    assert recipe_from_code(code, 4) == recipe_from_code(code.copy(), 4)
    skins = {recipe_from_code(identity_code(s, 32), 4).skin for s in range(60)}
    assert skins == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        recipe_from_code(np.ones(recipe_dims() - 1), 2)


def test_identikit_composite_changes_only_the_face():
    faces = _tiny_faceset(2)
    sources = [FaceSource(f"p{i}", faces.crops[i], faces.landmarks[i], i) for i in range(2)]
    lm = faces.landmarks[0]
    recipe = recipe_from_code(identity_code(5, 16), 2)
    out = compose_identikit(sources, recipe, lm, faces.crops[0])
    labels = rasterize_semantic_map(lm, SIZE)
    outside = labels == 0
    far = np.ones_like(outside)
    far[4:-4, 4:-4] = outside[4:-4, 4:-4]
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - faces.crops[0].astype(int))[outside & far].mean() < 3


# ----------------------------------------------------------------------------- sampling


def test_samplers_are_deterministic_and_well_formed():
    faces = _tiny_faceset(3, per_identity=2)
    for sampler in (
        IdentikitSampler(faces, code_dim=16, seed=1),
        IdentitySampler(faces, code_dim=16, seed=1),
    ):
        a, b = sampler.batch(5, 3), sampler.batch(5, 3)
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert not np.array_equal(a["target"], sampler.batch(6, 3)["target"])
        t = batch_to_tensors(a)
        assert t["masked"].shape == (3, 3, SIZE, SIZE) and t["semantic"].shape == (3, 11, SIZE, SIZE)
        hole = t["region"].bool().expand_as(t["masked"])
        assert float(t["masked"][hole].abs().max()) == 0.0  # blanked region is exactly 0
        assert torch.allclose(t["code"].norm(dim=1), torch.ones(3), atol=1e-5)


def test_training_blanks_the_region_the_renderer_replaces():
    """The generator is trained on the region inference asks it to paint: the map's face joined with the
    safety additions (here a detector-like box's ellipse), never the map's face alone."""
    from sdgan_stream.faceprep import region_mask_from_labels
    from train.dataset import detector_like_box, training_region

    points = mean_face_landmarks(128)
    labels = rasterize_semantic_map(points, 128)
    face_only = region_mask_from_labels(labels, points) > 0
    grew = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        box = detector_like_box(points, rng)
        eyes, mouth = (points[36:42].mean(0), points[42:48].mean(0)), points[48:68].mean(0)
        assert box[0] < eyes[0][0] and box[2] > eyes[1][0] and box[1] < points[17:27, 1].min() and box[3] > mouth[1]
        region = training_region(labels, points, np.random.default_rng(seed)) > 0
        assert np.all(region[face_only])  # the face always
        assert not region[:3].any() and not region[:, :3].any()  # the crop's edge stays context
        grew.append(int(region.sum() - face_only.sum()))
    assert sum(g > 100 for g in grew) >= 10 and len(set(grew)) > 10  # mostly a band past the face, of varying shape


def test_the_renderer_region_is_the_one_definition():
    skimage_data = pytest.importorskip("skimage.data")
    from sdgan_stream.faceprep import _largest_yaw, box_ellipse_mask, prepare_faces, replaced_region
    from sdgan_stream.landmarks import LandmarkDetector
    from sdgan_stream.types import Face

    face = Face(box=np.float32([181.5, 58.2, 269.9, 177.8]), score=0.9,
                landmarks=np.float32([[203.2, 101.7], [247.0, 104.5], [223.3, 125.1], [203.4, 142.3], [241.3, 144.4]]))
    (prepared,) = prepare_faces(skimage_data.astronaut(), [face], landmarker=LandmarkDetector())
    again = replaced_region(prepared.labels, prepared.landmarks68_crop.astype(np.float64),
                            yaw_deg=_largest_yaw(prepared.landmarks68.astype(np.float64), face),
                            box_mask=box_ellipse_mask(face.box, prepared.matrix, prepared.size))
    np.testing.assert_array_equal(again, prepared.region_mask)


def _two_coloured_people() -> FaceSet:
    """Two 'people' whose whole crop is one flat colour: reddish and bluish."""
    lm = mean_face_landmarks(SIZE)
    labels = rasterize_semantic_map(lm, SIZE)
    crops = np.stack([np.full((SIZE, SIZE, 3), colour, np.uint8) for colour in ((200, 70, 60), (60, 70, 200))])
    return FaceSet(crops=crops, labels=np.stack([labels, labels]), landmarks=np.stack([lm, lm]), identity=np.array([0, 1]),
                   identities=("red", "blue"), size=SIZE)


@pytest.mark.parametrize("donors", ["others", "any"])
def test_identikit_faces_take_no_region_from_the_source_person(donors):
    sampler = IdentikitSampler(_two_coloured_people(), code_dim=16, seed=0, donors=donors)
    batch = sampler.batch(0, 16)
    same_person = []
    for target, region in zip(batch["target"].astype(float), batch["region"]):
        inner = cv2.erode((region > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        outside = cv2.dilate((region > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
        redness = lambda pixels: float((pixels[:, 0] - pixels[:, 2]).mean())  # noqa: E731
        same_person.append((redness(target[inner]) > 0) == (redness(target[outside]) > 0))
    if donors == "others":
        assert not any(same_person)  # the face is always the other person's, whatever the code
    else:
        assert any(same_person) and not all(same_person)


def test_shards_roundtrip(tmp_path):
    faces = _tiny_faceset(2)
    writer = ShardWriter(tmp_path, size=SIZE, shard_size=1)
    for i in range(len(faces)):
        writer.add(faces.crops[i], faces.labels[i], faces.landmarks[i], faces.identities[faces.identity[i]])
    manifest = writer.close()
    assert manifest["count"] == 2 and len(manifest["shards"]) == 2
    loaded = load_faceset(tmp_path)
    assert np.array_equal(loaded.crops, faces.crops) and loaded.identities == faces.identities


# ----------------------------------------------------------------------------- losses


def test_losses_basic_values():
    x = torch.zeros(2, 3, 4, 4)
    assert float(masked_l1(x, x + 1, torch.ones(2, 1, 4, 4))) == pytest.approx(1.0)
    assert float(masked_l1(x, x + 1, torch.zeros(2, 1, 4, 4))) == 0.0
    assert float(lsgan_loss(torch.ones(3, 1), True)) == 0.0
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    assert float(contrastive_loss(a, a, torch.ones(4), 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(contrastive_loss(a, a, torch.zeros(4), 1.0)) == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------- trainer


def test_a_few_steps_lower_the_loss(tmp_path):
    faces = _tiny_faceset(3)
    trainer = Trainer(data_dir=tmp_path, run_dir=tmp_path / "run", config=_config(batch=4, lr_g=1e-3), faces=faces)
    batch = trainer.batch(0)
    first = trainer.train_step(batch)
    for _ in range(12):
        last = trainer.train_step(batch)
    assert last["g_l1_face"] + last["g_l1_context"] < first["g_l1_face"] + first["g_l1_context"]


def test_overfit_one_batch_reaches_low_l1(tmp_path):
    faces = _tiny_faceset(2)
    config = _config(batch=2, lr_g=2e-3, lambda_gan=0.0, lambda_quality=0.0, lambda_fm=0.0, lambda_identity=0.0,
                     generator=GeneratorConfig(image_size=SIZE, identity_dim=16, ngf=8, spade_hidden=8, style_dim=16))
    trainer = Trainer(data_dir=tmp_path, run_dir=tmp_path / "run", config=config, faces=faces)
    batch = trainer.batch(0)
    for _ in range(150):
        losses = trainer.train_step(batch)
    assert losses["g_l1_face"] < 0.08, losses


def test_save_resume_is_exact(tmp_path):
    faces = _tiny_faceset(3)
    straight = Trainer(data_dir=tmp_path, run_dir=tmp_path / "a", config=_config(steps=4), faces=faces)
    straight.train()
    first = Trainer(data_dir=tmp_path, run_dir=tmp_path / "b", config=_config(steps=4), faces=faces)
    first.train(steps=2)
    first.save_checkpoint()
    resumed = Trainer(data_dir=tmp_path, run_dir=tmp_path / "b", config=_config(steps=4), faces=faces)
    assert resumed.load_checkpoint() == 2
    resumed.train()
    for (name, a), (_, b) in zip(straight.generator.state_dict().items(), resumed.generator.state_dict().items()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.discriminator.parameters(), resumed.discriminator.parameters()):
        assert torch.equal(a, b)


def test_identikit_with_one_person_borrows_from_that_person():
    faces = _two_coloured_people()
    alone = FaceSet(crops=faces.crops[:1], labels=faces.labels[:1], landmarks=faces.landmarks[:1], identity=faces.identity[:1],
                    identities=faces.identities, size=SIZE)  # a second name, but no face of it
    batch = IdentikitSampler(alone, code_dim=16, seed=0, donors="others").batch(0, 2)
    assert batch["target"].shape == (2, SIZE, SIZE, 3)


def test_configs_written_before_donors_existed_load_as_any():
    stored = _config().to_dict()
    del stored["donors"]
    assert TrainConfig.from_dict(stored).donors == "any" and _config().donors == "others"


def test_a_run_can_start_from_another_runs_networks(tmp_path):
    faces = _tiny_faceset(2)
    base = Trainer(data_dir=tmp_path, run_dir=tmp_path / "base", config=_config(steps=2), faces=faces)
    base.train()
    base.save_checkpoint()
    tuned = Trainer(data_dir=tmp_path, run_dir=tmp_path / "tuned", config=_config(steps=2, donors="any"), faces=faces)
    tuned.init_from(tmp_path / "base")
    assert tuned.step == 0 and not tuned.opt_g.state  # networks only: the optimizers start fresh
    for module in ("generator", "discriminator", "encoder"):
        for a, b in zip(getattr(base, module).parameters(), getattr(tuned, module).parameters()):
            assert torch.equal(a, b)
    with pytest.raises(WeightsError, match="cannot start from"):
        tuned.init_from(tmp_path / "nowhere")


def test_batches_give_a_teacher_the_map_face_alone_blanked():
    faces = _tiny_faceset(3)
    for sampler in (IdentikitSampler(faces, code_dim=16, seed=0), IdentitySampler(faces, code_dim=16, seed=0)):
        t = batch_to_tensors(sampler.batch(0, 4))
        face, region = t["map_region"] > 0, t["region"] > 0
        assert face.any() and torch.all(region[face])  # the student's region holds the map's face ...
        band = (region & ~face).expand_as(t["target"])
        assert band.any()  # ... and a band past it, which the teacher sees as the picture
        assert torch.equal(t["teacher_masked"][band], t["target"][band]) and not t["masked"][band].any()
        assert not t["teacher_masked"][face.expand_as(t["target"])].any()


def test_a_teacher_keeps_the_faces_it_made_and_stays_frozen(tmp_path):
    """Fine-tuning with a teacher: its L1 inside the map's face is logged and pulls the student's faces toward
    the teacher's (farther than the same run without it), the teacher itself never changes, and a bad
    teacher path fails before any step."""
    faces = _tiny_faceset(3)
    base = Trainer(data_dir=tmp_path, run_dir=tmp_path / "base", config=_config(steps=2), faces=faces)
    base.train()
    base.save_checkpoint()
    common = dict(steps=12, batch=4, lr_g=2e-3, lambda_l1=0.0, lambda_vgg=0.0, lambda_fm=0.0, lambda_identity=0.0)
    runs = {}
    for name, teacher in (("taught", str(tmp_path / "base")), ("alone", None)):
        trainer = Trainer(data_dir=tmp_path, run_dir=tmp_path / name, config=_config(**common, teacher=teacher, lambda_teacher=50.0),
                          faces=faces)
        trainer.init_from(tmp_path / "base")
        frozen = {k: v.clone() for k, v in trainer.teacher.state_dict().items()} if trainer.teacher is not None else {}
        losses = [trainer.train_step(trainer.batch(step)) for step in range(12)]
        batch = trainer.batch(100)
        with torch.no_grad():
            taught = base.generator(batch["teacher_masked"], batch["semantic"], batch["code"])
            made = trainer.generator(batch["masked"], batch["semantic"], batch["code"])
        runs[name] = float(((made - taught).abs() * batch["map_region"]).sum() / batch["map_region"].sum() / 3)
        if teacher:
            assert losses[0]["g_teacher"] > 0
            assert all(torch.equal(v, trainer.teacher.state_dict()[k]) for k, v in frozen.items())
        else:
            assert trainer.teacher is None and all(step["g_teacher"] == 0 for step in losses)
    assert runs["taught"] < runs["alone"], runs
    with pytest.raises(WeightsError, match="use as the teacher"):
        Trainer(data_dir=tmp_path, run_dir=tmp_path / "x", config=_config(teacher=str(tmp_path / "nowhere")), faces=faces)


def test_export_load_parity_and_samples(tmp_path):
    faces = _tiny_faceset(2)
    trainer = Trainer(data_dir=tmp_path, run_dir=tmp_path / "run",
                      config=_config(steps=2, sample_every=2, checkpoint_every=2), faces=faces)
    trainer.train()
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3
    assert (tmp_path / "run" / "loss_curve.png").is_file()
    bundle = trainer.export(tmp_path / "bundle", {"description": "test"})
    generator, config, meta = load_generator_bundle(bundle)
    assert config == TINY_G and meta["steps"] == 2
    b = trainer.batch(0)
    assert trainer.export_generator is trainer.generator_ema  # the EMA copy is what ships
    with torch.no_grad():
        ref = trainer.export_generator(b["masked"], b["semantic"], b["code"])
        out = generator(b["masked"], b["semantic"], b["code"])
        same = generator(b["masked"], b["semantic"], b["code"])
    assert float((ref - out).abs().max()) < 2e-2
    assert torch.equal(out, same)
    again = export_run(tmp_path / "run", tmp_path / "bundle2")
    generator2, config2, meta2 = load_generator_bundle(again)
    assert config2 == TINY_G and meta2["ema_decay"] == trainer.config.ema_decay
    assert all(torch.equal(a, c) for a, c in zip(generator.state_dict().values(), generator2.state_dict().values()))


def test_cli_parsers():
    from sdgan_stream.training_cli import add_prepare_data_parser, add_train_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_prepare_data_parser(sub)
    add_train_parser(sub)
    args = parser.parse_args(["prepare-data", "imgs", "out"])
    assert (args.images_dir, args.out_dir) == ("imgs", "out") and callable(args.handler)
    args = parser.parse_args(["prepare-data", "--sample-photos", "out"])
    assert args.images_dir is None and args.out_dir == "out" and args.sample_photos
    args = parser.parse_args(["train", "--data", "d", "--out", "r", "--steps", "5", "--batch", "2", "--amp", "--resume"])
    assert (args.steps, args.batch, args.amp, args.resume) == (5, 2, True, True)
    assert (args.precision, args.ema_decay, args.accum, args.workers, args.maps) == (None, 0.999, 1, 0, "landmarks")
    args = parser.parse_args(["prepare-data", "imgs", "out", "--holdout", "celeba-test", "--layout", "celebamask-hq"])
    assert (args.holdout, args.layout, args.workers) == ("celeba-test", "celebamask-hq", None)


def test_train_cli_end_to_end(tmp_path):
    from sdgan_stream.training_cli import main

    faces = _tiny_faceset(2)
    writer = ShardWriter(tmp_path / "data", size=SIZE)
    for i in range(len(faces)):
        writer.add(faces.crops[i], faces.labels[i], faces.landmarks[i], faces.identities[faces.identity[i]])
    writer.close()
    common = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--batch", "2", "--ngf", "4",
              "--spade-hidden", "8", "--identity-dim", "16", "--ndf", "4", "--encoder-width", "4", "--no-progress",
              "--threads", "1", "--sample-every", "0"]
    assert main(common + ["--steps", "2"]) == 0
    assert main(common + ["--steps", "2", "--resume", "--init-from", str(tmp_path / "run")]) == 1  # one or the other
    assert main(common + ["--steps", "2"]) == 1  # a fresh run must not overwrite (and prune) the existing one
    tuned = [a if a != str(tmp_path / "run") else str(tmp_path / "tuned") for a in common]
    assert main(tuned + ["--steps", "1", "--init-from", str(tmp_path / "run"), "--donors", "any"]) == 0
    stored = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert stored["train"]["donors"] == "any" and stored["init_from"].endswith("step_0000002")
    assert main(common + ["--steps", "3", "--resume", "--export", str(tmp_path / "bundle")]) == 0
    _, config, meta = load_generator_bundle(tmp_path / "bundle")
    assert meta["steps"] == 3 and config.ngf == 4


# ----------------------------------------------------------------------------- scale: sampling shares, epochs, maps


def test_a_share_of_a_batch_is_that_part_of_the_whole_batch():
    faces = _tiny_faceset(3, per_identity=2)
    for sampler in (IdentikitSampler(faces, code_dim=16, seed=1), IdentitySampler(faces, code_dim=16, seed=1)):
        whole = sampler.batch(7, 4)
        parts = [sampler.batch(7, 4, start=s, count=2) for s in (0, 2)]
        for key in whole:
            assert np.array_equal(np.concatenate([p[key] for p in parts]), whole[key]), key
        with pytest.raises(ValueError):
            sampler.batch(7, 4, start=3, count=2)


def test_identity_sampling_sees_every_face_once_per_epoch():
    faces = _tiny_faceset(3, per_identity=2)  # 6 faces
    order = EpochOrder(len(faces), seed=4)
    first, second = [order(g) for g in range(6)], [order(g) for g in range(6, 12)]
    assert sorted(first) == sorted(second) == list(range(6)) and first != second
    sampler = IdentitySampler(faces, code_dim=16, seed=4)
    sources = [sampler.order(step * 3 + i) for step in range(2) for i in range(3)]  # two batches of 3 = one epoch
    assert sorted(sources) == list(range(6))


def test_parsing_maps_are_warped_with_the_crop_and_mirrored_with_sides_swapped():
    faces = _tiny_faceset(3, per_identity=2)
    parsing = faces.labels.copy()
    parsing[:, :4] = class_id("hair")  # a hand-labelled class the landmark maps never draw
    with_parsing = FaceSet(crops=faces.crops, labels=faces.labels, landmarks=faces.landmarks, identity=faces.identity,
                           identities=faces.identities, size=SIZE, parsing=parsing)
    with pytest.raises(InputError, match="hand-labelled"):
        IdentitySampler(faces, code_dim=16, maps="parsing")
    hair = [IdentitySampler(with_parsing, code_dim=16, seed=2, maps=m).batch(0, 8)["labels"] == class_id("hair")
            for m in ("landmarks", "parsing", "mixed")]
    assert not hair[0].any() and all(h[:2].any() for h in hair[1]) and 0 < sum(h.any() for h in hair[2]) < 8
    labels = parsing[0]
    mirrored = mirror_labels(labels)
    assert np.array_equal(mirror_labels(mirrored), labels)
    assert np.array_equal(mirrored == class_id("l_eye"), (labels == class_id("r_eye"))[:, ::-1])


def test_data_loader_workers_give_the_same_batches(tmp_path):
    faces = _tiny_faceset(3)
    trainer = Trainer(data_dir=tmp_path, run_dir=tmp_path / "run", config=_config(steps=3), faces=faces)
    inline = [b["target"] for b in trainer._batches(range(0, 3), workers=0)]
    loaded = [b["target"] for b in trainer._batches(range(0, 3), workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(inline, loaded)) and len(loaded) == 3


def test_init_from_a_bundle_takes_its_generator_shape(tmp_path):
    from sdgan_stream.training_cli import main

    faces = _tiny_faceset(2)
    writer = ShardWriter(tmp_path / "data", size=SIZE)
    for i in range(len(faces)):
        writer.add(faces.crops[i], faces.labels[i], faces.landmarks[i], faces.identities[faces.identity[i]])
    writer.close()
    base = Trainer(data_dir=tmp_path, run_dir=tmp_path / "base", config=_config(steps=1), faces=faces)
    bundle = base.export(tmp_path / "bundle")
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "tuned"), "--steps", "1", "--batch", "2",
            "--ndf", "4", "--encoder-width", "4", "--no-progress", "--threads", "1", "--sample-every", "0",
            "--init-from", str(bundle), "--vgg-weights", str(tmp_path / "missing.pth")]
    assert main(args) == 1  # --vgg-weights is --vgg19-weights: a missing file is a clear error
    assert main(args[:-2] + ["--export", str(tmp_path / "tuned_bundle")]) == 0  # no --ngf etc.: the bundle's shape
    _, config, meta = load_generator_bundle(tmp_path / "tuned_bundle")
    assert config == TINY_G and meta["init_from"] == str(bundle)
