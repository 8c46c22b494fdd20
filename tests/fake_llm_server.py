"""A real OpenAI-compatible HTTP server on loopback that misbehaves on purpose.

``FakeLLM`` serves ``GET /v1/models`` and ``POST /v1/chat/completions`` from a
``ThreadingHTTPServer`` in a background thread. What each chat request gets is a
*behaviour*, taken from a queue (``script=[...]``, then ``default``) or decided by a rule
(``rule(kind, prompt, seen) -> behaviour``, e.g. :func:`chaos_rule`):

==============  ==========================================================================
``ok``          a grounded answer built from the facts in the prompt (the ``Sound events:``,
                ``Speech:``, ``Music:`` and ``Acoustics:`` lines): a caption, or 5 QA pairs
``slow``        ``ok`` after ``delay`` seconds (to see the client's concurrency limit)
``timeout``     sleeps ``hang`` seconds before answering (past the client's timeout)
``500``         HTTP 500 with an OpenAI-style error body
``garbage``     HTTP 200 whose body is not JSON
``empty``       an empty answer
``badjson``     QA: text that is no JSON; caption: a JSON list instead of text
``wrongcount``  QA: three pairs instead of five; caption: 120 words
``refusal``     "I'm sorry, but I can't help with that."
``ungrounded``  "A solo guitar plays in a cathedral while three people speak French."
                (QA: answers naming the same inventions)
``think``       ``ok`` wrapped after a ``<think>...</think>`` block naming a guitar
==============  ==========================================================================

It records every request (``requests``: kind, behaviour, messages), counts them, and the
highest number in flight at once (``max_in_flight``). No project code is imported: it is
an independent implementation of the protocol.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SUBCATEGORIES = ("direct perception", "sound characteristics", "quality assessment",
                 "environment reasoning", "inference and judgement", "application context")
UNGROUNDED_CAPTION = "A solo guitar plays in a cathedral while three people speak French."

# Deterministic misbehaviour for pipeline tests: the n-th time a prompt is seen it gets the
# n-th behaviour of a sequence chosen by the prompt's hash (the last one repeats).
CHAOS_SEQUENCES: tuple[tuple[str, ...], ...] = (
    ("ok",), ("ok",), ("500", "ok"), ("timeout", "ok"), ("empty", "ok"),
    ("badjson", "ok"), ("ungrounded",), ("refusal", "ok"), ("think",), ("500",),
)


def chaos_rule(seed: int = 0, sequences: tuple[tuple[str, ...], ...] = CHAOS_SEQUENCES
               ) -> Callable[[str, str, int], str]:
    def rule(kind: str, prompt: str, seen: int) -> str:
        digest = hashlib.sha256(f"{seed}\0{kind}\0{prompt}".encode()).digest()
        seq = sequences[int.from_bytes(digest[:4], "big") % len(sequences)]
        return seq[min(seen, len(seq) - 1)]

    return rule


def _first_name(label: str) -> str:
    return label.split(" (")[0].split(", ")[0].strip().lower()


def _facts(prompt: str) -> dict[str, Any]:
    """The facts lines of a prompt (as the project's ClipFacts.summary_lines writes them)."""
    out: dict[str, Any] = {"sounds": [], "speech": None, "music": None, "acoustics": []}
    for line in prompt.splitlines():
        if line.startswith("Sound events:"):
            body = line.split(":", 1)[1].strip()
            if body != "none reported":
                out["sounds"] = [re.sub(r"\s*\([0-9.]+\)$", "", item).strip()
                                 for item in body.split("; ") if item.strip()]
        elif line.startswith("Speech: yes"):
            out["speech"] = line
        elif line.startswith("Music: yes"):
            out["music"] = line
        elif line.startswith("Acoustics:"):
            out["acoustics"] = [w.strip() for w in line.split(":", 1)[1].split(";")]
    return out


def grounded_caption(prompt: str) -> str:
    facts = _facts(prompt)
    names = list(dict.fromkeys(_first_name(s) for s in facts["sounds"]))[:4]
    if names:
        text = "The clip contains " + (", ".join(names[:-1]) + " and " + names[-1]
                                        if len(names) > 1 else names[0]) + "."
    else:
        text = "A short audio recording."
    if facts["acoustics"]:
        text += " The recording is " + ", ".join(facts["acoustics"]) + "."
    return text


def grounded_qa(prompt: str) -> list[dict[str, str]]:
    facts = _facts(prompt)
    names = list(dict.fromkeys(_first_name(s) for s in facts["sounds"]))[:3] or ["little"]
    acoustics = ", ".join(facts["acoustics"]) or "not measured"
    answers = [f"It contains {' and '.join(names)}.",
               f"The most prominent sound is {names[0]}.",
               f"The recording is {acoustics}.",
               "The clip gives few cues about the place.",
               f"The main content is {names[0]}."]
    return [{"subcategory": sub, "question": f"Question {k + 1} about the clip?", "answer": a}
            for k, (sub, a) in enumerate(zip(SUBCATEGORIES, answers, strict=False))]


def answer_text(kind: str, behaviour: str, prompt: str) -> str:
    qa = kind == "qa"
    if behaviour in ("ok", "slow", "timeout"):
        return json.dumps(grounded_qa(prompt)) if qa else grounded_caption(prompt)
    if behaviour == "think":
        inner = json.dumps(grounded_qa(prompt)) if qa else grounded_caption(prompt)
        return "<think>Maybe a solo guitar? No: only what the facts list.</think>\n" + inner
    if behaviour == "empty":
        return ""
    if behaviour == "badjson":
        return "Here are the pairs: {subcategory: direct perception" if qa else '["a", "b"]'
    if behaviour == "wrongcount":
        return json.dumps(grounded_qa(prompt)[:3]) if qa else " ".join(["word"] * 120)
    if behaviour == "refusal":
        return "I'm sorry, but I can't help with that."
    if behaviour == "ungrounded":
        if qa:
            pairs = grounded_qa(prompt)
            pairs[0]["answer"] = "A solo guitar plays while three people speak French."
            return json.dumps(pairs)
        return UNGROUNDED_CAPTION
    raise ValueError(f"unknown behaviour {behaviour!r}")


class FakeLLM:
    """The server (see the module docstring). Use as a context manager or start()/stop()."""

    def __init__(self, script: Iterable[str] = (), *, default: str = "ok",
                 rule: Callable[[str, str, int], str] | None = None, delay: float = 0.2,
                 hang: float = 3.0, model: str = "fake-llm") -> None:
        self.queue: deque[str] = deque(script)
        self.default = default
        self.rule = rule
        self.delay = delay
        self.hang = hang
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def script(self, *behaviours: str) -> None:
        with self._lock:
            self.queue.extend(behaviours)

    def reset(self, wait: float = 10.0) -> None:
        """Forget the requests, the script and the counts; first wait (up to ``wait`` s) for
        requests still in flight (a hung ``timeout``) so they do not count in the next test."""
        deadline = time.monotonic() + wait
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self.requests.clear()
            self.queue.clear()
            self._seen.clear()
            self.max_in_flight = 0

    def start(self) -> FakeLLM:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout): expected

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": fake.model, "object": "model", "owned_by": "test"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                fake._handle(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ requests
    def _handle(self, handler: Any, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
        prompt = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") != "system")
        kind = "qa" if "question-answer" in system else "caption"
        with self._lock:
            seen = self._seen.get(kind + prompt, 0)
            self._seen[kind + prompt] = seen + 1
            if self.queue:
                behaviour = self.queue.popleft()
            elif self.rule is not None:
                behaviour = self.rule(kind, prompt, seen)
            else:
                behaviour = self.default
            self.requests.append({"kind": kind, "behaviour": behaviour, "messages": messages,
                                  "prompt": prompt})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if behaviour == "slow":
                time.sleep(self.delay)
            elif behaviour == "timeout":
                time.sleep(self.hang)
            if behaviour == "garbage":  # HTTP 200 whose body is no JSON at all
                data = b"<html>upstream hiccup</html>"
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)
                return
            if behaviour == "500":
                handler._send(500, {"error": {"message": "internal error (scripted)",
                                              "type": "server_error"}})
                return
            text = answer_text(kind, behaviour, prompt)
            handler._send(200, {
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
                "created": 0, "model": body.get("model", self.model),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": len(prompt.split()),
                          "completion_tokens": len(text.split()),
                          "total_tokens": len(prompt.split()) + len(text.split())}})
        finally:
            with self._lock:
                self.in_flight -= 1
