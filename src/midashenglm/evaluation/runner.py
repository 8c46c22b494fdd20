"""``midashenglm benchmark``: run a model over a local copy of a benchmark, write the official
JSONL result file, score it.

The result file is the run's state. Every finished batch is appended and flushed at
once, so a crash loses at most the batch in flight; a rerun skips the items already in
the file (keyed by item ``id``) and appends the rest, never duplicating one. A clip that
cannot be loaded, or an item the model fails on, becomes a row with an ``error`` field
(and an empty ``model_output``) instead of stopping the run; ``--retry-errors`` tries
those again.

Inference goes through one function, :func:`generate_answers`, which hands the batch to
the inference engine (``midashenglm.inference.Engine``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from midashenglm import jsonl
from midashenglm.errors import UserError
from midashenglm.evaluation import tasks as T
from midashenglm.progress import ProgressBar

if TYPE_CHECKING:
    from midashenglm.evaluation.tasks import Task

# Answers longer than these are cut; long enough for every answer the paper's prompts ask for
# (a 35 s LibriSpeech utterance is ~100 words; a MECAT long caption is 1-2 sentences).
DEFAULT_MAX_NEW_TOKENS = {
    T.ASR: 440,
    T.CAPTION: 128,
    T.MECAT_CAPTION: 160,
    T.CLASSIFICATION: 32,
    T.GENDER: 16,
    T.MULTILABEL: 96,
    T.CLOSED_QA: 32,
    T.OPEN_QA: 160,
    T.MECAT_QA: 128,
}
PAIR_GAP_SECONDS = 0.5  # silence between the two clips of a VoxCeleb1 verification pair
STREAMING_LOADERS = {"mecat"}  # items hold audio bytes: never all in memory at once
_REFERENCE_ORDER = ("lang", "question", "choices", "text", "label", "answer")


@dataclass
class RunSummary:
    out: Path
    written: int = 0  # rows this run appended
    answered: int = 0  # of which the model answered
    errors: int = 0  # of which error rows
    skipped: int = 0  # items already in the file
    score: Any = None  # the ScoreResult, when scored
    score_error: str | None = None
    error_examples: list[str] = field(default_factory=list)


# -------------------------------------------------------------------------- inference
def generate_answers(
    model: Any,
    processor: Any,
    items: list[dict[str, Any]],
    *,
    max_new_tokens: int,
) -> list[str]:
    """The model's answer to each item (``waveform``: 16 kHz float32, ``prompt``, ``system``).

    Greedy decoding through the inference engine (batched by length, encoder outputs
    cached, shared prompt prefixes computed once). The one place that runs the model.
    """
    from midashenglm.inference.engine import Request, SamplingParams

    requests = []
    for it in items:
        messages: list[dict[str, Any]] = []
        if it.get("system"):
            messages.append({"role": "system", "content": it["system"]})
        # Audio first, then the instruction: the order of the official fine-tuning toolkit.
        messages.append({"role": "user", "content": [
            {"type": "audio", "audio": it["waveform"]},
            {"type": "text", "text": it["prompt"]},
        ]})
        requests.append(Request(messages, SamplingParams(max_new_tokens=max_new_tokens)))
    results = _engine_for(model, processor).generate(requests)
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(failed[0])
    return [r.text.strip() for r in results]


_ENGINES: dict[tuple[int, int], Any] = {}


def _engine_for(model: Any, processor: Any) -> Any:
    """One engine per loaded model, so its encoder cache lives across batches."""
    from midashenglm.inference.engine import Engine

    key = (id(model), id(processor))
    engine = _ENGINES.get(key)
    if engine is None or engine.model is not model:
        _ENGINES.clear()  # a new model: the old engine (and its cache) is not needed
        engine = _ENGINES[key] = Engine(model, processor)
    return engine


def load_item_audio(item: dict[str, Any], sample_rate: int) -> np.ndarray:
    """The item's audio as one waveform; a list of clips is joined with short silences."""
    from midashenglm.audio import load_audio

    source = item["source"]
    if isinstance(source, list | tuple):
        gap = np.zeros(int(PAIR_GAP_SECONDS * sample_rate), dtype=np.float32)
        parts = [load_audio(s, sample_rate=sample_rate) for s in source]
        joined = [p for part in parts for p in (part, gap)][:-1]
        return np.concatenate(joined).astype(np.float32)
    return load_audio(source, sample_rate=sample_rate)


