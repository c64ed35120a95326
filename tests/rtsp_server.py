#!/usr/bin/python3
"""A tiny RTSP server for tests and benchmarks (GStreamer's rtsp-server, Debian packages).

Run it with the SYSTEM python (``/usr/bin/python3``: a virtualenv has no ``gi``). It binds 127.0.0.1
only, prints ``READY <port>`` on stdout once it listens, and serves until killed:

- ``/test`` (with ``--clip FILE``): the H.264 video of an .mp4/.mkv file, streamed at real-time pace
  (packets pass through, nothing is re-encoded); every client starts from the file's beginning.
- ``/pub`` (RECORD): accepts one H.264 publisher (``ffmpeg -f rtsp``, PyAV ``format='rtsp'``).
- ``/view`` (PLAY): what is published to ``/pub``, relayed to any number of viewers. A viewer can
  only DESCRIBE once a publisher is sending (the server needs the stream's caps).

    /usr/bin/python3 tests/rtsp_server.py --clip faces.mp4 --port 0
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

H264_CAPS = "video/x-h264,stream-format=byte-stream,alignment=au"
# SPS/PPS are repeated in-band by h264parse before every keyframe. Do NOT also set rtph264pay's
# config-interval: its separate SPS/PPS packets make FFmpeg's RTSP reader emit an extra, concealed
# copy of the previous frame at every keyframe (frames seen as ..., 24, 23, 25, ...).


class Relay:
    """Copies access units from the RECORD pipeline's appsink into every PLAY pipeline's appsrc."""

    def __init__(self) -> None:
        self.sources: list[Gst.Element] = []

    def on_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.OK
        buffer = sample.get_buffer()
        for src in list(self.sources):
            copy = buffer.copy()
            # The viewers' appsrc stamps buffers with its own running time (do-timestamp).
            copy.pts = copy.dts = Gst.CLOCK_TIME_NONE
            src.emit("push-buffer", copy)
        return Gst.FlowReturn.OK

    def on_record_configure(self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        sink = media.get_element().get_by_name("relay")
        sink.connect("new-sample", self.on_sample)

    def on_view_configure(self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_by_name("src")
        self.sources.append(src)
        media.connect("unprepared", lambda _m: self.sources.remove(src) if src in self.sources else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--clip", help="video file (H.264 in .mp4/.mov/.mkv) served at /test")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    # One thread per client: a viewer's DESCRIBE blocks its thread until the publisher's data (read
    # by another client thread) gives the relay its caps; with one shared thread that would deadlock.
    pool = GstRtspServer.RTSPThreadPool()
    pool.set_max_threads(32)
    server.set_thread_pool(pool)
    mounts = server.get_mount_points()

    if args.clip:
        demux = "matroskademux" if args.clip.endswith((".mkv", ".webm")) else "qtdemux"
        clip = GstRtspServer.RTSPMediaFactory()
        location = args.clip.replace("\\", "\\\\").replace('"', '\\"')
        clip.set_launch(
            f'( filesrc location="{location}" ! {demux} ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )'
        )
        mounts.add_factory("/test", clip)

    relay = Relay()
    record = GstRtspServer.RTSPMediaFactory()
    record.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
    record.set_launch(
        f"( rtph264depay name=depay0 ! h264parse config-interval=-1 ! {H264_CAPS} ! "
        "appsink name=relay emit-signals=true sync=false )"
    )
    record.connect("media-configure", relay.on_record_configure)
    mounts.add_factory("/pub", record)

    view = GstRtspServer.RTSPMediaFactory()
    view.set_shared(True)
    view.set_launch(
        f'( appsrc name=src is-live=true format=time do-timestamp=true caps="{H264_CAPS}" ! '
        "h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )"
    )
    view.connect("media-configure", relay.on_view_configure)
    mounts.add_factory("/view", view)

    if server.attach(None) == 0:
        print(f"error: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
