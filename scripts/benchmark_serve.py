#!/usr/bin/env python
"""Load benchmark of `cascadepsp serve`: one server on this machine, 1, 4 and 16 concurrent clients for a fixed
time each, then (with --hostile) good clients beside clients sending hostile uploads.

Starts ``cascadepsp serve`` on a free loopback port (localhost only; there is no option to aim it elsewhere),
waits for /health, and for each concurrency level runs that many client threads, each posting the example photo
and mask to /v1/refine in a loop until the level's time (--duration) or request count (--max-requests) is used
up. Reports requests/s, p50/p99 latency, errors (anything but 200 and 503), 503 rejections (the queue was
full) and the server's peak RSS during the level (VmHWM, reset before each level). The hostile run mixes in
corrupt files, truncated JPEGs, 300 MB bodies (declared and chunked, streamed from a reused 1 MB buffer),
headers declaring huge dimensions and size-mismatched masks, and checks that every good request still gets
its 200. The server is stopped with SIGTERM at the end.

    python scripts/benchmark_serve.py --duration 120 --hostile --json runs/benchmark_serve.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
BIG = 300 * 2**20  # the hostile bodies' size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=str(ROOT / "examples/davis/parkour_00040_im.jpg"))
    p.add_argument("--mask", default=str(ROOT / "examples/davis/parkour_00040_seg.png"))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--duration", type=float, default=120.0, help="seconds per level (default 120)")
    p.add_argument("--max-requests", type=int, default=5000, help="requests per level at most (default 5000)")
    p.add_argument("--fast", action="store_true", help="the requests ask for the global step only")
    p.add_argument("--L", type=int, default=900)
    p.add_argument("--hostile", action="store_true", help="also run good clients beside hostile ones")
    p.add_argument("--hostile-good", type=int, default=4, help="good clients in the hostile run (default 4)")
    p.add_argument("--hostile-bad", type=int, default=2, help="hostile clients in the hostile run (default 2)")
    p.add_argument("--serve-args", default="", help="extra `cascadepsp serve` options, e.g. '--queue-size 8'")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ server

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cascadepsp.cli", "serve", "--host", HOST, "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its log pipe drained
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not answer /health within 120 s")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def reset_peak(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------------ clients

class Recorder:
    """Thread-safe outcome counts and latencies of one level."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.started = 0

    def take(self, limit: int) -> bool:
        with self.lock:
            if self.started >= limit:
                return False
            self.started += 1
            return True

    def add(self, status: str, seconds: float | None = None) -> None:
        with self.lock:
            self.statuses[status] += 1
            if seconds is not None:
                self.latencies.append(seconds)


