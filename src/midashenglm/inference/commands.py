"""Command-line commands: ``caption``, ``ask``, ``transcribe`` and ``run`` (batch jobs).

Heavy imports (torch, transformers, the engine) happen inside the commands, so
``midashenglm --help`` stays fast.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from midashenglm.cli_options import (
    DeviceOption,
    DtypeOption,
    MaxBatchAudioOption,
    MaxKVCacheOption,
    MaxNumSeqsOption,
    ModelOption,
    engine_config,
)
from midashenglm.conversation import build_conversation
from midashenglm.errors import UserError
from midashenglm.progress import ProgressBar

if TYPE_CHECKING:  # pragma: no cover
    from midashenglm.inference.config import EngineConfig
    from midashenglm.inference.engine import Engine, Request, Result
    from midashenglm.inference.manifest import ManifestRow
    from midashenglm.inference.params import SamplingParams

CAPTION_PROMPT = "Write an audio caption describing the sound"
TRANSCRIBE_PROMPT = "Transcribe the speech into text <|{lang}|>"
# The system prompt of the official serving example.
SYSTEM_PROMPT = "You are a helpful language and speech assistant."

MaxNewOption = Annotated[int, typer.Option(help="Most tokens to generate per answer.")]
TemperatureOption = Annotated[float, typer.Option(help="0 decodes greedily (deterministic); > 0 samples.")]
TopPOption = Annotated[float, typer.Option(help="Nucleus sampling: keep the most likely tokens up to this probability mass.")]
SeedOption = Annotated[int | None, typer.Option(help="Seed for sampling (same seed, same answer).")]
SystemPromptOption = Annotated[str, typer.Option(
    help="System prompt ('' for none). Default: the official serving example's.")]
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
    system_prompt: SystemPromptOption = SYSTEM_PROMPT,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_new_tokens: MaxNewOption = 256,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    seed: SeedOption = None,
    max_batch_audio_seconds: MaxBatchAudioOption = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Caption audio files: what is heard (speech, sounds, music, the scene), one line per file."""
    _answer([(f, prompt) for f in files], labels=[str(f) for f in files], **_common(locals()))


