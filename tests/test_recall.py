"""Recall at the default settings, judged on exact ground truth (real in-package faces pasted onto frames).

The benchmark (``benchmarks/bench_recall.py``) measures recall per condition on the full allow-list;
these tests check the measuring itself and that the defaults hide the faces the issue found left
untouched: small (16-32 px) faces on a 1080p frame, a face cut at its middle by the bottom border, and
faces turned a quarter turn either way.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdgan_stream import recall
from sdgan_stream.anonymize import WHOLE_FRAME_BLOCKS, cover_whole_frame
from sdgan_stream.detect import CenterFaceDetector


@pytest.fixture(scope="module")
def faces() -> list[recall.LibraryFace]:
    return recall.face_library()  # the two in-package photos


def test_the_library_holds_the_in_package_faces_with_their_eyes_inside_the_box(faces: list[recall.LibraryFace]) -> None:
    assert [f.name.split("#")[0] for f in faces] == ["astronaut", "grace_hopper"]
    for face in faces:
        x1, y1, x2, y2 = face.box
        eyes = face.landmarks[:2]
        assert ((eyes[:, 0] > x1) & (eyes[:, 0] < x2) & (eyes[:, 1] > y1) & (eyes[:, 1] < (y1 + y2) / 2)).all()
        assert face.yaw < 0.2  # both look at the camera


def test_truth_follows_the_pasted_face_through_a_turn(faces: list[recall.LibraryFace]) -> None:
    scene = recall.Scene("t", (400, 300), [recall.Placement(1, 120.0, 90.0, (200.0, 150.0))])
    image, [truth] = scene.render(faces, 0)
    x1, y1, x2, y2 = truth.region
    ys, xs = np.nonzero(truth.face)
    # a quarter turn counter-clockwise: the face is as wide as it was tall, centred where it was placed
    face = faces[1]
    height = 120.0 * (face.box[3] - face.box[1]) / (face.box[2] - face.box[0])
    assert xs.max() - xs.min() + 1 == pytest.approx(height, abs=3)
    assert ys.max() - ys.min() + 1 == pytest.approx(120.0, abs=3)
    assert (xs.mean() + x1, ys.mean() + y1) == pytest.approx((200, 150), abs=2)
    # the eyes now sit on the left half of the face, one above the other
    for eye in truth.eyes:
        ey, ex = np.nonzero(eye)
        assert ex.mean() + x1 < 200
    assert abs(np.nonzero(truth.eyes[0])[0].mean() - np.nonzero(truth.eyes[1])[0].mean()) > 20
    assert image[y1:y2, x1:x2][truth.face].std() > 10  # real face pixels, not background


def test_a_head_pasted_in_front_hides_the_truth_behind_it(faces: list[recall.LibraryFace]) -> None:
    alone = recall.Scene("t", (400, 300), [recall.Placement(0, 80.0, 0.0, (150.0, 150.0))])
    both = recall.Scene("t", (400, 300), [recall.Placement(0, 80.0, 0.0, (150.0, 150.0)),
                                          recall.Placement(1, 80.0, 0.0, (200.0, 150.0))])
    [single] = alone.render(faces, 0)[1]
    behind, front = both.render(faces, 0)[1]
    assert behind.visible_pixels < single.visible_pixels
    assert front.visible_pixels > behind.visible_pixels


def test_border_cuts_leave_the_right_share_of_the_face_in_view(faces: list[recall.LibraryFace]) -> None:
    scenes = recall.border_scenes(faces, cuts=(0.5,), widths=(96,), repeats=1, frames=1)
    for scene in scenes:
        _, [truth] = scene.render(faces, 0)
        box = truth.box
        full = np.pi / 4 * (box[2] - box[0]) * (box[3] - box[1])  # the whole face ellipse
        assert truth.visible_pixels / full == pytest.approx(0.5, abs=0.12), scene.placements[0].label


def test_a_face_counts_as_found_only_when_its_eyes_are_covered_too(faces: list[recall.LibraryFace]) -> None:
    scene = recall.Scene("t", (300, 300), [recall.Placement(0, 100.0, 0.0, (150.0, 150.0))])
    image, [truth] = scene.render(faces, 0)
    everything = np.ones(image.shape[:2], bool)
    [hit] = recall.score_frame([truth], image, everything, condition="t", scene=0, frame=0)
    assert hit.found and hit.face == 1.0
    x1, y1, x2, y2 = truth.region
    one_eye_open = everything.copy()
    one_eye_open[y1:y2, x1:x2][truth.eyes[0]] = False  # ~3% of the face: the face share alone would pass
    [miss] = recall.score_frame([truth], image, one_eye_open, condition="t", scene=0, frame=0)
    assert miss.face > recall.FOUND_FACE and miss.eye == 0.0 and not miss.found
    [none] = recall.score_frame([truth], image, np.zeros_like(everything), condition="t", scene=0, frame=0)
    assert none.face == 0.0 and not none.found


def _issue_scene(faces: list[recall.LibraryFace], frames: int) -> recall.Scene:
    """The issue's clip, 1920x1080: 16/24/32 px faces, a face cut at its middle by the bottom border
    (eyes in view), faces turned 90 and 270 degrees."""
    placements = [
        recall.Placement(0, 16.0, 0.0, (300.0, 200.0), drift=(1.0, 0.0), label="16px"),
        recall.Placement(1, 24.0, 0.0, (700.0, 200.0), drift=(1.0, 0.5), label="24px"),
        recall.Placement(0, 32.0, 0.0, (1100.0, 200.0), drift=(-1.0, 0.0), label="32px"),
        recall.Placement(1, 96.0, 0.0, (960.0, 1080.0), drift=(1.0, 0.0), label="bottom/50%"),
        recall.Placement(0, 80.0, 90.0, (500.0, 600.0), drift=(1.0, 1.0), label="90deg"),
        recall.Placement(1, 80.0, 270.0, (1400.0, 600.0), drift=(-1.0, 0.0), label="270deg"),
    ]
    return recall.Scene("issue", (1920, 1080), placements, frames=frames, seed=3)


# The defaults look for turned faces on a schedule that visits every turn within 12 frames (the look-back
# covers the frames before): a clip of 12 frames is the shortest on which every turn is looked for.
SCHEDULE_FRAMES = 12


def test_the_defaults_hide_small_border_cut_and_turned_faces(faces: list[recall.LibraryFace]) -> None:
    """Every face of the issue's clip on every frame leaves anonymized."""
    h96 = 96.0 * (faces[1].box[3] - faces[1].box[1]) / (faces[1].box[2] - faces[1].box[0])
    scene = _issue_scene(faces, SCHEDULE_FRAMES)
    assert scene.render(faces, 0)[1][3].visible_pixels < 0.6 * np.pi / 4 * 96 * h96  # really cut
    results = recall.run_scenes([scene], faces, [recall.PipelineSystem("defaults")])["defaults"]
    missed = [(r.label, r.frame, round(r.face, 2), round(r.eye, 2)) for r in results if not r.found]
    assert len(results) == 6 * SCHEDULE_FRAMES and not missed