# ---------------------------------------------------------------------------- rows
def result_row(item: dict[str, Any], task: Task, output: str, model_name: str,
               prompt: T.Prompt, error: str | None = None) -> dict[str, Any]:
    """A result row in the official field order, with our extra fields after it."""
    row: dict[str, Any] = {"dataset_name": task.dataset_name, "audio": item.get("audio")}
    for key in _REFERENCE_ORDER:
        if key in item:
            row[key] = item[key]
    row["prompt"] = prompt.text
    row["model_output"] = output
    row["model_name"] = model_name
    row["id"] = item["id"]
    if prompt.system:
        row["system_prompt"] = prompt.system
    for key, value in item.items():
        if key not in row and key not in ("source", "waveform", "system", "id"):
            row[key] = value
    if error is not None:
        row["error"] = error
    return row


def scan_results(path: Path, dataset_name: str, model_name: str) -> tuple[set[str], set[str]]:
    """Ids already answered and ids recorded as errors in an existing result file.

    A last line cut off by a crash is repaired first (``midashenglm.jsonl``); any other
    unreadable line is an error naming its line.
    """
    done: set[str] = set()
    failed: set[str] = set()
    if not path.exists():
        return done, failed
    jsonl.repair_tail(path)
    for _, row in jsonl.existing_rows(path, hint="it cannot be resumed (fix or move the file)"):
        if row.get("dataset_name") != dataset_name:
            raise UserError(f"{path}: holds results of {row.get('dataset_name')!r}, not "
                            f"{dataset_name!r}; pass another --out")
        if row.get("model_name") != model_name:
            raise UserError(f"{path}: holds results of model {row.get('model_name')!r}, not "
                            f"{model_name!r}; pass another --out (or --model-name)")
        (failed if row.get("error") else done).add(_row_key(row))
    return done - failed, failed


def drop_rows(path: Path, ids: set[str]) -> None:
    """Rewrite ``path`` without the rows of ``ids`` (atomically: a crash keeps the old file)."""
    jsonl.rewrite(path, lambda row: _row_key(row) not in ids)


def _row_key(row: dict[str, Any]) -> str:
    return str(row.get("id", row.get("audio")))


# ------------------------------------------------------------------------------ run
def default_out(task: Task, model_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)
    return Path("results") / f"{safe}_{task.dataset_name}.jsonl"


def default_model_name(model: str) -> str:
    return Path(str(model).rstrip("/")).name or str(model)


def run_benchmark(
    model: str,
    task: Task | str,
    data: str | Path,
    *,
    out: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int | None = None,
    prompt_style: str = T.MIDASHENGLM,
    system_prompt: str | None = T.DEFAULT_SYSTEM_PROMPT,
    model_name: str | None = None,
    retry_errors: bool = False,
    score: bool = True,
    loader_options: dict[str, Any] | None = None,
    progress: bool = True,
    model_and_processor: tuple[Any, Any] | None = None,
) -> RunSummary:
    """Answer every item of ``task`` in ``data`` with ``model`` and append to ``out``.

    ``system_prompt`` applies to the MiDashengLM prompt style (the baselines' published
    prompts bring their own). ``model_and_processor`` skips loading (tests, notebooks).
    """
    task = T.get_task(task) if isinstance(task, str) else task
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if limit is not None and limit < 0:
        raise UserError(f"--limit {limit}: must not be negative")
    if prompt_style not in T.PROMPT_STYLES:
        raise UserError(f"--prompt-style {prompt_style!r}: choose {', '.join(T.PROMPT_STYLES)}")
    name = model_name or default_model_name(model)
    out_path = Path(out) if out else default_out(task, name)
    max_new = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task.category]

    done, failed = scan_results(out_path, task.dataset_name, name)
    items: Iterable[dict[str, Any]] = T.iter_items(task, data, **(loader_options or {}))
    items = itertools.islice(items, limit)
    if task.loader not in STREAMING_LOADERS or Path(data).is_file():
        items = list(items)  # metadata only: gives the progress bar its total
    if retry_errors and failed:
        drop_rows(out_path, failed)
        failed = set()
    skip = done | failed
    summary = RunSummary(out_path)

    if model_and_processor is None:
        from midashenglm.checkpoint import load_model

        model_and_processor = load_model(model, device=device, dtype=dtype)
    lm, processor = model_and_processor
    out_path.parent.mkdir(parents=True, exist_ok=True)
    total = len(items) if isinstance(items, list) else None
    with out_path.open("a", encoding="utf-8") as fp, ProgressBar(total, task.name, enabled=progress) as bar:
        for batch in _batches(items, batch_size, skip, summary, bar):
            rows = _answer_batch(lm, processor, task, batch, name, prompt_style, system_prompt,
                                 max_new, summary)
            _write(fp, rows)
            summary.written += len(rows)
            bar.advance(len(batch))
    if score:
        _score(summary, task)
    return summary


