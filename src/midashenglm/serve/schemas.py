"""Request and response bodies of the OpenAI-compatible chat-completions API.

Requests are validated in two steps: :class:`ChatCompletionRequest` checks the top-level
fields, and each content part is then validated on its own by
:mod:`midashenglm.serve.audio_input` with the part models below, so an error names the
exact part (``messages[0].content[1]``) instead of a union of pydantic branches.

Fields that OpenAI defines but this server cannot honour (``n > 1``, ``logprobs``, tools,
penalties) are rejected with a 400 rather than silently ignored. Unknown extra fields are
accepted, so that clients which send vendor extensions keep working; ``top_k`` and
``ignore_eos`` are understood, as vLLM does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "developer", "user", "assistant"]

# Bounds on the shape of one request, so that no body (however small its text) makes the
# server render or tokenize millions of template pieces: a chat of 2.3 M empty messages
# once took 88 s and 9 GB before the context check refused it.
MAX_MESSAGES = 1024
MAX_PARTS = 1024  # content parts of all messages together
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
FinishReason = Literal["stop", "length"]


# ----------------------------------------------------------------------------- requests
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    # A string or a list of parts; the parts are checked one by one later (see module doc).
    content: Any = None

    @field_validator("content", mode="before")
    @classmethod
    def _string_or_parts(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(p, dict) for p in value):
            return value
        raise ValueError("must be a string or a list of content parts (objects with a 'type')")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)  # extension (vLLM): 0 = whole vocabulary
    ignore_eos: bool = False  # extension (vLLM): decode exactly max_tokens tokens
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: int = Field(default=1, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None

    @field_validator("messages")
    @classmethod
    def _parts_in_all(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        parts = sum(len(m.content) for m in value if isinstance(m.content, list))
        if parts > MAX_PARTS:
            raise ValueError(f"at most {MAX_PARTS} content parts in all messages, got {parts}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for the first requested feature this server does not offer."""
        checks = [
            ("n", self.n != 1, "only n=1 is supported"),
            ("logprobs", bool(self.logprobs) or bool(self.top_logprobs),
             "logprobs are not supported"),
            ("presence_penalty", bool(self.presence_penalty), "penalties are not supported"),
            ("frequency_penalty", bool(self.frequency_penalty), "penalties are not supported"),
            ("tools", bool(self.tools), "tools are not supported"),
            ("response_format",
             bool(self.response_format) and self.response_format.get("type") != "text",
             "only response_format {'type': 'text'} is supported"),
        ]
        return next(((param, msg) for param, bad, msg in checks if bad), None)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class InputAudio(BaseModel):
    data: str = Field(min_length=1)
    # OpenAI documents "wav" and "mp3"; the decoders sniff the content, so any name is taken.
    format: str | None = None


class InputAudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioUrl(BaseModel):
    url: str = Field(min_length=1)


class AudioUrlPart(BaseModel):
    type: Literal["audio_url"]
    audio_url: AudioUrl


PART_MODELS: dict[str, type[BaseModel]] = {
    "text": TextPart,
    "input_audio": InputAudioPart,
    "audio_url": AudioUrlPart,
}


# ---------------------------------------------------------------------------- responses
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Extension: how many of the prompt tokens stand for audio (5 per second).
    audio_tokens: int = 0


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "midashenglm"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
