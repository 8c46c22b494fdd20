"""The FastAPI application: OpenAI-compatible chat completions over the batching engine.

Request path
    1. Authentication: with an API key configured, every ``/v1`` route needs
       ``Authorization: Bearer KEY`` (compared in constant time); 401 otherwise. ``/health``
       and the web page stay open (the page asks for the key when ``/health`` says one is
       required).
    0. Host check: a server bound to a loopback address answers only requests whose
       ``Host`` is a loopback name (421 otherwise), so a web page cannot reach it through
       DNS rebinding.
    2. The body must be ``application/json`` (415 otherwise: a browser sends a
       cross-site ``text/plain`` POST without a CORS preflight). It is read with a size cap
       (Content-Length first, then a running count, since a chunked body has no length;
       413 beyond ``max_body_bytes``) and a deadline (``body_timeout``, 408): a client that
       stalls or trickles its upload is cut off, and holds no queue slot meanwhile.
    3. Admission: at most ``max_queue`` complete requests are held at once (decoding,
       waiting or generating); one more gets 429.
    4. In a worker thread, never on the event loop: JSON parsing (depth and number sizes
       bounded: 400 ``invalid_json``), validation (model name, parameters), audio decoding
       (once per clip, :mod:`~midashenglm.serve.audio_input`) and ``engine.prepare``
       (prompt ids, chat template, context window; text too long for the window is
       refused before it is all tokenized). Everything that can be known before the first
       token is checked here, so a request that must be refused gets the same status and
       error body whether it streams or not.
    5. The prepared request goes to ``engine.submit``; the engine's worker batches whatever
       is waiting. The handler awaits the result through ``asyncio.wrap_future``; streamed
       text travels from the worker thread through ``loop.call_soon_threadsafe`` into an
       ``asyncio.Queue`` and out as server-sent events.
    6. Cancellation: a request that times out (``request_timeout``, 504) or whose client
       disconnects (streaming or not) is aborted in the engine (``engine.abort``): a waiting
       request leaves the queue, a running row leaves its batch at the next step. Its
       admission slot is freed when the engine has let it go.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from midashenglm.audio import AudioError
from midashenglm.inference import Request as EngineRequest
from midashenglm.inference import SamplingParams
from midashenglm.serve import API_KEY_ENV, schemas
from midashenglm.serve.audio_input import AudioPolicy, build_conversation
from midashenglm.serve.errors import APIError, bad_request, error_body, shown

logger = logging.getLogger("midashenglm.serve")

STATIC_DIR = Path(__file__).with_name("static")
# The page loads nothing from elsewhere; the policy makes that a guarantee.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
_DONE = object()


@dataclass
class ServeConfig:
    """Limits and names of one server. Sizes in bytes, times in seconds.

    ``api_key``: when set, every ``/v1`` route needs ``Authorization: Bearer <api_key>``.
    """

    served_model_name: str
    max_audio_seconds: float = 300.0
    max_tokens_limit: int = 1024
    max_body_bytes: int = 64 * 1024 * 1024
    max_queue: int = 64
    request_timeout: float = 300.0
    body_timeout: float = 60.0
    allowed_audio_dirs: tuple[Path, ...] = field(default_factory=tuple)
    api_key: str | None = field(default=None, repr=False)
    # None: any Host header. Otherwise loopback names and these exact names only (a server
    # bound to loopback sets it, against DNS rebinding).
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        flags = {"max_audio_seconds": "--max-audio-seconds", "request_timeout": "--request-timeout",
                 "max_tokens_limit": "--max-tokens-limit", "max_body_bytes": "--max-body-mb",
                 "max_queue": "--max-queue", "body_timeout": "--body-timeout"}
        for name, flag in flags.items():
            value = getattr(self, name)
            if not value > 0 or (isinstance(value, int) and value < 1):
                raise ValueError(f"{name} ({flag}) must be positive, got {value!r}")
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")
        if self.api_key is not None and (not self.api_key.strip() or self.api_key != self.api_key.strip()):
            raise ValueError(f"the API key (--api-key / {API_KEY_ENV}) must not be empty or "
                             "start or end with white space")


class Admission:
    """Counts the requests held by the server; used from the event loop thread only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def try_acquire(self) -> bool:
        if self.held >= self.limit:
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held -= 1