def _batches(items: Iterable[dict[str, Any]], size: int, skip: set[str], summary: RunSummary,
             bar: Any) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    seen: set[str] = set()
    for it in items:
        if it["id"] in seen:
            raise UserError(f"item id {it['id']!r} occurs twice in the data: ids must be unique")
        seen.add(it["id"])
        if it["id"] in skip:
            summary.skipped += 1
            bar.advance(1)
            continue
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _answer_batch(model: Any, processor: Any, task: Task, batch: list[dict[str, Any]],
                  model_name: str, style: str, system_prompt: str | None, max_new: int,
                  summary: RunSummary) -> list[dict[str, Any]]:
    """Rows for a batch: audio that fails to load and items the model fails on become errors."""
    rows: dict[str, dict[str, Any]] = {}
    ready = []
    for it in batch:
        prompt = task.prompt(it, style)
        if style == T.MIDASHENGLM and prompt.system is None and system_prompt:
            prompt = T.Prompt(prompt.text, system_prompt)
        try:
            waveform = load_item_audio(it, processor.sample_rate)
        except (ValueError, OSError) as err:  # AudioError is a ValueError
            rows[it["id"]] = _error_row(it, task, model_name, prompt, f"audio: {err}", summary)
            continue
        ready.append(({**it, "waveform": waveform, "prompt": prompt.text,
                       "system": prompt.system}, prompt))
    for (it, prompt), output in zip(ready, _generate_robustly(
            model, processor, [r for r, _ in ready], max_new, summary), strict=True):
        if isinstance(output, Exception):
            rows[it["id"]] = _error_row(it, task, model_name, prompt,
                                        f"generation: {type(output).__name__}: {output}", summary)
        else:
            rows[it["id"]] = result_row(it, task, output, model_name, prompt)
    return [rows[it["id"]] for it in batch]


def _generate_robustly(model: Any, processor: Any, items: list[dict[str, Any]], max_new: int,
                       summary: RunSummary) -> list[str | Exception]:
    """Answers for a batch; when the batch fails (out of memory, one bad item), one at a time.

    An item that fails alone gets its exception as its answer. If nothing has worked yet
    in this run and every item fails, the error is raised: that is a setup problem (wrong
    device, a broken checkpoint), not bad data.
    """
    if not items:
        return []
    try:
        outputs: list[str | Exception] = list(
            generate_answers(model, processor, items, max_new_tokens=max_new))
    except (RuntimeError, ValueError) as batch_error:
        _free_memory()
        outputs = []
        for it in items:
            try:
                outputs.extend(generate_answers(model, processor, [it], max_new_tokens=max_new))
            except (RuntimeError, ValueError) as err:
                outputs.append(err)
        if summary.answered == 0 and all(isinstance(o, Exception) for o in outputs):
            raise batch_error
    summary.answered += sum(not isinstance(o, Exception) for o in outputs)
    return outputs


def _free_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _error_row(item: dict[str, Any], task: Task, model_name: str, prompt: T.Prompt, error: str,
               summary: RunSummary) -> dict[str, Any]:
    summary.errors += 1
    if len(summary.error_examples) < 5:
        summary.error_examples.append(f"{item['id']}: {error}")
    return result_row(item, task, "", model_name, prompt, error=error)


def _write(fp: Any, rows: list[dict[str, Any]]) -> None:
    # Paths and tuples that loaders keep in extra fields become JSON text (default=str).
    jsonl.append_rows(fp, rows)


def _score(summary: RunSummary, task: Task) -> None:
    try:
        from midashenglm.evaluation.scoring import score_file
    except ImportError as err:
        summary.score_error = f"scoring is not available ({err})"
        return
    try:
        # The paper reports MECAT with FENSE (MECAT's own default is DATE).
        summary.score = score_file(summary.out, task.metric, mecat_metric="fense")
    except Exception as err:  # noqa: BLE001 - the results are written; scoring is a bonus here
        summary.score_error = f"{type(err).__name__}: {err}"


