"""The server under load: 16 concurrent clients, each with its own adapter, beside the same requests
sent one at a time, against a real server process (gunicorn, the shipped generator, the default model).

Each request asks for exactly --tokens new tokens (the `ignore_eos` extension), so both runs do the
same work. Reports completion tokens/s, requests/s, p50/p99 latency, and the throughput ratio.
Run: .venv/bin/python benchmarks/serve.py [--clients 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hyperadapter.config import default_data_root  # noqa: E402


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "models").symlink_to(default_data_root() / "models")
    env = {**os.environ, "HYPERADAPTER_DATA_ROOT": str(root), "HYPERADAPTER_PORT": str(port),
           "HYPERADAPTER_MAX_BATCH_SIZE": "16", "HYPERADAPTER_API_KEYS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "hyperadapter.cli", "serve"], env=env, cwd=REPO,
                            stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            if requests.get(url + "/healthz", timeout=5).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start; see " + str(root / "server.log"))


def chat(url: str, model: str, i: int, tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    r = requests.post(url + "/v1/chat/completions", timeout=600, json={
        "model": model, "messages": [{"role": "user", "content": f"Write about topic number {i}."}],
        "max_tokens": tokens, "temperature": 0, "ignore_eos": True})
    r.raise_for_status()
    return time.perf_counter() - start, r.json()["usage"]["completion_tokens"]


def summary(name: str, latencies: list[float], tokens: int, wall: float) -> tuple[str, float]:
    p99 = sorted(latencies)[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    line = (f"{name:28} {tokens / wall:9.1f} {len(latencies) / wall:8.2f} "
            f"{statistics.median(latencies):8.2f} {p99:8.2f} {wall:8.1f}")
    return line, tokens / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp))
        try:
            ids = []
            for i in range(args.clients):
                r = requests.post(url + "/v1/adapters", timeout=120, json={
                    "kind": "task", "reuse": False,  # 16 distinct adapters, not cache hits of one
                    "context": f"Answer every question as an expert on subject number {i}, briefly."})
                r.raise_for_status()
                ids.append(r.json()["id"])
            chat(url, ids[0], 0, 4)  # warm-up

            began = time.perf_counter()
            seq = [chat(url, ids[i], i, args.tokens) for i in range(args.clients)]
            seq_wall = time.perf_counter() - began

            results: list = [None] * args.clients
            def client(i: int) -> None:
                results[i] = chat(url, ids[i], i, args.tokens)
            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            began = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            con_wall = time.perf_counter() - began
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    print(f"\n{args.clients} clients, each with its own adapter, {args.tokens} new tokens per request\n")
    print(f"{'mode':28} {'tok/s':>9} {'req/s':>8} {'p50 s':>8} {'p99 s':>8} {'wall s':>8}")
    line_s, rate_s = summary("one at a time", [x[0] for x in seq], sum(x[1] for x in seq), seq_wall)
    line_c, rate_c = summary(f"{args.clients} concurrent (batched)", [x[0] for x in results],
                             sum(x[1] for x in results), con_wall)
    print(line_s)
    print(line_c)
    print(f"\nthroughput ratio concurrent / one at a time: {rate_c / rate_s:.1f}x (goal >= 4x)")


if __name__ == "__main__":
    main()
