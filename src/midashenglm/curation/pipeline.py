"""The curation pipeline: clips -> expert metadata -> caption + QA -> consistency filter.

Three stages, the same code locally and on Ray Data (so both write identical files):

1. ``analyze_signal`` (CPU tasks on Ray): decode the clip, run the signal experts;
2. :class:`ModelStage` (an actor pool on Ray: weights load once per actor): the model experts
   (VAD, ASR, tagger, speakers...), then the clip's category;
3. :class:`WriteStage` (one actor on Ray, so the LLM concurrency limit holds for the whole
   run): facts -> caption and QA through the writer (cached, grounding-checked), then the
   audio-text consistency score.

Rows travel between stages as columns of plain values (``wave`` as float32 bytes, metadata
and results as JSON text), which is what Ray Data moves between workers cheaply.

Resumable: every finished clip is appended (fsynced) to ``metadata.jsonl`` /
``captions.jsonl`` as it completes; a rerun skips clips already captioned, reuses the
metadata of clips whose caption failed (the experts are not run again), and retries clips
that failed. At the end every output is rewritten in input order, atomically. A clip that
fails (undecodable, too long, a writer that never answers) is recorded in ``errors.jsonl``
with its stage and error; the run goes on.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from midashenglm import jsonl
from midashenglm.curation.experts.base import SAMPLE_RATE, Expert
from midashenglm.curation.experts.registry import ExpertOptions, build_experts
from midashenglm.progress import ProgressBar

CAPTION_PROMPT = "Write an audio caption describing the sound"  # the paper's (SYSTEM.md s. 6)
OUTPUTS = ("metadata.jsonl", "captions.jsonl", "qa.jsonl", "errors.jsonl", "train.jsonl",
           "run.json")


@dataclass
class CurationConfig:
    """Everything a run needs; plain values, so Ray can ship it to workers.

    ``experts`` / ``skip``: expert names (default: all that can run here). ``writer``:
    ``"template"``, ``"smollm2"``, a local model folder, an ``http(s)://`` OpenAI-compatible
    endpoint, or ``"none"`` (metadata only). ``consistency``: ``"text"``, ``"none"`` or a
    CLAP model folder / Hub id; ``threshold``: the filter's minimum score (None: the scorer's
    default). ``batch_size``: clips per batch in every stage. ``workers``: actors in the model
    stage on Ray. ``max_seconds``: longer clips are recorded as errors.
    """

    experts: list[str] | None = None
    skip: list[str] = field(default_factory=list)
    expert_options: ExpertOptions = field(default_factory=ExpertOptions)
    writer: str = "template"
    served_model: str | None = None
    api_key: str | None = None
    llm_timeout: float = 60.0
    llm_retries: int = 4
    llm_concurrency: int = 8
    llm_backoff: float = 1.0
    max_attempts: int = 3
    qa: bool = True
    consistency: str = "text"
    threshold: float | None = None
    cache: str | None = None
    batch_size: int = 8
    workers: int = 1
    max_seconds: float = 600.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("api_key")  # never written to run.json
        return data


def quiet_libraries() -> None:
    """No per-model "Loading weights" bars or kernel notices under the pipeline's one bar."""
    from midashenglm.training.optim import quiet_bitsandbytes

    quiet_bitsandbytes()
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return
    hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------- stage 1
_BUILT: dict[str, tuple[list[Expert], dict[str, str]]] = {}


def _experts(config: CurationConfig, kind: str) -> tuple[list[Expert], dict[str, str]]:
    """The experts of ``kind``, built (and their availability checked) once per process:
    stage 1 runs per batch, and ``available()`` may look at caches or the network."""
    key = json.dumps(config.to_json(), sort_keys=True)
    if key not in _BUILT:
        _BUILT[key] = build_experts(config.experts, config.skip, config.expert_options)
    ready, missing = _BUILT[key]
    return [e for e in ready if e.kind == kind], missing


def _run_expert(expert: Expert, wave: np.ndarray, meta: dict[str, Any]) -> None:
    try:
        out = expert.analyze(wave, meta["experts"])
    except Exception as e:  # one expert failing on one clip never stops the clip or the run
        meta["expert_errors"][expert.name] = f"{type(e).__name__}: {e}"
        return
    meta["experts"][expert.name] = out
    meta["versions"][expert.name] = expert.version


