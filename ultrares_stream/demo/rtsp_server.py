#!/usr/bin/python3
"""UltraRes demo RTSP server: a simulated traffic camera plus push/relay mounts.

Standalone script for Debian's ``/usr/bin/python3`` (GStreamer comes from ``python3-gi``);
it imports only ``gi`` and the standard library. ``ultrares_stream.demo.server.RtspServer``
launches it as a subprocess; run it by hand with ``python -m ultrares_stream.demo.server``.

Mounts (``NAME`` is any of ``[A-Za-z0-9_.-]``):

``/cam``          plays ``--video`` (H.264 in MP4/MKV/MOV) in an endless loop. The H.264 access
                  units are read once into memory and re-sent with timestamps that keep growing
                  across loops, so nothing is decoded or re-encoded (almost no CPU).
``/push/NAME``    RECORD mount: clients push H.264 over RTSP (ANNOUNCE/RECORD, e.g. FFmpeg's
                  rtsp muxer). A RECORD mount cannot be read, so...
``/NAME``         ...this relay mount plays what is being pushed to ``/push/NAME``. A reader that
                  arrives mid-stream first gets the current GOP (from its key frame), so it can
                  decode at once. A DESCRIBE while nobody pushes waits ``--relay-wait`` seconds for
                  a publisher, then answers 404.

The server has a pool of client threads: with a single thread, reading a published stream
deadlocks. Prints ``LISTENING rtsp://HOST:PORT`` on stdout once the port is bound.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

log = logging.getLogger("ultrares.rtsp_server")

H264_AU = "video/x-h264,stream-format=byte-stream,alignment=au"
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
GOP_CACHE_MAX = 600  # access units kept for late readers (bounded memory)


# --------------------------------------------------------------------------- camera clip


class Clip:
    """All H.264 access units of a file, in decode order, with timestamps relative to the first."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.units: list[tuple[bytes, int, int, int, bool]] = []  # data, pts, dts, duration, key
        self.caps: Gst.Caps | None = None
        self._load()
        if not self.units:
            raise RuntimeError(f"no H.264 video found in {path}")
        last = self.units[-1]
        self.loop_ns = last[2] + last[3]  # dts of the last unit + its duration
        log.info("camera clip %s: %d access units, loop %.2f s, caps %s",
                 path, len(self.units), self.loop_ns / Gst.SECOND, self.caps.to_string())

    def _load(self) -> None:
        pipe = Gst.parse_launch(
            f"filesrc name=src ! parsebin ! h264parse config-interval=-1 ! {H264_AU} "
            "! appsink name=sink sync=false max-buffers=0")
        pipe.get_by_name("src").set_property("location", self.path)
        sink = pipe.get_by_name("sink")
        pipe.set_state(Gst.State.PLAYING)
        first_dts = None
        started = False
        try:
            while True:
                sample = sink.emit("try-pull-sample", 30 * Gst.SECOND)
                if sample is None:
                    break
                buf = sample.get_buffer()
                key = not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)
                if not started:
                    if not key:
                        continue  # the loop must start on a key frame
                    started = True
                    self.caps = sample.get_caps()
                pts = buf.pts if buf.pts != Gst.CLOCK_TIME_NONE else buf.dts
                dts = buf.dts if buf.dts != Gst.CLOCK_TIME_NONE else pts
                if first_dts is None:
                    first_dts = dts
                duration = buf.duration if buf.duration != Gst.CLOCK_TIME_NONE else Gst.SECOND // 25
                ok, info = buf.map(Gst.MapFlags.READ)
                if not ok:
                    continue
                data = bytes(info.data)
                buf.unmap(info)
                self.units.append((data, pts - first_dts, dts - first_dts, duration, key))
            msg = pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
            if msg is not None and not self.units:
                err, debug = msg.parse_error()
                raise RuntimeError(f"cannot read {self.path}: {err.message}")
        finally:
            pipe.set_state(Gst.State.NULL)


