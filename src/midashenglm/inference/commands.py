"""Command-line commands: ``caption``, ``ask``, ``transcribe`` and ``run`` (batch jobs).

Heavy imports (torch, transformers, the engine) happen inside the commands, so
``midashenglm --help`` stays fast.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from midashenglm import jsonl
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
from midashenglm.conversation import DEFAULT_SYSTEM_PROMPT, build_conversation
from midashenglm.errors import UserError, stderr_console
from midashenglm.progress import ProgressBar
from midashenglm.terminal import markup_text, printable_text, quote_name

if TYPE_CHECKING:  # pragma: no cover
    from midashenglm.inference.config import EngineConfig
    from midashenglm.inference.engine import Engine, Request, Result
    from midashenglm.inference.manifest import ManifestRow
    from midashenglm.inference.params import SamplingParams

CAPTION_PROMPT = "Write an audio caption describing the sound"
TRANSCRIBE_PROMPT = "Transcribe the speech into text <|{lang}|>"


def transcribe_prompt(lang: str) -> str:
    """The ``transcribe`` prompt for speech in ``lang`` (a tag such as ``en``; ``<|en|>`` works too)."""
    return TRANSCRIBE_PROMPT.format(lang=lang.strip().strip("<|>"))


MaxNewOption = Annotated[int, typer.Option(help="Most tokens to generate per answer.")]
TemperatureOption = Annotated[float | None, typer.Option(
    help="0 decodes greedily (deterministic); > 0 samples. Default: the checkpoint's "
    "generation_config (greedy unless it sets do_sample), as the server and vLLM.", show_default=False)]
TopPOption = Annotated[float | None, typer.Option(
    help="Nucleus sampling: keep the most likely tokens up to this probability mass. Default: "
    "the checkpoint's generation_config (else 1.0).", show_default=False)]
TopKOption = Annotated[int | None, typer.Option(
    help="Sample among the k most likely tokens (0: all). Default: the checkpoint's "
    "generation_config (else 0).", show_default=False)]
SeedOption = Annotated[int | None, typer.Option(help="Seed for sampling (same seed, same answer).")]
SystemPromptOption = Annotated[str | None, typer.Option(
    help="Add this system prompt. Default: none, the conversation is sent as given (as the "
    "server, vLLM and the official model card do).", show_default=False)]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="One JSON object per answer: text, tokens, finish reason, audio/prompt/completion token counts, timings.")]


def register(app: typer.Typer) -> None:
    app.command("caption")(caption)
    app.command("ask")(ask)
    app.command("transcribe")(transcribe)
    app.command("run")(run)


# ------------------------------------------------------------------------ one-off commands
def caption(
    files: Annotated[list[Path], typer.Argument(help="Audio files (any format FFmpeg or libsndfile reads).")],
    model: ModelOption = None,
    prompt: Annotated[str, typer.Option(help="The instruction.")] = CAPTION_PROMPT,
    system_prompt: SystemPromptOption = DEFAULT_SYSTEM_PROMPT,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_new_tokens: MaxNewOption = 256,
    temperature: TemperatureOption = None,
    top_p: TopPOption = None,
    top_k: TopKOption = None,
    seed: SeedOption = None,
    max_batch_audio_seconds: MaxBatchAudioOption = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Caption audio files: what is heard (speech, sounds, music, the scene), one line per file."""
    _answer([(f, prompt) for f in files], labels=[quote_name(f) for f in files], **_common(locals()))