def analyze_signal(batch: dict[str, Any], config: CurationConfig) -> dict[str, list[Any]]:
    """Stage 1 over a batch: decode each clip and run the signal experts (no weights)."""
    from midashenglm.curation.inputs import ClipRef, load_clip

    experts, _ = _experts(config, "signal")
    rows = _rows(batch)
    for row in rows:
        if row["meta"] or row["error"]:
            continue  # metadata from an earlier run: the experts are not run again
        ref = ClipRef.from_row(json.loads(row["ref"]))
        try:
            wave = load_clip(ref, max_seconds=config.max_seconds)
        except Exception as e:  # undecodable, missing, too long: recorded, the run goes on
            row["error"] = json.dumps({"stage": "load", "error": f"{type(e).__name__}: {e}"})
            continue
        meta = {"id": ref.id, "audio": ref.to_json(), "duration": round(len(wave) / SAMPLE_RATE, 3),
                "experts": {}, "versions": {}, "expert_errors": {}}
        for expert in experts:
            _run_expert(expert, wave, meta)
        row["wave"] = wave.astype(np.float32).tobytes()
        row["meta"] = json.dumps(meta)
    return _columns(rows)


# --------------------------------------------------------------------------- stage 2
class ModelStage:
    """Stage 2: the model experts, loaded once (per Ray actor), then the clip's category."""

    def __init__(self, config: CurationConfig) -> None:
        quiet_libraries()
        self.experts, _ = _experts(config, "model")
        self.load_errors: dict[str, str] = {}
        for expert in list(self.experts):
            try:
                expert.load()
            except Exception as e:  # broken weights: this expert is skipped, the run goes on
                self.load_errors[expert.name] = f"failed to load: {type(e).__name__}: {e}"
                self.experts.remove(expert)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from midashenglm.curation.categories import categorize

        rows = _rows(batch)
        for row in rows:
            if row["error"] or not row["wave"]:
                continue
            meta = json.loads(row["meta"])
            wave = np.frombuffer(row["wave"], dtype=np.float32).copy()  # experts may write to it
            for expert in self.experts:
                _run_expert(expert, wave, meta)
            for name, reason in self.load_errors.items():
                meta["expert_errors"][name] = reason
            meta["category"] = categorize(meta["experts"])
            row["meta"] = json.dumps(meta)
        return _columns(rows)


# --------------------------------------------------------------------------- stage 3
class WriteStage:
    """Stage 3: caption + QA from the facts, grounding-checked, then the consistency score."""

    def __init__(self, config: CurationConfig, cache_path: str) -> None:
        from midashenglm.curation.consistency import make_scorer
        from midashenglm.curation.writers import ResponseCache

        quiet_libraries()
        self.config = config
        self.writer = _make_writer(config)
        self.cache = ResponseCache(cache_path) if _uses_llm(config.writer) else None
        self.scorer = make_scorer(config.consistency, threshold=config.threshold)
        if self.scorer is not None:
            self.scorer.load()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = _rows(batch)
        todo = [r for r in rows if not r["error"]]
        workers = max(1, min(len(todo), getattr(self.writer, "concurrency", 1)))
        with ThreadPoolExecutor(workers) as pool:
            for row, outcome in zip(todo, pool.map(self._write, todo), strict=True):
                row.update(outcome)
        for row in rows:
            row["wave"] = b""  # not needed after this stage; the driver only writes JSON
        return _columns(rows)

    def _write(self, row: dict[str, Any]) -> dict[str, str]:
        from midashenglm.curation.facts import ClipFacts
        from midashenglm.curation.inputs import ClipRef, load_clip
        from midashenglm.curation.writers import write_caption, write_qa

        meta = json.loads(row["meta"])
        facts = ClipFacts.from_metadata(meta)
        # A local model's malformed answers repeat on every retry: the template writer's
        # caption is used (recorded). An endpoint's failures may pass: the clip is retried
        # by the next run instead.
        local = not _is_endpoint(self.config.writer)
        try:
            caption = write_caption(facts, self.writer, cache=self.cache, fallback_on_error=local,
                                    max_attempts=self.config.max_attempts)
            # QA pairs the writer cannot produce (a small local model rarely writes valid JSON)
            # come from the template writer instead, recorded; the caption stands.
            qa = (write_qa(facts, self.writer, cache=self.cache, fallback_on_error=True,
                           max_attempts=self.config.max_attempts) if self.config.qa else None)
        except Exception as e:  # the writer gave up on the caption (timeouts, 500s, malformed)
            return {"error": json.dumps({"stage": "write", "error": f"{type(e).__name__}: {e}"})}
        result: dict[str, Any] = {"id": meta["id"], "audio": meta["audio"],
                                  "duration": meta["duration"],
                                  "category": meta.get("category", {}).get("category"),
                                  "caption": caption.text, "writer": _record(caption)}
        if qa is not None:
            result["qa"] = [p.to_json() for p in qa.pairs]
            result["qa_writer"] = _record(qa)
        if self.scorer is not None:
            wave = (np.frombuffer(row["wave"], dtype=np.float32) if row["wave"]
                    else load_clip(ClipRef.from_row(json.loads(row["ref"])),
                                   max_seconds=self.config.max_seconds)
                    if self.scorer.needs_audio else None)
            score = self.scorer.score(caption.text, wave, facts.evidence())
            result["consistency"] = {"method": self.scorer.name, "score": round(score, 4),
                                     "threshold": self.scorer.threshold,
                                     "passed": self.scorer.passes(score)}
        return {"result": json.dumps(result)}


