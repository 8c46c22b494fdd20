"""Hostile clients against a real server (uvicorn in a thread, the real tiny engine):
malformed JSON, cross-site bodies, foreign Host headers (DNS rebinding), uploads that
stall or trickle, streams whose clients vanish, and where the engine tokenizes.

Every refusal is checked for its status and OpenAI-shaped error code, and for what the
server logged: a hostile request must never produce an ERROR record or a traceback (uvicorn
logs "Exception in ASGI application" on the ``uvicorn.error`` logger, which does not
propagate to the root logger, so the capture is attached to ``uvicorn`` too).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from midashenglm.inference import Engine, Request, SamplingParams
from midashenglm.serve.app import MAX_JSON_DEPTH, MAX_JSON_NUMBER_CHARS, ServeConfig, create_app
from tests.conftest import clip
from tests.serve_helpers import (
    EngineProbe,
    ServerThread,
    audio_part,
    chat_body,
    wait_until,
    wav_bytes,
)

CHAT = "/v1/chat/completions"


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def _servers(engine) -> Iterator[dict[str, ServerThread]]:
    """Servers over the module's engine, one per configuration, shared by the tests."""
    pool: dict[str, ServerThread] = {}
    yield pool
    for server in pool.values():
        server.__exit__(None, None, None)


@pytest.fixture
def serve(engine, _servers, caplog) -> Iterator[Callable[..., ServerThread]]:
    """``serve(**config)``: a started server (shared with the other tests asking for the same
    configuration); its ERROR records (``midashenglm.serve``, ``uvicorn``, anything else
    reaching the root logger) land in caplog. ``app_engine``: a server of its own over it."""
    own: list[ServerThread] = []
    uvicorn_log = logging.getLogger("uvicorn")

    def start(app_engine: Any = None, **options: Any) -> ServerThread:
        config = ServeConfig(**{"served_model_name": "tiny", "max_tokens_limit": 256,
                                "request_timeout": 120, **options})
        key = repr(sorted(options.items()))
        if app_engine is not None:
            server = ServerThread(create_app(app_engine, config)).__enter__()
            own.append(server)
        elif key in _servers:
            server = _servers[key]
        else:
            server = _servers[key] = ServerThread(create_app(engine, config)).__enter__()
        # Creating a server (re)configures uvicorn's loggers and drops their handlers:
        # attach the capture after it, and prove that it captures.
        uvicorn_log.addHandler(caplog.handler)
        logging.getLogger("uvicorn.error").error("capture check")
        assert [r.getMessage() for r in caplog.records][-1:] == ["capture check"]
        caplog.clear()
        return server

    yield start
    for server in own:
        server.__exit__(None, None, None)
    uvicorn_log.removeHandler(caplog.handler)


def errors_logged(caplog) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR
            or r.exc_info]


def error_code(response: httpx.Response) -> str | None:
    return response.json()["error"]["code"]


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON text (brackets outside strings)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def with_field(body: dict[str, Any], name: str, raw_value: str) -> str:
    """``body`` as JSON text with one more field whose value is written verbatim."""
    return json.dumps(body)[:-1] + f', "{name}": {raw_value}}}'


def raw_head(port: int, *, method: str = "POST", path: str = CHAT, host: str | None = None,
             content_type: str | None = "application/json", length: int | None = None,
             extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response (status, lower-cased headers, body) read from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"connection closed before a response: {data!r}")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return int(status_line.split(" ")[1]), headers, body


