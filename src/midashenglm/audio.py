"""Audio loading: the one place where the project turns audio into model input.

:func:`load_audio` accepts a path, encoded bytes, a binary file object, a numpy
array or a torch tensor and returns a 1-D, C-contiguous float32 mono waveform at
``sample_rate`` (16 kHz by default).

Decoders
    Encoded audio goes to libsndfile (via ``soundfile``) first: WAV, FLAC,
    Ogg/Vorbis, Ogg/Opus, MP3, AIFF, ... Whatever it cannot read (M4A/AAC, MP4,
    WebM, Matroska, WMA, ...) goes to FFmpeg (via PyAV). MP3 files without a
    Xing/Info/VBRI header also go to FFmpeg, because libsndfile then trusts a
    bitrate estimate of the length and silently drops the rest of a VBR file.

Arrays and tensors
    Shapes ``(n,)``, ``(channels, n)`` or ``(n, channels)``. For 2-D input the
    smaller axis is taken as the channel axis (a tie counts as channels-first)
    and more than :data:`MAX_CHANNELS` channels is rejected, since that is far
    more likely a batch than a recording. Integer samples are scaled to
    [-1, 1]; ``source_sample_rate`` gives the rate (default: already
    ``sample_rate``).

Channels are averaged to mono and rates converted with soxr (HQ). Every input
goes through the same validation (:class:`EmptyAudioError`,
:class:`NonFiniteAudioError`, :class:`AudioTooLongError`). All failures are
:class:`AudioError` subclasses (a ``ValueError``) naming the source.

Memory: files are decoded, downmixed and resampled block by block (soxr's
streaming resampler, which gives the same samples as a one-shot resample), so
a decode holds the output (16 kHz mono float32: 64 kB a second) plus a few MB
of block buffers, whatever the source rate and channel count.

Damaged files: where a header declares the length (WAV ``data`` chunk, FLAC
STREAMINFO, MP3 Xing, MP4/WebM/Ogg durations) and decoding yields clearly less
(over 1% and 0.1 s short), the file counts as truncated (:class:`AudioDecodeError`);
so does a file rate outside 1 kHz .. 1.536 MHz. FFmpeg skips isolated corrupt packets,
as its command line does, but gives up after a run of them.

Untrusted input: pass ``max_seconds``. Files are then rejected from their
header when it declares the length, and decoding stops once the limit is
passed. The decoding *work* is bounded too: at most ``max_seconds *``
:data:`MAX_SAMPLES_PER_LIMIT_SECOND` samples summed over channels (rate x
channels x seconds), so 48 kHz x 8 channels or 192 kHz stereo may use the whole
limit, while a 192 kHz 8-channel file may last a quarter of it and a 655 kHz
mono one about 59% (the file rate range above allows up to 1.536 MHz, where
a quarter of the limit remains). A file over the budget is refused from its
header (:class:`AudioTooLargeError`), or once decoding passes it when the
header leaves the length open. The count is taken on the decoder's side, frame by frame at
each frame's own rate, before any resampling, so a stream whose rate or channel count
changes midway (FFmpeg follows such changes; each stretch is resampled from its own rate)
gets no more decoding than a steady one. Paths must be regular files, and FFmpeg may not
open other files or URLs on behalf of a playlist, so an input can only ever
read itself.
"""

from __future__ import annotations

import contextlib
import io
import numbers
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import av
import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "MAX_CHANNELS",
    "MAX_SAMPLES_PER_LIMIT_SECOND",
    "SAMPLE_RATE",
    "AudioDecodeError",
    "AudioError",
    "AudioTooLargeError",
    "AudioTooLongError",
    "EmptyAudioError",
    "NonFiniteAudioError",
    "UnsupportedFormatError",
    "audio_duration",
    "describe_source",
    "load_audio",
    "to_mono_float32",
]

SAMPLE_RATE = 16000
MAX_CHANNELS = 32  # 22.2 surround has 24; anything wider is almost surely a batch
# With ``max_seconds``, a file may decode at most max_seconds times this many samples summed
# over channels: 48 kHz x 8 channels or 192 kHz stereo for the whole limit, less time for more.
MAX_SAMPLES_PER_LIMIT_SECOND = 384_000