@dataclass
class _Job:
    """A request that passed every check: parsed, decoded and prepared for the engine."""

    request: schemas.ChatCompletionRequest
    prepared: Any  # midashenglm.inference.PreparedRequest
    request_id: str


class _Live:
    """A request inside the engine: its future, its stream (if any), and how to stop it."""

    def __init__(self, engine: Any, request_id: str, future: Future, state: _StreamState | None) -> None:
        self.engine = engine
        self.request_id = request_id
        self.future = future
        self.state = state
        self.aborted = False

    def abort(self) -> None:
        """Stop the request in the engine unless it has finished (once; event loop)."""
        if self.state is not None:
            self.state.closed = True
        if not self.aborted and not self.future.done():
            self.aborted = True
            self.engine.abort(self.request_id)


def create_app(engine: Any, config: ServeConfig, *, close_engine: bool = False) -> FastAPI:
    """An app serving ``engine`` (a :class:`midashenglm.inference.Engine`).

    ``close_engine``: close the engine when the app shuts down (the command line owns its
    engine; tests may share one engine between several apps).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_engine:
            await run_in_threadpool(engine.close)

    app = FastAPI(title="MiDashengLM", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # their pages load assets from a CDN
    api = _ChatAPI(engine, config)
    app.state.chat_api = api
    _install_error_handlers(app)
    if config.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key)
    if config.allowed_hosts is not None:  # added last: it runs first
        app.add_middleware(HostCheckMiddleware, allowed=config.allowed_hosts)

    app.add_api_route("/v1/chat/completions", api.chat_completions, methods=["POST"],
                      response_model=None)
    app.add_api_route("/v1/models", api.list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", api.get_model, methods=["GET"])
    app.add_api_route("/health", api.health, methods=["GET"])

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


class APIKeyMiddleware:
    """401 for any ``/v1`` request without ``Authorization: Bearer <api_key>`` (as vLLM's
    ``--api-key``); the key is compared in constant time. Other paths pass."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (path == "/v1" or path.startswith("/v1/")) and not self.authorized(scope):
            error = APIError(401, "missing or invalid API key: send the header "
                                  "'Authorization: Bearer <key>'", code="invalid_api_key")
            await error.response(headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def authorized(self, scope: Scope) -> bool:
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
        # compare_digest takes as long for any wrong key of a given length as for the right one.
        return hmac.compare_digest(given, self.expected)


class HostCheckMiddleware:
    """421 for a request whose ``Host`` header is neither a loopback name (``localhost``,
    ``*.localhost``, a loopback IP) nor one of ``allowed``; a request without ``Host``
    (HTTP/1.0) passes. Against DNS rebinding: a page from ``evil.example`` whose name
    now resolves to 127.0.0.1 still sends ``Host: evil.example``."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = frozenset(name.lower() for name in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
            if host is not None and not self.trusted(host.decode("latin-1")):
                error = APIError(421, "the Host header names a host this server does not "
                                      "serve (it answers loopback names only; see "
                                      "--allowed-host)", code="invalid_host")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def trusted(self, host: str) -> bool:
        match = _HOST_HEADER.fullmatch(host.strip().lower())
        if match is None:  # userinfo, paths or junk: no browser sends these
            return False
        name = (match["name"] or match["ip6"]).rstrip(".")
        if name in self.allowed or name == "localhost" or name.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


# RFC 9110 Host: a registered name or IPv4 address, or an IPv6 literal in brackets; a port.
_HOST_HEADER = re.compile(r"(?:(?P<name>[a-z0-9._-]+)|\[(?P<ip6>[0-9a-f:.]+)\])(?::[0-9]{1,5})?")


class _ChatAPI:
    def __init__(self, engine: Any, config: ServeConfig) -> None:
        self.engine = engine
        self.config = config
        self.admission = Admission(config.max_queue)
        self.policy = AudioPolicy(
            max_seconds=config.max_audio_seconds,
            allowed_dirs=tuple(config.allowed_audio_dirs),
            max_file_bytes=config.max_body_bytes,
            sample_rate=engine.sample_rate,
        )
        self.defaults = _default_sampling(engine.model.generation_config)
        self.created = schemas.now()

    # ------------------------------------------------------------------ small routes
    def _card(self) -> schemas.ModelCard:
        return schemas.ModelCard(id=self.config.served_model_name, created=self.created,
                                 max_model_len=self.engine.context_window)

    async def list_models(self) -> schemas.ModelList:
        return schemas.ModelList(data=[self._card()])

    async def get_model(self, model_id: str) -> schemas.ModelCard:
        if model_id != self.config.served_model_name:
            raise _model_not_found(model_id, self.config.served_model_name)
        return self._card()

    async def health(self) -> dict[str, Any]:
        c = self.config
        return {
            "status": "ok",
            "model": c.served_model_name,
            "api_key_required": c.api_key is not None,
            "in_flight": self.admission.held,
            "limits": {
                "max_queue": c.max_queue,
                "max_audio_seconds": c.max_audio_seconds,
                "max_tokens": c.max_tokens_limit,
                "max_body_bytes": c.max_body_bytes,
                "request_timeout": c.request_timeout,
                "audio_url_files": bool(c.allowed_audio_dirs),
            },
            "engine": _stats(self.engine),
        }

    # -------------------------------------------------------------- chat completions
    async def chat_completions(self, request: Request) -> Response:
        deadline = time.monotonic() + self.config.request_timeout
        _check_content_type(request.headers.get("content-type"))
        try:
            # A body that is still arriving takes no queue slot: a client that stalls its
            # upload occupies a connection until the body deadline, nothing more.
            body = await asyncio.wait_for(
                _read_body(request, self.config.max_body_bytes),
                min(self.config.body_timeout, self.config.request_timeout))
        except asyncio.TimeoutError:
            raise APIError(
                408, f"the request body did not arrive within {self.config.body_timeout:g} s "
                     "(--body-timeout)", code="body_timeout") from None
        except ClientDisconnect:  # gone while sending the body: nobody to answer
            return Response(status_code=499)
        if not self.admission.try_acquire():
            raise APIError(
                429, f"the server is busy: {self.config.max_queue} requests are already queued "
                     "or running (--max-queue); retry later", code="queue_full")
        live: _Live | None = None
        preparing: asyncio.Future | None = None
        try:
            # Every check that can fail before the first token happens here, before any
            # response starts: a refused request is the same error streamed or not.
            preparing = asyncio.ensure_future(run_in_threadpool(self._prepare, body))
            job = await asyncio.wait_for(asyncio.shield(preparing), deadline - time.monotonic())
            preparing = None
            live = self._submit(job)
            if job.request.stream:
                return _EventStream(self._events(job, live, deadline), on_close=live.abort,
                                    media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return await self._complete(job, live, request, deadline)
        except asyncio.TimeoutError:
            raise _timeout(self.config.request_timeout) from None
        finally:
            if preparing is not None and not preparing.done():
                # A worker thread cannot be stopped: the slot stays taken until it returns,
                # so --max-queue still bounds the work in progress after a 504.
                preparing.add_done_callback(self._release_after_prepare)
            elif live is None:  # never reached the engine: the slot is free now
                self.admission.release()

    def _release_after_prepare(self, preparing: asyncio.Future) -> None:
        if not preparing.cancelled():
            preparing.exception()  # the client has its 504; the outcome is not needed
        self.admission.release()

    def _prepare(self, body: bytes) -> _Job:
        """Parse, validate, decode the audio once, and let the engine build and check the
        prompt (in a worker thread). Raises :class:`APIError`."""
        data = parse_json_body(body)
        try:
            req = schemas.ChatCompletionRequest.model_validate(data)
        except ValidationError as err:
            raise _validation_error(err.errors()) from None
        if req.model != self.config.served_model_name:
            raise _model_not_found(req.model, self.config.served_model_name)
        unsupported = req.unsupported()
        if unsupported:
            raise bad_request(unsupported[1], param=unsupported[0], code="unsupported_parameter")
        sampling = self._sampling(req)
        # The audio is decoded here, once per clip; the engine gets 16 kHz waveforms.
        conversation = build_conversation(req.messages, self.policy)
        request_id = schemas.completion_id()
        engine_request = EngineRequest(conversation.messages, sampling, request_id)
        try:
            prepared = self.engine.prepare(engine_request)
        except AudioError as err:
            raise bad_request(f"cannot use the audio: {err}", code="invalid_audio") from None
        except (ValueError, TypeError) as err:
            raise _prompt_error(str(err)) from None
        except Exception as err:  # noqa: BLE001 - e.g. a template engine failure
            logger.exception("engine.prepare failed")
            raise APIError(500, f"the model cannot take this request: {type(err).__name__}: {err}",
                           code="engine_error") from None
        return _Job(req, prepared, request_id)

    def _sampling(self, req: schemas.ChatCompletionRequest) -> SamplingParams:
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        limit = self.config.max_tokens_limit
        max_new = req.max_completion_tokens or req.max_tokens or limit
        if max_new > limit:
            raise bad_request(
                f"{param} is {max_new}, over this server's limit of {limit} (--max-tokens-limit)",
                param=param, code="max_tokens_too_large")
        values = dict(self.defaults)
        for name in ("temperature", "top_p", "top_k"):
            if getattr(req, name) is not None:
                values[name] = getattr(req, name)
        try:
            return SamplingParams(max_new_tokens=max_new, stop=tuple(req.stop or ()),
                                  seed=req.seed, ignore_eos=req.ignore_eos, **values)
        except ValueError as err:
            raise bad_request(str(err), code="invalid_sampling_parameter") from None

    def _submit(self, job: _Job) -> _Live:
        loop = asyncio.get_running_loop()
        state = _StreamState(loop) if job.request.stream else None
        try:
            future = self.engine.submit(job.prepared, on_text=state.on_text if state else None)
        except RuntimeError as err:  # the engine was closed (shutting down)
            raise _engine_closed(str(err)) from None
        # The slot is held until the engine lets the request go (also after an abort).
        future.add_done_callback(lambda _: _call_soon(loop, self.admission.release))
        if state is not None:
            future.add_done_callback(lambda _: _call_soon(loop, state.finish))
        return _Live(self.engine, job.request_id, future, state)

    async def _complete(self, job: _Job, live: _Live, request: Request, deadline: float) -> Response:
        result_of = asyncio.wrap_future(live.future)
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({result_of, gone}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not result_of.done():
                live.abort()  # timed out, the client went away, or this handler was cancelled
        if result_of not in done:
            if gone in done:  # nobody is left to read an answer
                return Response(status_code=499)
            raise _timeout(self.config.request_timeout)
        if live.future.cancelled():  # the engine was closed before it took the request
            raise _engine_closed()
        result = result_of.result()
        if result.error is not None:
            raise _engine_error(result.error)
        response = schemas.ChatCompletion(
            id=job.request_id,
            created=schemas.now(),
            model=self.config.served_model_name,
            choices=[schemas.Choice(message=schemas.AssistantMessage(content=result.text),
                                    finish_reason=_finish(result.finish_reason))],
            usage=_usage(result),
        )
        return JSONResponse(response.model_dump())

    async def _events(self, job: _Job, live: _Live, deadline: float) -> AsyncIterator[str]:
        name, created = self.config.served_model_name, schemas.now()
        include_usage = bool(job.request.stream_options and job.request.stream_options.include_usage)
        state = live.state
        assert state is not None

        def chunk(delta: schemas.Delta, finish: str | None = None,
                  usage: schemas.Usage | None = None, choices: bool = True) -> str:
            body = schemas.ChatCompletionChunk(
                id=job.request_id, created=created, model=name, usage=usage,
                choices=[schemas.ChunkChoice(delta=delta, finish_reason=finish)] if choices else [])
            payload = body.model_dump()
            for choice in payload["choices"]:  # as OpenAI: a delta lists only what it carries
                choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            if not include_usage:  # as OpenAI: "usage": null on every other chunk, else absent
                del payload["usage"]
            return _sse(payload)

        try:
            yield chunk(schemas.Delta(role="assistant", content=""))
            while True:
                text, done = await state.next(deadline - time.monotonic())
                if text:
                    yield chunk(schemas.Delta(content=text))
                if done:
                    break
            result = None if live.future.cancelled() else live.future.result()
            if result is None:  # the engine was closed before it took the request
                yield _sse(_engine_closed().body())
            elif result.error is not None:
                yield _sse(_engine_error(result.error).body())
            else:
                yield chunk(schemas.Delta(), finish=_finish(result.finish_reason))
                if include_usage:
                    yield chunk(schemas.Delta(), usage=_usage(result), choices=False)
        except asyncio.TimeoutError:
            live.abort()
            yield _sse(_timeout(self.config.request_timeout).body())
        finally:
            # Also when the client disconnected (the stream is cancelled or closed here).
            live.abort()
        yield "data: [DONE]\n\n"


class _EventStream(StreamingResponse):
    """A server-sent event stream that always calls ``on_close`` and closes its iterator
    when the response ends, however it ends (finished, client gone, server stopping)."""

    def __init__(self, content: AsyncIterator[str], *, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


class _StreamState:
    """Text from the engine's worker thread to the event loop, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def on_text(self, delta: str) -> None:  # engine worker thread
        if not self.closed:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server has stopped
                self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)

    def finish(self) -> None:  # event loop, after the last on_text
        self.queue.put_nowait(_DONE)

    async def next(self, timeout: float) -> tuple[str, bool]:
        """Everything that arrived so far as one piece (at least one item), and whether done."""
        if timeout <= 0:
            raise asyncio.TimeoutError
        item = await asyncio.wait_for(self.queue.get(), timeout)
        pieces: list[str] = []
        while item is not _DONE:
            pieces.append(item)
            if self.queue.empty():
                return "".join(pieces), False
            item = self.queue.get_nowait()
        return "".join(pieces), True