def test_no_face_of_the_issue_clip_stays_recognisable_at_the_defaults(faces: list[recall.LibraryFace]) -> None:
    """The attack (exact geometry, upright upscaled chip, dlib) recognises the untouched faces of 24 px and
    up; after the pipeline at its defaults (blur included) it recognises none."""
    from sdgan_stream.config import AnonymizeOptions

    scene = _issue_scene(faces, SCHEDULE_FRAMES)
    frames = [scene.render(faces, i)[0] for i in range(scene.frames)]
    out = recall.PipelineSystem("defaults", AnonymizeOptions(), keep_method=True).anonymize([f.copy() for f in frames])
    attack = recall.RecognitionAttack(faces)
    for i in (0, SCHEDULE_FRAMES // 2, SCHEDULE_FRAMES - 1):
        before = {p.label: attack.distance(frames[i], p, i) for p in scene.placements}
        after = {p.label: attack.distance(out[i], p, i) for p in scene.placements}
        assert all(before[label] < attack.same_person for label in ("24px", "32px", "bottom/50%", "90deg", "270deg")), before
        assert min(after.values()) >= attack.same_person, after


def test_the_pipeline_system_runs_a_live_job_as_live_sources_are_run(faces: list[recall.LibraryFace]) -> None:
    # live: the live detector schedule (the pyramid every other frame) and no look-back
    scene = recall.Scene("size", (640, 360), [recall.Placement(0, 64.0, 0.0, (320.0, 180.0), 1.0, (0.0, 0.0), "64px")],
                         recall.FrameEffects(), 2, 0)
    live = recall.PipelineSystem("live", live=True)
    assert live.detector.pyramid_every == 2 and recall.PipelineSystem("file").detector.pyramid_every == 1
    results = recall.run_scenes([scene], faces, [live])["live"]
    assert [r.found for r in results] == [True, True]


def test_a_match_is_an_identification_only_when_nobody_else_is_nearer() -> None:
    # a half-black or blurred chip can fall under 0.6 of several people: a verification, not a name
    assert recall.AttackResult(0.55, 0.70).identified
    assert recall.AttackResult(0.55, 0.50).verified and not recall.AttackResult(0.55, 0.50).identified
    assert not recall.AttackResult(0.65, 0.90).verified and not recall.AttackResult(0.65, 0.90).identified


def test_the_attack_names_a_sharp_face_and_not_a_covered_one(faces: list[recall.LibraryFace]) -> None:
    scene = recall.Scene("size", (1280, 720), [recall.Placement(0, 160.0, 0.0, (400.0, 360.0), 1.0, (0.0, 0.0), "160px")],
                         recall.FrameEffects(), 1, 0)
    frame, truths = scene.render(faces, 0)
    attack = recall.RecognitionAttack(faces)
    placement = scene.placements[0]
    sharp = attack.attack(frame, placement, 0)
    assert sharp.identified and sharp.nearest_other > sharp.distance
    assert sharp.distance == pytest.approx(attack.distance(frame, placement, 0))
    covered = frame.copy()
    x1, y1, x2, y2 = truths[0].region
    covered[y1:y2, x1:x2] = 128
    assert not attack.attack(covered, placement, 0).verified


def test_the_whole_frame_fallback_leaves_a_full_frame_face_at_most_8_blocks_across(faces: list[recall.LibraryFace]) -> None:
    import cv2

    face = faces[1]
    x1, y1, x2, y2 = face.box.astype(int)
    close_up = cv2.resize(face.image[y1:y2, x1:x2], (720, 720), interpolation=cv2.INTER_LINEAR)
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, 280:1000] = close_up
    assert len(CenterFaceDetector(threshold=0.5, detect_size=None).detect(frame)) == 1
    cover_whole_frame(frame)
    row = frame[360, 280:1000].astype(int)
    blocks_across_face = 1 + int(np.count_nonzero(np.any(np.diff(row, axis=0) != 0, axis=1)))
    assert blocks_across_face <= WHOLE_FRAME_BLOCKS + 1  # 8 blocks, +1 when the face straddles the grid
    assert len(CenterFaceDetector(threshold=0.2, detect_size=None).detect(frame)) == 0


def test_degraded_scenes_defocus_and_compress_the_whole_frame(faces: list[recall.LibraryFace]) -> None:
    import cv2

    scenes = recall.degraded_scenes(faces, widths=(64,), per_cell=2, frames=1)
    assert {s.condition for s in scenes} == {"defocus", "compression"}
    for scene in scenes:
        degraded, truths = scene.render(faces, 0)
        clean, clean_truths = recall.Scene(scene.condition, scene.size, scene.placements, recall.FrameEffects(), 1,
                                           scene.seed).render(faces, 0)
        assert [t.box.tolist() for t in truths] == [t.box.tolist() for t in clean_truths]  # the same faces, only degraded
        sharpness = [cv2.Laplacian(cv2.cvtColor(i, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for i in (degraded, clean)]
        if scene.condition == "defocus":
            assert sharpness[0] < 0.2 * sharpness[1], (scene.label, sharpness)
        else:  # JPEG at quality 10 or 5: blocks and lost detail, colours kept in order (RGB in, RGB out)
            assert np.abs(degraded.astype(int) - clean).mean() > 2
            assert np.abs(degraded.astype(float).mean((0, 1)) - clean.mean((0, 1))).max() < 3
