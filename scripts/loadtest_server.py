"""Load test of `midashenglm serve` on this machine (loopback only, bounded in count and time).

Starts the server on a model (a freshly initialised tiny one unless --model is given), or
targets a running one with --url (127.0.0.1, localhost or [::1] only), then sends
--requests requests at once, each with its own base64 WAV clip of random length between
--min-seconds and --max-seconds, half of them streamed. Prints throughput, latency
percentiles, time to first token of the streamed ones, errors (the run fails unless 0)
and the server's peak resident memory (sampled from /proc through psutil).

    python scripts/loadtest_server.py                 # tiny model, 200 requests
    python scripts/loadtest_server.py --model DIR --requests 50 --json
    python scripts/loadtest_server.py --url http://127.0.0.1:8000 --model-name tiny

Everything stops by itself: a hard --time-limit cancels what is still running.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import soundfile as sf


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint folder to serve (default: a new tiny random model)")
    p.add_argument("--url", help="target a running server instead (loopback addresses only)")
    p.add_argument("--model-name", help="model name to send with --url (default: asked from /v1/models)")
    p.add_argument("--requests", type=int, default=200, help="requests, all sent at once (default 200)")
    p.add_argument("--min-seconds", type=float, default=0.5, help="shortest clip (default 0.5 s)")
    p.add_argument("--max-seconds", type=float, default=15.0, help="longest clip (default 15 s)")
    p.add_argument("--max-tokens", type=int, default=32,
                   help="answer length; sent with ignore_eos so every answer has it (default 32)")
    p.add_argument("--stream-fraction", type=float, default=0.5,
                   help="share of requests that stream (default 0.5)")
    p.add_argument("--time-limit", type=float, default=600.0,
                   help="hard cap on the whole run in seconds (default 600)")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="engine rows of a started server (its --max-num-seqs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.url and args.model:
        p.error("pass --model (start a server) or --url (use a running one), not both")
    if args.url:
        check_loopback(args.url, p)
    if not 0 < args.min_seconds <= args.max_seconds:
        p.error("need 0 < --min-seconds <= --max-seconds")
    if args.requests < 1 or args.requests > 10_000:
        p.error("--requests must be between 1 and 10000")
    return args


def check_loopback(url: str, parser: argparse.ArgumentParser) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme not in ("http", "https") or not loopback:
        parser.error(f"--url {url}: only http(s) servers on 127.0.0.1, localhost or [::1]")


# ------------------------------------------------------------------------------ server
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(folder: Path) -> Path:
    out = folder / "tiny-model"
    subprocess.run([sys.executable, "-m", "midashenglm.cli", "init", "--out", str(out), "--force"],
                   check=True, capture_output=True)
    return out


def start_server(model: Path, args: argparse.Namespace, stack: ExitStack, *,
                 extra: tuple[str, ...] = (), log: Any = None) -> tuple[str, int]:
    """Start `midashenglm serve` on a free loopback port; ``extra`` options follow the
    ones derived from ``args``; the server's output goes to ``log`` (a text file)."""
    port = free_port()
    cmd = [sys.executable, "-m", "midashenglm.cli", "serve", "--model", str(model),
           "--port", str(port), "--device", "cpu", "--log-level", "warning",
           "--max-queue", str(args.requests + 8), "--max-tokens-limit", str(args.max_tokens),
           "--max-audio-seconds", str(args.max_seconds + 1),
           "--max-num-seqs", str(args.max_batch_size),
           "--request-timeout", str(args.time_limit), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if log is None:
        log = stack.enter_context(tempfile.TemporaryFile("w+"))
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the server exited with status {proc.returncode}:\n{log.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url, proc.pid
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the server did not start within 180 s")
        time.sleep(0.25)


def server_pid(url: str) -> int | None:
    """The process listening on the URL's port, if this user may see it."""
    port = urlsplit(url).port or 80
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.AccessDenied:
        pass
    return None


class MemorySampler:
    """Peak resident memory of a process tree, sampled every 50 ms in a thread."""

    def __init__(self, pid: int | None) -> None:
        self.proc = psutil.Process(pid) if pid else None
        self.peak = 0
        self.start_rss = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        if self.proc is None:
            return 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs)
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> MemorySampler:
        self.peak = self.start_rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------- workload
def make_bodies(args: argparse.Namespace, model: str) -> list[tuple[dict, float]]:
    rng = np.random.default_rng(args.seed)
    bodies = []
    for i in range(args.requests):
        seconds = float(rng.uniform(args.min_seconds, args.max_seconds))
        n = int(seconds * 16000)
        t = np.arange(n) / 16000
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + 0.05 * rng.standard_normal(n)
        buf = io.BytesIO()
        sf.write(buf, wave.astype(np.float32), 16000, format="WAV", subtype="PCM_16")
        body = {
            "model": model,
            "messages": [{"role": "user", "content": [
                {"type": "input_audio",
                 "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}},
                {"type": "text", "text": f"Request {i}: write an audio caption describing the sound"},
            ]}],
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "stream": bool(rng.random() < args.stream_fraction),
        }
        bodies.append((body, seconds))
    return bodies


async def one_request(client: httpx.AsyncClient, body: dict) -> dict:
    t0 = time.perf_counter()
    record: dict = {"stream": body["stream"], "status": None, "error": None, "ttft": None}
    try:
        if body["stream"]:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                record["status"] = response.status_code
                if response.status_code != 200:
                    record["error"] = (await response.aread()).decode(errors="replace")[:300]
                else:
                    record.update(await read_stream(response, t0))
        else:
            response = await client.post("/v1/chat/completions", json=body)
            record["status"] = response.status_code
            if response.status_code != 200:
                record["error"] = response.text[:300]
            else:
                record["completion_tokens"] = response.json()["usage"]["completion_tokens"]
    except httpx.HTTPError as err:
        record["error"] = f"{type(err).__name__}: {err}"
    record["latency"] = time.perf_counter() - t0
    return record


async def read_stream(response: httpx.Response, t0: float) -> dict:
    out: dict = {"ttft": None, "error": "the stream ended without [DONE]"}
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            out["error"] = out.get("stream_error")
            return out
        event = json.loads(data)
        if "error" in event:
            out["stream_error"] = event["error"]["message"]
        for choice in event.get("choices", []):
            if choice["delta"].get("content") and out["ttft"] is None:
                out["ttft"] = time.perf_counter() - t0
    return out


async def run_load(url: str, bodies: list[tuple[dict, float]], time_limit: float) -> tuple[list, float]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=time_limit, limits=limits) as client:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(one_request(client, body)) for body, _ in bodies]
        done, pending = await asyncio.wait(tasks, timeout=time_limit)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - t0
    records = []
    for task in tasks:
        if task in done:
            records.append(task.result())
        else:
            records.append({"status": None, "error": f"unfinished after {time_limit:g} s",
                            "latency": None, "stream": None, "ttft": None})
    return records, wall