_HEAD_BYTES = 64 * 1024  # enough for container magic, WAV chunk headers, an MP3 Xing frame
_SF_BLOCK_SAMPLES = 1 << 19  # per read, over all channels: 2 MB of float32
_SF_UNKNOWN_LENGTH = 1 << 62  # libsndfile says SF_COUNT_MAX (2**63 - 1) for "unknown"
# Real audio lies well inside this; outside it a header is corrupt (or hostile: a 1 Hz WAV
# resampled to 16 kHz grows 16000-fold, a 1 GHz one makes soxr build a huge filter).
_FILE_RATE_RANGE = (1000, 1_536_000)
_MAX_BAD_PACKETS_IN_A_ROW = 8  # FFmpeg skips isolated corrupt packets; a run means garbage
# Writers disagree slightly about lengths (padding, priming); only a real gap is truncation.
_TRUNCATION_TOLERANCE = 0.01  # fraction of the declared length
_TRUNCATION_MIN_SECONDS = 0.1
# Containers whose per-stream (or single-stream) duration comes from an index or header.
# Raw streams such as MP3 or ADTS AAC only get a bitrate estimate, which is unfit for
# judging truncation or rejecting a file as too long.
_INDEXED_CONTAINERS = ("mov", "mp4", "matroska", "webm", "ogg", "wav", "w64", "flac", "aiff",
                       "caf", "asf")


# --------------------------------------------------------------------------- errors


class AudioError(ValueError):
    """Audio could not be turned into a waveform. ``source`` says which input, ``problem`` why."""

    def __init__(self, source: str, problem: str) -> None:
        # args stay (source, problem) so that the error pickles across worker processes.
        super().__init__(source, problem)
        self.source = source
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.source}: {self.problem}"


class AudioTooLargeError(AudioError):
    """With ``max_seconds``: the file needs more decoding (rate x channels x seconds) than
    ``max_seconds *`` :data:`MAX_SAMPLES_PER_LIMIT_SECOND` samples, even if it is short enough."""


class EmptyAudioError(AudioError):
    """The input decoded to zero samples."""


class NonFiniteAudioError(AudioError):
    """The waveform contains NaN or infinite samples."""


class AudioDecodeError(AudioError):
    """A missing, unreadable, corrupt or truncated file."""


class UnsupportedFormatError(AudioError):
    """No decoder reads this container/codec, or the input type or shape is not supported."""


class AudioTooLongError(AudioError):
    """The audio is longer than ``max_seconds``.

    ``duration`` is the length in seconds, or a lower bound when decoding stopped at the limit.
    """

    def __init__(self, source: str, problem: str, *, duration: float = 0.0,
                 limit: float = 0.0) -> None:
        super().__init__(source, problem)
        self.duration = duration
        self.limit = limit


# --------------------------------------------------------------------------- public API


def describe_source(source: Any) -> str:
    """A short human description of where audio comes from, used in every error message."""
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<bytes: {_nbytes(source)} B>"
    if isinstance(source, np.ndarray):
        return f"<numpy array, shape {source.shape}, {source.dtype}>"
    if _is_tensor(source):
        return f"<torch tensor, shape {tuple(source.shape)}, {source.dtype}, {source.device}>"
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        return f"<file object: {name}>" if isinstance(name, str) else "<file object>"
    return f"<{type(source).__name__}>"


def load_audio(
    source: Any,
    *,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float | None = None,
    source_sample_rate: int | None = None,
) -> np.ndarray:
    """Load ``source`` as a 1-D float32 mono waveform at ``sample_rate``.

    ``source`` is a path, ``bytes``/``bytearray``/``memoryview`` holding an encoded file
    (never a path), a binary file object (read from its current position to the end), a
    numpy array or a torch tensor (any device or dtype). ``source_sample_rate`` is the rate
    of an array or tensor; float samples are taken as they are, integers are scaled.

    ``max_seconds`` is for untrusted input: longer audio raises :class:`AudioTooLongError`,
    and a file that needs more than ``max_seconds *`` :data:`MAX_SAMPLES_PER_LIMIT_SECOND`
    decoded samples over all its channels (e.g. 192 kHz x 8 channels for more than a quarter
    of the limit) raises :class:`AudioTooLargeError`, both from the header when it declares
    the length, else as soon as decoding passes the limit. Files are decoded and resampled
    block by block whether or not ``max_seconds`` is given, so memory stays near the size
    of the output.

    Raises an :class:`AudioError` subclass for any problem with the audio itself, and a
    plain ``ValueError`` for invalid arguments.
    """
    desc = describe_source(source)
    _check_rate("sample_rate", sample_rate)
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    if _is_array(source):
        rate = sample_rate if source_sample_rate is None else source_sample_rate
        _check_rate("source_sample_rate", rate)
        mono = to_mono_float32(_array_of(source, desc), desc)
    else:
        if source_sample_rate is not None:
            raise ValueError("source_sample_rate applies to arrays and tensors only; "
                             "an encoded file declares its own rate")
        return _decode(_encoded_input(source, desc), sample_rate=sample_rate,
                       max_seconds=max_seconds)
    return _finish(mono, rate, sample_rate=sample_rate, max_seconds=max_seconds, desc=desc)


