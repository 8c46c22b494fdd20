"""An LLM writer on any OpenAI-compatible ``/v1/chat/completions`` endpoint.

vLLM, llama.cpp's server, a hosted reasoning model: anything that speaks the OpenAI chat API.
Uses the official ``openai`` client with its own retries switched off; this module retries
instead, so that every failure mode is handled the same way and recorded:

* **timeouts** (``timeout`` seconds per request), connection errors, HTTP 408/409/429 and
  5xx: retried;
* a reply that is not JSON, and **malformed answers** (empty, a refusal, over-long, a cut
  answer, QA JSON that does not parse or has the wrong number of pairs): rejected and
  retried (:class:`~midashenglm.curation.qa.MalformedAnswer`);
* other HTTP errors (400, 401, 403, 404): not retried (a wrong model name or key fails
  fast).

Up to ``max_retries`` retries after the first try, waiting ``backoff * 2**attempt`` seconds
(capped at ``max_backoff``) times a jitter factor in [0.5, 1.5) from a seeded generator, or
longer when a 429 says ``Retry-After``. When all tries fail,
:class:`~midashenglm.curation.writers.prompts.WriterError` carries the last error.

At most ``concurrency`` requests are in flight per writer (a
:class:`threading.BoundedSemaphore`), whatever the number of threads calling it.
Reasoning models' ``<think>...</think>`` blocks are stripped from the answers.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from midashenglm.curation.facts import ClipFacts
from midashenglm.curation.qa import MalformedAnswer, QAPair, parse_qa
from midashenglm.curation.writers.prompts import (
    WriterError,
    caption_messages,
    clean_caption,
    qa_messages,
    strip_think,
)
from midashenglm.inference.client import api_base

T = TypeVar("T")
_RETRY_STATUS = (408, 409, 429)


class OpenAIWriter:
    """Captions and QA pairs from an OpenAI-compatible endpoint (see the module docstring).

    ``endpoint``: ``http://host:8000``, ``.../v1`` or ``.../v1/chat/completions``.
    ``model``: the served model (None: the first one ``/v1/models`` lists). ``api_key``:
    None reads ``$OPENAI_API_KEY`` (local servers take any key). ``max_tokens`` is per
    answer; reasoning models need room for their thinking too. Thread-safe.
    """

    name = "openai"
    uses_cache = True

    def __init__(self, endpoint: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 4, concurrency: int = 8,
                 temperature: float = 0.0, max_tokens: int = 1024, *, backoff: float = 1.0,
                 max_backoff: float = 30.0, seed: int = 0) -> None:
        from openai import OpenAI

        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("concurrency >= 1, max_retries >= 0 and timeout > 0 are required")
        self.base_url = api_base(endpoint)
        self.client = OpenAI(base_url=self.base_url,
                             api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                             timeout=timeout, max_retries=0)
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._model = model
        self._semaphore = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()  # counters and the jitter generator
        self._model_lock = threading.Lock()
        self._rng = random.Random(seed)
        self.requests = 0  # chat requests sent (retries included)

    # ------------------------------------------------------------------ identity
    @property
    def model(self) -> str:
        """The served model: as given, else the first one the server lists (asked once)."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = self._retrying(
                        self._first_model, "listing the served models (or name one with "
                        "--served-model)")
        return self._model

    def _first_model(self) -> str:
        models = list(self.client.models.list())
        if not models:
            raise WriterError(f"{self.base_url}/models lists no model; name one (--served-model)")
        return models[0].id

    @property
    def settings(self) -> dict[str, Any]:
        """Generation settings (part of the cache key)."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    def describe(self) -> dict[str, Any]:
        return {"writer": self.name, "endpoint": self.base_url, "model": self.model,
                **self.settings, "timeout": self.timeout, "max_retries": self.max_retries,
                "concurrency": self.concurrency}

    # ------------------------------------------------------------------ writing
    def caption(self, facts: ClipFacts, feedback: Sequence[str] | None = None) -> str:
        """One caption (checked for form, not for grounding: that is the caller's)."""
        messages = caption_messages(facts, feedback)
        return self._retrying(lambda: self._ask(messages, clean_caption, cut_ok=False),
                              "caption")

    def qa(self, facts: ClipFacts, feedback: Sequence[str] | None = None) -> list[QAPair]:
        """Five validated QA pairs (form only; grounding is the caller's)."""
        messages = qa_messages(facts, feedback)
        return self._retrying(lambda: self._ask(messages, parse_qa, cut_ok=True), "QA")

    def complete(self, messages: list[dict[str, Any]]) -> str:
        """The raw answer (thinking stripped) to ``messages``, retried like the others."""
        return self._retrying(lambda: self._ask(messages, lambda text: text, cut_ok=True),
                              "completion")

    def _ask(self, messages: list[dict[str, Any]], parse: Callable[[str], T], *,
             cut_ok: bool) -> T:
        model = self.model
        with self._semaphore:
            with self._lock:
                self.requests += 1
            reply = self.client.chat.completions.create(
                model=model, messages=messages, temperature=self.temperature,
                max_tokens=self.max_tokens)
        choices = getattr(reply, "choices", None)
        if not choices:
            raise MalformedAnswer("the reply has no choices")
        choice = choices[0]
        text = strip_think(getattr(choice.message, "content", None) or "")
        if choice.finish_reason == "length" and not cut_ok:
            raise MalformedAnswer(f"the answer was cut at max_tokens={self.max_tokens}")
        return parse(text)

    # ------------------------------------------------------------------ retries
    def _retrying(self, call: Callable[[], T], what: str) -> T:
        import openai

        last: BaseException | None = None
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            try:
                return call()
            except MalformedAnswer as err:
                last = err
            except openai.APIStatusError as err:
                if err.status_code not in _RETRY_STATUS and err.status_code < 500:
                    raise WriterError(f"{self.base_url}: {what} failed: HTTP {err.status_code}"
                                      f": {_short(err)}") from err
                last = err
                wait = _retry_after(err)
            except (openai.APIConnectionError, openai.APIResponseValidationError) as err:
                last = err  # timeouts are APITimeoutError, a kind of APIConnectionError
            except ValueError as err:  # a 200 whose body is no JSON (a proxy's error page)
                last = err
            if attempt < self.max_retries:
                time.sleep(max(self._delay(attempt), min(wait or 0.0, self.max_backoff)))
        raise WriterError(f"{self.base_url}: {what} failed after {self.max_retries + 1} "
                          f"tries; last error: {type(last).__name__}: {_short(last)}")

    def _delay(self, attempt: int) -> float:
        with self._lock:
            jitter = 0.5 + self._rng.random()
        return min(self.max_backoff, self.backoff * 2 ** attempt) * jitter


def _short(err: BaseException | None, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after(err: Any) -> float | None:
    try:
        value = err.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None
