"""Writers: facts -> a general caption and five QA pairs, grounding-checked.

A writer has ``name``, ``model``, ``settings`` (generation settings, part of the cache key),
``concurrency`` (how many threads may usefully call it), ``uses_cache``, and
``caption(facts, feedback=None) -> str`` / ``qa(facts, feedback=None) -> list[QAPair]``,
which return well-formed answers or raise :class:`WriterError`. Three kinds
(:func:`make_writer`):

* ``"template"``: :class:`~midashenglm.curation.writers.template.TemplateWriter`, rules,
  offline, deterministic, grounded by construction, lower quality;
* ``"smollm2"`` or a model folder / ``.gguf`` / Hub id:
  :class:`~midashenglm.curation.writers.local.LocalWriter` (transformers, greedy);
* ``"http(s)://..."``: :class:`~midashenglm.curation.writers.openai.OpenAIWriter`, any
  OpenAI-compatible endpoint, with retries, timeouts and a concurrency limit.

:func:`write_caption` and :func:`write_qa` are what the pipeline calls: the answer comes
from the :class:`ResponseCache` when it holds it, else from the writer (then stored); the
grounding check (:mod:`midashenglm.curation.grounding`) then accepts it or rejects it, and a
rejected answer is asked again with feedback naming the unsupported terms, up to
``max_attempts`` answers; after that the template writer's text is used (``fallback``).
Everything is recorded in the result (:meth:`CaptionResult.record`). A writer that gives up
(timeouts, server errors, malformed answers through all its retries) raises
:class:`WriterError`, which the pipeline records for the clip, unless ``fallback_on_error``
asks for the template text instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from midashenglm.curation.facts import ClipFacts
from midashenglm.curation.grounding import GroundingReport, check
from midashenglm.curation.qa import QAPair, check_pairs, pairs_from_json, validate_pairs
from midashenglm.curation.writers.cache import ResponseCache, cache_key
from midashenglm.curation.writers.prompts import PROMPT_VERSION, TRANSCRIPT_ONLY, WriterError
from midashenglm.curation.writers.template import TemplateWriter

__all__ = ["CaptionResult", "QAResult", "ResponseCache", "TemplateWriter", "Writer",
           "WriterError", "make_writer", "write_caption", "write_qa", "PROMPT_VERSION"]


class Writer(Protocol):
    name: str
    model: str
    settings: dict[str, Any]
    concurrency: int
    uses_cache: bool

    def caption(self, facts: ClipFacts, feedback: Sequence[str] | None = None) -> str: ...

    def qa(self, facts: ClipFacts, feedback: Sequence[str] | None = None) -> list[QAPair]: ...


def make_writer(spec: str, *, model: str | None = None, api_key: str | None = None,
                timeout: float = 60.0, max_retries: int = 4, concurrency: int = 8,
                **options: Any) -> Writer:
    """The writer for a command-line spec.

    ``"template"``; ``"smollm2"`` (also ``"default"``, ``"local"``); ``"http(s)://..."``
    (``model``, ``api_key``, ``timeout``, ``max_retries``, ``concurrency`` and ``options``
    such as ``temperature``, ``max_tokens``, ``backoff`` go to
    :class:`~midashenglm.curation.writers.openai.OpenAIWriter`); an existing folder or
    ``.gguf`` file, or an ``org/name`` Hub id: a local model (``options`` go to
    :class:`~midashenglm.curation.writers.local.LocalWriter`).
    Raises :class:`~midashenglm.errors.UserError` for anything else.
    """
    from midashenglm.errors import UserError

    text = spec.strip()
    if text.lower() == "template":
        return TemplateWriter()
    if text.lower().startswith(("http://", "https://")):
        from midashenglm.curation.writers.openai import OpenAIWriter

        return OpenAIWriter(text, model=model, api_key=api_key, timeout=timeout,
                            max_retries=max_retries, concurrency=concurrency, **options)
    from midashenglm.curation.writers.local import DEFAULT_ALIASES, LocalWriter

    path = Path(text).expanduser()
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if text.lower() in DEFAULT_ALIASES or path.exists() or looks_like_hub_id:
        return LocalWriter(text, **options)
    raise UserError(f"--writer {spec!r}: expected 'template', 'smollm2', a model folder, a "
                    ".gguf file, a Hub id (org/name) or an http(s):// endpoint")


@dataclass(kw_only=True)
class WriteRecord:
    """How a caption or QA answer was obtained.

    ``writer``/``model``: what wrote it (the template writer after a ``fallback``);
    ``tried``: the writer asked first. ``attempts``: answers obtained (cached ones included).
    ``rejected``: ``{"text", "unsupported"}`` per answer the grounding check refused.
    ``cached``: every answer came from the cache (no request made). ``grounding``: the
    final answer's report. ``error``: the writer's error when ``fallback_on_error`` used the
    template instead of raising.
    """

    writer: str
    model: str
    prompt_version: str
    attempts: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    fallback: bool = False
    cached: bool = False
    grounding: GroundingReport | None = None
    tried: str | None = None
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """Everything but the answer, as JSON values (the pipeline writes it beside it)."""
        out = {"writer": self.writer, "model": self.model, "prompt_version":
               self.prompt_version, "attempts": self.attempts, "rejected": self.rejected,
               "fallback": self.fallback, "cached": self.cached,
               "grounding": self.grounding.to_json() if self.grounding else None}
        if self.tried:
            out["tried"] = self.tried
        if self.error:
            out["error"] = self.error
        return out


@dataclass(kw_only=True)
class CaptionResult(WriteRecord):
    """A clip's caption ``text`` and how it was obtained."""

    text: str