def audio_duration(source: Any, *, source_sample_rate: int | None = None) -> float:
    """Duration in seconds, from the header when the format declares it.

    Arrays and tensors are measured with the same channel rule as :func:`load_audio`, at
    ``source_sample_rate`` (default :data:`SAMPLE_RATE`).
    """
    desc = describe_source(source)
    if _is_array(source):
        rate = SAMPLE_RATE if source_sample_rate is None else source_sample_rate
        _check_rate("source_sample_rate", rate)
        shape = tuple(source.shape)
        _check_shape(shape, desc)
        return (max(shape) if len(shape) == 2 else shape[0]) / rate
    enc = _encoded_input(source, desc)
    try:
        return _soundfile_duration(enc)
    except _DecoderFailed as sf_failure:
        try:
            return _pyav_duration(enc)
        except _DecoderFailed as av_failure:
            raise _undecodable(enc, sf_failure, av_failure) from None


def to_mono_float32(array: np.ndarray, source_desc: str) -> np.ndarray:
    """Average the channels of a 1-D/2-D sample array into a new float32 mono array.

    The smaller axis of a 2-D array is the channel axis (a tie counts as channels-first);
    integer samples are scaled to [-1, 1].
    """
    array = np.asarray(array)
    _check_shape(array.shape, source_desc)
    if array.size == 0:  # (2, 0) or (0, 2): no samples, whichever axis holds channels
        return np.zeros(0, np.float32)
    channel_axis = None if array.ndim == 1 else int(array.shape[0] > array.shape[1])
    return _downmix(_as_float(array, source_desc), channel_axis, original=array)


# --------------------------------------------------------------------------- shared validation


def _finish(mono: np.ndarray, rate: int, *, sample_rate: int, max_seconds: float | None,
            desc: str) -> np.ndarray:
    """Validate and resample an in-memory mono array: one block through :class:`_Output`."""
    out = _Output(rate, sample_rate=sample_rate, desc=desc)
    out.add(mono)
    return out.result(max_seconds)


class _Output:
    """The one validation + resampling path every input goes through, block by block.

    Mono float32 blocks go in, each at its source rate (``rate`` unless :meth:`add` says
    otherwise); :meth:`result` gives the waveform at ``sample_rate``. Only the resampled
    output is kept, so a decoder's memory does not grow with the source rate or channel
    count. soxr's stream gives exactly the samples of a one-shot ``soxr.resample`` of the
    whole signal, however it is cut into blocks; where the rate changes mid-stream, each
    stretch of one rate is resampled on its own and the pieces are joined.
    """

    def __init__(self, rate: int, *, sample_rate: int, desc: str, file: bool = False) -> None:
        self.rate, self.sample_rate, self.desc, self.file = rate, sample_rate, desc, file
        self.frames = 0  # mono samples in, at whatever rate each came
        self.work = 0  # samples in at the source rate, summed over the source channels
        self.bad = 0  # NaN or infinite samples seen
        self.max_rate, self.max_channels = rate, 1  # for messages: the widest seen
        self.changed = False  # the rate or channel count changed mid-stream
        self._channels = 0
        self._done_seconds = 0.0  # duration of the stretches before the current rate
        self._rate_frames = 0  # mono samples in at the current rate
        self._resampler: Any = None
        self._chunks: list[np.ndarray] = []

    @property
    def seconds(self) -> float:
        return self._done_seconds + self._rate_frames / self.rate

    def add(self, mono: np.ndarray, channels: int = 1, rate: int | None = None) -> None:
        """Take ``mono`` (from ``channels`` source channels) at ``rate`` (default: as before).

        ``work`` grows by the source samples over all channels, before any resampling."""
        n = mono.shape[0]
        if n == 0:
            return
        rate = self.rate if rate is None else rate
        if self.file and (not self.frames or rate != self.rate):
            low, high = _FILE_RATE_RANGE
            if not low <= rate <= high:
                raise AudioDecodeError(
                    self.desc, f"implausible sample rate {rate} Hz (corrupt header?)")
        if rate != self.rate:
            if self.frames:  # close the stretch at the old rate: its tail belongs before ours
                self.changed = True
                self._flush()
                self._done_seconds += self._rate_frames / self.rate
            self.rate, self._rate_frames = rate, 0
            self.max_rate = max(self.max_rate, rate) if self.frames else rate
        if self._channels and channels != self._channels:
            self.changed = True
        self._channels, self.max_channels = channels, max(self.max_channels, channels)
        self.frames += n
        self._rate_frames += n
        self.work += n * channels
        # A float64 sum is a cheap screen; count exactly only when something is off. Once a
        # bad sample is seen, only counting goes on, for the message.
        if self.bad or not np.isfinite(np.sum(mono, dtype=np.float64)):
            bad = int(n - np.count_nonzero(np.isfinite(mono)))
            if bad and not self.bad:
                self._resampler, self._chunks = None, []
            self.bad += bad
            if self.bad:
                return
        if self.rate == self.sample_rate:
            self._chunks.append(mono)
            return
        if self._resampler is None:
            self._resampler = soxr.ResampleStream(self.rate, self.sample_rate, 1,
                                                  dtype="float32", quality="HQ")
        chunk = self._resampler.resample_chunk(mono)
        if chunk.shape[0]:
            self._chunks.append(chunk)

    def _flush(self) -> None:
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._resampler = None
            if tail.shape[0]:
                self._chunks.append(tail)

    def result(self, max_seconds: float | None) -> np.ndarray:
        n, desc = self.frames, self.desc
        if n == 0:
            raise EmptyAudioError(desc, "no audio samples (0 samples after decoding)")
        if self.bad:
            raise NonFiniteAudioError(desc, f"{self.bad} of {n} samples are NaN or infinite")
        _check_length(self.seconds, max_seconds, desc)
        self._flush()
        chunks, self._chunks = self._chunks, []  # one copy at the end; the chunks go with it
        mono = chunks[0] if len(chunks) == 1 else np.concatenate([np.zeros(0, np.float32),
                                                                  *chunks])
        del chunks
        if mono.shape[0] == 0:
            raise EmptyAudioError(desc, f"too short to resample ({n} samples at {self.rate} Hz)")
        return np.ascontiguousarray(mono, dtype=np.float32)