def ask(
    file: Annotated[Path, typer.Argument(help="An audio file.")],
    questions: Annotated[list[str], typer.Argument(
        help="One or more questions about the file (the clip is encoded once for all of them).")],
    model: ModelOption = None,
    system_prompt: SystemPromptOption = DEFAULT_SYSTEM_PROMPT,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_new_tokens: MaxNewOption = 256,
    temperature: TemperatureOption = None,
    top_p: TopPOption = None,
    top_k: TopKOption = None,
    seed: SeedOption = None,
    max_batch_audio_seconds: MaxBatchAudioOption = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Ask questions about an audio file; prints one answer per question."""
    _answer([(file, q) for q in questions], labels=[printable_text(q) for q in questions],
            **_common(locals()))


def transcribe(
    files: Annotated[list[Path], typer.Argument(help="Audio files with speech.")],
    lang: Annotated[str, typer.Option(help="Language tag of the speech: en, zh, ...")] = "en",
    model: ModelOption = None,
    system_prompt: SystemPromptOption = DEFAULT_SYSTEM_PROMPT,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_new_tokens: MaxNewOption = 256,
    temperature: TemperatureOption = None,
    top_p: TopPOption = None,
    top_k: TopKOption = None,
    seed: SeedOption = None,
    max_batch_audio_seconds: MaxBatchAudioOption = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Transcribe speech (the paper's ASR prompt with a language tag), one line per file."""
    prompt = transcribe_prompt(lang)
    _answer([(f, prompt) for f in files], labels=[quote_name(f) for f in files], **_common(locals()))


def _common(options: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "system_prompt", "device", "dtype", "max_new_tokens", "temperature", "top_p",
            "top_k", "seed", "max_batch_audio_seconds", "as_json")
    return {k: options[k] for k in keys}


def _answer(jobs: list[tuple[Path, str]], *, labels: list[str], model: str | None,
            system_prompt: str | None, device: str, dtype: str, max_new_tokens: int,
            temperature: float | None, top_p: float | None, top_k: int | None, seed: int | None,
            max_batch_audio_seconds: float, as_json: bool) -> None:
    for path, _ in jobs:
        if not path.is_file():
            name = quote_name(path)
            raise UserError(f"{name}: is a folder, not an audio file" if path.is_dir() else f"{name}: no such file")
    given = _sampling_options(max_new_tokens, temperature, top_p, top_k, seed)
    engine = _engine(model, device, dtype, engine_config(max_batch_audio_seconds=max_batch_audio_seconds))
    sampling = _sampling(given, engine)
    from midashenglm.inference.engine import Request

    requests = [Request(build_conversation(str(path), prompt, system_prompt=system_prompt), sampling, str(path))
                for path, prompt in jobs]
    results = _with_progress(engine, requests, "answering")
    failed = 0
    for label, (path, prompt), result in zip(labels, jobs, results, strict=True):
        if as_json:  # exact: UTF-8 whatever the locale; a name that is not UTF-8 round-trips
            jsonl.print_line({"file": str(path), "prompt": prompt, **result.to_dict()})
        elif result.error is None:  # one line per answer: a name or an answer cannot forge one
            print(f"{label}: {printable_text(result.text)}" if len(jobs) > 1
                  else printable_text(result.text, keep_newlines=True), flush=True)
        if result.error is not None:
            failed += 1
            _stderr().print(f"[bold red]error:[/] {markup_text(result.error)}", highlight=False)
    if failed:
        raise typer.Exit(2)


def _with_progress(engine: Engine, requests: list[Request], what: str) -> list[Result]:
    if len(requests) == 1:
        return engine.generate(requests)
    with ProgressBar(len(requests), what, transient=True) as bar:
        return engine.generate(requests, progress=lambda _: bar.advance())


# ------------------------------------------------------------------------------ batch jobs
def run(
    manifest: Annotated[Path, typer.Argument(
        help="A .jsonl or .csv manifest: column 'audio' (paths relative to the manifest's folder), "
        "optional 'prompt' and 'system_prompt'; other columns are copied to the output.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Results (.jsonl): each input row plus model_output or error, and usage.")],
    model: ModelOption = None,
    prompt: Annotated[str, typer.Option(help="Prompt for rows without a 'prompt' column.")] = CAPTION_PROMPT,
    system_prompt: SystemPromptOption = DEFAULT_SYSTEM_PROMPT,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_new_tokens: MaxNewOption = 256,
    temperature: TemperatureOption = None,
    top_p: TopPOption = None,
    top_k: TopKOption = None,
    seed: SeedOption = None,
    max_batch_audio_seconds: MaxBatchAudioOption = 600.0,
    max_num_seqs: MaxNumSeqsOption = 32,
    max_kv_cache_tokens: MaxKVCacheOption = 32768,
    endpoint: Annotated[str | None, typer.Option(
        help="Send rows to an OpenAI-compatible server (e.g. vLLM: http://host:8000/v1) instead of "
        "running the model here.")] = None,
    api_key: Annotated[str | None, typer.Option(
        envvar="MIDASHENGLM_API_KEY", help="API key for --endpoint (also $MIDASHENGLM_API_KEY).")] = None,
    served_model: Annotated[str | None, typer.Option(
        help="Model name at --endpoint (default: the first one it lists).")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once with --endpoint.")] = 8,
    overwrite: Annotated[bool, typer.Option(help="Start again instead of resuming --out.")] = False,
    retry_errors: Annotated[bool, typer.Option(
        help="On resume, run again the rows that failed before (their error lines are removed).")] = False,
    max_error_rate: Annotated[float, typer.Option(
        help="Largest fraction of failed rows (0..1) that still exits 0; above it the job exits 1. "
        "Default 0: any failed row exits 1.")] = 0.0,
) -> None:
    """Batch inference over a manifest, resumable: rerun the same command after a crash.

    Rows are written in manifest order, each fsynced once it and every row before it are
    done; rows already in --out are skipped, a torn last line is repaired, and a bad row
    (missing or corrupt audio) is recorded with its error while the job goes on. Failed
    rows are summed up at the end (exit 1 above --max-error-rate). A systematic error
    (server unreachable, wrong API key, unknown --served-model, the same 400 three times
    in a row) stops the job at once with exit 2.
    """
    from midashenglm.inference.manifest import ResultWriter, read_manifest

    if concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {concurrency}")
    if not 0.0 <= max_error_rate <= 1.0:
        raise UserError(f"--max-error-rate must be between 0 and 1, got {max_error_rate}")
    if out.exists() and manifest.exists() and out.resolve() == manifest.resolve():
        raise UserError(f"--out {quote_name(out)} is the manifest itself: choose another file for the results")
    if out.is_dir():
        raise UserError(f"--out {quote_name(out)} is a folder: give a .jsonl file path")
    given = _sampling_options(max_new_tokens, temperature, top_p, top_k, seed)
    rows = list(read_manifest(manifest))
    with ResultWriter(out, overwrite=overwrite, retry_errors=retry_errors) as writer:
        todo = [row for row in rows if row.key not in writer.done]
        note = f"{len(rows) - len(todo)} of {len(rows)} rows already in {quote_name(out)}" \
            if len(todo) < len(rows) else ""
        if writer.repaired:
            note += f"{'; ' if note else ''}cut a torn last line ({writer.repaired} bytes)"
        if note:
            _stderr().print(f"resuming: {markup_text(note)}", highlight=False)
        # Load the model (or reach the server) before the clock of the progress bar starts.
        if endpoint is not None:
            client = _endpoint_client(endpoint, api_key, served_model)
        else:
            engine = _engine(model, device, dtype, engine_config(max_num_seqs, max_batch_audio_seconds,
                                                                 max_kv_cache_tokens))
        with _RunProgress(len(todo)) as progress:
            try:
                ordered = _InOrder(writer)
                if endpoint is not None:
                    _run_endpoint(todo, ordered, progress, client=client, concurrency=concurrency,
                                  prompt=prompt, system_prompt=system_prompt, sampling=given)
                else:
                    _run_engine(todo, ordered, progress, engine=engine, prompt=prompt,
                                system_prompt=system_prompt, sampling=_sampling(given, engine))
            except KeyboardInterrupt:
                _stderr().print(f"interrupted after {ordered.written} rows; run the same command "
                                "again to resume", highlight=False)
                raise typer.Exit(130) from None
    _stderr().print(f"wrote {ordered.written} rows to {markup_text(quote_name(out))} ({progress.errors} with errors, "
                    f"{progress.audio_seconds / 3600:.3f} h of audio)", highlight=False)
    if progress.errors:
        rate = progress.errors / max(progress.done, 1)
        level = "[bold red]error:[/]" if rate > max_error_rate else "[bold yellow]warning:[/]"
        shown = len(progress.examples)
        _stderr().print(f"{level} {progress.errors} of {progress.done} rows failed ({rate:.1%}); "
                        f"{'the first ' + str(shown) if shown < progress.errors else 'they'}: "
                        + "; ".join(markup_text(e) for e in progress.examples), highlight=False)
        if rate > max_error_rate:
            _stderr().print(f"the error rate {rate:.1%} is above --max-error-rate {max_error_rate:g}: "
                            "exit status 1 (fix the rows and rerun with --retry-errors)", highlight=False)
            raise typer.Exit(1)


def _row_prompts(row: ManifestRow, prompt: str, system_prompt: str | None) -> tuple[str, str | None]:
    row_system = row.data.get("system_prompt")
    return row.data.get("prompt") or prompt, system_prompt if row_system is None else row_system


class _InOrder:
    """Writes result lines in manifest order: a finished row waits until every row before
    it is written (as vLLM's ``LLM.generate`` keeps the input order)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.waiting: dict[int, dict[str, Any]] = {}
        self.next = 0
        self.written = 0

    def put(self, position: int, record: dict[str, Any]) -> None:
        self.waiting[position] = record
        while self.next in self.waiting:
            self.writer.write(self.waiting.pop(self.next))
            self.next += 1
            self.written += 1


def _usage(audio_seconds: float, audio_tokens: int | None, prompt_tokens: int | None,
           completion_tokens: int | None, finish_reason: str | None) -> dict[str, Any]:
    """The usage of one row: the same keys for a local run and for --endpoint (null when unknown)."""
    return {"audio_seconds": round(audio_seconds, 3), "audio_tokens": audio_tokens,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "finish_reason": finish_reason}


def _run_engine(rows: list[ManifestRow], writer: _InOrder, progress: _RunProgress, *, engine: Engine,
                prompt: str, system_prompt: str | None, sampling: SamplingParams) -> None:
    from midashenglm.inference.engine import Request
    from midashenglm.inference.manifest import output_record

    in_flight: dict[int, tuple[int, ManifestRow]] = {}
    positions = itertools.count()  # iter_results numbers the requests in the order they are read

    def requests() -> Iterator[Request]:
        for position, row in enumerate(rows):
            if row.error:
                writer.put(position, output_record(row, error=row.error))
                progress.advance(error=row.error)
                continue
            row_prompt, row_system = _row_prompts(row, prompt, system_prompt)
            in_flight[next(positions)] = position, row
            yield Request(build_conversation(str(row.audio_path), row_prompt, system_prompt=row_system), sampling,
                          str(row.index))

    for index, result in engine.iter_results(requests()):
        position, row = in_flight.pop(index)
        if result.error is None:
            usage = _usage(result.audio_seconds, result.audio_tokens, result.prompt_tokens,
                           result.completion_tokens, result.finish_reason)
            writer.put(position, output_record(row, output=result.text, usage=usage))
        else:
            writer.put(position, output_record(row, error=result.error))
        progress.advance(result.audio_seconds, error=result.error)


def _endpoint_client(endpoint: str, api_key: str | None, served_model: str | None) -> Any:
    from midashenglm.inference.client import EndpointClient

    try:
        client = EndpointClient(endpoint, api_key=api_key, model=served_model)
        client.check()
    except Exception as err:  # noqa: BLE001 - the openai client has many error types
        raise UserError(f"--endpoint {endpoint}: {_describe(err)}") from None
    return client


# The same 400 this many times in a row is the request's fault, not the rows' (e.g.
# --max-new-tokens above the server's limit): the job stops instead of failing every row.
SAME_400_LIMIT = 3


def _systematic(err: BaseException) -> str | None:
    """Why ``err`` would fail every row (the job stops), or None for a row's own error."""
    try:
        import openai
    except ImportError:  # pragma: no cover - the client needs openai
        return None
    if isinstance(err, openai.APITimeoutError):
        return None  # one slow row
    if isinstance(err, openai.APIConnectionError):
        return f"cannot reach the server ({_describe(err)})"
    if isinstance(err, openai.AuthenticationError | openai.PermissionDeniedError):
        return f"the server refused the API key (--api-key or $MIDASHENGLM_API_KEY): {_describe(err)}"
    if isinstance(err, openai.NotFoundError):
        return f"not found at the server (a wrong --served-model or --endpoint?): {_describe(err)}"
    return None


def _bad_request(err: BaseException) -> str | None:
    try:
        import openai
    except ImportError:  # pragma: no cover
        return None
    return _describe(err) if isinstance(err, openai.BadRequestError) else None


def _run_endpoint(rows: list[ManifestRow], writer: _InOrder, progress: _RunProgress, *, client: Any,
                  concurrency: int, prompt: str, system_prompt: str | None,
                  sampling: dict[str, Any]) -> None:
    from midashenglm.inference.manifest import output_record

    def one(row: ManifestRow) -> Any:
        row_prompt, row_system = _row_prompts(row, prompt, system_prompt)
        return client.ask(row.audio_path, row_prompt, system_prompt=row_system or None,
                          sampling=sampling)

    pending: dict[Future, tuple[int, ManifestRow]] = {}
    queue = enumerate(rows)
    same_400: tuple[str | None, int] = (None, 0)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="midashenglm-endpoint") as pool:
        while True:
            while len(pending) < 2 * concurrency:
                position, row = next(queue, (None, None))
                if row is None:
                    break
                if row.error:
                    writer.put(position, output_record(row, error=row.error))
                    progress.advance(error=row.error)
                    continue
                pending[pool.submit(one, row)] = position, row
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                position, row = pending.pop(future)
                try:
                    answer = future.result()
                except Exception as err:  # noqa: BLE001 - recorded, the job goes on
                    why = _systematic(err)
                    message = _bad_request(err)
                    same_400 = (message, same_400[1] + 1 if message == same_400[0] else 1) if message \
                        else (None, 0)
                    if why is None and same_400[1] >= SAME_400_LIMIT:
                        why = (f"the server refused {SAME_400_LIMIT} requests in a row with the same "
                               f"error (400): {message}")
                    if why is not None:
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise UserError(f"--endpoint {client.base_url}: {why}; stopped after "
                                        f"{writer.written} rows written (fix it and run the same "
                                        "command again to resume)") from None
                    writer.put(position, output_record(row, error=_describe(err)))
                    progress.advance(error=_describe(err))
                    continue
                same_400 = (None, 0)
                usage = _usage(answer.audio_seconds, answer.audio_tokens, answer.prompt_tokens,
                               answer.completion_tokens, answer.finish_reason)
                writer.put(position, output_record(row, output=answer.text, usage=usage))
                progress.advance(answer.audio_seconds)


class _RunProgress:
    """A batch job's counts (rows, errors, audio), shown on its progress bar as rates."""

    def __init__(self, total: int) -> None:
        self.bar = ProgressBar(total, "inference")
        self.done = self.errors = 0
        self.examples: list[str] = []  # the first few errors, for the summary
        self.audio_seconds = 0.0
        self.t0 = time.perf_counter()

    def advance(self, audio_seconds: float = 0.0, *, error: str | None = None) -> None:
        self.done += 1
        if error is not None:
            self.errors += 1
            if len(self.examples) < 3:
                self.examples.append(error)
        self.audio_seconds += audio_seconds
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.advance(1, f"{self.done / elapsed:.2f} clips/s, {self.audio_seconds / 3600 / elapsed:.4f} audio-h/s")

    def __enter__(self) -> _RunProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)