def _is_endpoint(writer: str) -> bool:
    return writer.strip().lower().startswith(("http://", "https://"))


def _make_writer(config: CurationConfig) -> Any:
    from midashenglm.curation.writers import make_writer

    options = {"backoff": config.llm_backoff} if _is_endpoint(config.writer) else {}
    return make_writer(config.writer, model=config.served_model, api_key=config.api_key,
                       timeout=config.llm_timeout, max_retries=config.llm_retries,
                       concurrency=config.llm_concurrency, **options)


def preflight(config: CurationConfig) -> tuple[CurationConfig, dict[str, Any]]:
    """Check the writer and the scorer before any clip is analysed; name the endpoint's model.

    Returns the config (with ``served_model`` filled in for an endpoint, so that workers do
    not each ask the server) and what will write and score, for the run record. Raises
    :class:`~midashenglm.errors.UserError` for a bad spec, an endpoint that does not answer,
    or a scorer that cannot run here.
    """
    from midashenglm.curation.consistency import make_scorer
    from midashenglm.errors import UserError

    described: dict[str, Any] = {"writer": None, "consistency": None}
    if config.writer != "none":
        writer = _make_writer(config)
        if _is_endpoint(config.writer):
            # One quick try: a wrong URL is an error now, not after every back-off.
            probe = _make_writer(replace(config, llm_retries=0,
                                         llm_timeout=min(config.llm_timeout, 15.0)))
            try:
                config = replace(config, served_model=probe.model)
            except Exception as e:
                raise UserError(f"--writer {config.writer}: the endpoint does not list its "
                                f"models ({type(e).__name__}: {e}); is the server up? "
                                "(--served-model NAME skips this check)") from None
        elif config.writer != "template":
            _check_local_model(config.writer)
        described["writer"] = writer.describe() if hasattr(writer, "describe") else {
            "name": writer.name, "model": writer.model}
        scorer = make_scorer(config.consistency, threshold=config.threshold)
        if scorer is not None:
            availability = scorer.available()
            if not availability:
                raise UserError(f"--consistency {config.consistency}: {availability.reason} "
                                "(--consistency none turns the filter off)")
            described["consistency"] = scorer.describe()
    return config, described


def _check_local_model(spec: str) -> None:
    """A local writer's model is on disk, in the Hugging Face cache, or the Hub answers."""
    from midashenglm.curation.experts.hub import hub_model_status
    from midashenglm.curation.writers.local import resolve_model
    from midashenglm.errors import UserError

    folder, gguf = resolve_model(spec)  # UserError when smollm2's package is missing
    if gguf is None:
        status = hub_model_status(folder)
        if not status:
            raise UserError(f"--writer {spec}: {status.reason}")


def connect_ray(address: str | None) -> None:
    """Start Ray here (``address`` None) or join a cluster; a cluster that does not answer is
    a :class:`~midashenglm.errors.UserError` within seconds (``ray.init`` would retry for
    minutes)."""
    import logging
    import socket

    import ray

    from midashenglm.errors import UserError

    if ray.is_initialized():
        return
    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise UserError(f"--ray={address}: no Ray cluster answers there ({e}); give "
                            "HOST:PORT of the head node, ray://HOST:10001, or 'auto'") from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"--ray={address or ''}: {e}") from None