# ----------------------------------------------------------------------------- report
def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(records: list[dict], wall: float, bodies: list[tuple[dict, float]],
              memory: MemorySampler, engine_before: dict, engine_after: dict,
              args: argparse.Namespace, target: str) -> dict:
    ok = [r for r in records if r["error"] is None]
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r.get("ttft") is not None]
    errors: dict[str, int] = {}
    for r in records:
        if r["error"] is not None:
            key = f"{r['status']}: {r['error'][:120]}"
            errors[key] = errors.get(key, 0) + 1
    batches = engine_after.get("batches", 0) - engine_before.get("batches", 0)
    served = engine_after.get("requests", 0) - engine_before.get("requests", 0)
    mib = 2**20
    return {
        "target": target,
        "requests": len(records),
        "streamed": sum(1 for b, _ in bodies if b["stream"]),
        "audio_seconds": {"total": round(sum(s for _, s in bodies), 1),
                          "min": round(min(s for _, s in bodies), 2),
                          "max": round(max(s for _, s in bodies), 2)},
        "max_tokens": args.max_tokens,
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_seconds": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 2) if wall else None,
        "audio_seconds_per_second": round(sum(s for _, s in bodies) / wall, 1) if wall else None,
        "latency_seconds": {k: _round(percentile(latencies, q))
                            for k, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "ttft_seconds_streamed": {k: _round(percentile(ttfts, q)) for k, q in (("p50", 50), ("p99", 99))},
        "engine_batches": batches,
        "mean_batch_rows": round(served / batches, 1) if batches else None,
        "server_rss_mib": {"before": round(memory.start_rss / mib), "peak": round(memory.peak / mib)}
        if memory.proc else None,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def print_report(r: dict) -> None:
    lat, ttft = r["latency_seconds"], r["ttft_seconds_streamed"]
    print(f"target            {r['target']}")
    print(f"requests          {r['requests']} at once ({r['streamed']} streamed), "
          f"audio {r['audio_seconds']['min']}-{r['audio_seconds']['max']} s "
          f"({r['audio_seconds']['total']} s in all), {r['max_tokens']} answer tokens each")
    print(f"ok / errors       {r['ok']} / {r['errors']}")
    for kind, count in r["error_kinds"].items():
        print(f"   {count} x {kind}")
    print(f"wall time         {r['wall_seconds']} s")
    print(f"throughput        {r['throughput_rps']} req/s ({r['audio_seconds_per_second']} s of audio per s)")
    print(f"latency           p50 {lat['p50']} s, p90 {lat['p90']} s, p99 {lat['p99']} s, max {lat['max']} s")
    print(f"first token       p50 {ttft['p50']} s, p99 {ttft['p99']} s (streamed requests)")
    print(f"engine batches    {r['engine_batches']} (mean {r['mean_batch_rows']} rows)")
    mem = r["server_rss_mib"]
    print("server memory     " + (f"{mem['before']} MiB before, peak {mem['peak']} MiB" if mem
                                   else "unknown (server process not found)"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        if args.url:
            url = args.url.rstrip("/")
            pid = server_pid(url)
        else:
            model = Path(args.model) if args.model else tiny_model(
                Path(stack.enter_context(tempfile.TemporaryDirectory())))
            url, pid = start_server(model, args, stack)
        name = args.model_name or httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        bodies = make_bodies(args, name)
        before = httpx.get(f"{url}/health", timeout=10).json().get("engine", {})
        with MemorySampler(pid) as memory:
            records, wall = asyncio.run(run_load(url, bodies, args.time_limit))
        after = httpx.get(f"{url}/health", timeout=30).json().get("engine", {})
    report = summarise(records, wall, bodies, memory, before, after, args, url)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