def ask(
    file: Annotated[Path, typer.Argument(help="An audio file.")],
    questions: Annotated[list[str], typer.Argument(
        help="One or more questions about the file (the clip is encoded once for all of them).")],
    model: ModelOption = None,
    system_prompt: SystemPromptOption = SYSTEM_PROMPT,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_new_tokens: MaxNewOption = 256,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    seed: SeedOption = None,
    max_batch_audio_seconds: MaxBatchAudioOption = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Ask questions about an audio file; prints one answer per question."""
    _answer([(file, q) for q in questions], labels=list(questions), **_common(locals()))


def transcribe(
    files: Annotated[list[Path], typer.Argument(help="Audio files with speech.")],
    lang: Annotated[str, typer.Option(help="Language tag of the speech: en, zh, ...")] = "en",
    model: ModelOption = None,
    system_prompt: SystemPromptOption = SYSTEM_PROMPT,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_new_tokens: MaxNewOption = 256,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    seed: SeedOption = None,
    max_batch_audio_seconds: MaxBatchAudioOption = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Transcribe speech (the paper's ASR prompt with a language tag), one line per file."""
    prompt = TRANSCRIBE_PROMPT.format(lang=lang.strip().strip("<|>"))
    _answer([(f, prompt) for f in files], labels=[str(f) for f in files], **_common(locals()))


def _common(options: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "system_prompt", "device", "dtype", "max_new_tokens", "temperature", "top_p",
            "seed", "max_batch_audio_seconds", "as_json")
    return {k: options[k] for k in keys}


def _answer(jobs: list[tuple[Path, str]], *, labels: list[str], model: str | None,
            system_prompt: str, device: str, dtype: str, max_new_tokens: int, temperature: float,
            top_p: float, seed: int | None, max_batch_audio_seconds: float, as_json: bool) -> None:
    for path, _ in jobs:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
    sampling = _sampling(max_new_tokens, temperature, top_p, seed)
    engine = _engine(model, device, dtype, engine_config(max_batch_audio_seconds=max_batch_audio_seconds))
    from midashenglm.inference.engine import Request

    requests = [Request(build_conversation(str(path), prompt, system_prompt=system_prompt), sampling, str(path))
                for path, prompt in jobs]
    results = _with_progress(engine, requests, "answering")
    failed = 0
    for label, (path, prompt), result in zip(labels, jobs, results, strict=True):
        if as_json:
            print(json.dumps({"file": str(path), "prompt": prompt, **result.to_dict()},
                             ensure_ascii=False), flush=True)
        elif result.error is None:
            print(f"{label}: {result.text}" if len(jobs) > 1 else result.text, flush=True)
        if result.error is not None:
            failed += 1
            from rich.markup import escape

            _stderr().print(f"[bold red]error:[/] {escape(result.error)}", highlight=False)
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
    system_prompt: SystemPromptOption = SYSTEM_PROMPT,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_new_tokens: MaxNewOption = 256,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
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
) -> None:
    """Batch inference over a manifest, resumable: rerun the same command after a crash.

    Each finished row is written and fsynced at once; rows already in --out are skipped, a
    torn last line is repaired, and a bad row (missing or corrupt audio) is recorded with
    its error while the job goes on.
    """
    from rich.markup import escape

    from midashenglm.inference.manifest import ResultWriter, read_manifest

    if endpoint is None and model is None:
        raise UserError("pass --model (a checkpoint folder or Hub id) or --endpoint URL")
    if concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {concurrency}")
    if out.exists() and manifest.exists() and out.resolve() == manifest.resolve():
        raise UserError(f"--out {out} is the manifest itself: choose another file for the results")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a .jsonl file path")
    sampling = _sampling(max_new_tokens, temperature, top_p, seed)
    rows = list(read_manifest(manifest))
    with ResultWriter(out, overwrite=overwrite, retry_errors=retry_errors) as writer:
        todo = [row for row in rows if row.key not in writer.done]
        note = f"{len(rows) - len(todo)} of {len(rows)} rows already in {out}" if len(todo) < len(rows) else ""
        if writer.repaired:
            note += f"{'; ' if note else ''}cut a torn last line ({writer.repaired} bytes)"
        if note:
            _stderr().print(f"resuming: {escape(note)}", highlight=False)
        # Load the model (or reach the server) before the clock of the progress bar starts.
        if endpoint is not None:
            client = _endpoint_client(endpoint, api_key, served_model)
        else:
            engine = _engine(model, device, dtype, engine_config(max_num_seqs, max_batch_audio_seconds,
                                                                 max_kv_cache_tokens))
        with _RunProgress(len(todo)) as progress:
            try:
                if endpoint is not None:
                    _run_endpoint(todo, writer, progress, client=client, concurrency=concurrency,
                                  prompt=prompt, system_prompt=system_prompt, sampling=sampling)
                else:
                    _run_engine(todo, writer, progress, engine=engine, prompt=prompt,
                                system_prompt=system_prompt, sampling=sampling)
            except KeyboardInterrupt:
                _stderr().print(f"interrupted after {progress.done} rows; run the same command "
                                "again to resume", highlight=False)
                raise typer.Exit(130) from None
    _stderr().print(f"wrote {progress.done} rows to {escape(str(out))} ({progress.errors} with errors, "
                    f"{progress.audio_seconds / 3600:.3f} h of audio)", highlight=False)


def _row_prompts(row: ManifestRow, prompt: str, system_prompt: str) -> tuple[str, str]:
    row_system = row.data.get("system_prompt")
    return row.data.get("prompt") or prompt, system_prompt if row_system is None else row_system


