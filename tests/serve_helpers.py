"""A real uvicorn server in a thread on a free 127.0.0.1 port, and audio request helpers."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from typing import Any

import numpy as np
import soundfile as sf
import uvicorn


class ServerThread:
    """Serve ``app`` on 127.0.0.1 until :meth:`stop`; the socket is bound before starting."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        options = {"log_level": "warning", "lifespan": "on", "access_log": False, **config}
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def wav_bytes(samples: np.ndarray, sample_rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def audio_part(data: bytes, fmt: str = "wav") -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": fmt}}


def chat_body(*parts: dict[str, Any], question: str = "What do you hear?", model: str = "tiny",
              **options: Any) -> dict[str, Any]:
    content = [*parts, {"type": "text", "text": question}]
    return {"model": model, "messages": [{"role": "user", "content": content}], **options}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EngineProbe:
    """The engine as an app sees it, recording what the app does with it (a test double
    that forwards everything to the real engine).

    ``submitted``: (request, future) per ``submit``; ``aborted``: the ids passed to
    ``abort`` (``abort_called`` is set at the first). When ``gate`` is an Event at submit
    time, the request's first token waits in the engine's worker for it (at most
    ``gate_timeout`` s), after adding the request to ``started`` and setting
    ``first_token``: a test can hold a request inside a running batch until it has done
    what it wants to, instead of hoping for a timing.
    """

    def __init__(self, engine: Any, gate: threading.Event | None = None, gate_timeout: float = 60) -> None:
        self._engine = engine
        self.gate = gate
        self.gate_timeout = gate_timeout
        self.submitted: list[tuple[Any, Any]] = []
        self.aborted: list[str] = []
        self.abort_called = threading.Event()
        self.first_token = threading.Event()
        self.started: list[int] = []  # submit order of the gated requests that made a token

    def reset(self, *, hold_until_abort: bool = False) -> EngineProbe:
        """Forget what was recorded; with ``hold_until_abort``, gate first tokens on the next
        ``abort`` call."""
        self.submitted, self.aborted, self.started = [], [], []
        self.abort_called, self.first_token = threading.Event(), threading.Event()
        self.gate = self.abort_called if hold_until_abort else None
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def submit(self, request: Any, on_text: Any = None) -> Any:
        if self.gate is not None:
            on_text = self._gated(self.gate, on_text, len(self.submitted))
        future = self._engine.submit(request, on_text=on_text)
        self.submitted.append((request, future))
        return future

    def _gated(self, gate: threading.Event, on_text: Any, index: int) -> Any:
        first = [True]

        def gated(delta: str) -> None:  # the engine's worker thread
            if first[0]:
                first[0] = False
                self.started.append(index)
                self.first_token.set()
                gate.wait(self.gate_timeout)
            if on_text is not None:
                on_text(delta)

        return gated

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self._engine.abort(request_id)
        self.abort_called.set()

    def futures(self) -> list[Any]:
        return [future for _, future in self.submitted]


def wait_until(condition: Any, seconds: float = 30, what: str = "condition") -> None:
    """Poll ``condition`` until true, failing after a bounded time (a deadline, not a delay)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {seconds} s"
        time.sleep(0.01)


def sse_payloads(lines: list[str]) -> list[Any]:
    """The JSON payloads of ``data:`` lines, ``[DONE]`` as the string."""
    out = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[6:]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def wait_until_healthy(proc: Any, url: str, timeout: float = 120) -> None:
    """Poll ``url``/health until the server process ``proc`` (a Popen with text stdout) answers."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)