def _check_length(seconds: float, max_seconds: float | None, desc: str, *, how: str = "") -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLongError(
            desc, f"audio is {seconds:.2f} s long{how}, over the limit of {max_seconds:g} s",
            duration=seconds, limit=max_seconds)


def _check_work(work: float, rate: int, channels: int, seconds: float,
                max_seconds: float | None, desc: str, *, how: str, varying: bool = False
                ) -> None:
    """Refuse a file that needs more decoding than ``max_seconds`` allows (see the module
    docstring). ``work`` counts samples over all channels: declared by the header, or
    decoded so far at the source rate. ``varying``: rate or channels changed mid-stream, and
    ``rate`` and ``channels`` are the most seen."""
    if max_seconds is None:
        return
    limit = max_seconds * MAX_SAMPLES_PER_LIMIT_SECOND
    if work > limit:
        plural = "s" if channels != 1 else ""
        up_to = "up to " if varying else ""
        raise AudioTooLargeError(
            desc, f"{up_to}{rate} Hz x {channels} channel{plural} x {seconds:.2f} s{how} is "
                  f"{work:,.0f} samples to decode, over the limit of {limit:,.0f} for "
                  f"{max_seconds:g} s of audio ({MAX_SAMPLES_PER_LIMIT_SECOND:,} samples per "
                  "second over all channels, e.g. 48 kHz x 8 channels or 192 kHz stereo)")


def _check_complete(declared: float | None, decoded: int, rate: int, desc: str) -> None:
    """Raise if decoding produced clearly less than the header promised (a cut-off file)."""
    if not declared:
        return
    allowed = max(declared * _TRUNCATION_TOLERANCE, rate * _TRUNCATION_MIN_SECONDS)
    if declared - decoded > allowed:
        raise AudioDecodeError(
            desc, f"truncated or corrupt: the header declares {declared / rate:.2f} s "
                  f"but only {decoded / rate:.2f} s could be decoded")


def _check_rate(name: str, rate: Any) -> None:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate <= 0:
        raise ValueError(f"{name} must be a positive integer, got {rate!r}")


# --------------------------------------------------------------------------- arrays and tensors


def _is_tensor(obj: Any) -> bool:
    # If torch was never imported, obj cannot be a tensor; this keeps torch out of startup.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_array(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or _is_tensor(obj)


def _array_of(source: Any, desc: str) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    torch = sys.modules["torch"]
    if source.is_complex() or source.dtype == torch.bool:
        raise UnsupportedFormatError(desc, f"unsupported sample dtype {source.dtype}")
    try:
        tensor = source.detach()
        # bf16/fp16 have no (or no lossless) numpy twin; convert on the device, then move.
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.cpu().numpy()
    except (RuntimeError, TypeError, NotImplementedError) as e:  # e.g. meta or sparse tensors
        raise UnsupportedFormatError(desc, f"cannot convert tensor to numpy: {e}") from e


def _check_shape(shape: tuple[int, ...], desc: str) -> None:
    if len(shape) not in (1, 2):
        raise UnsupportedFormatError(
            desc, f"expected shape (n,), (channels, n) or (n, channels), got {shape}; "
                  "load a batch one item at a time")
    if len(shape) == 2 and min(shape) > MAX_CHANNELS:
        raise UnsupportedFormatError(
            desc, f"ambiguous 2-D shape {shape}: neither axis looks like channels "
                  f"(at most {MAX_CHANNELS}); is this a batch?")


