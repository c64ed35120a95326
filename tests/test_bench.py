"""The ``bench`` command: parsing, child-process measurement, deface comparison, outputs on a tiny clip."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from sdgan_stream.bench import (
    STAGES,
    _StageTimer,
    add_bench_parser,
    deface_executable,
    parse_faces,
    parse_progress_rate,
    parse_resolutions,
    render_markdown,
    run_child,
)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_resolutions_and_faces_parse() -> None:
    assert parse_resolutions("480p, 720p,1280x720") == [("480p", 854, 480), ("720p", 1280, 720), ("1280x720", 1280, 720)]
    assert parse_faces("1,4,16") == [1, 4, 16]
    for bad in ("", "4k", "641x480", "10x10"):
        with pytest.raises(ValueError):
            parse_resolutions(bad)
    for bad in ("one", "0", ""):
        with pytest.raises(ValueError):
            parse_faces(bad)


def test_progress_rate_from_deface_output() -> None:
    lines = "Input:  a.mp4\n  0%|          | 0/10 [00:00<?, ?it/s]\r 50%|#####     | 5/10 [00:01<00:01,  4.10it/s]\r100%|##########| 10/10 [00:02<00:00,  4.31it/s]\n"
    assert parse_progress_rate(lines) == pytest.approx(4.31)
    assert parse_progress_rate("100%|##| 3/3 [00:07<00:00,  2.50s/it]") == pytest.approx(0.4)
    assert parse_progress_rate(" 50%|#| 5/10 [00:01<00:01,  4.10it/s]") is None  # not finished
    assert parse_progress_rate("no bar") is None


def test_child_peak_memory_and_exit_code() -> None:
    run = run_child([sys.executable, "-c", "b = bytearray(80 * 2**20); b[::4096] = b'x' * len(b[::4096])"], timeout=60)
    assert run.returncode == 0 and run.peak_rss_mb > 80 and run.wall_seconds > 0
    failed = run_child([sys.executable, "-c", "import sys; sys.exit('broken')"], timeout=60)
    assert failed.returncode == 1 and "broken" in failed.stderr
    slow = run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert slow.timed_out and slow.returncode != 0


def test_stage_timer_reports_missing_stages_with_a_reason() -> None:
    timer = _StageTimer()
    timer.time("detect", lambda: None)
    timer.unavailable["track"] = "sdgan_stream.track not installed"
    result = timer.result(frames=1)
    assert result["detect"]["status"] == "ok" and result["detect"]["ms_per_frame"] >= 0
    assert result["track"] == {"status": "n/a", "reason": "sdgan_stream.track not installed"}
    assert set(result) == set(STAGES)


def test_markdown_shows_missing_stages_and_failures() -> None:
    results = {
        "machine": {"cpu": "test cpu", "cores": 2, "memory_gb": 4, "python": "3.11"},
        "settings": {"method": "blur", "backend": "n/a", "track": False, "date": "today", "track_note": "no tracker", "method_note": None},
        "configs": [
            {
                "resolution": "240p", "faces": 1, "frames": 5,
                "stages": {"decode": {"status": "ok", "ms_per_frame": 1.5}, "track": {"status": "n/a", "reason": "no tracker"}},
                "end_to_end": {"status": "ok", "fps": 20.0, "wall_fps": 5.0, "peak_rss_mb": 200.0},
                "deface": {"status": "failed", "error": "Traceback...\nboom"},
            }
        ],
    }
    table = render_markdown(results)
    assert "| 240p | 1 | 1.5 | n/a |" in table
    assert "track: n/a, no tracker" in table and "deface failed: boom" in table


@pytest.mark.slow
def test_bench_runs_on_a_tiny_clip_with_the_deface_comparison(tmp_path: Path) -> None:
    if deface_executable() is None:
        pytest.skip("deface is not installed")
    out_json, plot, table = tmp_path / "bench.json", tmp_path / "bench.png", tmp_path / "bench.md"
    code = _run_cli([
        "bench", "--resolutions", "240p", "--faces", "1", "--frames", "6", "--compare", "deface",
        "--json", str(out_json), "--plot", str(plot), "--markdown", str(table), "--keep", str(tmp_path / "clips"),
    ])
    assert code == 0
    data = json.loads(out_json.read_text())
    (config,) = data["configs"]
    assert config["resolution"] == "240p" and config["faces"] == 1
    e2e = config["end_to_end"]
    assert e2e["status"] == "ok" and e2e["frames"] == 6 and e2e["fps"] > 0 and e2e["peak_rss_mb"] > 50
    assert e2e["method"] in ("sdgan", "blur")
    assert set(config["stages"]) == set(STAGES)
    for stage, entry in config["stages"].items():
        assert entry["status"] == "ok" or entry.get("reason"), stage
    assert config["stages"]["decode"]["status"] == "ok" and config["stages"]["encode"]["status"] == "ok"
    assert config["deface"]["status"] == "ok" and config["deface"]["fps"] > 0
    assert config["fps_ratio"] > 0
    assert (tmp_path / "clips" / "240p_1f_deface.mp4").is_file()
    assert plot.stat().st_size > 5000
    assert "| 240p | 1 |" in table.read_text()
