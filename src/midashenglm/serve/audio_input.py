"""Turn OpenAI chat messages into an engine conversation, decoding their audio safely.

Audio comes in two kinds of content part:

``input_audio`` (OpenAI): ``{"type": "input_audio", "input_audio": {"data": B64, "format": "wav"}}``.
    Strict base64 (a ``data:...;base64,`` prefix is tolerated); any format the project's
    decoders read (WAV, FLAC, MP3, Ogg, WebM, M4A, ...), whatever ``format`` says.

``audio_url`` (vLLM): ``{"type": "audio_url", "audio_url": {"url": URL}}``.
    ``data:`` URLs are decoded like ``input_audio``. ``file://`` URLs and absolute paths
    are read only when the server was started with allowed folders, and only from inside
    them: the path is resolved (symlinks, ``..``), then the opened file itself is checked
    again through ``/proc/self/fd``, so a symlink swapped in between cannot escape. A path
    outside the folders gets 403 without saying whether it exists. Any other scheme
    (http, https, ftp, ...) is refused: the server never fetches a URL.

Every error names the content part (``messages[0].content[1]``). The duration limit
counts all the audio of a request together; long files are rejected from their header
where it declares the length, before decoding.

Each clip is decoded here exactly once; the conversation handed to the engine holds the
16 kHz float32 waveform (:func:`midashenglm.conversation.audio_part`), which the engine
takes as it is instead of decoding again.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from pydantic import BaseModel, ValidationError

from midashenglm.audio import SAMPLE_RATE, AudioError, AudioTooLongError, load_audio
from midashenglm.conversation import audio_part
from midashenglm.modeling.geometry import MIN_AUDIO_SAMPLES
from midashenglm.serve.errors import APIError, bad_request, shown
from midashenglm.serve.schemas import PART_MODELS, ChatMessage


@dataclass(frozen=True)
class AudioPolicy:
    """Limits on the audio of one request, and the folders ``audio_url`` may read."""

    max_seconds: float
    allowed_dirs: tuple[Path, ...] = ()
    max_file_bytes: int = 256 * 1024 * 1024
    sample_rate: int = SAMPLE_RATE  # the model's rate: waveforms are handed over at it

    @property
    def files_allowed(self) -> bool:
        return bool(self.allowed_dirs)


def allowed_dirs(folders: list[str] | tuple[str, ...] | None) -> tuple[Path, ...]:
    """The resolved allow-list; every entry must be an existing folder."""
    resolved = []
    for folder in folders or ():
        real = Path(os.path.realpath(os.path.expanduser(folder)))
        if not real.is_dir():
            raise ValueError(f"--allow-audio-dir {folder}: not an existing folder")
        resolved.append(real)
    return tuple(dict.fromkeys(resolved))


@dataclass
class Conversation:
    """An engine conversation (official message format; each audio part holds its decoded
    waveform at the model's rate and says so in ``sampling_rate``) and its audio length."""

    messages: list[dict[str, Any]]
    audio_seconds: float = 0.0
    clips: int = 0


def build_conversation(messages: list[ChatMessage], policy: AudioPolicy) -> Conversation:
    """Validate every content part and decode its audio; raises :class:`APIError`."""
    out = Conversation([])
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None or isinstance(content, str):
            _check_text(content or "", f"messages[{i}].content")
            out.messages.append({"role": role, "content": content or ""})
            continue
        parts = [_convert_part(part, f"messages[{i}].content[{j}]", policy, out)
                 for j, part in enumerate(content)]
        out.messages.append({"role": role, "content": parts})
    return out


def _convert_part(part: dict[str, Any], where: str, policy: AudioPolicy,
                  out: Conversation) -> dict[str, Any]:
    kind = part.get("type")
    model = PART_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise bad_request(
            f"{where}: type must be one of {', '.join(PART_MODELS)}, got {shown(kind)}",
            param=f"{where}.type", code="unsupported_content_type")
    parsed = _validate(model, part, where)
    if kind == "text":
        _check_text(parsed.text, f"{where}.text")  # type: ignore[attr-defined]
        return {"type": "text", "text": parsed.text}  # type: ignore[attr-defined]
    if kind == "input_audio":
        data = decode_base64(parsed.input_audio.data, where, f"{where}.input_audio.data")  # type: ignore[attr-defined]
        wave = _load(data, where, f"{where}.input_audio.data", policy, out)
    else:
        wave = _load_url(parsed.audio_url.url, where, policy, out)  # type: ignore[attr-defined]
    out.clips += 1
    # Counted as the model sees it: a clip shorter than 0.2 s is padded to 0.2 s, so 1-sample
    # clips cannot pack thousands of clips under the limit.
    out.audio_seconds += max(len(wave), MIN_AUDIO_SAMPLES) / policy.sample_rate
    return audio_part(wave, sampling_rate=policy.sample_rate)


def _check_text(text: str, param: str) -> None:
    """JSON may escape a lone UTF-16 surrogate (``"\\ud800"``); no tokenizer takes one."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise bad_request(f"{param}: the text holds a lone surrogate ({err.object[err.start]!r} "
                          f"at character {err.start}); send valid Unicode", param=param,
                          code="invalid_value") from None


def _validate(model: type[BaseModel], part: dict[str, Any], where: str) -> BaseModel:
    try:
        return model.model_validate(part)
    except ValidationError as err:
        first = err.errors()[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise bad_request(f"{where}{loc}: {first['msg']}", param=f"{where}{loc}",
                          code="invalid_content_part") from None


def decode_base64(data: str, where: str, param: str) -> bytes:
    """Strict base64 (a ``data:`` URL prefix and line breaks are tolerated)."""
    if data.startswith("data:"):
        header, sep, data = data.partition(",")
        if not sep or not header.endswith(";base64"):
            raise bad_request(f"{where}: a data URL must look like data:audio/wav;base64,...",
                              param=param, code="invalid_base64")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad_request(f"{where}: the audio data is not valid base64 ({err})",
                          param=param, code="invalid_base64") from None


def _load(source: Any, where: str, param: str, policy: AudioPolicy,
          out: Conversation) -> np.ndarray:
    remaining = policy.max_seconds - out.audio_seconds
    if remaining <= 0:
        raise bad_request(
            f"{where}: the request already holds {out.audio_seconds:.2f} s of audio, the limit "
            f"per request (--max-audio-seconds {policy.max_seconds:g})",
            param=param, code="audio_too_long")
    try:
        return load_audio(source, sample_rate=policy.sample_rate, max_seconds=remaining)
    except AudioTooLongError as err:
        used = f" ({out.audio_seconds:.2f} s used by earlier parts)" if out.clips else ""
        raise bad_request(
            f"{where}: audio is {'at least ' if err.duration <= remaining else ''}"
            f"{err.duration:.2f} s long, over the limit of {policy.max_seconds:g} s of audio "
            f"per request{used}", param=param, code="audio_too_long") from None
    except AudioError as err:
        raise bad_request(f"{where}: cannot decode the audio: {err.problem}",
                          param=param, code="invalid_audio") from None


def _load_url(url: str, where: str, policy: AudioPolicy, out: Conversation) -> np.ndarray:
    param = f"{where}.audio_url.url"
    if url[:5].lower() == "data:":  # URL schemes are case-insensitive (RFC 3986)
        return _load(decode_base64("data:" + url[5:], where, param), where, param, policy, out)
    path = _url_path(url, where, param)
    if not policy.files_allowed:
        raise bad_request(
            f"{where}: audio_url file access is disabled on this server (start it with "
            "--allow-audio-dir DIR to allow folders); send the audio as input_audio instead",
            param=param, code="audio_url_disabled")
    with _open_allowed(path, where, param, policy) as f:
        return _load(f, where, param, policy, out)


MAX_PATH_CHARS = 4096  # Linux's PATH_MAX: a longer path cannot name a file


def _url_path(url: str, where: str, param: str) -> str:
    if len(url) > MAX_PATH_CHARS + 64:
        raise bad_request(f"{where}: the audio URL is {len(url)} characters long; a file URL "
                          f"or path has at most {MAX_PATH_CHARS}", param=param,
                          code="invalid_audio_path")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise bad_request(f"{where}: file URLs must name a local file (file:///path)",
                              param=param, code="unsupported_url")
        path = unquote(parts.path)
    elif scheme:
        raise bad_request(
            f"{where}: {shown(scheme + ':', 40)} URLs are not fetched by this server; send the audio as "
            "input_audio (base64), a data: URL, or a file:// URL in an allowed folder",
            param=param, code="unsupported_url")
    else:
        path = url
    if not os.path.isabs(path):
        raise bad_request(f"{where}: the audio path must be absolute, got {shown(path)}",
                          param=param, code="invalid_audio_path")
    if "\x00" in path:
        raise bad_request(f"{where}: the audio path contains a NUL byte", param=param,
                          code="invalid_audio_path")
    return path


def _inside(path: str, folders: tuple[Path, ...]) -> bool:
    return any(os.path.commonpath([path, str(folder)]) == str(folder) for folder in folders)


class _open_allowed:
    """Open ``path`` read-only if it resolves into an allowed folder; 403 otherwise."""

    def __init__(self, path: str, where: str, param: str, policy: AudioPolicy) -> None:
        self.path, self.where, self.param, self.policy = path, where, param, policy
        self.file: Any = None

    def _forbidden(self) -> APIError:
        return APIError(
            403, f"{self.where}: {self.path} is outside the folders this server may read "
                 "(--allow-audio-dir)", param=self.param, code="audio_path_not_allowed")

    def __enter__(self) -> Any:
        real = os.path.realpath(self.path)
        if not _inside(real, self.policy.allowed_dirs):
            raise self._forbidden()
        try:
            # O_NONBLOCK: opening a FIFO must not hang; O_NOFOLLOW: the last part may not
            # have become a symlink since realpath looked.
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError as err:
            raise bad_request(f"{self.where}: cannot open {self.path}: {err.strerror}",
                              param=self.param, code="audio_file_not_found") from None
        try:
            opened = os.path.realpath(f"/proc/self/fd/{fd}")
            if os.path.isdir("/proc/self/fd") and not _inside(opened, self.policy.allowed_dirs):
                raise self._forbidden()
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise bad_request(f"{self.where}: {self.path} is not a regular file",
                                  param=self.param, code="invalid_audio_path")
            if info.st_size > self.policy.max_file_bytes:
                raise bad_request(
                    f"{self.where}: {self.path} is {info.st_size / 2**20:.1f} MiB, over the "
                    f"limit of {self.policy.max_file_bytes / 2**20:.0f} MiB", param=self.param,
                    code="audio_file_too_large")
            os.set_blocking(fd, True)
            self.file = os.fdopen(fd, "rb")
        except BaseException:
            if self.file is None:
                os.close(fd)
            raise
        return self.file

    def __exit__(self, *exc: object) -> None:
        self.file.close()