def _as_float(array: np.ndarray, desc: str) -> np.ndarray:
    """Samples as floats in [-1, 1]: integers are scaled by their full range."""
    kind = array.dtype.kind
    if kind == "f":
        return array
    if kind in "iu":
        bits = array.dtype.itemsize * 8
        offset = 2.0 ** (bits - 1) if kind == "u" else 0.0  # unsigned PCM is centred on 2^(b-1)
        wide = array.astype(np.float64 if bits > 16 else np.float32)
        return (wide - offset) / 2.0 ** (bits - 1)
    raise UnsupportedFormatError(desc, f"unsupported sample dtype {array.dtype}")


def _downmix(samples: np.ndarray, channel_axis: int | None, *, original: Any = None
             ) -> np.ndarray:
    """Average channels to a new float32 mono array (never a view of the caller's data)."""
    mono = samples if channel_axis is None else samples.mean(axis=channel_axis, dtype=np.float32)
    out = np.ascontiguousarray(mono, dtype=np.float32)
    if original is not None and np.may_share_memory(out, original):
        out = out.copy()
    return out


# --------------------------------------------------------------------------- encoded input


@dataclass
class _Encoded:
    """An encoded input that each decoder can read from the start.

    Exactly one of ``path`` (a regular file), ``data`` (bytes in memory) or
    ``fileobj`` (seekable, starting at offset 0) is set.
    """

    desc: str
    head: bytes
    path: str | None = None
    data: bytes | bytearray | memoryview | None = None
    fileobj: BinaryIO | None = None

    @contextlib.contextmanager
    def stream(self) -> Iterator[BinaryIO]:
        if self.path is not None:
            with open(self.path, "rb") as f:
                yield f
        elif self.data is not None:
            yield io.BytesIO(self.data)
        else:
            assert self.fileobj is not None
            self.fileobj.seek(0)
            yield self.fileobj  # the caller owns it: do not close


def _encoded_input(source: Any, desc: str) -> _Encoded:
    if isinstance(source, (str, os.PathLike)):
        enc = _path_input(os.fspath(source), desc)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = source.tobytes() if isinstance(source, memoryview) else source
        enc = _Encoded(desc, bytes(data[:_HEAD_BYTES]), data=data)
    elif hasattr(source, "read"):
        enc = _fileobj_input(source, desc)
    else:
        raise UnsupportedFormatError(
            desc, "expected a path, bytes, a binary file object, a numpy array or a torch tensor")
    if not enc.head:
        raise AudioDecodeError(desc, "empty input (0 bytes)")
    return enc


def _path_input(path: str | bytes, desc: str) -> _Encoded:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        hint = " (URLs are not fetched; download the file first)" if "://" in desc else ""
        raise AudioDecodeError(desc, f"file not found{hint}") from None
    except OSError as e:
        raise AudioDecodeError(desc, f"cannot access file: {e.strerror}") from None
    # Devices and FIFOs (/dev/zero, /dev/stdin) can be endless; pass a file object instead.
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise AudioDecodeError(desc, f"cannot load audio: {what}")
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as e:
        raise AudioDecodeError(desc, f"cannot read file: {e.strerror}") from None
    return _Encoded(desc, head, path=os.fsdecode(path))


def _fileobj_input(fileobj: Any, desc: str) -> _Encoded:
    try:
        if _seekable(fileobj) and fileobj.tell() == 0:
            head = fileobj.read(_HEAD_BYTES)
            _check_binary(head, desc)
            return _Encoded(desc, head, fileobj=fileobj)
        # Decoders seek to absolute offsets, so anything else is read into memory (all of it:
        # pipes have no length to check against max_seconds first).
        data = fileobj.read()
    except OSError as e:
        raise AudioDecodeError(desc, f"cannot read file object: {e}") from e
    _check_binary(data, desc)
    return _Encoded(desc, bytes(data[:_HEAD_BYTES]), data=data)


