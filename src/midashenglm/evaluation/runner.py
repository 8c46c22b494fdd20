"""``midashenglm benchmark``: run a model over a local copy of a benchmark, write the official
JSONL result file, score it.

The run is a batch job of the inference engine: every item becomes one
:class:`~midashenglm.inference.engine.Request` (the conversation from
:func:`midashenglm.conversation.build_conversation`, the task's published prompt), the
engine answers them as they finish (``Engine.iter_results``: continuous batching, a clip
that cannot be loaded becomes an error result), and each answer is written at once
through the resumable writer of ``midashenglm run``
(:class:`midashenglm.inference.manifest.ResultWriter`: one fsynced line per item, a torn
last line repaired on restart, rows keyed by ``_row`` (the item's position in the data)
and ``audio``). A rerun skips the items already in the file and appends the rest, never
duplicating one; ``--retry-errors`` runs the error rows again. Rows are written in the
order they finish; the scorer does not care.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from midashenglm import jsonl
from midashenglm.conversation import DEFAULT_SYSTEM_PROMPT
from midashenglm.errors import UserError
from midashenglm.evaluation import tasks as T
from midashenglm.progress import ProgressBar

if TYPE_CHECKING:
    from midashenglm.evaluation.tasks import Task
    from midashenglm.inference.engine import Engine, Request, Result

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


# -------------------------------------------------------------------------- engine
def make_engine(model: str, *, device: str = "auto", dtype: str = "auto",
                batch_size: int | None = None,
                model_and_processor: tuple[Any, Any] | None = None) -> Engine:
    """The engine a benchmark runs on: load ``model`` (unless ``model_and_processor`` is
    given) and wrap it; ``batch_size`` is the engine's ``max_num_seqs``."""
    from midashenglm.inference.config import EngineConfig
    from midashenglm.inference.engine import Engine

    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if model_and_processor is None:
        from midashenglm.checkpoint import load_model

        model_and_processor = load_model(model, device=device, dtype=dtype)
    config = EngineConfig().replace(max_num_seqs=batch_size)
    return Engine(*model_and_processor, config=config)


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


def item_request(item: dict[str, Any], prompt: T.Prompt, max_new_tokens: int,
                 sample_rate: int) -> Request:
    """The engine request of one item: its audio (a path or bytes, loaded by the engine; a
    list of clips joined here) and its prompt, decoded greedily."""
    from midashenglm.conversation import build_conversation
    from midashenglm.inference.engine import Request, SamplingParams

    source = item["source"]
    audio = load_item_audio(item, sample_rate) if isinstance(source, list | tuple) else source
    conversation = build_conversation(audio, prompt.text, system_prompt=prompt.system,
                                      sampling_rate=sample_rate if isinstance(audio, np.ndarray) else None)
    return Request(conversation, SamplingParams(max_new_tokens=max_new_tokens), item["id"])


# ---------------------------------------------------------------------------- rows
def result_row(item: dict[str, Any], task: Task, output: str, model_name: str,
               prompt: T.Prompt, error: str | None = None, *,
               style: str = T.MIDASHENGLM) -> dict[str, Any]:
    """A result row in the official field order, with our extra fields after it.

    A closed-QA ``answer`` is written in the form the prompt asks for (see
    :func:`midashenglm.evaluation.tasks.scored_answer`), because the official string
    match compares it with the output as it is.
    """
    row: dict[str, Any] = {"dataset_name": task.dataset_name, "audio": item.get("audio")}
    for key in _REFERENCE_ORDER:
        if key in item:
            row[key] = item[key]
    if task.category == T.CLOSED_QA and "answer" in item:
        row["answer"] = T.scored_answer(item, style)
    row["prompt"] = prompt.text
    row["model_output"] = output
    row["model_name"] = model_name
    row["id"] = item["id"]
    if prompt.system:
        row["system_prompt"] = prompt.system
    for key, value in item.items():
        if key not in row and key not in ("source", "system", "id"):
            row[key] = value
    if error is not None:
        row["error"] = error
    return row