# ------------------------------------------------------------------------------ helpers
MAX_JSON_DEPTH = 32  # a chat request nests 6 deep (body, messages, message, content, part, audio)
MAX_JSON_NUMBER_CHARS = 64  # no parameter needs more digits; Python's int() stops at 4300
# Commas bound the values a body can hold (each costs ~50-100 bytes once parsed: 63 MiB of
# "[{},{},...]" took 3 GB). Commas inside strings count too, which only matters for text of
# over 100,000 commas, far beyond any context window's worth of tokens.
MAX_JSON_ITEMS = 100_000


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; 400 ``invalid_json`` for anything else.

    Strict JSON (RFC 8259: UTF-8 without a byte-order mark, no ``NaN``/``Infinity``), at
    most :data:`MAX_JSON_ITEMS` values (counted as commas, before parsing), nested at most
    :data:`MAX_JSON_DEPTH` deep (also in fields that are ignored later; deeper than the
    interpreter's recursion limit the C parser stops by itself) and numbers of at most
    :data:`MAX_JSON_NUMBER_CHARS` characters, so that no body can exhaust the parser's
    recursion or spend seconds converting digits.
    """
    items = body.count(b",")
    if items > MAX_JSON_ITEMS:
        raise bad_request(f"the request body holds {items} commas; the limit is "
                          f"{MAX_JSON_ITEMS} JSON values", code="invalid_json")
    if body[:3] == b"\xef\xbb\xbf" or body[:2] in (b"\xff\xfe", b"\xfe\xff") or (
            len(body) > 1 and (body[0] == 0 or body[1] == 0)):
        # json.loads would detect UTF-16/32 and a BOM; RFC 8259 allows neither on the wire.
        raise bad_request("the request body must be UTF-8 JSON without a byte-order mark",
                          code="invalid_json")
    too_deep = bad_request(f"the request body nests JSON more than {MAX_JSON_DEPTH} levels "
                           "deep (the limit)", code="invalid_json")
    try:
        data = json.loads(body, parse_int=_json_int, parse_float=_json_float,
                          parse_constant=_json_constant)
    except _JSONLimit as err:
        raise bad_request(f"the request body is not valid JSON: {err}", code="invalid_json") from None
    except RecursionError:  # the C parser stops at the interpreter's recursion limit
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON ({err})",
                          code="invalid_json") from None
    if _json_depth(data) > MAX_JSON_DEPTH:
        raise too_deep
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return data


class _JSONLimit(ValueError):
    pass


def _json_depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed value (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # beyond the limit the answer is known
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _json_int(text: str) -> int:
    if len(text) > MAX_JSON_NUMBER_CHARS:
        raise _JSONLimit(f"a number has {len(text)} characters; the limit is {MAX_JSON_NUMBER_CHARS}")
    return int(text)


def _json_float(text: str) -> float:
    if len(text) > MAX_JSON_NUMBER_CHARS:
        raise _JSONLimit(f"a number has {len(text)} characters; the limit is "
                         f"{MAX_JSON_NUMBER_CHARS}")
    return float(text)


def _json_constant(name: str) -> Any:
    raise _JSONLimit(f"{name} is not a JSON value")


def _check_content_type(value: str | None) -> None:
    """415 unless the body is declared ``application/json`` (parameters such as
    ``charset=utf-8`` may follow). A browser sends a cross-site ``text/plain`` or form POST
    without asking the server first (no CORS preflight); JSON needs the preflight."""
    media = (value or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        got = shown(value) if value else "missing"
        raise APIError(415, f"the request body must be sent with 'Content-Type: application/json' "
                            f"(got {got})", code="unsupported_media_type")


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = APIError(413, f"the request body is larger than this server's limit of "
                              f"{limit / 2**20:.1f} MiB (--max-body-mb)", code="body_too_large")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise bad_request("invalid Content-Length header", code="invalid_content_length")
        if int(length) > limit:
            raise too_large
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise too_large
        chunks.append(piece)
    return b"".join(chunks)


async def _client_gone(request: Request) -> None:
    """Returns when the client has disconnected (the body has been read already)."""
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return
    except Exception:  # noqa: BLE001 - a server that cannot tell: never report a disconnect
        await asyncio.Event().wait()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is gone: the server has stopped
        loop.call_soon_threadsafe(callback)


def _stats(engine: Any) -> dict[str, int]:
    # The worker thread updates the counter; a copy taken mid-update is simply retried.
    for _ in range(3):
        with contextlib.suppress(RuntimeError):
            return dict(engine.stats)
    return {}


def _default_sampling(generation_config: Any) -> dict[str, Any]:
    """The checkpoint's own sampling settings apply when a request does not say (as vLLM);
    the rule lives in :func:`midashenglm.conversation.generation_defaults`, shared with the CLI."""
    from midashenglm.conversation import generation_defaults

    return generation_defaults(generation_config)


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(result: Any) -> schemas.Usage:
    return schemas.Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
        audio_tokens=result.audio_tokens,
    )


def _prompt_error(message: str) -> APIError:
    """The engine refused the prompt (``engine.prepare``): too long, or not a chat prompt."""
    if "context window" in message:
        return bad_request(message, param="messages", code="context_length_exceeded")
    return bad_request(message, code="invalid_prompt")


def _engine_error(message: str) -> APIError:
    # The engine reports user problems (context window, template) as plain messages and
    # internal failures prefixed with their exception type ("RuntimeError: ...").
    head = message.split(":", 1)[0]
    internal = head.isidentifier() and (head.endswith("Error") or head.endswith("Exception"))
    if internal:
        logger.error("engine failure: %s", message)
        return APIError(500, f"the model failed on this request: {message}", code="engine_error")
    return _prompt_error(message)


def _engine_closed(why: str = "the engine was closed") -> APIError:
    return APIError(503, f"the model is not available: {why}", code="engine_closed")


def _timeout(seconds: float) -> APIError:
    return APIError(504, f"the request took longer than this server's limit of {seconds:g} s "
                         "(--request-timeout)", code="request_timeout")


def _model_not_found(asked: str, served: str) -> APIError:
    return APIError(404, f"the model {shown(asked)} does not exist; this server serves {served!r}",
                    param="model", code="model_not_found")


def _validation_error(errors: list[dict[str, Any]]) -> APIError:
    first = errors[0]
    loc = [p for p in first.get("loc", ()) if p != "body"]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    message = first.get("msg", "invalid value")
    return bad_request(f"{param}: {message}" if param else message, param=param or None,
                       code="invalid_value")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        return _validation_error(list(err.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(err.status_code, str(err.detail)),
                            status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, err: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return JSONResponse(error_body(500, f"internal server error: {type(err).__name__}"),
                            status_code=500)
