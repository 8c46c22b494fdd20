"""Hostile clients against `midashenglm serve`, on loopback only, bounded in count and time.

Starts a server on a model (a freshly initialised tiny one unless --model is given) with
an allowed audio folder, then runs each attack below in turn and prints, per attack, the
statuses seen, the time taken, the server's peak resident memory above what it held just
before, and whether the server held (the expectation in brackets). The run exits 1 if any
attack breaks through, and counts the tracebacks the server logged (expected: none).

    python scripts/attack_server.py            # every attack (about 2-3 minutes on 2 cores)
    python scripts/attack_server.py --quick    # the subset `make test` runs (~40 s)
    python scripts/attack_server.py --json     # one JSON object

Attacks (the numbers are the items of issue 11, "held" are those that already held):
  1 decode bombs   FLACs that are tiny on the wire but huge decoded: 290 s of 192 kHz x 8
                   channels, 290 s of 655 kHz mono (refused from the header), and the
                   largest that is accepted (48 kHz x 8 channels for the whole limit),
                   three at once each; peak memory must stay under 1 GiB above idle
  2 malformed JSON 1000-deep nesting in an ignored field, a 5000-digit integer, NaN
  3 huge text      10 MiB of text is refused fast, and a small request sent meanwhile is
                   answered without waiting for it; the refusal names the text; bodies
                   huge in structure: 2,000 empty messages, 1,000 one-sample clips, an
                   ignored list of 2 M zeros, a 10 MiB model name (echoed in the 404?)
  4 cross-site     text/plain and form bodies (415), a foreign Host header (421)
  5 slow clients   a stalled upload and a trickling one are cut at --body-timeout (408),
                   slow headers at --header-timeout, 1-byte HTTP chunks refused (400);
                   with 200 stalled uploads open a normal request is answered; 40
                   clients that vanish mid-upload leave no traceback in the log
  6 dead streams   50 streaming clients that close after the first chunk: decode steps
                   spent (each asked for --max-tokens with ignore_eos) and time to idle
  7 forged output  `midashenglm caption` on a file named "x\\nok.wav: FAKE\\ny.wav"
  held             path traversal, a symlink out of the allowed folder, http:// URLs, a
                   Content-Length of 1 TB, a WAV header declaring 10 h, malformed numbers,
                   100 concurrent requests with broken audio mixed in
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadtest_server import MemorySampler, start_server, tiny_model  # noqa: E402

MIB = 2**20
ROWS = 16  # the server's --max-num-seqs


@dataclass
class Outcome:
    name: str
    expect: str
    held: bool
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    peak_mib: float = 0.0  # server RSS peak above its RSS just before the attack
    note: str = ""


class Target:
    """The server under attack: its URL, pid, the model name and the folders it may read."""

    def __init__(self, url: str, pid: int, model: str, model_dir: Path, audio_dir: Path,
                 work: Path, body_timeout: float, max_tokens: int, header_timeout: float) -> None:
        self.header_timeout = header_timeout
        self.url, self.pid, self.model, self.model_dir = url, pid, model, model_dir
        self.audio_dir, self.work = audio_dir, work
        self.body_timeout, self.max_tokens = body_timeout, max_tokens
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)

    def body(self, audio: bytes | None = None, text: str = "What do you hear?",
             **options: Any) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if audio is not None:
            content.append({"type": "input_audio",
                            "input_audio": {"data": base64.b64encode(audio).decode(), "format": "wav"}})
        content.append({"type": "text", "text": text})
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": 4, **options}

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=10).json()


# ------------------------------------------------------------------------------ audio
def wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 440 * t), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def silent_flac(path: Path, rate: int, channels: int, seconds: float) -> bytes:
    """A FLAC of silence written block by block (never the whole signal in memory)."""
    if not path.exists():
        block = np.zeros((rate, channels), np.int16)
        with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16", format="FLAC") as f:
            whole, rest = divmod(int(seconds * rate), rate)
            for _ in range(whole):
                f.write(block)
            f.write(block[:rest])
    return path.read_bytes()


def lying_wav(declared_seconds: float) -> bytes:
    """A WAV whose header declares ``declared_seconds`` but holds one second."""
    data = bytearray(wav(1.0))
    size = int(declared_seconds * 16000 * 2)
    data[40:44] = min(size, 0xFFFFFFF0).to_bytes(4, "little")
    return bytes(data)


# ------------------------------------------------------------------------------ HTTP
async def post_many(target: Target, bodies: list[Any], *, timeout: float = 120.0,
                    headers: dict[str, str] | None = None) -> list[tuple[int, dict | str, float]]:
    """POST each body at once; (status, parsed body or text, seconds) per request."""
    async with httpx.AsyncClient(base_url=target.url, timeout=timeout) as client:
        async def one(body: Any) -> tuple[int, dict | str, float]:
            t0 = time.perf_counter()
            if isinstance(body, (bytes, str)):
                r = await client.post("/v1/chat/completions", content=body,
                                      headers=headers or {"Content-Type": "application/json"})
            else:
                r = await client.post("/v1/chat/completions", json=body, headers=headers)
            try:
                parsed: dict | str = r.json()
            except ValueError:
                parsed = r.text
            return r.status_code, parsed, time.perf_counter() - t0

        return await asyncio.gather(*(one(b) for b in bodies))


def error_code(parsed: dict | str) -> str:
    return parsed.get("error", {}).get("code", "") if isinstance(parsed, dict) else ""


def raw_request(target: Target, head: str, body: bytes = b"", *, wait: float = 10.0) -> tuple[int, float]:
    """Send raw bytes, return (status or 0 if the connection closed without one, seconds)."""
    t0 = time.perf_counter()
    with socket.create_connection((target.host, target.port), timeout=wait) as s:
        s.sendall(head.encode("latin-1") + body)
        return read_status(s), time.perf_counter() - t0


def read_status(s: socket.socket) -> int:
    data = b""
    try:
        while b"\r\n" not in data:
            piece = s.recv(4096)
            if not piece:
                break
            data += piece
    except (TimeoutError, OSError):
        return 0
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def post_head(target: Target, length: int, *, host: str | None = None,
              content_type: str = "application/json") -> str:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host or f'127.0.0.1:{target.port}'}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n")


# ------------------------------------------------------------------------------ attacks
def decode_bombs(target: Target, quick: bool) -> list[Outcome]:
    out = []
    cases = [("192 kHz x 8 ch, 290 s", 192000, 8, 290.0, "400 (from the header)")]
    if not quick:
        cases += [("655 kHz mono, 290 s", 655350, 1, 290.0, "400 (from the header)"),
                  ("48 kHz x 8 ch, 299 s (accepted)", 48000, 8, 299.0, "200 or 400 context")]
    for label, rate, channels, seconds, expect in cases:
        data = silent_flac(target.work / f"bomb-{rate}-{channels}-{seconds:g}.flac", rate, channels, seconds)
        body = target.body(data)

        def attack(body: dict = body) -> Any:
            return asyncio.run(post_many(target, [body] * 3))

        results, secs, peak = measured(target, attack)
        statuses = Counter(f"{s} {error_code(p)}".strip() for s, p, _ in results)
        accepted = "accepted" in label
        held = peak < 1024 and all((s == 200 or s == 400) if accepted else s == 400
                                   for s, _, _ in results)
        out.append(Outcome(f"decode bomb: {label}, {len(data) / 1024:.0f} KiB, x3 at once",
                           f"{expect}, peak < 1 GiB", held, dict(statuses), secs, peak))
    return out


def malformed_json(target: Target, quick: bool) -> list[Outcome]:
    good = json.dumps(target.body())
    cases = [
        ("1000-deep nesting in an ignored field", good[:-1] + ', "x": ' + "[" * 1000 + "]" * 1000 + "}"),
        ("an integer of 5000 digits", good[:-1] + ', "seed": ' + "7" * 5000 + "}"),
        ("NaN", good[:-1] + ', "temperature": NaN}'),
        ("not UTF-8", b"\xff\xfe{}"),
    ]
    out = []
    for label, raw in cases:
        results, secs, peak = measured(target, lambda raw=raw: asyncio.run(post_many(target, [raw])))
        status, parsed, _ = results[0]
        out.append(Outcome(f"malformed JSON: {label}", "400 invalid_json",
                           status == 400 and error_code(parsed) == "invalid_json",
                           {f"{status} {error_code(parsed)}": 1}, secs, peak))
    return out


def huge_text(target: Target, quick: bool) -> list[Outcome]:
    text = "All work and no play makes Jack a dull boy. " * (10 * MIB // 44)
    big, small = target.body(text=text), target.body(wav(1.0))

    async def both() -> list[tuple[int, dict | str, float]]:
        first = asyncio.ensure_future(post_many(target, [big]))
        await asyncio.sleep(0.05)  # the small one arrives while the big one is being read
        second = await post_many(target, [small])
        return [*(await first), *second]

    results, secs, peak = measured(target, lambda: asyncio.run(both()))
    (s_big, p_big, t_big), (s_small, _, t_small) = results
    message = p_big.get("error", {}).get("message", "") if isinstance(p_big, dict) else ""
    held = s_big == 400 and s_small == 200 and "text" in message and "audio" not in message.split(
        "shorten")[-1] and t_small < 5.0
    return [Outcome("huge text: 10 MiB prompt, a small request meanwhile",
                    "400 naming the text; small one answered", held,
                    {f"{s_big} {error_code(p_big)}": 1, f"{s_small} (small)": 1}, secs, peak,
                    f"refused in {t_big:.2f} s; small request took {t_small:.2f} s")]


def request_shape(target: Target, quick: bool) -> list[Outcome]:
    """Bodies small in text but huge in structure (found by a tester after the first fixes)."""
    good = json.dumps(target.body())
    empty = {"role": "user", "content": ""}
    many = {**target.body(), "messages": [empty] * 2_000 + target.body()["messages"]}
    tiny_clips = {**target.body(), "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav(1 / 16000)).decode()}}
        for _ in range(1_000)] + [{"type": "text", "text": "What?"}]}]}
    cases = [
        ("2,000 empty messages", many, "400 invalid_value"),
        ("1,000 clips of one sample each", tiny_clips, "200 or 400, within seconds"),
        ("an ignored list of 2 M zeros", good[:-1] + ', "x": [' + "0," * 2_000_000 + "0]}", "400 invalid_json"),
        ("a 10 MiB model name", {**target.body(), "model": "m" * (10 * MIB)}, "404, short message"),
    ]
    out = []
    for label, body, expect in cases:
        results, secs, peak = measured(target, lambda b=body: asyncio.run(post_many(target, [b])))
        status, parsed, _ = results[0]
        size = len(json.dumps(parsed)) if isinstance(parsed, dict) else len(parsed)
        held = {"400 invalid_value": status == 400 and error_code(parsed) == "invalid_value",
                "400 invalid_json": status == 400 and error_code(parsed) == "invalid_json",
                "404, short message": status == 404 and size < 2048,
                }.get(expect, status in (200, 400) and secs < 30)
        out.append(Outcome(f"request shape: {label}", expect, held,
                           {f"{status} {error_code(parsed)}".strip(): 1}, secs, peak,
                           f"error body {size} bytes" if status >= 400 else ""))
    return out


def cross_site(target: Target, quick: bool) -> list[Outcome]:
    raw = json.dumps(target.body()).encode()
    cases = [("text/plain body", {"Content-Type": "text/plain"}, 415),
             ("form body", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
             ("no Content-Type", {"Content-Type": ""}, 415)]
    out = []
    for label, headers, expect in cases:
        results, secs, peak = measured(target, lambda h=headers: asyncio.run(
            post_many(target, [raw], headers=h)))
        status = results[0][0]
        out.append(Outcome(f"cross-site: {label}", str(expect), status == expect, {str(status): 1}, secs, peak))
    for host in ("evil.example", f"evil.example:{target.port}", "127.0.0.1.nip.io"):
        status, secs = raw_request(target, post_head(target, len(raw), host=host), raw)
        out.append(Outcome(f"DNS rebinding: Host {host}", "421", status == 421, {str(status): 1}, secs))
    return out


def slow_clients(target: Target, quick: bool) -> list[Outcome]:
    out = []
    deadline = target.body_timeout
    # A stalled upload: headers promise 1000 bytes, none come.
    status, secs = raw_request(target, post_head(target, 1000), wait=deadline + 15)
    out.append(Outcome("slow client: headers, then nothing", f"408 at ~{deadline:g} s",
                       status == 408 and secs < deadline + 5, {str(status): 1}, secs))
    # A trickle: one byte every 2 s (deadline + 6 s worth at most).
    t0 = time.perf_counter()
    with socket.create_connection((target.host, target.port), timeout=deadline + 15) as s:
        s.sendall(post_head(target, 1000).encode())
        status = 0
        s.settimeout(2.0)
        while time.perf_counter() - t0 < deadline + 6:
            try:
                s.sendall(b" ")
                status = read_status(s)
                if status:
                    break
            except OSError:
                break
    secs = time.perf_counter() - t0
    out.append(Outcome("slow client: 1 byte every 2 s", f"408 at ~{deadline:g} s",
                       status == 408 and secs < deadline + 5, {str(status): 1}, secs))
    # Slow headers (slowloris): one header line every second.
    t0 = time.perf_counter()
    with socket.create_connection((target.host, target.port), timeout=target.header_timeout + 15) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
        closed = False
        while time.perf_counter() - t0 < target.header_timeout + 6:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(1.0)
                if s.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    secs = time.perf_counter() - t0
    out.append(Outcome("slow client: a header line every second (slowloris)",
                       f"closed at ~{target.header_timeout:g} s", closed and secs < target.header_timeout + 3,
                       {"closed" if closed else "open": 1}, secs))
    # One-byte HTTP chunks as fast as possible.
    def fragmented() -> int:
        with socket.create_connection((target.host, target.port), timeout=30) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(200):
                try:
                    s.sendall(b"1\r\n \r\n" * 100)
                except OSError:
                    break
            s.settimeout(10)
            return read_status(s)

    t0 = time.perf_counter()
    status = fragmented()
    secs = time.perf_counter() - t0
    out.append(Outcome("slow client: 20,000 one-byte HTTP chunks", "connection closed at once",
                       status == 0 and secs < 2, {"closed" if status == 0 else str(status): 1}, secs))
    # Many stalled uploads, then a normal request.
    n = 40 if quick else 200
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((target.host, target.port), timeout=10)
            s.sendall(post_head(target, 1000).encode())
            socks.append(s)
        time.sleep(0.3)
        in_flight = target.health()["in_flight"]
        results, secs, peak = measured(target, lambda: asyncio.run(post_many(target, [target.body(wav(1.0))])))
        status = results[0][0]
        out.append(Outcome(f"slow clients: {n} stalled uploads open, then a normal request",
                           "200, stalled uploads hold no queue slot", status == 200 and in_flight == 0,
                           {str(status): 1, f"in_flight={in_flight}": n}, secs, peak))
    finally:
        for s in socks:
            s.close()
    # Clients that disconnect in the middle of their upload.
    raw = json.dumps(target.body(wav(2.0))).encode()
    t0 = time.perf_counter()
    for _ in range(10 if quick else 40):
        with socket.create_connection((target.host, target.port), timeout=10) as s:
            s.sendall(post_head(target, len(raw)).encode() + raw[: len(raw) // 2])
    time.sleep(0.5)
    out.append(Outcome(f"slow clients: {10 if quick else 40} disconnect mid-upload",
                       "no traceback logged (counted at the end)", True, {}, time.perf_counter() - t0))
    return out


def dead_streams(target: Target, quick: bool) -> list[Outcome]:
    n = 10 if quick else 50
    body = target.body(wav(1.0), max_tokens=target.max_tokens, ignore_eos=True, stream=True)
    raw = json.dumps(body).encode()
    before = target.health()["engine"].get("decode_steps", 0)

    def attack() -> float:
        socks = []
        for _ in range(n):
            s = socket.create_connection((target.host, target.port), timeout=30)
            s.sendall(post_head(target, len(raw)).encode() + raw)
            socks.append(s)
        for s in socks:  # read the first chunk, then hang up
            s.recv(4096)
            s.close()
        closed = time.perf_counter()
        while target.health()["in_flight"] and time.perf_counter() - closed < 60:
            time.sleep(0.05)
        return time.perf_counter() - closed

    idle_after, secs, peak = measured(target, attack)
    steps = target.health()["engine"].get("decode_steps", 0) - before
    # Without aborts every stream runs to max_tokens, in batches of at most ROWS rows.
    unaborted = -(-n // ROWS) * target.max_tokens
    held = steps < unaborted // 4 and idle_after < 2.0
    return [Outcome(f"dead streams: {n} clients close after the first chunk",
                    f"aborted: under a quarter of the {unaborted} decode steps unaborted, idle at once", held,
                    {}, secs, peak, f"{steps} decode steps; idle {idle_after:.2f} s after the last close")]


def forged_output(target: Target, quick: bool) -> list[Outcome]:
    folder = target.work / "forged"
    folder.mkdir(exist_ok=True)
    path = folder / "x\nok.wav: FAKE\ny.wav"
    path.write_bytes(wav(0.5))
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "midashenglm.cli", "caption", str(path),
                          "--model", str(target.model_dir), "--max-new-tokens", "4"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = (run.stdout + run.stderr).splitlines()
    forged = [line for line in lines if line.startswith("ok.wav: FAKE")]
    return [Outcome("forged CLI output: a file name holding newlines", "no forged line, name quoted",
                    run.returncode == 0 and not forged, {f"exit {run.returncode}": 1},
                    time.perf_counter() - t0, note=f"{len(forged)} forged line(s)")]


def already_held(target: Target, quick: bool) -> list[Outcome]:
    inside = target.audio_dir / "clip.wav"
    inside.write_bytes(wav(1.0))
    link = target.audio_dir / "escape.wav"
    if not link.exists():
        link.symlink_to("/etc/passwd")

    def url_body(url: str) -> dict:
        return {"model": target.model, "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "audio_url", "audio_url": {"url": url}}, {"type": "text", "text": "What?"}]}]}

    cases: list[tuple[str, Any, Callable[[int, str], bool]]] = [
        ("path traversal", url_body(f"file://{target.audio_dir}/../../../../etc/passwd"), lambda s, c: s == 403),
        ("symlink out of the folder", url_body(f"file://{link}"), lambda s, c: s == 403),
        ("http:// URL (never fetched)", url_body("http://127.0.0.1:9/x.wav"), lambda s, c: s == 400),
        ("WAV header declaring 10 h", target.body(lying_wav(36000)), lambda s, c: s == 400),
        ("max_tokens 1e400", {**target.body(), "max_tokens": "1e400"}, lambda s, c: s == 400),
        ("max_tokens -5", {**target.body(), "max_tokens": -5}, lambda s, c: s == 400),
        ("temperature 'NaN'", {**target.body(), "temperature": "NaN"}, lambda s, c: s == 400),
        ("allowed file (control)", url_body(f"file://{inside}"), lambda s, c: s == 200),
    ]
    out = []
    for label, body, ok in cases:
        results, secs, peak = measured(target, lambda b=body: asyncio.run(post_many(target, [b])))
        status, parsed, _ = results[0]
        out.append(Outcome(f"held: {label}", "refused" if "control" not in label else "200",
                           ok(status, error_code(parsed)), {f"{status} {error_code(parsed)}".strip(): 1},
                           secs, peak))
    status, secs = raw_request(target, post_head(target, 10**12))
    out.append(Outcome("held: Content-Length of 1 TB", "413", status == 413, {str(status): 1}, secs))
    if not quick:
        rng = np.random.default_rng(0)
        bodies = []
        for i in range(100):
            kind = i % 4
            audio = wav(float(rng.uniform(0.5, 5))) if kind < 2 else (
                b"RIFF\x00\x00\x00\x00WAVEjunk" if kind == 2 else os.urandom(2000))
            bodies.append(target.body(audio, stream=bool(i % 2)))
        results, secs, peak = measured(target, lambda: asyncio.run(post_many(target, bodies)))
        statuses = Counter(str(s) for s, _, _ in results)
        out.append(Outcome("held: 100 concurrent requests, half with broken audio",
                           "50 x 200, 50 x 400", statuses == Counter({"200": 50, "400": 50}),
                           dict(statuses), secs, peak))
    return out


ATTACKS = [decode_bombs, malformed_json, huge_text, request_shape, cross_site, slow_clients, dead_streams,
           already_held, forged_output]


def measured(target: Target, attack: Callable[[], Any]) -> tuple[Any, float, float]:
    with MemorySampler(target.pid) as memory:
        t0 = time.perf_counter()
        result = attack()
        secs = time.perf_counter() - t0
    return result, secs, max(0.0, (memory.peak - memory.start_rss) / MIB)


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint folder to serve (default: a new tiny random model)")
    p.add_argument("--quick", action="store_true", help="the subset run by `make test`")
    p.add_argument("--body-timeout", type=float, default=3.0,
                   help="the server's --body-timeout during the run (default 3 s)")
    p.add_argument("--header-timeout", type=float, default=2.0,
                   help="the server's --header-timeout during the run (default 2 s)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="answer length asked by the dead-stream clients (default 256)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="attack-")))
        model = Path(args.model) if args.model else tiny_model(work)
        audio_dir = work / "allowed"
        audio_dir.mkdir()
        log_path = work / "server.log"
        log = stack.enter_context(open(log_path, "w+"))
        settings = SimpleNamespace(requests=200, max_tokens=args.max_tokens, max_seconds=299.0,
                                   max_batch_size=ROWS, time_limit=120.0)
        url, pid = start_server(model, settings, stack, log=log, extra=(
            "--served-model-name", "tiny", "--allow-audio-dir", str(audio_dir),
            "--body-timeout", str(args.body_timeout), "--header-timeout", str(args.header_timeout)))
        target = Target(url, pid, "tiny", model, audio_dir, work, args.body_timeout, args.max_tokens,
                        args.header_timeout)
        idle = MemorySampler(pid).start_rss / MIB
        outcomes: list[Outcome] = []
        for attack in ATTACKS:
            if args.quick and attack is forged_output:
                continue  # covered by tests/test_terminal_output.py
            outcomes.extend(attack(target, args.quick))
        log.flush()
        tracebacks = log_path.read_text(errors="replace").count("Traceback")
        alive = httpx.get(f"{url}/health", timeout=10).status_code == 200
    outcomes.append(Outcome("server log", "no traceback, server still answering",
                            tracebacks == 0 and alive, {f"{tracebacks} tracebacks": 1}))
    report = {"idle_rss_mib": round(idle), "attacks": [o.__dict__ for o in outcomes],
              "held": sum(o.held for o in outcomes), "broken": sum(not o.held for o in outcomes)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0 if report["broken"] == 0 else 1


def print_table(report: dict) -> None:
    print(f"server idle RSS {report['idle_rss_mib']} MiB; peak = RSS peak above the RSS before each attack")
    print(f"{'attack':<62} {'result':<6} {'time s':>7} {'peak MiB':>9}  statuses / notes")
    for o in report["attacks"]:
        statuses = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in o["statuses"].items())
        notes = "; ".join(x for x in (statuses, o["note"]) if x)
        print(f"{o['name'][:62]:<62} {'held' if o['held'] else 'BROKE':<6} {o['seconds']:>7.2f} "
              f"{o['peak_mib']:>9.0f}  {notes}  [{o['expect']}]")
    print(f"{report['held']} held, {report['broken']} broke through")


if __name__ == "__main__":
    sys.exit(main())
