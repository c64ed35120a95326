"""Helpers for the live/RTSP tests and benchmarks/bench_rtsp.py.

- :func:`make_indexed_clip`: a clip of real faces (``samples.make_face_clip``) with each frame's index
  stamped as a block barcode in a bottom corner, so any frame read back from a live stream (after
  drops, repeats, reconnects) can be matched to its ground-truth face boxes.
- :class:`RtspServer`: the GStreamer RTSP server of ``tests/rtsp_server.py`` as a child process of
  the system python, on 127.0.0.1, restartable on the same port.
- :class:`StreamChecker`: reads a stream and checks every frame on the fly: decodes the barcode,
  and verifies every true face of that frame is covered (same detail-correlation test as
  tests/test_file_anonymizer.py); counts repeated, neutral and unknown frames and input sessions.
- :func:`finishes_within`, :func:`wait_for`, :class:`FakeClock`, :func:`wait_listening`: tests that
  wait for evidence (a state reached, a port listening) and fail, with every thread's stack, when it
  never comes, instead of hanging or racing a clock.
"""

from __future__ import annotations

import faulthandler
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from sdgan_stream.samples import SyntheticClip, make_face_clip

GST_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
_BITS = 12  # frame indexes up to 4095
# As in test_file_anonymizer: a visible face correlates > 0.6 (after re-encoding), a covered one < 0.3.
LEAK_CORRELATION = 0.3
# A *generated* face keeps the person's pose and contour (that is the method), which leaves 0.35-0.45
# of correlation with the original at 320x180 with the starter weights, identity gone. For it, the
# test is "not the original face": below what a visible face scores.
GENERATED_LEAK_CORRELATION = 0.6


def leak_correlation(method: str) -> float:
    """The detail correlation above which a checked face counts as visible, for output of ``method``."""
    return GENERATED_LEAK_CORRELATION if method == "sdgan" else LEAK_CORRELATION