def _record(result: Any) -> dict[str, Any]:
    """How a caption or QA was written, without ``cached`` (a rerun's files equal the first's)."""
    record = result.record()
    record.pop("cached", None)
    return record


def _uses_llm(writer: str) -> bool:
    return writer not in ("template", "none")


# --------------------------------------------------------------------------- batches
COLUMNS = ("index", "ref", "wave", "meta", "error", "result")


def _rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray's numpy batch (or our dict of lists) -> one dict per row, plain Python values."""
    n = len(batch["index"])
    rows = []
    for i in range(n):
        row = {}
        for c in COLUMNS:
            value = batch[c][i]
            row[c] = value.item() if isinstance(value, np.generic) else value
        row["wave"] = bytes(row["wave"]) if row["wave"] is not None else b""
        rows.append(row)
    return rows


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {c: [r[c] for r in rows] for c in COLUMNS}


def _batches(rows: list[dict[str, Any]], size: int) -> Iterator[dict[str, list[Any]]]:
    for start in range(0, len(rows), size):
        yield _columns(rows[start:start + size])


def run_local(rows: list[dict[str, Any]], config: CurationConfig, cache_path: str
              ) -> Iterator[dict[str, Any]]:
    """The three stages in this process, batch by batch; yields finished rows."""
    model_stage = write_stage = None
    for batch in _batches(rows, config.batch_size):
        batch = analyze_signal(batch, config)
        if model_stage is None:
            model_stage = ModelStage(config)
        batch = model_stage(batch)
        if config.writer != "none":
            if write_stage is None:
                write_stage = WriteStage(config, cache_path)
            batch = write_stage(batch)
        yield from _rows(batch)


def run_ray(rows: list[dict[str, Any]], config: CurationConfig, cache_path: str,
            address: str | None) -> Iterator[dict[str, Any]]:
    """The same three stages on Ray Data: tasks, an actor pool, one writer actor.

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``) or None for a Ray
    started here on this machine's CPUs. Rows stream back as they finish.
    """
    import logging

    import ray

    connect_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is the one progress bar
    # Ray Data's INFO lines would bury our progress bar; its errors stay.
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx.execution_options.preserve_order = False
    ctx.print_on_execution_start = False
    # Every stage must be schedulable at once or the stream stalls: the model actors leave one
    # CPU to the decoding/signal tasks, and the writer actor reserves none (it mostly waits
    # for the LLM; its threads and the small text scorer share the CPUs).
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = max(1, min(config.workers, cpus - 1))
    items = [{c: r[c] for c in COLUMNS} for r in rows]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // config.batch_size))
    ds = ds.map_batches(analyze_signal, fn_kwargs={"config": config}, num_cpus=1,
                        batch_size=config.batch_size, batch_format="numpy")
    # max_restarts=0: Ray warns (an "E" line) that actors whose constructor arguments live in
    # the object store cannot always restart; a failed actor fails the run instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ray_remote_args (Ray 2.5x)
        ds = ds.map_batches(ModelStage, fn_constructor_kwargs={"config": config}, num_cpus=1,
                            batch_size=config.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=workers), max_restarts=0)
        if config.writer != "none":
            ds = ds.map_batches(WriteStage, fn_constructor_kwargs={"config": config,
                                                                   "cache_path": cache_path},
                                batch_size=config.batch_size, batch_format="numpy", num_cpus=0,
                                compute=ray.data.ActorPoolStrategy(size=1), max_restarts=0)
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
        yield from _rows(batch)


# --------------------------------------------------------------------------- the run
@dataclass
class CurationReport:
    """What a run did: clips captioned (now and before), failed, filtered; audio seconds."""

    out_dir: Path
    total: int = 0
    done_before: int = 0
    processed: int = 0
    captioned: int = 0
    failed: int = 0
    filtered: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    experts: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    writer: dict[str, Any] | None = None
    consistency: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


