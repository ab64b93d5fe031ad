"""Download speed from the local test Hub (tests/hub_server.py): core.fetch.download.fetch against `curl -o`.

    .venv/bin/python scripts/bench_download.py [--mb 200] [--rounds 3]

Serves one file of random bytes (shaped like a .safetensors file) through the Hub's resolve API and
its "CDN" redirect, then, round by round in alternating order, times `curl -sL -o` on the resolve URL
(which writes the bytes and checks nothing) and `fetch` (which also hashes them with sha256, checks
the hash, and moves the file into place). Prints the median speed of each and the ratio ours / curl.
Both write into the same temporary folder, so the disk is the same for both. The server runs in a
process of its own.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.fetch.download import fetch  # noqa: E402
from scripts.fake_hub import HubServer  # noqa: E402

REPO, FILE = "bench/model", "model.safetensors"


def time_curl(url: str, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-L", "-o", str(out), url], check=True)
    return time.perf_counter() - started


def time_fetch(endpoint: str, folder: Path) -> float:
    started = time.perf_counter()
    fetch(REPO, FILE, folder, endpoint=endpoint, token=False)
    return time.perf_counter() - started


def serve(size: int, addresses, stop) -> None:
    """The test Hub in a process of its own, as a real server is: in ours, its threads would share the
    downloader's GIL (curl's server would not)."""
    server = HubServer()
    server.add_file(REPO, FILE, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + os.urandom(size - 16))
    addresses.put(server.url)
    stop.wait()
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="file size in MiB (default 200)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("curl is not installed", file=sys.stderr)
        return 2
    size = args.mb * 1024 * 1024
    addresses, stop = multiprocessing.Queue(), multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(size, addresses, stop), daemon=True)
    server.start()
    endpoint = addresses.get(timeout=120)
    url = f"{endpoint}/{REPO}/resolve/main/{FILE}"
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="bench_download_") as tmp:
        folder = Path(tmp)
        for round_ in range(args.rounds + 1):       # round 0 warms up the page cache and the client
            order = (("curl", "ours") if round_ % 2 else ("ours", "curl"))
            for who in order:
                for leftover in folder.iterdir():
                    leftover.unlink()
                seconds = time_curl(url, folder / "curl.bin") if who == "curl" else time_fetch(endpoint, folder)
                if round_:
                    (theirs if who == "curl" else ours).append(size / seconds)
    stop.set()
    server.join()
    mine, curl = statistics.median(ours), statistics.median(theirs)
    print(f"file: {args.mb} MiB, {args.rounds} rounds (median), from the local test Hub")
    print(f"curl -o:                     {curl / 1e6:8.1f} MB/s   ({', '.join(f'{s / 1e6:.0f}' for s in theirs)})")
    print(f"core.fetch.download.fetch:   {mine / 1e6:8.1f} MB/s   ({', '.join(f'{s / 1e6:.0f}' for s in ours)})")
    print(f"ratio ours / curl:           {mine / curl:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