def good_client(url: str, files: dict, data: dict, deadline: float, rec: Recorder, limit: int) -> None:
    with httpx.Client(timeout=600) as client:
        while time.monotonic() < deadline and rec.take(limit):
            t0 = time.perf_counter()
            try:
                res = client.post(f"{url}/v1/refine", files=files, data=data)
                status = str(res.status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            rec.add(status, time.perf_counter() - t0 if status == "200" else None)


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


def big_body(port: int, declared: bool) -> str:
    """Stream a 300 MB upload; the status the server answered (or how the connection ended)."""
    head = (f"POST /v1/refine HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; boundary=XYZ\r\n"
            + (f"Content-Length: {BIG}\r\n" if declared else "Transfer-Encoding: chunked\r\n") + "\r\n").encode()
    part = b'--XYZ\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
    block = b"\0" * 2**20
    with socket.create_connection((HOST, port), timeout=60) as s:
        try:
            s.sendall(head)
            s.sendall(part if declared else f"{len(part):x}\r\n".encode() + part + b"\r\n")
            sent = 0
            while sent < BIG:
                if select.select([s], [], [], 0)[0]:
                    break  # the server answered before the body ended
                s.sendall(block if declared else b"100000\r\n" + block + b"\r\n")
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return "reset"
    line = reply.split(b"\r\n", 1)[0].decode("latin-1")
    return line.split(" ")[1] if line.startswith("HTTP/") else "closed"


def hostile_client(url: str, port: int, photo: bytes, mask: bytes, deadline: float, rec: Recorder) -> None:
    arr = np.asarray(Image.open(io.BytesIO(mask)))
    small = io.BytesIO()
    Image.fromarray(arr[: arr.shape[0] // 2, : arr.shape[1] // 2]).save(small, format="PNG")
    kinds = {
        "corrupt file": {"image": ("x.jpg", os.urandom(50_000)), "mask": ("m.png", mask)},
        "truncated JPEG": {"image": ("x.jpg", photo[: len(photo) // 3]), "mask": ("m.png", mask)},
        "100000x100000 header": {"image": ("x.png", png_header_only(100_000, 100_000)), "mask": ("m.png", mask)},
        "6000x5000 header": {"image": ("x.png", png_header_only(6000, 5000)), "mask": ("m.png", mask)},
        "size mismatch": {"image": ("x.jpg", photo), "mask": ("m.png", small.getvalue())},
    }
    order = [*kinds, "300 MB declared", "300 MB chunked"]
    i = 0
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < deadline:
            kind = order[i % len(order)]
            i += 1
            try:
                if kind.startswith("300 MB"):
                    status = big_body(port, declared=kind.endswith("declared"))
                else:
                    status = str(client.post(f"{url}/v1/refine", files=kinds[kind]).status_code)
            except (httpx.HTTPError, OSError) as e:
                status = type(e).__name__
            rec.add(f"{kind}: {status}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_level(url: str, port: int, pid: int, files: dict, data: dict, good: int, bad: int, duration: float,
              limit: int, photo: bytes, mask: bytes) -> dict:
    good_rec, bad_rec = Recorder(), Recorder()
    reset_peak(pid)
    t0 = time.monotonic()
    deadline = t0 + duration
    threads = [threading.Thread(target=good_client, args=(url, files, data, deadline, good_rec, limit))
               for _ in range(good)]
    threads += [threading.Thread(target=hostile_client, args=(url, port, photo, mask, deadline, bad_rec))
                for _ in range(bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    ok = good_rec.statuses.get("200", 0)
    return {
        "clients": good, "hostile_clients": bad, "seconds": round(elapsed, 1), "ok": ok,
        "requests_per_s": round(ok / elapsed, 3), "p50_s": round(percentile(good_rec.latencies, 50), 2),
        "p99_s": round(percentile(good_rec.latencies, 99), 2),
        "rejected_503": good_rec.statuses.get("503", 0),
        "errors": sum(n for s, n in good_rec.statuses.items() if s not in ("200", "503")),
        "error_kinds": {s: n for s, n in good_rec.statuses.items() if s not in ("200", "503")},
        "peak_rss_mb": round(peak_rss_mb(pid)), "hostile": dict(sorted(bad_rec.statuses.items())),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    photo, mask = Path(args.image).read_bytes(), Path(args.mask).read_bytes()
    files = {"image": (Path(args.image).name, photo), "mask": (Path(args.mask).name, mask)}
    data = {"fast": str(args.fast).lower(), "L": str(args.L)}
    port = free_port()
    proc = start_server(port, args.serve_args.split())
    url = f"http://{HOST}:{port}"
    health = httpx.get(f"{url}/health").json()
    print(f"server pid {proc.pid}: weights {health['weights']}, {health['backend']}, {health['threads']} threads, "
          f"queue {health['limits']['queue_size']}; {os.cpu_count()} CPUs; {args.duration:g} s per level",
          flush=True)
    rows = []
    try:
        for n in args.concurrency:
            rows.append(run_level(url, port, proc.pid, files, data, n, 0, args.duration, args.max_requests,
                                  photo, mask))
            print(json.dumps(rows[-1]), flush=True)
        if args.hostile:
            rows.append(run_level(url, port, proc.pid, files, data, args.hostile_good, args.hostile_bad,
                                  args.duration, args.max_requests, photo, mask))
            print(json.dumps(rows[-1]), flush=True)
        final = httpx.get(f"{url}/health").json()
    finally:
        code = stop_server(proc)
    print(f"server stopped by SIGTERM (exit {code}); queue counters {final['queue']}")
    print("\n| clients | requests/s | p50 | p99 | errors | 503 | peak RSS |\n|---|---|---|---|---|---|---|")
    for r in rows:
        who = f"{r['clients']}" + (f" + {r['hostile_clients']} hostile" if r["hostile_clients"] else "")
        print(f"| {who} | {r['requests_per_s']:.2f} ({r['ok']} in {r['seconds']:.0f} s) | {r['p50_s']:.1f} s | "
              f"{r['p99_s']:.1f} s | {r['errors']} | {r['rejected_503']} | {r['peak_rss_mb']} MB |")
    for r in rows:
        if r["hostile"]:
            print("hostile requests (kind: answer x count): " + ", ".join(f"{k} x{v}" for k, v in r["hostile"].items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "health": health, "rows": rows}, indent=1))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