class _Outputs:
    """The run's files: appended (fsynced) as clips finish, rewritten in order at the end."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.meta = self._read("metadata.jsonl")
        self.results = self._read("captions.jsonl")
        self.errors = self._read("errors.jsonl")
        self._fh = {name: (out / name).open("a", encoding="utf-8")
                    for name in ("metadata.jsonl", "captions.jsonl", "errors.jsonl")}

    def _read(self, name: str) -> dict[str, dict[str, Any]]:
        path = self.out / name
        if not path.exists():
            return {}
        jsonl.repair_tail(path)
        return {row["id"]: row for _, row in jsonl.existing_rows(path) if "id" in row}

    def add(self, name: str, row: dict[str, Any]) -> None:
        {"metadata.jsonl": self.meta, "captions.jsonl": self.results,
         "errors.jsonl": self.errors}[name][row["id"]] = row
        jsonl.append_rows(self._fh[name], [row])

    def close(self) -> None:
        for fh in self._fh.values():
            fh.close()

    def rewrite(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        path = self.out / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            jsonl.append_rows(fh, rows)
        os.replace(tmp, path)


def curate(input: str | os.PathLike, out_dir: str | os.PathLike, config: CurationConfig, *,
           ray_address: str | None = None, use_ray: bool = False, limit: int | None = None,
           shards: bool = False, show_progress: bool = False) -> CurationReport:
    """Curate every clip of ``input`` (a folder, a manifest, or a ``data pack`` shard folder)
    into ``out_dir``. Resumable (see the module docstring).

    ``show_progress``: a progress bar on stderr with clips/s and audio hours/s. Raises
    :class:`~midashenglm.errors.UserError` for a bad input or options; clip-level failures
    are recorded, never raised.
    """
    from midashenglm.curation.inputs import iter_clips
    from midashenglm.errors import UserError

    started = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder")
    clips = list(iter_clips(input))
    config, described = preflight(config)
    if limit is not None:
        clips = clips[:limit]
    ready, missing = build_experts(config.experts, config.skip, config.expert_options,
                                   strict=True)
    report = CurationReport(out_dir=out, total=len(clips),
                            experts=[e.describe() for e in ready], unavailable=missing,
                            writer=described["writer"], consistency=described["consistency"])
    if use_ray:
        connect_ray(ray_address)  # before any output exists: a bad address leaves nothing
    files = _Outputs(out)
    report.notes += _earlier_options(out, config)
    cache_path = config.cache or str(out / "llm-cache.sqlite")
    captioning = config.writer != "none"
    done = files.results if captioning else files.meta
    rows = []
    for index, ref in enumerate(clips):
        if ref.id in done:
            report.done_before += 1
            continue
        meta = files.meta.get(ref.id)
        rows.append({"index": index, "ref": json.dumps(ref.as_row()), "wave": b"",
                     "meta": json.dumps(meta) if meta else "", "error": "", "result": ""})
    run = run_ray(rows, config, cache_path, ray_address) if use_ray else run_local(
        rows, config, cache_path)
    bar = ProgressBar(len(rows), "curating", enabled=show_progress)
    with bar:
        try:
            for row in run:
                report.processed += 1
                seconds = 0.0
                if row["meta"]:
                    meta = json.loads(row["meta"])
                    seconds = meta.get("duration", 0.0)
                    if meta["id"] not in files.meta:
                        files.add("metadata.jsonl", meta)
                if row["error"]:
                    ref_json = json.loads(row["ref"])
                    files.add("errors.jsonl", {"id": ref_json["id"], "audio": ref_json["audio"],
                                               **json.loads(row["error"])})
                    report.failed += 1
                elif row["result"]:
                    files.add("captions.jsonl", json.loads(row["result"]))
                    report.captioned += 1
                report.audio_seconds += seconds
                bar.advance(1, _rate_label(report, time.perf_counter() - started))
        finally:
            files.close()
    failed_loads = _load_failures(files.meta)
    report.unavailable.update(failed_loads)
    report.experts = [e for e in report.experts if e["name"] not in failed_loads]
    _finalize(files, clips, config, report, shards=shards)
    report.seconds = time.perf_counter() - started
    _write_run_record(out, config, report)
    return report


# Options that shape what a finished clip holds (a rerun keeps finished clips as they are).
_SHAPING = ("experts", "skip", "expert_options", "writer", "served_model", "qa", "consistency")


def _earlier_options(out: Path, config: CurationConfig) -> list[str]:
    """Notes for options that differ from the run that finished the clips already in ``out``."""
    try:
        earlier = json.loads((out / "run.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    now = config.to_json()
    changed = [k for k in _SHAPING if k in earlier and earlier[k] != now[k]]
    if not changed:
        return []
    return [f"{out} holds clips finished with other options ({', '.join(changed)}); they are "
            "kept as they are (the threshold is applied anew): curate into a new --out to "
            "redo them"]


def _load_failures(meta: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Experts whose weights failed to load (recorded in every clip they missed)."""
    return {name: reason for m in meta.values()
            for name, reason in m.get("expert_errors", {}).items()
            if reason.startswith("failed to load")}