# ----------------------------------------------------------------------------- helpers
def _sampling_options(max_new_tokens: int, temperature: float | None, top_p: float | None,
                      top_k: int | None, seed: int | None) -> dict[str, Any]:
    """The decoding options the user gave (checked now, before the model loads)."""
    given = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
             "top_k": top_k, "seed": seed}
    given = {k: v for k, v in given.items() if v is not None}
    _params(given, None)
    return given


def _sampling(given: dict[str, Any], engine: Engine) -> SamplingParams:
    """The options given, the rest from the checkpoint's generation_config (as the server)."""
    return _params(given, getattr(engine.model, "generation_config", None))


def _params(given: dict[str, Any], generation_config: Any) -> SamplingParams:
    from midashenglm.conversation import generation_defaults
    from midashenglm.inference.params import SamplingParams

    try:
        return SamplingParams(**{**generation_defaults(generation_config), **given})
    except ValueError as err:
        raise UserError(str(err)) from None


def _engine(model: str | None, device: str, dtype: str, config: EngineConfig) -> Engine:
    model = model_or_default(model)  # without --model: the shipped default model
    from midashenglm.inference.engine import Engine

    with _stderr().status(f"loading {markup_text(quote_name(model))}"):
        try:
            return Engine.from_pretrained(model, device=device, dtype=dtype, config=config)
        except ValueError as err:  # bad dtype names
            raise UserError(str(err)) from None


def _describe(err: BaseException) -> str:
    return str(err) or type(err).__name__


_STDERR: Any = None


def _stderr() -> Any:
    global _STDERR
    if _STDERR is None:
        _STDERR = stderr_console()
    return _STDERR