def gst_rtsp_missing() -> str | None:
    """Why the GStreamer RTSP server cannot run here (None when it can)."""
    if not os.path.exists(GST_PYTHON):
        return f"{GST_PYTHON} not found (the RTSP test server runs on the system python)"
    probe = subprocess.run(
        [GST_PYTHON, "-c", 'import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0")'],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return "GStreamer RTSP server missing (gir1.2-gst-rtsp-server-1.0 python3-gi ...; scripts/test.sh installs them)"
    return None


# -- waiting for evidence ----------------------------------------------------------------------------


def finishes_within(seconds: float, function: Callable[..., object], *args: object, **kwargs: object) -> object:
    """``function(*args, **kwargs)`` on a daemon thread: its result, or its exception re-raised.

    Still running after ``seconds``: every thread's stack goes to stderr and the test fails (pytest-
    timeout is not installed; a hang must fail the test, not stall CI). The bound is generous: it
    catches a thread that never ends, it does not time anything.
    """
    import pytest

    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="finishes-within", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        pytest.fail(f"{getattr(function, '__name__', function)} did not finish within {seconds:.0f} s: hung (stacks above)")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; an AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def wait_until_viewed(parts: dict[str, Any], outcome: dict[str, Any], reader: Any, reader_ready: Any, timeout: float) -> Any:
    """For an RTSP filter started on a thread (its ``on_start`` puts the running parts in ``parts["parts"]``,
    a failure goes to ``outcome["error"]``): wait until it publishes, then start the viewer process
    ``reader`` and wait for its first frame. Returns the filter's parts (``LiveComponents``)."""
    wait_for(lambda: "parts" in parts or "error" in outcome, timeout, "the filter to start")
    if "error" in outcome:
        raise outcome["error"]
    running = parts["parts"]
    publisher = running.publisher
    assert publisher is not None
    wait_for(lambda: publisher.stats.fresh > 0, timeout, "the first published frame")
    reader.start()
    wait_for(reader_ready.is_set, timeout, "the viewer's first frame")
    return running


PIPELINE_THREADS = ("sdgan-decode", "sdgan-encode", "sdgan-capture", "sdgan-publish", "sdgan-stats")


def live_threads(names: tuple[str, ...] = PIPELINE_THREADS, *, besides: Collection[threading.Thread] = ()) -> list[threading.Thread]:
    """The package's pipeline threads still alive, other than ``besides`` (those running before a test)."""
    return [t for t in threading.enumerate() if t.is_alive() and t.name.startswith(names) and t not in besides]


class FakeClock:
    """A monotonic clock that only moves when the test says so (exact binary fractions keep sums exact)."""

    def __init__(self, start: float = 1024.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_listening(port: int, timeout: float = 60.0) -> None:
    """Wait until something listens on TCP ``port`` of 127.0.0.1 (read from /proc/net/tcp: connecting
    to probe it would be taken for a client by a server that accepts one)."""

    def listening() -> bool:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if fields[1].rsplit(":", 1)[1] == f"{port:04X}" and fields[3] == "0A":  # 0A = LISTEN
                    return True
        return False

    wait_for(listening, timeout, f"a listener on port {port}")


# -- frame-index barcode ------------------------------------------------------------------------------


def _block(height: int) -> int:
    return max(6, height // 24)


def _barcode_region(width: int, height: int) -> tuple[int, int, int, int]:
    b = _block(height)
    return 0, height - b, (_BITS + 3) * b, height


def stamp_index(image: np.ndarray, index: int) -> None:
    """Draw ``index`` in place: [white, black] sync, 12 data bits, even parity; one block each."""
    height = image.shape[0]
    b = _block(height)
    bits = [1, 0] + [(index >> i) & 1 for i in range(_BITS)]
    bits.append(sum(bits[2:]) % 2)
    for i, bit in enumerate(bits):
        image[height - b : height, i * b : (i + 1) * b] = 255 if bit else 0


def read_index(image: np.ndarray) -> int | None:
    """The stamped index, or None when the corner holds no clean barcode (neutral or foreign frame)."""
    height = image.shape[0]
    b = _block(height)
    if image.shape[1] < (_BITS + 3) * b:
        return None
    gray = image[height - b : height].mean(axis=2)
    m = max(b // 4, 1)
    values = [float(gray[m : b - m, i * b + m : (i + 1) * b - m].mean()) for i in range(_BITS + 3)]
    if any(64 < v < 192 for v in values):
        return None
    bits = [int(v >= 128) for v in values]
    if bits[:2] != [1, 0] or sum(bits[2:-1]) % 2 != bits[-1]:
        return None
    return sum(bit << i for i, bit in enumerate(bits[2:-1]))


def is_neutral(image: np.ndarray) -> bool:
    """The publisher's neutral frame: mid-grey except a small caption."""
    gray = image.mean(axis=2)
    return bool(np.median(np.abs(gray - 128)) < 8 and (np.abs(gray - 128) < 16).mean() > 0.9)


@dataclass
class IndexedClip:
    path: Path
    clip: SyntheticClip  # ground truth: clip.face_boxes[i] for the frame stamped i

    @property
    def face_boxes(self) -> list[np.ndarray]:
        return self.clip.face_boxes


def make_indexed_clip(path: str | Path, *, width: int = 320, height: int = 180, frames: int = 250, fps: int = 25, faces: int = 2, seed: int = 0) -> IndexedClip:
    """A face clip with frame indexes stamped (H.264, a keyframe every second, no audio)."""
    path = Path(path)
    raw = make_face_clip(path.with_name(path.stem + "_raw.mp4"), width=width, height=height, frames=frames, fps=fps, faces=faces, audio=False, seed=seed)
    _, top, right, _ = _barcode_region(width, height)
    for boxes in raw.face_boxes:
        for x1, y1, x2, y2 in boxes:
            # a cover ellipse reaches 0.75 face heights from the face centre (covers.py): keep it off the barcode
            assert not (x1 < right and (y1 + y2) / 2 + 0.8 * (y2 - y1) > top), "a face comes too close to the barcode corner"
    with av.open(str(raw.path)) as source, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, fps)
        stream.options = {"preset": "ultrafast", "crf": "16", "g": str(fps), "bf": "0"}
        for index, frame in enumerate(source.decode(video=0)):
            image = frame.to_ndarray(format="rgb24")
            stamp_index(image, index)
            new = av.VideoFrame.from_ndarray(image, format="rgb24")
            new.pts = index
            new.time_base = Fraction(1, fps)
            for packet in stream.encode(new):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    raw.path.unlink()
    raw.path = path
    return IndexedClip(path, raw)


# -- face-coverage check ------------------------------------------------------------------------------


def _detail(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = max(x1, 0), max(y1, 0)
    crop = cv2.cvtColor(np.ascontiguousarray(image[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    lap = cv2.Laplacian(crop, cv2.CV_32F)
    return lap - lap.mean(), (x1, y1, x2, y2)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


class GroundTruth:
    """Fine detail of every true face of an indexed clip, decoded once (small: face crops only)."""

    def __init__(self, clip_path: str | Path, face_boxes: list[np.ndarray]) -> None:
        self.faces: list[list[tuple[np.ndarray, tuple[int, int, int, int]]]] = []
        with av.open(str(clip_path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                image = frame.to_ndarray(format="rgb24")
                self.faces.append([_detail(image, box) for box in face_boxes[index]])

    def visible_faces(self, image: np.ndarray, index: int, *, threshold: float = LEAK_CORRELATION) -> tuple[int, int, float]:
        """(faces checked, faces left visible, highest correlation) of frame ``index`` in ``image``."""
        checked = leaked = 0
        worst = 0.0
        for original, (x1, y1, x2, y2) in self.faces[index]:
            crop = cv2.cvtColor(np.ascontiguousarray(image[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY).astype(np.float32)
            lap = cv2.Laplacian(crop, cv2.CV_32F)
            if lap.shape != original.shape:
                continue
            corr = _correlation(original, lap - lap.mean())
            worst = max(worst, corr)
            checked += 1
            leaked += corr >= threshold
        return checked, leaked, worst


@dataclass
class CheckResult:
    frames: int = 0  # frames received
    indexed: int = 0  # frames whose barcode was read
    distinct: int = 0  # indexed frames that were not a repeat of the previous one
    repeats: int = 0
    neutral: int = 0
    unknown: int = 0  # neither indexed nor neutral
    faces_checked: int = 0
    faces_leaked: int = 0
    worst_correlation: float = 0.0
    sessions: list[float] = field(default_factory=list)  # arrival time of the first frame of each input session
    arrivals: list[float] = field(default_factory=list)  # arrival time of every distinct indexed frame
    repeat_arrivals: list[float] = field(default_factory=list)  # arrival time of every repeated frame
    pts: list[int] = field(default_factory=list)
    leaks: list[tuple[int, float]] = field(default_factory=list)  # (index, correlation), first few
    errors: list[str] = field(default_factory=list)
    sequence: list[tuple[float, int | None, int | None]] = field(default_factory=list, repr=False)  # (arrival, pts, index)
    first_frame_at: float | None = None

    def repeats_between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.repeat_arrivals)

    @property
    def leak_rate(self) -> float:
        return self.faces_leaked / self.faces_checked if self.faces_checked else 0.0


class StreamChecker:
    """Reads ``url`` (reconnecting until stopped) and checks every frame against ``truth``.

    ``keep_images`` keeps up to that many received frames (debugging).
    """

    def __init__(self, url: str, truth: GroundTruth, *, transport: str = "tcp", keep_images: int = 0, threshold: float = LEAK_CORRELATION) -> None:
        self.url = url
        self.threshold = threshold
        self.truth = truth
        self.transport = transport
        self.result = CheckResult()
        self.stop_event = threading.Event()
        self.images: list[np.ndarray] = []
        self._keep = keep_images
        self._last_index: int | None = None
        self._session_max = -1
        self._thread: threading.Thread | None = None

    def start(self) -> StreamChecker:
        self._thread = threading.Thread(target=self.run, name="stream-checker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> CheckResult:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                with av.open(self.url, options={"rtsp_transport": self.transport}, timeout=(10.0, 5.0)) as container:
                    stream = container.streams.video[0]
                    for frame in container.decode(stream):
                        self.check(frame.to_ndarray(format="rgb24"), frame.pts)
                        if self.stop_event.is_set():
                            return
            except Exception as error:  # the publisher is not up yet, or the relay restarted
                self.result.errors.append(str(error)[:200])
                self.stop_event.wait(0.5)

    def check(self, image: np.ndarray, pts: int | None = None) -> None:
        now = time.monotonic()
        r = self.result
        r.frames += 1
        if r.first_frame_at is None:
            r.first_frame_at = now
        if pts is not None:
            r.pts.append(pts)
        if self._keep and len(self.images) < self._keep:
            self.images.append(image)
        index = read_index(image)
        r.sequence.append((now, pts, index))
        if index is None or index >= len(self.truth.faces):
            if is_neutral(image):
                r.neutral += 1
            else:
                r.unknown += 1
            return
        r.indexed += 1
        if index == self._last_index:
            r.repeats += 1
            r.repeat_arrivals.append(now)
        else:
            r.distinct += 1
            r.arrivals.append(now)
            if index < self._session_max or not r.sessions:
                r.sessions.append(now)  # the input started over: a new session
                self._session_max = -1
            self._session_max = max(self._session_max, index)
        self._last_index = index
        checked, leaked, worst = self.truth.visible_faces(image, index, threshold=self.threshold)
        r.faces_checked += checked
        r.faces_leaked += leaked
        r.worst_correlation = max(r.worst_correlation, worst)
        if leaked and len(r.leaks) < 20:
            r.leaks.append((index, worst))


def checker_process(url: str, clip: str, boxes: list, threshold: float, ready: Any, stop: Any, results: Any) -> None:
    """Body of a reader *process* (benchmarks): a :class:`StreamChecker` on ``url`` until ``stop`` is
    set, its result sent back through ``results``; ``ready`` is set at the first frame received. A
    process of its own, so that checking frames does not take the GIL from the filter being measured."""
    checker = StreamChecker(url, GroundTruth(clip, boxes), threshold=threshold).start()
    while not stop.wait(0.05):
        if checker.result.frames:
            ready.set()
            break
    stop.wait()
    result = checker.stop()
    result.sequence = []  # large and not needed by the parent
    results.put(result)


def repeat_clip(source: str | Path, target: str | Path, times: int) -> Path:
    """``source`` played ``times`` times in a row, as one file (packets copied, timestamps shifted): a
    long input for a soak without encoding it (the test server plays a clip once per connection)."""
    target = Path(target)
    with av.open(str(target), "w") as out:
        stream = None
        offset = 0
        for _ in range(times):
            with av.open(str(source)) as container:
                video = container.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(video)
                end = offset
                for packet in container.demux(video):
                    if packet.dts is None or not packet.size:
                        continue
                    step = packet.duration or 1
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    end = max(end, packet.pts + step)
                    packet.stream = stream
                    out.mux(packet)
                offset = end
    return target


# -- the RTSP server process -----------------------------------------------------------------------


class RtspServer:
    """``tests/rtsp_server.py`` on 127.0.0.1; :meth:`restart` comes back on the same port."""

    def __init__(self, clip: str | Path | None = None, *, log_path: str | Path | None = None) -> None:
        self.clip = Path(clip) if clip else None
        self.port = 0
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self.ready_at: float | None = None

    def url(self, mount: str, *, credentials: str = "") -> str:
        auth = f"{credentials}@" if credentials else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}/{mount.lstrip('/')}"

    def start(self, timeout: float = 30.0) -> RtspServer:
        command = [GST_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port)]
        if self.clip is not None:
            command += ["--clip", str(self.clip)]
        stderr = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env)
        finally:
            if stderr is not subprocess.DEVNULL:
                stderr.close()
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                line = self.process.stdout.readline().decode().strip()
                if line.startswith("READY "):
                    self.port = int(line.split()[1])
                    self.ready_at = time.monotonic()
                    return self
            if self.process.poll() is not None:
                if self.port:  # the old port may still be held for a moment: retry
                    time.sleep(0.5)
                    return self.start(max(deadline - time.monotonic(), 1.0))
                break
        self.stop()
        raise RuntimeError(f"RTSP test server did not start (exit {self.process.returncode if self.process else None})")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()  # abrupt on purpose: like a camera losing power
        try:
            process.wait(10)
        finally:
            if process.stdout is not None:
                process.stdout.close()

    def restart(self, down_seconds: float = 1.0) -> RtspServer:
        self.stop()
        time.sleep(down_seconds)
        return self.start()

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def venv_python() -> str:
    return sys.executable or shutil.which("python3") or "python3"