def raw_request(port: int, request: bytes, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    """Send raw bytes; the status and the parsed JSON body (``{}`` when not JSON)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        status, _, body = read_response(sock)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


def small_body(**options: Any) -> dict[str, Any]:
    return chat_body(max_tokens=2, **options)


# ------------------------------------------------------------------ 1. malformed JSON
GOOD = small_body()
INVALID_JSON: dict[str, bytes] = {
    "1000-deep nesting in an ignored field": with_field(GOOD, "x", "[" * 1000 + "]" * 1000).encode(),
    "100000-deep nesting (beyond the recursion limit)": ("[" * 100_000 + "]" * 100_000).encode(),
    f"{MAX_JSON_DEPTH + 1}-deep nesting": with_field(
        GOOD, "x", "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH).encode(),
    "5000-digit integer": with_field(GOOD, "seed", "7" * 5000).encode(),
    f"{MAX_JSON_NUMBER_CHARS + 1}-character number": with_field(
        GOOD, "top_p", "1." + "0" * (MAX_JSON_NUMBER_CHARS - 1)).encode(),
    "NaN": with_field(GOOD, "temperature", "NaN").encode(),
    "Infinity": with_field(GOOD, "temperature", "Infinity").encode(),
    "-Infinity": with_field(GOOD, "temperature", "-Infinity").encode(),
    "non-UTF-8 bytes in a string": json.dumps(GOOD).replace("hear", "he\udcffar", 1).encode(
        "utf-8", "surrogateescape"),
    "a UTF-16 byte order mark then junk": b"\xff\xfe{}",
    "a JSON array": f"[{json.dumps(GOOD)}]".encode(),
    "a JSON string": b'"hello"',
    "an empty body": b"",
    "truncated JSON": json.dumps(GOOD)[:-5].encode(),
}


def test_the_invalid_json_cases_are_what_they_claim():
    """The bodies above are built as described (computed here, not by the server)."""
    deep = INVALID_JSON[f"{MAX_JSON_DEPTH + 1}-deep nesting"].decode()
    assert nesting_depth(deep) == 33 == MAX_JSON_DEPTH + 1
    assert nesting_depth(INVALID_JSON["1000-deep nesting in an ignored field"].decode()) == 1001
    number = INVALID_JSON[f"{MAX_JSON_NUMBER_CHARS + 1}-character number"].decode()
    written = number.rsplit('"top_p": ', 1)[1].rstrip("}")
    assert len(written) == 65 and float(written) == 1.0  # a plain 1.0, in 65 characters
    assert len(INVALID_JSON["5000-digit integer"].decode().rsplit('"seed": ', 1)[1]) == 5001
    with pytest.raises(UnicodeDecodeError):
        INVALID_JSON["non-UTF-8 bytes in a string"].decode("utf-8")


@pytest.mark.parametrize("name", list(INVALID_JSON))
def test_invalid_json_is_a_400_invalid_json_without_a_traceback(serve, caplog, engine, name):
    server = serve()
    requests_before = engine.stats["requests"]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        started = time.perf_counter()
        response = client.post(CHAT, content=INVALID_JSON[name],
                               headers={"Content-Type": "application/json"})
        elapsed = time.perf_counter() - started
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_json" and error["type"] == "invalid_request_error"
        assert elapsed < 2.0  # refused while parsing: no seconds spent on digits or depth
        # The server is still answering normally.
        assert client.post(CHAT, json=GOOD).status_code == 200
    assert engine.stats["requests"] == requests_before + 1  # only the good request ran
    assert errors_logged(caplog) == []


def test_nesting_at_the_limit_passes_and_one_more_is_refused(serve):
    server = serve()
    at_limit = with_field(GOOD, "x", "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))
    over = with_field(GOOD, "x", "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    assert (nesting_depth(at_limit), nesting_depth(over)) == (32, 33)
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        # 32 deep: past the JSON checks, validated (an unknown field is allowed) and answered.
        ok = client.post(CHAT, content=at_limit, headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["role"] == "assistant"
        # 32 deep with a wrong model name: reaches validation (404), not the JSON check.
        wrong = client.post(CHAT, content=at_limit.replace('"tiny"', '"gpt-4o"'), headers=headers)
        assert (wrong.status_code, error_code(wrong)) == (404, "model_not_found")
        refused = client.post(CHAT, content=over, headers=headers)
        assert (refused.status_code, error_code(refused)) == (400, "invalid_json")
        assert str(MAX_JSON_DEPTH) in refused.json()["error"]["message"]


def test_numbers_at_the_size_limit_pass(serve):
    server = serve()
    top_p = "1." + "0" * (MAX_JSON_NUMBER_CHARS - 2)  # 64 characters, == 1.0
    seed = "9" * MAX_JSON_NUMBER_CHARS  # 64 digits
    assert len(top_p) == len(seed) == 64
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for field, value in (("top_p", top_p), ("x_ignored", seed)):
            response = client.post(CHAT, content=with_field(GOOD, field, value), headers=headers)
            assert response.status_code == 200, (field, response.text)
        # Within JSON's limit, the seed has its own range (what torch's generator takes).
        response = client.post(CHAT, content=with_field(GOOD, "seed", seed), headers=headers)
        assert (response.status_code, error_code(response)) == (400, "invalid_value")
        too_long = client.post(CHAT, content=with_field(GOOD, "seed", seed + "9"), headers=headers)
        assert (too_long.status_code, error_code(too_long)) == (400, "invalid_json")


# ------------------------------------------------------------------ 2. Content-Type
@pytest.mark.parametrize("content_type, expected", [
    ("text/plain", 415),
    ("text/plain;charset=UTF-8", 415),
    ("application/x-www-form-urlencoded", 415),
    ("multipart/form-data; boundary=x", 415),
    ("application/jsonp", 415),
    (None, 415),  # missing
    ("application/json", 200),
    ("application/json; charset=utf-8", 200),
    ("Application/JSON", 200),
])
def test_only_json_bodies_are_taken(serve, engine, caplog, content_type, expected):
    server = serve()
    payload = json.dumps(GOOD).encode()
    requests_before = engine.stats["requests"]
    head = raw_head(server.port, content_type=content_type, length=len(payload))
    status, body = raw_request(server.port, head + payload)
    assert status == expected, body
    if expected == 415:
        assert body["error"]["code"] == "unsupported_media_type"
        assert engine.stats["requests"] == requests_before  # never reached the engine
    else:
        assert body["choices"][0]["message"]["role"] == "assistant"
    assert errors_logged(caplog) == []


def test_a_cross_site_body_is_refused_before_it_is_read(serve):
    """A text/plain POST is answered at once, without waiting for its (absent) body: the
    415 does not depend on the client sending anything."""
    server = serve(body_timeout=30)
    started = time.perf_counter()
    status, body = raw_request(server.port, raw_head(server.port, content_type="text/plain",
                                                     length=1000))
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
    assert time.perf_counter() - started < 5  # far below the 30 s body deadline


# ------------------------------------------------------------------ 3. Host check
LOOPBACK_HOSTS = ["localhost", "localhost:8000", "LOCALHOST:8000", "localhost.", "127.0.0.1",
                  "127.0.0.1:8000", "127.9.9.9", "[::1]", "[::1]:8000", "foo.localhost",
                  "foo.localhost:8000"]
FOREIGN_HOSTS = ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example",
                 "0.0.0.0", "10.0.0.1:8000", "proxy.internal"]


def host_statuses(port: int, host: str) -> dict[str, tuple[int, str | None]]:
    """Status and error code of GET /, GET /health and a POST naming ``host``."""
    payload = json.dumps(GOOD).encode()
    out = {}
    for label, request in (
            ("GET /", raw_head(port, method="GET", path="/", host=host, content_type=None)),
            ("GET /health", raw_head(port, method="GET", path="/health", host=host,
                                     content_type=None)),
            ("POST", raw_head(port, host=host, length=len(payload)) + payload)):
        status, body = raw_request(port, request)
        out[label] = (status, (body.get("error") or {}).get("code") if body else None)
    return out


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_loopback_names_are_served(serve, host):
    server = serve(allowed_hosts=())
    assert host_statuses(server.port, host) == {
        "GET /": (200, None), "GET /health": (200, None), "POST": (200, None)}


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_foreign_hosts_get_421_on_every_route(serve, caplog, host):
    """DNS rebinding: a page whose name now resolves to 127.0.0.1 still sends its own name,
    and could read the page and /health as well as post."""
    server = serve(allowed_hosts=())
    invalid = (421, "invalid_host")
    assert host_statuses(server.port, host) == {"GET /": invalid, "GET /health": invalid,
                                                "POST": invalid}
    assert errors_logged(caplog) == []


def test_a_foreign_host_is_refused_before_its_body_is_read(serve):
    server = serve(allowed_hosts=(), body_timeout=30)
    started = time.perf_counter()
    status, body = raw_request(server.port, raw_head(server.port, host="evil.example", length=1000))
    assert (status, body["error"]["code"]) == (421, "invalid_host")
    assert time.perf_counter() - started < 5


def test_allowed_names_pass_and_none_allows_any_host(serve):
    named = serve(allowed_hosts=("proxy.internal",))
    for host in ("proxy.internal", "proxy.internal:8080", "PROXY.internal", "localhost:1"):
        assert set(host_statuses(named.port, host).values()) == {(200, None)}, host
    for host in ("evil.example", "proxy.internal.evil.example", "internal"):
        assert set(host_statuses(named.port, host).values()) == {(421, "invalid_host")}, host
    anything = serve(allowed_hosts=None)
    for host in ("evil.example", "127.0.0.1.nip.io", "proxy.internal"):
        assert set(host_statuses(anything.port, host).values()) == {(200, None)}, host


def test_the_host_check_is_on_only_when_configured(serve):
    """The /health answer over httpx, whose Host header can be set explicitly."""
    checked, open_ = serve(allowed_hosts=()), serve()
    for server, expected in ((checked, 421), (open_, 200)):
        reply = httpx.get(f"{server.url}/health", headers={"Host": "evil.example"}, timeout=30)
        assert reply.status_code == expected


# ------------------------------------------------------------------ 4. body deadline
def test_a_stalled_upload_gets_408_at_the_body_deadline(serve, caplog):
    server = serve(body_timeout=1.0)
    started = time.perf_counter()
    status, body = raw_request(server.port, raw_head(server.port, length=1000))
    elapsed = time.perf_counter() - started
    assert (status, body["error"]["code"]) == (408, "body_timeout")
    assert 0.9 <= elapsed < 3.0
    assert errors_logged(caplog) == []


def trickle(port: int, head: bytes, piece: bytes, every: float, give_up: float) -> tuple[int, float]:
    """Send ``head`` then ``piece`` every ``every`` s until a response arrives; its status
    and when it came (0 when none within ``give_up`` s)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(every)
        while time.perf_counter() - started < give_up:
            try:
                sock.sendall(piece)
            except OSError:
                pass  # the server answered and closed: read what it sent
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if data:
                return int(data.split(b" ", 2)[1]), time.perf_counter() - started
            break
    return 0, time.perf_counter() - started


def test_a_trickling_upload_is_cut_at_the_body_deadline(serve):
    server = serve(body_timeout=1.0)
    status, when = trickle(server.port, raw_head(server.port, length=1000), b" ", 0.4, 8.0)
    assert status == 408 and 0.9 <= when < 3.0, (status, when)


def test_a_trickling_chunked_upload_is_cut_at_the_body_deadline(serve):
    """A chunked body has no length: the deadline covers it too."""
    server = serve(body_timeout=1.0)
    head = raw_head(server.port, extra="Transfer-Encoding: chunked\r\n")
    status, when = trickle(server.port, head, b"1\r\n \r\n", 0.4, 8.0)
    assert status == 408 and 0.9 <= when < 3.0, (status, when)


def test_a_slow_upload_within_the_deadline_is_answered(serve):
    server = serve(body_timeout=2.0)
    payload = json.dumps(GOOD).encode()
    third = len(payload) // 3
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(raw_head(server.port, length=len(payload)))
        for start in (0, third, 2 * third):
            time.sleep(0.2)
            sock.sendall(payload[start:start + third] if start < 2 * third else payload[start:])
        status, _, body = read_response(sock)
    assert status == 200, body


def test_stalled_uploads_hold_no_queue_slot(serve, caplog):
    """With one queue slot and five uploads stalled, a normal request is still answered
    (if a stalled upload held the slot, it would get 429), while the stalled uploads are
    still waiting; then they vanish mid-upload without a trace in the log."""
    server = serve(max_queue=1, body_timeout=20.0)
    stalled = []
    try:
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(raw_head(server.port, length=1000) + b'{"model": ')
            stalled.append(sock)
        opened = time.perf_counter()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/health").json()["in_flight"] == 0
            reply = client.post(CHAT, json=GOOD)
            assert reply.status_code == 200, reply.text
        assert time.perf_counter() - opened < 20.0
        for sock in stalled:  # nothing answered them yet: still within their deadline
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in stalled:
            sock.close()
    wait_until(lambda: httpx.get(f"{server.url}/health", timeout=10).status_code == 200, 10)
    assert errors_logged(caplog) == []


def test_clients_that_vanish_mid_upload_leave_no_traceback(serve, caplog):
    server = serve(body_timeout=5.0)
    payload = json.dumps(chat_body(audio_part(wav_bytes(clip(2.0))), max_tokens=2)).encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(raw_head(server.port, length=len(payload)) + payload[: len(payload) // 2])
    # Each disconnect reaches the app as http.disconnect; let the server handle them all.
    time.sleep(0.5)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post(CHAT, json=GOOD).status_code == 200
        assert client.get("/health").json()["in_flight"] == 0
    assert errors_logged(caplog) == []


# ------------------------------------------------------------------ 5. dead streams
def test_streams_whose_clients_vanish_are_aborted(serve, engine, caplog):
    """Eight streaming requests for 200 tokens each (ignore_eos): each client reads the
    first event and hangs up. Running them out would take at least 199 decode steps."""
    n, max_tokens = 8, 200
    probe = EngineProbe(engine)
    server = serve(app_engine=probe)
    payload = json.dumps(chat_body(audio_part(wav_bytes(clip(1.0))), max_tokens=max_tokens,
                                   ignore_eos=True, stream=True)).encode()
    steps_before, aborted_before = engine.stats["decode_steps"], engine.stats["aborted"]
    socks = []
    try:
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            sock.sendall(raw_head(server.port, length=len(payload)) + payload)
            socks.append(sock)
        for sock in socks:
            data = b""
            while b"data: " not in data:
                piece = sock.recv(4096)
                assert piece, "the stream closed before its first event"
                data += piece
            assert data.startswith(b"HTTP/1.1 200")
            sock.close()
    finally:
        for sock in socks:
            sock.close()
    closed = time.perf_counter()
    wait_until(lambda: httpx.get(f"{server.url}/health", timeout=10).json()["in_flight"] == 0,
               2.0, "in_flight back to 0")
    assert time.perf_counter() - closed < 2.0
    results = [future.result(timeout=30) for future in probe.futures()]
    assert len(results) == n
    assert [r.finish_reason for r in results] == ["abort"] * n
    assert all(r.completion_tokens < 50 for r in results)
    assert engine.stats["decode_steps"] - steps_before < 50
    assert engine.stats["aborted"] - aborted_before == n
    assert errors_logged(caplog) == []


# ------------------------------------------------------------------ 6. tokenization threads
class _CallRecorder:
    """Wraps a callable, recording the name of the thread of each call."""

    def __init__(self, wrapped: Callable[..., Any]) -> None:
        self.wrapped = wrapped
        self.threads: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.threads.append(threading.current_thread().name)
        return self.wrapped(*args, **kwargs)


class _TokenizerRecorder:
    """The engine's tokenizer, recording the thread of every encoding call (decoding on the
    worker thread is its job; encoding there would stall every running row)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.record = _CallRecorder(tokenizer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.record(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _requests(tag: str) -> list[Request]:
    def conversation(text: str, seconds: float | None) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if seconds is not None:
            content.append({"type": "audio", "audio": clip(seconds, seed=3), "sampling_rate": 16000})
        return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]

    long_text = "All work and no play makes Jack a dull boy. " * 1000  # > PIECE_CHARS: counted
    return [Request(conversation("What do you hear?", 0.6), SamplingParams(max_new_tokens=3),
                    f"{tag}-audio"),
            Request(conversation("Say something.", None), SamplingParams(max_new_tokens=3),
                    f"{tag}-text"),
            Request(conversation(long_text, 0.5), SamplingParams(max_new_tokens=3), f"{tag}-long")]


def test_tokenizing_never_runs_on_the_engine_thread_nor_the_consumer(tiny_model, processor,
                                                                     monkeypatch):
    eng = Engine(tiny_model, processor, max_num_seqs=4)
    prompt_ids = _CallRecorder(processor.prompt_ids)
    load_audio = _CallRecorder(processor.load_audio_parts)
    monkeypatch.setattr(processor, "prompt_ids", prompt_ids)
    monkeypatch.setattr(processor, "load_audio_parts", load_audio)
    tokenizer = _TokenizerRecorder(eng.tokenizer)
    eng.tokenizer = tokenizer  # text_budget's piece counting goes through it
    here = threading.current_thread().name
    recorders = {"prompt_ids": prompt_ids, "load_audio_parts": load_audio,
                 "tokenizer()": tokenizer.record}

    def calls() -> dict[str, list[str]]:
        out = {name: list(r.threads) for name, r in recorders.items()}
        for r in recorders.values():
            r.threads.clear()
        return out

    def check(label: str, seen: dict[str, list[str]], expected_prompts: int) -> None:
        assert len(seen["prompt_ids"]) == expected_prompts, (label, seen)
        assert len(seen["load_audio_parts"]) == 3, (label, seen)
        assert seen["tokenizer()"], (label, "the long text was never counted")
        for name, threads in seen.items():
            assert "midashenglm-engine" not in threads, (label, name, threads)
            assert here not in threads, (label, name, threads)
            assert all(t.startswith("midashenglm-load") for t in threads), (label, name, threads)

    try:
        # The long text (44,000 characters, ~25,000 tokens) cannot fit the 4096-token
        # window: refused from its first pieces, so only two requests reach prompt_ids.
        results = eng.generate(_requests("generate"))
        assert [r.error is None for r in results] == [True, True, False]
        assert "shorten the text" in results[2].error
        check("generate", calls(), 2)

        seen_results = dict(eng.iter_results(_requests("iter")))
        assert sorted(seen_results) == [0, 1, 2]
        check("iter_results", calls(), 2)

        futures = [eng.submit(request) for request in _requests("submit")]
        results = [f.result(timeout=120) for f in futures]
        assert [r.error is None for r in results] == [True, True, False]
        assert eng._worker is not None and eng._worker.name == "midashenglm-engine"
        check("submit", calls(), 2)

        # prepare runs in its caller's thread, by design (the server calls it in a worker).
        box: dict[str, Any] = {}
        caller = threading.Thread(target=lambda: box.update(p=eng.prepare(_requests("p")[0])),
                                  name="a-caller")
        caller.start()
        caller.join(60)
        assert calls()["prompt_ids"] == ["a-caller"]
        result = eng.submit(box["p"]).result(timeout=60)
        assert result.error is None
        assert calls()["prompt_ids"] == []  # a prepared request is not tokenized again
    finally:
        eng.close()


# --------------------------------------------------------- a sampling parameter out of range
def test_a_top_k_beyond_int64_is_refused_by_validation(serve, engine):
    server = serve()
    groups_before = engine.stats["prefills"]
    reply = httpx.post(f"{server.url}{CHAT}", json=small_body(temperature=1.0, top_k=2**63),
                       timeout=60)
    assert reply.status_code == 400
    assert error_code(reply) in ("invalid_value", "invalid_sampling_parameter")
    assert engine.stats["prefills"] == groups_before  # never reached a batch


# ------------------------------------------- found by a second round of attacks (issue 11)
def test_request_shape_is_bounded_before_templating(serve):
    from midashenglm.serve.schemas import MAX_MESSAGES, MAX_PARTS

    server = serve()
    empty = {"role": "user", "content": ""}
    last = chat_body(question="hi")["messages"]
    too_many = {**chat_body(), "messages": [empty] * MAX_MESSAGES + last}
    reply = httpx.post(f"{server.url}{CHAT}", json=too_many, timeout=60)
    assert reply.status_code == 400 and error_code(reply) == "invalid_value"
    assert f"at most {MAX_MESSAGES}" in reply.json()["error"]["message"]
    parts = [{"type": "text", "text": "x"}] * (MAX_PARTS + 1)
    reply = httpx.post(f"{server.url}{CHAT}", json={**chat_body(), "messages": [
        {"role": "user", "content": parts}]}, timeout=60)
    assert reply.status_code == 400 and f"at most {MAX_PARTS} content parts" in reply.text


def test_tiny_clips_count_as_the_model_pads_them(serve):
    """A 1-sample clip costs the model 0.2 s of audio (padded to 3200 samples): 11 of them
    exceed a 2 s limit although their samples add up to 11/16000 s."""
    server = serve(max_audio_seconds=2.0)
    one_sample = wav_bytes(clip(1 / 16000))
    ten = chat_body(*[audio_part(one_sample)] * 10, max_tokens=2)
    assert httpx.post(f"{server.url}{CHAT}", json=ten, timeout=60).status_code == 200
    eleven = chat_body(*[audio_part(one_sample)] * 11, max_tokens=2)
    reply = httpx.post(f"{server.url}{CHAT}", json=eleven, timeout=60)
    assert reply.status_code == 400 and error_code(reply) == "audio_too_long"


@pytest.mark.parametrize("raw", [
    b'{"model": "tiny", "x": [' + b"0," * 100_000 + b"0]}",
    b"\xef\xbb\xbf" + json.dumps({"model": "tiny"}).encode(),
    json.dumps({"model": "tiny"}).encode("utf-16"),
    json.dumps({"model": "tiny"}).encode("utf-32-le"),
], ids=["100001 values", "UTF-8 BOM", "UTF-16", "UTF-32"])
def test_bodies_huge_in_values_or_not_utf8_are_invalid_json(serve, raw):
    server = serve()
    reply = httpx.post(f"{server.url}{CHAT}", content=raw,
                       headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 400 and error_code(reply) == "invalid_json"


def test_echoed_client_values_are_cut_short(serve):
    server = serve()
    name = "m" * 1_000_000
    reply = httpx.post(f"{server.url}{CHAT}", json={**chat_body(), "model": name}, timeout=60)
    assert reply.status_code == 404 and len(reply.content) < 1024
    assert "(1000002 characters)" in reply.json()["error"]["message"]


@pytest.mark.parametrize("seed,ok", [(2**64 - 1, True), (-(2**63), True), (2**64, False),
                                     (-(2**63) - 1, False)])
def test_seed_is_bounded_to_what_the_generator_takes(serve, seed, ok):
    server = serve()
    reply = httpx.post(f"{server.url}{CHAT}", json=chat_body(max_tokens=2, temperature=1.0,
                                                             seed=seed), timeout=60)
    assert (reply.status_code == 200) == ok
    if not ok:
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "seed"


@pytest.mark.parametrize("host", ["127.0.0.1:80@evil.example", "[::1]evil.com", "[::1].evil.com",
                                  "localhost/evil", "local host"])
def test_host_headers_that_are_not_host_names_are_refused(serve, host):
    server = serve(allowed_hosts=())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw_head(server.port, method="GET", path="/health", host=host,
                              content_type=None))
        status, _, _ = read_response(sock)
    assert status in (400, 421)  # h11 itself refuses some (400); ours answer 421


def test_upper_case_data_urls_are_data_urls(serve):
    server = serve()
    data = "DATA:audio/wav;base64," + __import__("base64").b64encode(wav_bytes(clip(0.5))).decode()
    body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "audio_url", "audio_url": {"url": data}}, {"type": "text", "text": "What?"}]}]}
    assert httpx.post(f"{server.url}{CHAT}", json=body, timeout=60).status_code == 200


def test_a_timed_out_request_holds_its_queue_slot_until_its_preparation_ends(engine, serve):
    """The worker thread preparing a request cannot be stopped: after its 504 the slot stays
    taken until it returns, so --max-queue still bounds the work in progress."""
    release = threading.Event()

    class SlowPrepare(EngineProbe):
        def prepare(self, request: Any) -> Any:
            release.wait(30)
            return engine.prepare(request)

    server = serve(app_engine=SlowPrepare(engine), max_queue=1, request_timeout=0.5)
    first = httpx.post(f"{server.url}{CHAT}", json=chat_body(max_tokens=2), timeout=30)
    assert first.status_code == 504
    second = httpx.post(f"{server.url}{CHAT}", json=chat_body(max_tokens=2), timeout=30)
    assert second.status_code == 429  # the first one's preparation is still running
    release.set()
    wait_until(lambda: httpx.get(f"{server.url}/health", timeout=10).json()["in_flight"] == 0)


@pytest.fixture
def deadline_server(engine):
    from midashenglm.serve.protocol import deadline_protocol

    app = create_app(engine, ServeConfig(served_model_name="tiny", body_timeout=30))
    with ServerThread(app, http=deadline_protocol(1.0)) as server:
        yield server


def test_slow_headers_are_cut_at_the_header_deadline(deadline_server):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", deadline_server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
        closed = False
        while time.monotonic() - t0 < 6:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                sock.settimeout(0.3)
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed and 0.9 < time.monotonic() - t0 < 3
    # A prompt client on the same server is unaffected (also on a kept-alive connection).
    with httpx.Client(base_url=deadline_server.url, timeout=30) as client:
        for _ in range(2):
            assert client.post(CHAT, json=chat_body(max_tokens=2)).status_code == 200


def test_a_body_in_one_byte_http_chunks_is_cut_off(deadline_server):
    with socket.create_connection(("127.0.0.1", deadline_server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        t0 = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(1000):
                sock.sendall(b"1\r\n \r\n" * 100)
                time.sleep(0.001)
            sock.settimeout(5)
            if sock.recv(1) == b"":
                raise ConnectionResetError("closed")
        assert time.monotonic() - t0 < 5
    # Chunked uploads of normal pieces pass.
    body = json.dumps(chat_body(max_tokens=2)).encode()
    pieces = [body[i:i + 64] for i in range(0, len(body), 64)]
    reply = httpx.post(f"{deadline_server.url}{CHAT}", content=iter(pieces),
                       headers={"Content-Type": "application/json"}, timeout=30)
    assert reply.status_code == 200


def test_a_lone_surrogate_in_text_is_named(serve):
    server = serve()
    raw = json.dumps(chat_body(question="hi \ud800 there"))  # JSON escapes it as \ud800
    reply = httpx.post(f"{server.url}{CHAT}", content=raw,
                       headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 400 and error_code(reply) == "invalid_value"
    assert "lone surrogate" in reply.json()["error"]["message"]
    assert reply.json()["error"]["param"] == "messages[0].content[0].text"