def _run_engine(rows: list[ManifestRow], writer: Any, progress: _RunProgress, *, engine: Engine,
                prompt: str, system_prompt: str, sampling: SamplingParams) -> None:
    from midashenglm.inference.engine import Request
    from midashenglm.inference.manifest import output_record

    in_flight: dict[int, ManifestRow] = {}
    positions = itertools.count()  # iter_results numbers the requests in the order they are read

    def requests() -> Iterator[Request]:
        for row in rows:
            if row.error:
                writer.write(output_record(row, error=row.error))
                progress.advance(error=True)
                continue
            row_prompt, row_system = _row_prompts(row, prompt, system_prompt)
            in_flight[next(positions)] = row
            yield Request(build_conversation(str(row.audio_path), row_prompt, system_prompt=row_system), sampling,
                          str(row.index))

    for index, result in engine.iter_results(requests()):
        row = in_flight.pop(index)
        usage = {"audio_seconds": round(result.audio_seconds, 3), "audio_tokens": result.audio_tokens,
                 "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                 "finish_reason": result.finish_reason}
        if result.error is None:
            writer.write(output_record(row, output=result.text, usage=usage))
        else:
            writer.write(output_record(row, error=result.error))
        progress.advance(result.audio_seconds, error=result.error is not None)


def _endpoint_client(endpoint: str, api_key: str | None, served_model: str | None) -> Any:
    from midashenglm.inference.client import EndpointClient

    try:
        client = EndpointClient(endpoint, api_key=api_key, model=served_model)
        client.check()
    except Exception as err:  # noqa: BLE001 - the openai client has many error types
        raise UserError(f"--endpoint {endpoint}: {err}") from None
    return client


def _run_endpoint(rows: list[ManifestRow], writer: Any, progress: _RunProgress, *, client: Any,
                  concurrency: int, prompt: str, system_prompt: str, sampling: SamplingParams) -> None:
    from midashenglm.inference.manifest import output_record

    def one(row: ManifestRow) -> Any:
        row_prompt, row_system = _row_prompts(row, prompt, system_prompt)
        return client.ask(row.audio_path, row_prompt, system_prompt=row_system or None,
                          sampling=sampling)

    pending: dict[Future, ManifestRow] = {}
    queue = iter(rows)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="midashenglm-endpoint") as pool:
        while True:
            while len(pending) < 2 * concurrency:
                row = next(queue, None)
                if row is None:
                    break
                if row.error:
                    writer.write(output_record(row, error=row.error))
                    progress.advance(error=True)
                    continue
                pending[pool.submit(one, row)] = row
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                row = pending.pop(future)
                try:
                    answer = future.result()
                except Exception as err:  # noqa: BLE001 - recorded, the job goes on
                    writer.write(output_record(row, error=_describe(err)))
                    progress.advance(error=True)
                    continue
                usage = {"audio_seconds": round(answer.audio_seconds, 3),
                         "prompt_tokens": answer.prompt_tokens,
                         "completion_tokens": answer.completion_tokens,
                         "finish_reason": answer.finish_reason}
                writer.write(output_record(row, output=answer.text, usage=usage))
                progress.advance(answer.audio_seconds)


class _RunProgress:
    """A batch job's counts (rows, errors, audio), shown on its progress bar as rates."""

    def __init__(self, total: int) -> None:
        self.bar = ProgressBar(total, "inference")
        self.done = self.errors = 0
        self.audio_seconds = 0.0
        self.t0 = time.perf_counter()

    def advance(self, audio_seconds: float = 0.0, *, error: bool = False) -> None:
        self.done += 1
        self.errors += error
        self.audio_seconds += audio_seconds
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.advance(1, f"{self.done / elapsed:.2f} clips/s, {self.audio_seconds / 3600 / elapsed:.4f} audio-h/s")

    def __enter__(self) -> _RunProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)


# ----------------------------------------------------------------------------- helpers
def _sampling(max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> SamplingParams:
    from midashenglm.inference.params import SamplingParams

    try:
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              seed=seed)
    except ValueError as err:
        raise UserError(str(err)) from None


def _engine(model: str | None, device: str, dtype: str, config: EngineConfig) -> Engine:
    if model is None:
        raise UserError("pass --model (a checkpoint folder or Hub id) or set MIDASHENGLM_MODEL")
    from midashenglm.inference.engine import Engine

    with _stderr().status(f"loading {model}"):
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
        from rich.console import Console

        _STDERR = Console(stderr=True)
    return _STDERR