def _seekable(fileobj: Any) -> bool:
    try:
        return bool(fileobj.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _check_binary(data: Any, desc: str) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UnsupportedFormatError(
            desc, f"file object returned {type(data).__name__}, not bytes; open it in 'rb' mode")


def _nbytes(data: bytes | bytearray | memoryview) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


# --------------------------------------------------------------------------- decoding


class _DecoderFailed(Exception):
    """One decoder could not read the input; another may still succeed."""

    def __init__(self, message: str, *, recognised: bool = False,
                 unsupported_codec: bool = False) -> None:
        super().__init__(message)
        self.recognised = recognised  # the decoder knew the container: a corrupt file
        self.unsupported_codec = unsupported_codec


def _decode(enc: _Encoded, *, sample_rate: int, max_seconds: float | None) -> np.ndarray:
    """The validated mono float32 waveform at ``sample_rate``, from libsndfile or else FFmpeg."""
    try:
        out = _decode_with_soundfile(enc, sample_rate, max_seconds)
    except _DecoderFailed as sf_failure:
        try:
            out = _decode_with_pyav(enc, sample_rate, max_seconds)
        except _DecoderFailed as av_failure:
            raise _undecodable(enc, sf_failure, av_failure) from None
    return out.result(max_seconds)


def _check_decoding(out: _Output, max_seconds: float | None, desc: str) -> None:
    """A header can lie or leave the length open: stop as soon as a limit is passed."""
    how = " or more (decoding stopped)"
    _check_length(out.seconds, max_seconds, desc, how=how)
    _check_work(out.work, out.max_rate, out.max_channels, out.seconds, max_seconds, desc,
                how=how, varying=out.changed)


def _undecodable(enc: _Encoded, sf_failure: _DecoderFailed,
                 av_failure: _DecoderFailed) -> AudioError:
    """Both decoders failed: a damaged file of a known kind, or a kind nobody reads."""
    details = f"libsndfile: {sf_failure}; FFmpeg: {av_failure}"
    kind = _sniff_container(enc.head)
    if sf_failure.unsupported_codec:
        return UnsupportedFormatError(enc.desc, f"unsupported codec ({details})")
    if sf_failure.recognised or av_failure.recognised or kind:
        what = f"{kind} file" if kind else "file"
        return AudioDecodeError(enc.desc, f"corrupt or truncated {what} ({details})")
    return UnsupportedFormatError(enc.desc, f"unrecognised audio format ({details})")


# Magic numbers, only to tell a damaged file of a known format from an unknown format.
_SIGNATURES = (
    (0, b"RIFF", "WAV"), (0, b"RIFX", "WAV"), (0, b"RF64", "WAV"), (0, b"fLaC", "FLAC"),
    (0, b"OggS", "Ogg"), (0, b"ID3", "MP3"), (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (4, b"ftyp", "MP4/M4A"), (4, b"moov", "MP4/M4A"), (0, b"FORM", "AIFF"), (0, b"caff", "CAF"),
    (0, b"#!AMR", "AMR"), (0, b"\x30\x26\xb2\x75", "ASF/WMA"), (0, b".snd", "AU"),
)


def _sniff_container(head: bytes) -> str | None:
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "MPEG audio"  # MP3 or ADTS AAC frame sync
    return None


# ---- libsndfile


def _decode_with_soundfile(enc: _Encoded, sample_rate: int, max_seconds: float | None
                           ) -> _Output:
    with _soundfile(enc) as f:
        rate, channels, known = f.samplerate, f.channels, _sf_frames(f)
        if known is not None:
            how = " (from the header)"
            _check_length(known / rate, max_seconds, enc.desc, how=how)
            _check_work(known * channels, rate, channels, known / rate, max_seconds, enc.desc,
                        how=how)
        out = _Output(rate, sample_rate=sample_rate, desc=enc.desc, file=True)
        for block in _sf_blocks(f):
            out.add(_downmix(block, channel_axis=1), channels)
            _check_decoding(out, max_seconds, enc.desc)
        declared = _declared_frames(f, enc.head)
    _check_complete(declared, out.frames, rate, enc.desc)
    return out


def _soundfile_duration(enc: _Encoded) -> float:
    with _soundfile(enc) as f:
        frames = _sf_frames(f)
        if frames is None:  # the header leaves the length open: count, keeping nothing
            frames = sum(len(block) for block in _sf_blocks(f))
        # Catches a WAV cut short without decoding: libsndfile's length is what is present.
        _check_complete(_declared_frames(f, enc.head), frames, f.samplerate, enc.desc)
        return frames / f.samplerate


def _sf_frames(f: sf.SoundFile) -> int | None:
    """libsndfile's frame count, or None where it reports SF_COUNT_MAX for "unknown"
    (e.g. a FLAC stream whose STREAMINFO has no total)."""
    return f.frames if 0 <= f.frames < _SF_UNKNOWN_LENGTH else None


def _sf_blocks(f: sf.SoundFile) -> Iterator[np.ndarray]:
    """(frames, channels) float32 blocks until end of file.

    Block-wise so that an unknown or bogus length never sizes an allocation.
    """
    frames = max(1, _SF_BLOCK_SAMPLES // f.channels)
    while True:
        try:
            block = f.read(frames, dtype="float32", always_2d=True)
        except sf.SoundFileError as e:
            raise _DecoderFailed(_sf_message(e), recognised=True) from e
        if not len(block):
            return
        yield block


@contextlib.contextmanager
def _soundfile(enc: _Encoded) -> Iterator[sf.SoundFile]:
    """Open with libsndfile, turning its refusals into :class:`_DecoderFailed`."""
    with contextlib.ExitStack() as stack:
        # As bytes: libsndfile gets the exact name, also one that is not valid UTF-8.
        target = (os.fsencode(enc.path) if enc.path is not None
                  else stack.enter_context(enc.stream()))
        try:
            f = stack.enter_context(sf.SoundFile(target))
        except sf.SoundFileError as e:
            code = getattr(e, "code", None)
            raise _DecoderFailed(_sf_message(e), recognised=code == 3,  # SF_ERR_MALFORMED_FILE
                                 unsupported_codec=code == 4) from e  # SF_ERR_UNSUPPORTED_ENCODING
        if f.format == "MP3" and not _mp3_has_length_header(enc.head):
            # libsndfile would take a bitrate guess as the exact length and stop reading there.
            raise _DecoderFailed("MP3 without a Xing/Info/VBRI length header", recognised=True)
        if f.format == "FLAC" and _sf_frames(f) is None:
            # Without a total in STREAMINFO, libsndfile (1.2) reads to the end and then fails
            # ("Internal psf_fseek() failed"), so FFmpeg would decode it all a second time;
            # and it labels every frame with STREAMINFO's rate, where frames may change it.
            raise _DecoderFailed("FLAC without a total length (left to FFmpeg)",
                                 recognised=True)
        yield f


def _sf_message(e: Exception) -> str:
    return str(getattr(e, "error_string", None) or e).strip()


def _declared_frames(f: sf.SoundFile, head: bytes) -> int | None:
    """The length the file's header promises, to detect truncation after decoding."""
    if f.format in ("WAV", "WAVEX"):
        # libsndfile clamps a WAV's length to the bytes present, so read the header ourselves.
        return _wav_declared_frames(head)
    return _sf_frames(f)


def _wav_declared_frames(head: bytes) -> int | None:
    """Frames declared by a RIFF/WAVE ``data`` chunk, or None if unknown or open-ended."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, 0
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"fmt " and pos + 22 <= len(head):
            block_align = int.from_bytes(head[pos + 20:pos + 22], "little")
        elif chunk == b"data":
            # Streaming writers leave 0 or 0xFFFFFFFF when they do not know the size.
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None


def _mp3_has_length_header(head: bytes) -> bool:
    """Whether the first MP3 frame carries a Xing/Info/VBRI header with the exact length."""
    pos = 0
    if head[:3] == b"ID3" and len(head) >= 10:  # skip an ID3v2 tag (sync-safe size)
        size = 0
        for byte in head[6:10]:
            size = (size << 7) | (byte & 0x7F)
        pos = 10 + size + (10 if head[5] & 0x10 else 0)  # plus footer, if flagged
    first_frame = head[pos:pos + 64]
    return any(tag in first_frame for tag in (b"Xing", b"Info", b"VBRI"))


# ---- FFmpeg (PyAV)


class _NestedOpenRefused(OSError):
    pass


def _refuse_nested_open(url: str, flags: int, options: dict[str, Any]) -> BinaryIO:
    # Playlists (HLS, concat) make FFmpeg open other files or URLs. An audio input must be
    # self-contained, or loading untrusted bytes could read local files or the network.
    raise _NestedOpenRefused(f"refused to open {url!r} referenced by the input")


@contextlib.contextmanager
def _pyav_audio_stream(enc: _Encoded) -> Iterator[tuple[Any, Any]]:
    """Open with FFmpeg and pick the audio stream; yields (container, stream)."""
    with enc.stream() as fileobj:
        try:
            # A file object, never a path string: FFmpeg would parse "concat:", "http://", ...
            container = av.open(fileobj, mode="r", metadata_errors="ignore",
                                io_open=_refuse_nested_open)
        except _NestedOpenRefused as e:
            raise UnsupportedFormatError(enc.desc, f"playlists are not supported: {e}") from e
        except av.FFmpegError as e:
            raise _DecoderFailed(_av_message(e)) from e
        with container:
            stream = container.streams.best("audio")
            if stream is None:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise UnsupportedFormatError(
                    enc.desc, f"no audio stream in {container.format.name} "
                              f"(streams: {', '.join(kinds)})")
            if stream.codec_context is None:  # FFmpeg knows the container, not the codec
                raise UnsupportedFormatError(
                    enc.desc, f"no decoder for the audio codec in this {container.format.name} "
                              "file")
            yield container, stream


def _decode_with_pyav(enc: _Encoded, sample_rate: int, max_seconds: float | None) -> _Output:
    with _pyav_audio_stream(enc) as (container, stream):
        declared = _pyav_declared_seconds(container, stream)
        if declared is not None:
            how = " (from the header)"
            _check_length(declared, max_seconds, enc.desc, how=how)
            codec = stream.codec_context
            rate, channels = codec.sample_rate or 0, codec.channels or 0
            if rate and channels:
                _check_work(declared * rate * channels, rate, channels, declared, max_seconds,
                            enc.desc, how=how)
        out = None
        for chunk, rate, channels in _pyav_mono_chunks(container, stream, enc.desc):
            if out is None:
                out = _Output(rate, sample_rate=sample_rate, desc=enc.desc, file=True)
            # Each chunk is one decoded frame at its own rate: the work is counted as decoded.
            out.add(chunk, channels, rate)
            # Stop as soon as a limit is passed: the stream may be much longer than that.
            _check_decoding(out, max_seconds, enc.desc)
    if out is None:
        out = _Output(1, sample_rate=sample_rate, desc=enc.desc, file=True)
    if declared is not None:
        _check_complete(declared * out.rate, round(out.seconds * out.rate), out.rate, enc.desc)
    return out


def _pyav_duration(enc: _Encoded) -> float:
    with _pyav_audio_stream(enc) as (container, stream):
        declared = _pyav_declared_seconds(container, stream)
        if declared is not None:
            return declared
        # No trustworthy header: count decoded samples (bounded like decoding).
        return sum(len(chunk) / rate
                   for chunk, rate, _ in _pyav_mono_chunks(container, stream, enc.desc))


def _pyav_declared_seconds(container: Any, stream: Any) -> float | None:
    """The audio stream's duration when an index or header states it, else None."""
    if not any(name in container.format.name for name in _INDEXED_CONTAINERS):
        return None
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    # The container duration covers all streams (a video may outlast its audio track).
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def _pyav_mono_chunks(container: Any, stream: Any, desc: str
                      ) -> Iterator[tuple[np.ndarray, int, int]]:
    """Yield (mono float32 samples, rate, source channels) chunks of decoded frames, each at
    its frame's own rate (never resampled here, so their lengths are the decoded samples).

    Bounded on any input: demuxing ends at the first read error or end of file (each read
    consumes input), isolated corrupt packets are skipped the way FFmpeg does, and a run
    of them ends decoding with :class:`AudioDecodeError`.
    """
    converter, converter_key = None, None
    bad_in_row, last_error = 0, ""
    try:
        for packet in container.demux(stream):
            try:
                frames = stream.decode(packet)
            except av.FFmpegError as e:
                bad_in_row, last_error = bad_in_row + 1, _av_message(e)
                if bad_in_row >= _MAX_BAD_PACKETS_IN_A_ROW:
                    raise AudioDecodeError(
                        desc, f"corrupt stream: {bad_in_row} undecodable packets in a row "
                              f"({last_error})") from e
                continue
            bad_in_row = 0
            for frame in frames:
                # Formats, layouts and rates may change mid-stream, and PyAV's resampler only
                # handles the setup it saw first: use one per setup, converting to flt only
                # (same layout and rate). Rates are converted by _Output, stretch by stretch.
                rate = frame.sample_rate
                key = (frame.format.name, frame.layout.name, rate)
                if key != converter_key:
                    if converter is not None:
                        yield from _mono_chunks(converter.resample(None), converter_key[2])
                    converter, converter_key = av.AudioResampler(
                        format="flt", layout=frame.layout, rate=rate), key
                yield from _mono_chunks(converter.resample(frame), rate)
        if converter is not None:
            yield from _mono_chunks(converter.resample(None), converter_key[2])
    except (av.FFmpegError, ValueError) as e:
        if isinstance(e, AudioError):
            raise
        raise AudioDecodeError(desc, f"corrupt or truncated stream: {_av_message(e)}") from e
    if converter is None and last_error:
        raise AudioDecodeError(desc, f"corrupt stream: no packet could be decoded ({last_error})")


def _mono_chunks(frames: list[Any], rate: int) -> Iterator[tuple[np.ndarray, int, int]]:
    for frame in frames:
        # Packed (interleaved) float: one buffer per frame, never planar. PyAV (18.x) counts
        # the planes of a frame up to a NULL pointer, which runs past FFmpeg's array for 8 or
        # more channels: a 7.1 AAC file crashed the process (SIGSEGV) in to_ndarray().
        # Averaging per chunk equals averaging the whole signal, and survives channel-count
        # changes.
        channels = frame.layout.nb_channels
        samples = frame.to_ndarray().reshape(-1, channels)
        yield _downmix(samples, channel_axis=1), rate, channels


def _av_message(e: Exception) -> str:
    return str(getattr(e, "strerror", None) or e)
