"""A live MPEG-TS source for tests/test_live.py, run as its own process (so a test can kill it mid-stream):
barcoded frames (tests/corpus.py ``draw_frame``: frame ``k`` shows the number ``start + k``) encoded with H.264
(zero latency, a keyframe every ``gop`` frames) and paced at ``fps``, served on 127.0.0.1 only::

    python tests/livesrv.py tcp 5000 --fps 25 --log sent.txt     # tcp://127.0.0.1:5000?listen=1 (one client)
    python tests/livesrv.py udp 5001 --fps 25                    # sent to udp://127.0.0.1:5001
    python tests/livesrv.py http 5002 --fps 25                   # GET http://127.0.0.1:5002/live.ts
    python tests/livesrv.py hls 5003 --fps 25                    # http://127.0.0.1:5003/live.m3u8 (1 s segments)

``--log FILE`` gets one line per frame once it is muxed: ``number time.time()`` (flushed), so a test can tell which
frames were sent when. The stream's timestamps are ``number / fps``.
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import av  # noqa: E402

from corpus import draw_frame  # noqa: E402

av.logging.set_level(av.logging.PANIC)


def stream_to(container: av.container.OutputContainer, args: argparse.Namespace, log) -> None:
    st = container.add_stream("libx264", rate=args.fps)
    st.width, st.height, st.pix_fmt = args.width, args.height, "yuv420p"
    st.time_base = Fraction(1, args.fps)
    st.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "12", "g": str(args.gop),
                  "keyint_min": str(args.gop), "sc_threshold": "0"}
    t0 = time.monotonic()
    k = 0
    while args.frames <= 0 or k < args.frames:
        delay = t0 + k / args.fps - time.monotonic()
        if delay < -0.2:  # the first write waited for a client (tcp listen): pace from now on
            t0 = time.monotonic() - k / args.fps
        elif delay > 0:
            time.sleep(delay)
        number = args.start + k
        frame = av.VideoFrame.from_ndarray(draw_frame(number, args.width, args.height), format="rgb24")
        frame.pts = number
        for pkt in st.encode(frame):
            container.mux(pkt)
        if log is not None:
            log.write(f"{number} {time.time():.6f}\n")
            log.flush()
        k += 1
    for pkt in st.encode():
        container.mux(pkt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("tcp", "udp", "http", "hls"))
    ap.add_argument("port", type=int)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--frames", type=int, default=0, help="0: until killed")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--gop", type=int, default=5)
    ap.add_argument("--log", type=Path)
    args = ap.parse_args()
    log = open(args.log, "a") if args.log else None
    opts = {"flush_packets": "1"}
    if args.mode == "tcp":
        with av.open(f"tcp://127.0.0.1:{args.port}?listen=1", "w", format="mpegts", options=opts) as c:
            stream_to(c, args, log)
    elif args.mode == "udp":
        with av.open(f"udp://127.0.0.1:{args.port}?pkt_size=1316", "w", format="mpegts", options=opts) as c:
            stream_to(c, args, log)
    elif args.mode == "hls":  # a live playlist of 1 s segments in a temporary folder, served over HTTP
        import functools
        import tempfile
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        folder = tempfile.mkdtemp(prefix="livesrv-hls-")
        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", args.port), functools.partial(Quiet, directory=folder))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        hls = {"hls_time": "1", "hls_list_size": "6", "hls_flags": "delete_segments+omit_endlist"}
        with av.open(f"{folder}/live.m3u8", "w", format="hls", options=hls) as c:
            stream_to(c, args, log)
    else:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                try:
                    with av.open(self.wfile, "w", format="mpegts", options=opts) as c:
                        stream_to(c, args, log)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass

            def log_message(self, *a) -> None:
                pass

        ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, ConnectionResetError, OSError, KeyboardInterrupt):  # the client went away
        pass
