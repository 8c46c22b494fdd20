"""``midashenglm serve``: the OpenAI-compatible HTTP API and the web page."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from midashenglm.cli_options import (
    DeviceOption,
    DtypeOption,
    MaxBatchAudioOption,
    MaxKVCacheOption,
    MaxNumSeqsOption,
    ModelOption,
    engine_config,
    model_or_default,
)
from midashenglm.errors import UserError, stderr_console
from midashenglm.inference.config import EngineConfig
from midashenglm.serve import API_KEY_ENV


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


_ENGINE_DEFAULTS = EngineConfig()


def serve(
    model: ModelOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on. Without --api-key the API has "
                                           "no authentication: keep the default loopback address "
                                           "unless a proxy in front of it checks who calls.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    served_model_name: Annotated[str | None, typer.Option(
        help="The name clients pass as `model` and see in responses. Default: the checkpoint "
             "folder name (or the Hub id); midashenglm-default for the default model.")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar=API_KEY_ENV, show_default=False, show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on every /v1 route (401 otherwise); /health "
             "and the web page stay open (the page asks for the key). Prefer the environment "
             "variable: a command line is visible to other users of the machine.")] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    allow_audio_dir: Annotated[list[Path] | None, typer.Option(
        "--allow-audio-dir",
        help="Let `audio_url` parts read files (file:// URLs or absolute paths) inside this "
             "folder; repeat for several. Symlinks and `..` are resolved first and anything "
             "outside is refused (403). Without it, audio_url file access is off. http(s) "
             "URLs are never fetched.")] = None,
    max_audio_seconds: Annotated[float, typer.Option(
        help="Most seconds of audio in one request, all clips together (400 beyond).")] = 300.0,
    max_tokens_limit: Annotated[int, typer.Option(
        help="Largest max_tokens a request may ask for (400 beyond); also the default when "
             "a request does not say.")] = 1024,
    max_body_mb: Annotated[float, typer.Option(
        help="Largest request body in MiB (413 beyond). Base64 audio is 4/3 of the file: "
             "16 kHz 16-bit WAV is ~2.5 MiB per minute.")] = 64.0,
    max_queue: Annotated[int, typer.Option(
        help="Most requests held at once (being read, queued or generating); one more gets "
             "429. Bounds memory and wait time.")] = 64,
    request_timeout: Annotated[float, typer.Option(
        help="Seconds a request may take in all, queueing included (504 beyond; the request "
             "is aborted in the engine).")] = 300.0,
    body_timeout: Annotated[float, typer.Option(
        help="Seconds a client may take to send its request body (408 beyond). A request "
             "takes a --max-queue slot only once its body has arrived.")] = 60.0,
    header_timeout: Annotated[float, typer.Option(
        help="Seconds a connection may take to send a request's headers, from connecting (or "
             "from the previous response); slower connections are closed (slowloris).",
        min=0.1)] = 10.0,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host",
        help="When listening on a loopback address, requests must name a loopback host "
             "(localhost, 127.0.0.1, [::1]) in their Host header, or get 421: this stops "
             "web pages from reaching the server through DNS rebinding. Add a name here "
             "(repeatable) to accept it too, e.g. behind a local proxy.")] = None,
    max_num_seqs: MaxNumSeqsOption = _ENGINE_DEFAULTS.max_num_seqs,
    max_batch_audio_seconds: MaxBatchAudioOption = _ENGINE_DEFAULTS.max_batch_audio_seconds,
    max_kv_cache_tokens: MaxKVCacheOption = _ENGINE_DEFAULTS.max_kv_cache_tokens,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical, error, warning, "
                                                "info, debug.")] = "info",
) -> None:
    """Serve a model: an OpenAI-compatible HTTP API and a web page to ask about clips.

    API: POST /v1/chat/completions with input_audio parts (base64 audio), streaming or
    not; GET /v1/models; GET /health. The page at / uploads or records a clip, draws it
    and streams the answer. Concurrent requests are batched by the engine; the engine
    options are EngineConfig's fields. Try it with the `openai` client:
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none") (or the --api-key).
    """
    import uvicorn

    from midashenglm.serve.app import ServeConfig, create_app
    from midashenglm.serve.audio_input import allowed_dirs

    console = stderr_console()
    # Check every option before the (possibly long) model load.
    try:
        config = ServeConfig(
            served_model_name=served_model_name or _default_name(model),
            max_audio_seconds=max_audio_seconds,
            max_tokens_limit=max_tokens_limit,
            max_body_bytes=int(max_body_mb * 2**20),
            max_queue=max_queue,
            request_timeout=request_timeout,
            body_timeout=body_timeout,
            # Bound to loopback, only local names are served: against DNS rebinding.
            allowed_hosts=tuple(allowed_host or ()) if _is_loopback(host) else None,
            allowed_audio_dirs=allowed_dirs([str(d) for d in allow_audio_dir or ()]),
            api_key=api_key,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    budgets = engine_config(max_num_seqs, max_batch_audio_seconds, max_kv_cache_tokens)
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise UserError(f"--log-level {log_level!r}: choose critical, error, warning, info or debug")
    if not _is_loopback(host) and config.api_key is None:
        console.print(f"[yellow]warning:[/] listening on {host}: the API has no authentication "
                      f"(set --api-key or ${API_KEY_ENV})")

    from midashenglm.inference import Engine

    model = model_or_default(model)  # without --model: the shipped default model (assembled once)
    with console.status(f"loading {model}"):
        engine = Engine.from_pretrained(model, device=device, dtype=dtype, config=budgets)
    app = create_app(engine, config, close_engine=True)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"serving [bold]{config.served_model_name}[/] at http://{shown}:{port}/ "
                  f"(API: http://{shown}:{port}/v1"
                  f"{', API key required' if config.api_key else ''})", highlight=False)
    from midashenglm.serve.protocol import deadline_protocol

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                http=deadline_protocol(header_timeout))


def _default_name(model: str | None) -> str:
    if model is None:
        from midashenglm.default_model import NAME

        return NAME  # the default model's folder name
    path = Path(model).expanduser()
    return path.resolve().name if path.is_dir() else model


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