@dataclass(kw_only=True)
class QAResult(WriteRecord):
    """A clip's QA ``pairs`` and how they were obtained (``rejected`` holds the refused pairs
    as JSON text)."""

    pairs: list[QAPair]


def _dump_pairs(pairs: Sequence[QAPair]) -> str:
    return json.dumps([p.to_json() for p in pairs], ensure_ascii=False)


def _write(kind: str, facts: ClipFacts, writer: Writer, cache: ResponseCache | None,
           max_attempts: int, fallback_on_error: bool,
           ask: Callable[[Sequence[str] | None], Any], encode: Callable[[Any], str],
           decode: Callable[[str], Any], judge: Callable[[Any], GroundingReport],
           fallback: Callable[[], Any]) -> dict[str, Any]:
    """The shared loop of :func:`write_caption` / :func:`write_qa` (see the module doc)."""
    if not getattr(writer, "uses_cache", True) or isinstance(writer, TemplateWriter):
        value = ask(None)
        return {"value": value, "writer": writer.name, "model": writer.model,
                "attempts": 1, "rejected": [], "fallback": False, "cached": False,
                "grounding": judge(value)}
    facts_json = facts.to_json()
    rejected: list[dict[str, Any]] = []
    feedback: list[str] = []
    all_cached = True
    tried = f"{writer.name}:{writer.model}"
    for attempt in range(1, max(1, max_attempts) + 1):
        key = cache_key(kind, facts_json, writer.name, writer.model, writer.settings, feedback)
        stored = cache.get(key) if cache is not None else None
        value = decode(stored) if stored is not None else None
        if value is None:
            all_cached = False
            try:
                value = ask(feedback or None)
            except WriterError as err:
                if not fallback_on_error:
                    raise
                value = fallback()
                return {"value": value, "writer": TemplateWriter.name,
                        "model": TemplateWriter.model, "attempts": attempt,
                        "rejected": rejected, "fallback": True, "cached": False,
                        "grounding": judge(value), "tried": tried, "error": str(err)}
            if cache is not None:
                cache.put(key, encode(value), kind=kind)
        report = judge(value)
        if report.ok:
            return {"value": value, "writer": writer.name, "model": writer.model,
                    "attempts": attempt, "rejected": rejected, "fallback": False,
                    "cached": all_cached, "grounding": report}
        rejected.append({"text": encode(value), "unsupported": report.unsupported})
        feedback = list(dict.fromkeys([*feedback, *report.unsupported]))
    value = fallback()
    return {"value": value, "writer": TemplateWriter.name, "model": TemplateWriter.model,
            "attempts": max(1, max_attempts), "rejected": rejected, "fallback": True,
            "cached": all_cached, "grounding": judge(value), "tried": tried}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _judge_caption(text: str, facts: ClipFacts) -> GroundingReport:
    """The grounding check, plus: a caption that only repeats the transcript describes nothing
    (small models answer with the transcript); it is refused like an ungrounded one."""
    report = check(text, facts)
    words = _words(text)
    if facts.transcript and words:
        spoken = set(_words(facts.transcript))
        if sum(w in spoken for w in words) >= 0.8 * len(words):
            return GroundingReport(ok=False, unsupported=[*report.unsupported,
                                                          TRANSCRIPT_ONLY],
                                   checked=report.checked)
    return report


def write_caption(facts: ClipFacts, writer: Writer, *, cache: ResponseCache | None = None,
                  max_attempts: int = 3, fallback_on_error: bool = False) -> CaptionResult:
    """The clip's caption: cached or asked, grounding-checked, re-asked with feedback, and
    after ``max_attempts`` rejected answers the template writer's. Raises
    :class:`WriterError` when the writer gives up (unless ``fallback_on_error``)."""
    out = _write(
        "caption", facts, writer, cache, max_attempts, fallback_on_error,
        ask=lambda feedback: writer.caption(facts, feedback),
        encode=lambda text: text, decode=lambda text: text,
        judge=lambda text: _judge_caption(text, facts),
        fallback=lambda: TemplateWriter().caption(facts))
    return CaptionResult(text=out.pop("value"), prompt_version=PROMPT_VERSION, **out)


def _decode_pairs(text: str) -> list[QAPair] | None:
    try:
        return validate_pairs(pairs_from_json(json.loads(text)))
    except (ValueError, KeyError, TypeError):
        return None  # a stale or damaged entry: asked again


def write_qa(facts: ClipFacts, writer: Writer, *, cache: ResponseCache | None = None,
             max_attempts: int = 3, fallback_on_error: bool = False) -> QAResult:
    """The clip's five QA pairs, as :func:`write_caption` (grounding checks the answers)."""
    out = _write(
        "qa", facts, writer, cache, max_attempts, fallback_on_error,
        ask=lambda feedback: writer.qa(facts, feedback),
        encode=_dump_pairs, decode=_decode_pairs,
        judge=lambda pairs: check_pairs(pairs, facts),
        fallback=lambda: TemplateWriter().qa(facts))
    return QAResult(pairs=out.pop("value"), prompt_version=PROMPT_VERSION, **out)