def check_existing(path: Path, dataset_name: str, model_name: str) -> dict[tuple[int, str], str]:
    """The ids of the rows already in ``path`` by their writer key ``(_row, audio)``.

    Refuses a file of another dataset or model, or one not written by this runner (no
    ``_row``). A last line cut off by a crash is repaired first (``midashenglm.jsonl``).
    """
    if not path.exists():
        return {}
    jsonl.repair_tail(path)
    hint = "it cannot be resumed (fix or move the file, or pass another --out)"
    keys: dict[tuple[int, str], str] = {}
    for number, row in jsonl.existing_rows(path, hint=hint):
        if row.get("dataset_name") != dataset_name:
            raise UserError(f"{path}: holds results of {row.get('dataset_name')!r}, not "
                            f"{dataset_name!r}; pass another --out")
        if row.get("model_name") != model_name:
            raise UserError(f"{path}: holds results of model {row.get('model_name')!r}, not "
                            f"{model_name!r}; pass another --out (or --model-name)")
        if not isinstance(row.get("_row"), int):
            raise UserError(f"{path}, line {number}: no '_row' (not written by this version "
                            f"of the runner); {hint}")
        keys[(row["_row"], str(row.get("audio")))] = str(row.get("id", row.get("audio")))
    return keys


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
    engine: Engine | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int | None = None,
    prompt_style: str = T.MIDASHENGLM,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    model_name: str | None = None,
    retry_errors: bool = False,
    score: bool = True,
    loader_options: dict[str, Any] | None = None,
    progress: bool = True,
    model_and_processor: tuple[Any, Any] | None = None,
) -> RunSummary:
    """Answer every item of ``task`` in ``data`` with ``engine`` and append to ``out``.

    ``model`` names the checkpoint (the default ``model_name`` of the rows). The caller
    creates the engine once and passes it; without one, an engine is built here from
    ``model_and_processor`` or by loading ``model`` (``device``, ``dtype``, ``batch_size``
    apply only then). ``system_prompt`` applies to the MiDashengLM prompt style (the
    baselines' published prompts bring their own).
    """
    task = T.get_task(task) if isinstance(task, str) else task
    if limit is not None and limit < 0:
        raise UserError(f"--limit {limit}: must not be negative")
    if prompt_style not in T.PROMPT_STYLES:
        raise UserError(f"--prompt-style {prompt_style!r}: choose {', '.join(T.PROMPT_STYLES)}")
    name = model_name or default_model_name(model)
    out_path = Path(out) if out else default_out(task, name)
    max_new = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task.category]

    existing = check_existing(out_path, task.dataset_name, name)
    existing_ids = set(existing.values())
    items: Iterable[dict[str, Any]] = T.iter_items(task, data, **(loader_options or {}))
    items = itertools.islice(items, limit)
    if task.loader not in STREAMING_LOADERS or Path(data).is_file():
        items = list(items)  # metadata only: gives the progress bar its total
    if engine is None:
        engine = make_engine(model, device=device, dtype=dtype, batch_size=batch_size,
                             model_and_processor=model_and_processor)
    from midashenglm.inference.manifest import ResultWriter

    summary = RunSummary(out_path)
    total = len(items) if isinstance(items, list) else None
    with ResultWriter(out_path, retry_errors=retry_errors) as writer, \
            ProgressBar(total, task.name, enabled=progress) as bar:
        job = _Job(task, name, prompt_style, system_prompt, writer, summary, bar)
        in_flight: dict[int, tuple[int, dict[str, Any], T.Prompt]] = {}
        positions = itertools.count()  # iter_results numbers requests in the order read

        def requests() -> Iterator[Request]:
            seen: set[str] = set()
            for index, item in enumerate(items):
                if item["id"] in seen:
                    raise UserError(f"item id {item['id']!r} occurs twice in the data: "
                                    "ids must be unique")
                seen.add(item["id"])
                key = (index, str(item.get("audio")))
                known = existing.get(key)
                if known != item["id"] and (known is not None or item["id"] in existing_ids):
                    raise UserError(f"{out_path}: item {item['id']!r} is not where the file has "
                                    "it: the data changed since the file was written; pass "
                                    "another --out")
                if key in writer.done:
                    summary.skipped += 1
                    bar.advance(1)
                    continue
                prompt = job.prompt(item)
                try:
                    request = item_request(item, prompt, max_new, engine.sample_rate)
                except (ValueError, OSError) as err:  # a clip of a pair (AudioError: ValueError)
                    job.write(index, item, prompt, error=f"audio: {err}")
                    continue
                in_flight[next(positions)] = (index, item, prompt)
                yield request

        for position, result in engine.iter_results(requests()):
            index, item, prompt = in_flight.pop(position)
            job.write(index, item, prompt, result=result)
    if score:
        _score(summary, task)
    return summary


@dataclass
class _Job:
    """What every row of one run shares, and how a finished item becomes a written row."""

    task: Task
    model_name: str
    style: str
    system_prompt: str | None
    writer: Any
    summary: RunSummary
    bar: Any

    def prompt(self, item: dict[str, Any]) -> T.Prompt:
        prompt = self.task.prompt(item, self.style)
        if self.style == T.MIDASHENGLM and prompt.system is None and self.system_prompt:
            prompt = T.Prompt(prompt.text, self.system_prompt)
        return prompt

    def write(self, index: int, item: dict[str, Any], prompt: T.Prompt, *,
              result: Result | None = None, error: str | None = None) -> None:
        if result is not None:
            error = result.error
        output = result.text.strip() if result is not None and error is None else ""
        row = result_row(item, self.task, output, self.model_name, prompt, error,
                         style=self.style)
        row["_row"] = index
        self.writer.write(row)
        self.summary.written += 1
        if error is None:
            self.summary.answered += 1
        else:
            self.summary.errors += 1
            if len(self.summary.error_examples) < 5:
                self.summary.error_examples.append(f"{item['id']}: {error}")
        self.bar.advance(1)


def _score(summary: RunSummary, task: Task) -> None:
    try:
        from midashenglm.evaluation.scoring import score_file
    except ImportError as err:
        summary.score_error = f"scoring is not available ({err})"
        return
    try:
        # The paper reports MECAT with FENSE (MECAT's own default is DATE).
        summary.score = score_file(summary.out, task.metric, mecat_metric="fense")
    except Exception as err:  # noqa: BLE001 - the command reports it (exit status 2)
        summary.score_error = (f"{type(err).__name__}: {err}. The rows are written; score "
                               f"them later with `midashenglm evaluate {summary.out}`")