def _rate_label(report: CurationReport, elapsed: float) -> str:
    elapsed = max(elapsed, 1e-9)
    label = (f"{report.processed / elapsed:.2f} clips/s, "
             f"{report.audio_seconds / 3600 / elapsed:.3g} audio h/s")
    return label + (f", {report.failed} failed" if report.failed else "")


def _finalize(files: _Outputs, clips: list[Any], config: CurationConfig, report: CurationReport,
              *, shards: bool) -> None:
    """Rewrite every output in input order; the training manifest from the passing captions."""
    order = [c.id for c in clips]
    files.rewrite("metadata.jsonl", (files.meta[i] for i in order if i in files.meta))
    results = [files.results[i] for i in order if i in files.results]
    scorer = report.consistency
    for r in results:  # the threshold of this run, also for clips scored by an earlier one
        c = r.get("consistency")
        if scorer and c and c.get("method") == scorer["name"] and c.get("score") is not None:
            c["threshold"] = scorer["threshold"]
            c["passed"] = c["score"] >= scorer["threshold"]
    files.rewrite("captions.jsonl", results)
    # An error counts only while the clip is still unfinished (a rerun that succeeds clears it).
    finished = files.results if config.writer != "none" else files.meta
    files.rewrite("errors.jsonl", (files.errors[i] for i in order
                                   if i in files.errors and i not in finished))
    files.rewrite("qa.jsonl", ({"id": r["id"], "audio": r["audio"], "qa": r["qa"]}
                               for r in results if "qa" in r))
    report.filtered = sum(1 for r in results if not r.get("consistency", {}).get("passed", True))
    samples = list(training_samples(results, files.out))
    from midashenglm.data.manifest import write_training_manifest

    write_training_manifest(samples, files.out / "train.jsonl")
    if shards and samples:
        _pack_shards(files.out, samples)


def training_samples(results: list[dict[str, Any]], out: Path) -> Iterator[Any]:
    """Training rows (``midashenglm train`` reads them as they are) from the curated results:
    one caption sample per clip that passed the consistency filter, one per QA pair."""
    from midashenglm.data.manifest import TrainingSample

    for r in results:
        if not r.get("consistency", {}).get("passed", True):
            continue
        part = {**_audio_part(r["audio"]), "duration": r["duration"]}
        yield TrainingSample(
            id=f"{r['id']}#caption", dataset="curated-caption", task="caption",
            messages=_chat(part, CAPTION_PROMPT, r["caption"]), duration=r["duration"],
            source=str(out / "captions.jsonl"))
        for k, pair in enumerate(r.get("qa", [])):
            yield TrainingSample(
                id=f"{r['id']}#qa{k}", dataset="curated-qa", task=f"qa/{pair['subcategory']}",
                messages=_chat(part, pair["question"], pair["answer"]), duration=r["duration"],
                source=str(out / "qa.jsonl"))


def _audio_part(audio: str | dict[str, Any]) -> dict[str, Any]:
    """A result's ``audio`` (a path, or a shard part) as a chat audio part."""
    from midashenglm.conversation import audio_part

    if isinstance(audio, dict):
        return {"type": "audio", **audio}
    return audio_part(str(Path(audio).resolve()))


def _chat(part: dict[str, Any], prompt: str, answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [part, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": answer}]


def _pack_shards(out: Path, samples: list[Any]) -> None:
    import shutil

    from midashenglm.data.shards import pack

    target = out / "shards"
    if target.exists():
        shutil.rmtree(target)  # rebuilt from the finished outputs every run
    pack(samples, target)


def _write_run_record(out: Path, config: CurationConfig, report: CurationReport) -> None:
    record = {
        "config": config.to_json(),
        "experts": report.experts, "unavailable": report.unavailable,
        "writer": report.writer, "consistency": report.consistency, "notes": report.notes,
        "clips": report.total, "done_before": report.done_before,
        "processed": report.processed, "captioned": report.captioned,
        "failed": report.failed, "filtered": report.filtered,
        "audio_seconds": round(report.audio_seconds, 3), "seconds": round(report.seconds, 3),
    }
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "run.json")
