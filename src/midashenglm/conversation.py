"""The one conversation builder: an audio clip and a question as official chat messages.

The CLI, the evaluation runner, the benchmark workloads and the HTTP client all build
their requests here, so every path sends the decoder the same prompt. The message format
is the official one (``{"role", "content": [parts]}``); the audio part comes before the
text, in the order of the official fine-tuning toolkit.
"""

from __future__ import annotations

from typing import Any

Conversation = list[dict[str, Any]]


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