class CameraFeeder:
    """Feeds one camera media's appsrc from the clip, looping with monotonic timestamps."""

    def __init__(self, clip: Clip, appsrc: Gst.Element) -> None:
        self.clip = clip
        self.index = 0
        self.loops = 0
        appsrc.connect("need-data", self._need_data)

    def _need_data(self, appsrc: Gst.Element, _length: int) -> None:
        data, pts, dts, duration, key = self.clip.units[self.index]
        offset = self.loops * self.clip.loop_ns
        buf = Gst.Buffer.new_wrapped(data)
        buf.pts = pts + offset
        buf.dts = dts + offset
        buf.duration = duration
        if not key:
            buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        appsrc.emit("push-buffer", buf)
        self.index += 1
        if self.index == len(self.clip.units):
            self.index = 0
            self.loops += 1
            log.info("camera clip looped (%d)", self.loops)


# --------------------------------------------------------------------------- push -> relay


class Relay:
    """One reader-side pipeline (appsrc) of a relay mount, with its own timestamp offset."""

    def __init__(self, appsrc: Gst.Element) -> None:
        self.appsrc = appsrc
        self.generation = -1  # publisher generation the offset was computed for
        self.offset = 0
        self.last_pts = -1

    def running_time(self) -> int:
        clock = self.appsrc.get_clock()
        if clock is None:
            return 0
        return max(0, clock.get_time() - self.appsrc.get_base_time())

    def push(self, buf: Gst.Buffer, generation: int) -> bool:
        """Push one access unit; False while the reader's pipeline is not started yet."""
        offset = self.offset
        if generation != self.generation:
            # a new publisher (or the first buffer): continue after what was already sent
            offset = max(self.running_time(), self.last_pts + Gst.SECOND // 100) - buf.pts
        out = buf.copy()
        out.pts = buf.pts + offset
        if buf.dts != Gst.CLOCK_TIME_NONE:
            out.dts = buf.dts + offset
        if self.appsrc.emit("push-buffer", out) != Gst.FlowReturn.OK:
            return False  # flushing: not playing yet (or shutting down)
        self.offset, self.generation = offset, generation
        self.last_pts = max(self.last_pts, out.pts)
        return True


class Channel:
    """What is pushed to ``/push/NAME`` and the readers of ``/NAME``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cond = threading.Condition()
        self.generation = 0
        self.active = False  # a publisher is connected and has sent data
        self.caps: Gst.Caps | None = None
        self.gop: list[Gst.Buffer] = []  # current GOP of the current publisher
        self.relays: list[Relay] = []
        self.frames = 0

    # publisher side -------------------------------------------------------
    def publisher_started(self) -> int:
        with self.cond:
            self.generation += 1
            self.gop = []
            self.active = False
            self.frames = 0
            log.info("push/%s: publisher %d connected", self.name, self.generation)
            return self.generation

    def publisher_stopped(self, generation: int) -> None:
        with self.cond:
            if generation == self.generation:
                self.active = False
                self.gop = []
                log.info("push/%s: publisher %d gone after %d frames; ending %d reader(s)",
                         self.name, generation, self.frames, len(self.relays))
                for relay in self.relays:
                    relay.appsrc.emit("end-of-stream")
                self.relays = []

    def on_sample(self, sample: Gst.Sample, generation: int) -> None:
        buf = sample.get_buffer()
        if buf.pts == Gst.CLOCK_TIME_NONE:
            return
        with self.cond:
            if generation != self.generation:
                return  # replaced by a newer publisher
            caps = sample.get_caps()
            if self.caps is None or not self.caps.is_equal(caps):
                self.caps = caps
                for relay in self.relays:
                    relay.appsrc.set_property("caps", caps)
            key = not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)
            if key:
                self.gop = []
            if self.gop or key:
                if len(self.gop) < GOP_CACHE_MAX:
                    self.gop.append(buf)
            if not self.active:
                self.active = True
                self.cond.notify_all()
            self.frames += 1
            for relay in self.relays:
                if relay.last_pts < 0:  # nothing sent yet: start with the GOP so far
                    for cached in self.gop:  # (empty until the first key frame)
                        if not relay.push(cached, generation):
                            break
                    if relay.last_pts >= 0 and self.gop and self.gop[-1] is not buf:
                        relay.push(buf, generation)  # the GOP cache was full
                else:
                    relay.push(buf, generation)

    # reader side ----------------------------------------------------------
    def wait_active(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.active, timeout)

    def add_relay(self, appsrc: Gst.Element) -> Relay:
        relay = Relay(appsrc)
        with self.cond:
            if self.caps is not None:
                appsrc.set_property("caps", self.caps)
            self.relays.append(relay)
            log.info("%s: reader pipeline added (%d)", self.name, len(self.relays))
        return relay

    def remove_relay(self, relay: Relay) -> None:
        with self.cond:
            if relay in self.relays:
                self.relays.remove(relay)
                log.info("%s: reader pipeline removed (%d left)", self.name, len(self.relays))


# --------------------------------------------------------------------------- server


def _keep_sender_timestamps(_bin, _parent, element) -> None:
    """Jitter buffers of pushed streams keep the publisher's frame spacing (mode none): the
    default (slave) smooths arrival jitter into the timestamps, which readers then see."""
    factory = element.get_factory()
    if factory is not None and factory.get_name() == "rtpjitterbuffer":
        element.set_property("mode", 0)
        log.info("%s: mode none (publisher timestamps kept)", element.get_name())
    elif factory is not None and factory.get_name() == "rtpbin":
        element.set_property("buffer-mode", 0)


class Hub:
    """Creates mounts on demand and wires RECORD media to relay media."""

    def __init__(self, server: GstRtspServer.RTSPServer, mounts: GstRtspServer.RTSPMountPoints,
                 clip: Clip, camera_mount: str, relay_wait: float) -> None:
        self.server = server
        self.mounts = mounts
        self.clip = clip
        self.camera_mount = camera_mount
        self.relay_wait = relay_wait
        self.lock = threading.Lock()
        self.channels: dict[str, Channel] = {}
        self._add_camera()

    def _add_camera(self) -> None:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(
            "( appsrc name=src format=time stream-type=stream max-bytes=1000000 "
            "! rtph264pay name=pay0 pt=96 config-interval=0 )")
        factory.set_shared(True)

        def configure(_factory, media):
            appsrc = media.get_element().get_by_name("src")
            appsrc.set_property("caps", self.clip.caps)
            media.feeder = CameraFeeder(self.clip, appsrc)  # keep a reference with the media
            log.info("%s: camera pipeline started", self.camera_mount)

        factory.connect("media-configure", configure)
        self.mounts.add_factory(self.camera_mount, factory)

    def channel_for_path(self, path: str) -> tuple[Channel | None, bool]:
        """(channel, is_push) for a request path, creating the mounts on first use."""
        parts = [p for p in path.split("/") if p]
        if not parts or "/" + parts[0] == self.camera_mount:
            return None, False
        is_push = parts[0] == "push"
        name = parts[1] if is_push and len(parts) > 1 else parts[0]
        if (is_push and len(parts) < 2) or not NAME_RE.match(name) or name.startswith("stream="):
            return None, False
        with self.lock:
            channel = self.channels.get(name)
            if channel is None:
                channel = self.channels[name] = Channel(name)
                self._add_channel_mounts(channel)
        return channel, is_push

    def _add_channel_mounts(self, channel: Channel) -> None:
        record = GstRtspServer.RTSPMediaFactory()
        record.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
        record.set_launch(
            f"( rtph264depay name=depay0 ! h264parse config-interval=-1 ! {H264_AU} "
            "! appsink name=sink sync=false emit-signals=true max-buffers=0 )")
        record.set_latency(100)

        def configure_record(_factory, media):
            generation = channel.publisher_started()
            sink = media.get_element().get_by_name("sink")
            pipeline = media.get_element().get_parent()
            if pipeline is not None:
                pipeline.connect("deep-element-added", _keep_sender_timestamps)

            def new_sample(appsink):
                channel.on_sample(appsink.emit("pull-sample"), generation)
                return Gst.FlowReturn.OK

            sink.connect("new-sample", new_sample)
            media.connect("unprepared", lambda _m: channel.publisher_stopped(generation))

        record.connect("media-configure", configure_record)
        self.mounts.add_factory(f"/push/{channel.name}", record)

        relay = GstRtspServer.RTSPMediaFactory()
        relay.set_launch(
            "( appsrc name=src is-live=true format=time do-timestamp=false max-bytes=0 "
            "! rtph264pay name=pay0 pt=96 config-interval=0 )")
        relay.set_shared(False)  # one pipeline per reader: each starts from the cached GOP

        def configure_relay(_factory, media):
            entry = channel.add_relay(media.get_element().get_by_name("src"))
            media.connect("unprepared", lambda _m: channel.remove_relay(entry))

        relay.connect("media-configure", configure_relay)
        self.mounts.add_factory(f"/{channel.name}", relay)
        log.info("mounts added: /push/%s (record) and /%s (relay)", channel.name, channel.name)

    # client hooks -------------------------------------------------------------
    def client_connected(self, _server, client) -> None:
        client.connect("pre-describe-request", self._pre_describe)

    def _pre_describe(self, _client, ctx):
        path = ctx.uri.abspath if ctx.uri is not None else ""
        channel, is_push = self.channel_for_path(path)
        if channel is None or is_push:
            return GstRtsp.RTSPStatusCode.OK
        if channel.wait_active(self.relay_wait):
            return GstRtsp.RTSPStatusCode.OK
        log.info("%s: DESCRIBE refused (404): nobody pushes to /push/%s", path, channel.name)
        return GstRtsp.RTSPStatusCode.NOT_FOUND


class DemoMountPoints(GstRtspServer.RTSPMountPoints):
    """Mount points that create ``/push/NAME`` + ``/NAME`` the first time a client names them."""

    hub: Hub | None = None

    def do_make_path(self, url):
        path = url.abspath
        if self.hub is not None and path:
            self.hub.channel_for_path(path)
        return path


def _watch_parent(parent_pid: int, loop: GLib.MainLoop):
    def check() -> bool:
        if os.getppid() != parent_pid:
            log.info("parent process %d is gone; stopping", parent_pid)
            loop.quit()
            return False
        return True

    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", required=True, help="H.264 video (MP4/MKV/MOV) the camera plays in a loop")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8554, help="RTSP port (default: %(default)s)")
    parser.add_argument("--mount", default="/cam", help="camera mount (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default: %(default)s)")
    parser.add_argument("--relay-wait", type=float, default=3.0,
                        help="seconds a reader of /NAME waits for a publisher before 404 (default: %(default)s)")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    Gst.init(None)
    if not os.path.isfile(args.video):
        log.error("video not found: %s", args.video)
        return 2
    try:
        clip = Clip(args.video)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    server.get_thread_pool().set_max_threads(args.threads)
    mounts = DemoMountPoints()
    server.set_mount_points(mounts)
    mount = "/" + args.mount.strip("/")
    hub = Hub(server, mounts, clip, mount, args.relay_wait)
    mounts.hub = hub
    server.connect("client-connected", hub.client_connected)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        log.error("cannot listen on %s:%d (port in use?)", args.host, args.port)
        return 3
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, lambda *_: (loop.quit(), False)[1])
    if args.parent_pid:
        GLib.timeout_add(500, _watch_parent(args.parent_pid, loop))
    url = f"rtsp://{args.host}:{server.get_bound_port()}"
    log.info("camera %s%s; push to %s/push/NAME, watch %s/NAME", url, mount, url, url)
    print(f"LISTENING {url}", flush=True)
    loop.run()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
