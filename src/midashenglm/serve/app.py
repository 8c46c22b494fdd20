"""The FastAPI application: OpenAI-compatible chat completions over the batching engine.

Request path
    1. Admission: at most ``max_queue`` requests are held at once (reading, decoding,
       waiting or generating); one more gets 429 at once, before its body is read.
    2. The body is read with a cap (Content-Length first, then a running count, since a
       chunked body has no length): 413 beyond ``max_body_bytes``.
    3. JSON parsing, validation and audio decoding run in a worker thread, so a large
       body never stalls the event loop; every error is a 400 naming the field or part.
    4. The request goes to ``engine.submit``; the engine's worker batches whatever is
       waiting. The handler awaits the result through ``asyncio.wrap_future``; streamed
       text travels from the worker thread through ``loop.call_soon_threadsafe`` into an
       ``asyncio.Queue`` and out as server-sent events.
    5. ``request_timeout`` bounds the whole request (504). A timed-out request that is
       still queued is cancelled; one already in a batch finishes there (the engine cannot
       stop a single row), its output is dropped, and it keeps its admission slot until
       then, so ``max_queue`` always bounds the work the engine really has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
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

from midashenglm.inference import Request as EngineRequest
from midashenglm.inference import SamplingParams
from midashenglm.serve import schemas
from midashenglm.serve.audio_input import AudioPolicy, Conversation, build_conversation
from midashenglm.serve.errors import APIError, bad_request, error_body

logger = logging.getLogger("midashenglm.serve")

STATIC_DIR = Path(__file__).with_name("static")
# The page loads nothing from elsewhere; the policy makes that a guarantee.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
_DONE = object()


@dataclass
class ServeConfig:
    """Limits and names of one server. Sizes in bytes, times in seconds."""

    served_model_name: str
    max_audio_seconds: float = 300.0
    max_tokens_limit: int = 1024
    max_body_bytes: int = 64 * 1024 * 1024
    max_queue: int = 64
    request_timeout: float = 300.0
    allowed_audio_dirs: tuple[Path, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        flags = {"max_audio_seconds": "--max-audio-seconds", "request_timeout": "--request-timeout",
                 "max_tokens_limit": "--max-tokens-limit", "max_body_bytes": "--max-body-mb",
                 "max_queue": "--max-queue"}
        for name, flag in flags.items():
            value = getattr(self, name)
            if not value > 0 or (isinstance(value, int) and value < 1):
                raise ValueError(f"{name} ({flag}) must be positive, got {value!r}")
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")


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
    request: schemas.ChatCompletionRequest
    conversation: Conversation
    sampling: SamplingParams


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
        if not self.admission.try_acquire():
            raise APIError(
                429, f"the server is busy: {self.config.max_queue} requests are already queued "
                     "or running (--max-queue); retry later", code="queue_full")
        deadline = time.monotonic() + self.config.request_timeout
        future: Future | None = None
        try:
            body = await _read_body(request, self.config.max_body_bytes)
            job = await asyncio.wait_for(run_in_threadpool(self._prepare, body),
                                         deadline - time.monotonic())
            stream = job.request.stream
            state = _StreamState(asyncio.get_running_loop()) if stream else None
            request_id = schemas.completion_id()
            try:
                future = self.engine.submit(
                    EngineRequest(job.conversation.messages, job.sampling, request_id),
                    on_text=state.on_text if state else None)
            except RuntimeError as err:  # the engine was closed (shutting down)
                raise APIError(503, f"the model is not available: {err}",
                               code="engine_closed") from None
            loop = asyncio.get_running_loop()
            future.add_done_callback(lambda _: _call_soon(loop, self.admission.release))
            if state is not None:
                future.add_done_callback(lambda _: _call_soon(loop, state.finish))
                return StreamingResponse(
                    self._events(job, future, state, request_id, deadline),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return await self._complete(job, future, request_id, deadline)
        except asyncio.TimeoutError:
            raise _timeout(self.config.request_timeout) from None
        finally:
            if future is None:  # never reached the engine: the slot is free now
                self.admission.release()

    def _prepare(self, body: bytes) -> _Job:
        """Parse, validate and decode (in a worker thread)."""
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise bad_request(f"the request body is not valid JSON ({err})",
                              code="invalid_json") from None
        if not isinstance(data, dict):
            raise bad_request("the request body must be a JSON object", code="invalid_json")
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
        conversation = build_conversation(req.messages, self.policy)
        return _Job(req, conversation, sampling)

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

    async def _complete(self, job: _Job, future: Future, request_id: str,
                        deadline: float) -> Response:
        # wait_for cancels the wrapped future on timeout, which drops a still-queued request.
        result = await asyncio.wait_for(asyncio.wrap_future(future), deadline - time.monotonic())
        if result.error is not None:
            raise _engine_error(result.error)
        response = schemas.ChatCompletion(
            id=request_id,
            created=schemas.now(),
            model=self.config.served_model_name,
            choices=[schemas.Choice(message=schemas.AssistantMessage(content=result.text),
                                    finish_reason=_finish(result.finish_reason))],
            usage=_usage(result),
        )
        return JSONResponse(response.model_dump())

    async def _events(self, job: _Job, future: Future, state: _StreamState, request_id: str,
                      deadline: float) -> AsyncIterator[str]:
        name, created = self.config.served_model_name, schemas.now()

        def chunk(delta: schemas.Delta, finish: str | None = None,
                  usage: schemas.Usage | None = None, choices: bool = True) -> str:
            body = schemas.ChatCompletionChunk(
                id=request_id, created=created, model=name, usage=usage,
                choices=[schemas.ChunkChoice(delta=delta, finish_reason=finish)] if choices else [])
            payload = body.model_dump()
            for choice in payload["choices"]:  # as OpenAI: a delta lists only what it carries
                choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            if usage is None:
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
            result = future.result()
            if result.error is not None:
                err = _engine_error(result.error)
                yield _sse(err.body())
            else:
                yield chunk(schemas.Delta(), finish=_finish(result.finish_reason))
                if job.request.stream_options and job.request.stream_options.include_usage:
                    yield chunk(schemas.Delta(), usage=_usage(result), choices=False)
        except asyncio.TimeoutError:
            yield _sse(_timeout(self.config.request_timeout).body())
        finally:
            # Also on client disconnect: stop feeding the queue, drop the job if still queued.
            state.closed = True
            future.cancel()
        yield "data: [DONE]\n\n"


class _StreamState:
    """Text from the engine's worker thread to the event loop, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def on_text(self, delta: str) -> None:  # engine worker thread
        if not self.closed:
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
    """The checkpoint's own sampling settings apply when a request does not say (as vLLM)."""
    if not getattr(generation_config, "do_sample", False):
        return {"temperature": 0.0}
    return {
        "temperature": float(getattr(generation_config, "temperature", None) or 1.0),
        "top_p": float(getattr(generation_config, "top_p", None) or 1.0),
        "top_k": int(getattr(generation_config, "top_k", None) or 0),
    }


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(result: Any) -> schemas.Usage:
    return schemas.Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
        audio_tokens=result.audio_tokens,
    )


def _engine_error(message: str) -> APIError:
    # The engine reports user problems (context window, template) as plain messages and
    # internal failures prefixed with their exception type ("RuntimeError: ...").
    head = message.split(":", 1)[0]
    internal = head.isidentifier() and (head.endswith("Error") or head.endswith("Exception"))
    if internal:
        logger.error("engine failure: %s", message)
        return APIError(500, f"the model failed on this request: {message}", code="engine_error")
    return bad_request(message, code="invalid_prompt")


def _timeout(seconds: float) -> APIError:
    return APIError(504, f"the request took longer than this server's limit of {seconds:g} s "
                         "(--request-timeout)", code="request_timeout")


def _model_not_found(asked: str, served: str) -> APIError:
    return APIError(404, f"the model {asked!r} does not exist; this server serves {served!r}",
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
