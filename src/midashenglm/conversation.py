"""The one conversation builder: an audio clip and a question as official chat messages.

The CLI, the evaluation runner, the benchmark workloads and the HTTP client all build
their requests here, so every path sends the decoder the same prompt. The message format
is the official one (``{"role", "content": [parts]}``); the audio part comes before the
text, in the order of the official fine-tuning toolkit.
"""

from __future__ import annotations

from typing import Any

Conversation = list[dict[str, Any]]

#: The one default-request rule, shared by the command line (caption, ask, transcribe,
#: run), the HTTP server and the run --endpoint client, as vLLM and the official model
#: card do it:
#:
#: * no system prompt is injected: the conversation is sent as given; ``--system-prompt
#:   TEXT`` (or a manifest's ``system_prompt`` column) adds one. The official serving
#:   example's text is :data:`midashenglm.processing.DEFAULT_SYSTEM_PROMPT`.
#: * the checkpoint's ``generation_config`` decides the decoding (``do_sample``,
#:   ``temperature``, ``top_p``, ``top_k``) whenever the request does not say
#:   (:func:`generation_defaults`).
DEFAULT_SYSTEM_PROMPT: str | None = None


def generation_defaults(generation_config: Any) -> dict[str, Any]:
    """Sampling settings a request gets when it does not set them: the checkpoint's
    ``generation_config`` (greedy unless ``do_sample``), as vLLM and transformers do."""
    if not getattr(generation_config, "do_sample", False):
        return {"temperature": 0.0}
    return {
        "temperature": float(getattr(generation_config, "temperature", None) or 1.0),
        "top_p": float(getattr(generation_config, "top_p", None) or 1.0),
        "top_k": int(getattr(generation_config, "top_k", None) or 0),
    }


def audio_part(audio: Any, sampling_rate: int | None = None) -> dict[str, Any]:
    """A content part holding ``audio``: a path (``str``/``PathLike``) becomes
    ``{"type": "audio", "path": ...}``; anything else (array, tensor, bytes) becomes
    ``{"type": "audio", "audio": ...}``, with ``sampling_rate`` (Hz) when given."""
    import os

    if isinstance(audio, str | os.PathLike):
        return {"type": "audio", "path": os.fspath(audio)}
    part: dict[str, Any] = {"type": "audio", "audio": audio}
    if sampling_rate is not None:
        part["sampling_rate"] = int(sampling_rate)
    return part


def build_conversation(
    audio: Any,
    prompt: str,
    *,
    system_prompt: str | None = None,
    sampling_rate: int | None = None,
) -> Conversation:
    """``[system?, user: [audio, text]]`` for one clip and one question.

    ``audio`` is a path, or in-memory audio (then ``sampling_rate`` in Hz says its rate;
    without it 16 kHz is assumed). An empty or ``None`` ``system_prompt`` adds no system
    message.
    """
    messages: Conversation = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": [audio_part(audio, sampling_rate),
                                                 {"type": "text", "text": prompt}]})
    return messages
