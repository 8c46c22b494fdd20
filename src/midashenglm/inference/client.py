"""Send audio questions to any OpenAI-compatible ``/v1/chat/completions`` endpoint.

The messages are built by :func:`midashenglm.conversation.build_conversation`, as for
local inference, so both paths send the same prompt. The audio is loaded with
:func:`midashenglm.audio.load_audio` (any format the project reads, resampled to 16 kHz
mono), re-encoded as 16-bit WAV with soundfile and sent as a base64 ``input_audio``
content part in the audio part's place, which is how vLLM's OpenAI server takes audio for
MiDashengLM. Uses the official ``openai`` client.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf

from midashenglm.audio import SAMPLE_RATE, load_audio
from midashenglm.conversation import build_conversation
from midashenglm.inference.params import SamplingParams


def wav_bytes(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit PCM WAV file holding ``wave``."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def openai_messages(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conversation in the official format (audio parts holding waveforms, e.g. from
    :func:`~midashenglm.conversation.build_conversation`) as OpenAI chat messages: each
    audio part becomes a base64 WAV ``input_audio`` part in the same place."""
    messages = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, list):
            content = [_openai_part(part) for part in content]
        messages.append({**message, "content": content})
    return messages


def _openai_part(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") != "audio":
        return part
    source = part["audio"] if part.get("audio") is not None else part["path"]
    rate = part.get("sampling_rate")  # of an in-memory waveform; a file declares its own
    wave = load_audio(source, source_sample_rate=rate) if rate else load_audio(source)
    data = base64.b64encode(wav_bytes(wave)).decode("ascii")
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def api_base(url: str) -> str:
    """``http://host:8000``, ``.../v1`` or ``.../v1/chat/completions`` -> ``http://host:8000/v1``."""
    url = url.strip().rstrip("/")
    for tail in ("/chat/completions", "/completions"):
        if url.endswith(tail):
            url = url[: -len(tail)]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--endpoint {url!r}: expected an http:// or https:// URL")
    return url if url.endswith("/v1") else url + "/v1"


@dataclass
class Answer:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    audio_seconds: float
    audio_tokens: int | None = None  # from the server's usage when it says (this project's does)


class EndpointClient:
    """Chat completions with audio against one OpenAI-compatible server. Thread-safe."""

    def __init__(self, endpoint: str, *, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0, max_retries: int = 2) -> None:
        from openai import OpenAI

        self.base_url = api_base(endpoint)
        self.client = OpenAI(base_url=self.base_url, api_key=api_key or "EMPTY",
                             timeout=timeout, max_retries=max_retries)
        self._model = model

    @property
    def model(self) -> str:
        """The served model: as given, else the first one the server lists."""
        if self._model is None:
            models = list(self.client.models.list())
            if not models:
                raise RuntimeError(f"{self.base_url}/models lists no model; pass --served-model")
            self._model = models[0].id
        return self._model

    def check(self) -> None:
        """Reach the server once (a wrong URL or key fails here, not once per row)."""
        import openai

        try:
            names = [m.id for m in self.client.models.list()]
        except (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError):
            raise
        except openai.APIError:
            if self._model is None:
                raise
            return  # a server without /models still serves chat completions
        if self._model is None:
            if not names:
                raise RuntimeError(f"{self.base_url}/models lists no model; pass --served-model")
            self._model = names[0]
        elif names and self._model not in names:
            raise RuntimeError(f"model {self._model!r} is not served at {self.base_url} (it serves "
                               f"{', '.join(repr(n) for n in names)}): fix --served-model")

    def ask(self, audio: Any, prompt: str, *, system_prompt: str | None = None,
            sampling: SamplingParams | dict[str, Any] | None = None) -> Answer:
        """Load ``audio`` (a path, bytes, array...), send it with ``prompt``, return the answer.

        ``sampling`` is either complete :class:`SamplingParams` (all sent), or a dict of the
        settings the user gave (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
        ``seed``): only those are sent and the server's defaults (the checkpoint's
        ``generation_config``, for vLLM and for ``midashenglm serve``) decide the rest.
        """
        wave = load_audio(audio)
        messages = openai_messages(build_conversation(
            wave, prompt, system_prompt=system_prompt, sampling_rate=SAMPLE_RATE))
        options = _request_options(sampling)
        reply = self.client.chat.completions.create(model=self.model, messages=messages, **options)
        if not reply.choices:
            raise RuntimeError(f"{self.base_url}: the reply has no choices")
        choice = reply.choices[0]
        usage = reply.usage
        return Answer(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            audio_seconds=len(wave) / SAMPLE_RATE,
            audio_tokens=getattr(usage, "audio_tokens", None),  # an extra field of our server
        )


def _request_options(sampling: SamplingParams | dict[str, Any] | None) -> dict[str, Any]:
    """Chat-completion arguments for ``sampling`` (see :meth:`EndpointClient.ask`)."""
    options: dict[str, Any] = {}
    if isinstance(sampling, dict):
        names = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p",
                 "seed": "seed"}
        options = {names[k]: v for k, v in sampling.items() if k in names and v is not None}
        if sampling.get("top_k") is not None:
            options["extra_body"] = {"top_k": sampling["top_k"]}  # a vLLM extension
        return options
    sampling = sampling or SamplingParams()
    options = {"max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature}
    if sampling.temperature > 0:
        options["top_p"] = sampling.top_p
        if sampling.top_k:
            options["extra_body"] = {"top_k": sampling.top_k}  # a vLLM extension
    if sampling.seed is not None:
        options["seed"] = sampling.seed
    if sampling.stop:
        options["stop"] = list(sampling.stop)
    return options