# ---------------------------------------------------------------------------- command
def _parse_options(values: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UserError(f"--option {value!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = val
    return options


def _task_table() -> Any:
    from rich.table import Table

    table = Table(title="benchmark tasks", show_lines=False)
    for col in ("task", "dataset_name", "metric", "table"):
        table.add_column(col, no_wrap=True)  # names must stay whole to be copied
    table.add_column("MiDashengLM prompt")
    for task in T.TASKS.values():
        prompt = task.prompts[T.MIDASHENGLM].text.replace("\n", "\\n")
        table.add_row(task.name, task.dataset_name, task.metric,
                      str(task.paper_table or "-"), prompt)
    return table


def register_commands(app: typer.Typer) -> None:
    """Add ``benchmark`` to the ``midashenglm`` command line."""

    @app.command("benchmark")
    def benchmark(
        task: Annotated[str, typer.Option(
            "--task", "-t",
            help="Benchmark task, e.g. librispeech-test-clean, nsynth, mmau, mecat-caption. "
                 "'--task list' prints every task with its dataset, metric and prompt.")],
        model: Annotated[str | None, typer.Option(
            "--model", "-m", help="Checkpoint folder or Hub id (published layout).")] = None,
        data: Annotated[str | None, typer.Option(
            "--data", "-d",
            help="The dataset: its folder in the published layout (see docs/benchmarks.md), "
                 "or a manifest file (.jsonl/.json/.csv/.tsv with an 'audio' column plus the "
                 "reference fields).")] = None,
        out: Annotated[Path | None, typer.Option(
            help="Result file (official JSONL). Default: results/MODEL_DATASET.jsonl. An "
                 "existing file is resumed: its items are skipped, new rows appended.")] = None,
        limit: Annotated[int | None, typer.Option(
            help="Only the first N items of the dataset (a later run without it completes "
                 "the file).")] = None,
        batch_size: Annotated[int, typer.Option(
            help="Items per generate() call. Bigger batches raise throughput, not latency.")] = 8,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
        dtype: Annotated[str, typer.Option(
            help="auto (as stored), float32, bfloat16 or float16; the mel front end always "
                 "runs in float32.")] = "auto",
        max_new_tokens: Annotated[int | None, typer.Option(
            help="Longest answer in tokens. Default per task kind (ASR 440, captions 128, "
                 "labels 32, ...).")] = None,
        prompt_style: Annotated[str, typer.Option(
            help="Whose published prompt to ask: midashenglm, qwen2.5-omni (with its system "
                 "prompt) or kimi-audio.")] = T.MIDASHENGLM,
        system_prompt: Annotated[str, typer.Option(
            help="System prompt for the midashenglm prompt style ('' for none). Default: the "
                 "official usage example's.")] = T.DEFAULT_SYSTEM_PROMPT,
        model_name: Annotated[str | None, typer.Option(
            help="model_name written to the rows. Default: the checkpoint folder's name.")] = None,
        option: Annotated[list[str] | None, typer.Option(
            "--option", "-o",
            help="Loader option KEY=VALUE, e.g. split=test-other, subset=all, seed=1 "
                 "(repeatable; see docs/benchmarks.md).")] = None,
        retry_errors: Annotated[bool, typer.Option(
            help="Run again the items recorded with an error.")] = False,
        no_score: Annotated[bool, typer.Option(
            "--no-score", help="Only write the result file.")] = False,
    ) -> None:
        """Run a model over a benchmark with the paper's prompt; write and score the results.

        Reads a local copy of the dataset in its published layout (or a manifest), asks
        the task's published prompt, appends one row per item to the official JSONL
        result file (resumable: a rerun skips what is there; a clip that fails becomes a
        row with an 'error' field) and prints the paper's metric.
        """
        from rich.console import Console

        console = Console()
        if task.strip().lower() == "list":
            # Wide enough for whole names and prompts, also when piped.
            Console(width=max(console.width, 150)).print(_task_table())
            return
        if model is None or data is None:
            raise UserError("--model and --data are required (or pass --task list)")
        summary = run_benchmark(
            model, task, data, out=out, limit=limit, batch_size=batch_size, device=device,
            dtype=dtype, max_new_tokens=max_new_tokens, prompt_style=prompt_style,
            system_prompt=system_prompt or None, model_name=model_name,
            retry_errors=retry_errors, score=not no_score, loader_options=_parse_options(option),
        )
        console.print(f"wrote {summary.written} rows to {summary.out} "
                      f"({summary.errors} errors, {summary.skipped} already there)",
                      highlight=False)
        for example in summary.error_examples:
            console.print(f"  error: {example}", highlight=False, markup=False)
        if summary.score is not None:
            console.print(_format_score(summary.score), highlight=False, markup=False)
        elif summary.score_error and not no_score:
            console.print(f"not scored: {summary.score_error}", highlight=False, markup=False)


def _format_score(score: Any) -> str:
    value = getattr(score, "value", None)
    metric = getattr(score, "metric", "?")
    count = getattr(score, "count", "?")
    shown = f"{100 * value:.2f}" if isinstance(value, int | float) else str(value)
    return f"score: {metric} = {shown} (x100, {count} rows scored)"
