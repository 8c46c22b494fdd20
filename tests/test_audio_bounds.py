"""Decoding work and memory stay bounded: high rates and many channels (real files, no mocks)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from midashenglm import audio
from midashenglm.audio import (
    MAX_SAMPLES_PER_LIMIT_SECOND,
    SAMPLE_RATE,
    AudioError,
    AudioTooLargeError,
    AudioTooLongError,
    load_audio,
)

BIG_RATE, BIG_CHANNELS, BIG_SECONDS = 192_000, 8, 290


def noise(frames: int, channels: int, seed: int = 0) -> np.ndarray:
    """(frames, channels) float32 noise plus a tone, well inside [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 44100
    x = 0.1 * rng.standard_normal((frames, channels)) + 0.3 * np.sin(2 * np.pi * 440 * t)[:, None]
    return x.astype(np.float32)


def silent_flac(path: Path, seconds: int) -> Path:
    """192 kHz 8-channel silence: tiny as FLAC, huge once decoded."""
    second = np.zeros((BIG_RATE, BIG_CHANNELS), np.int16)
    with sf.SoundFile(path, "w", BIG_RATE, BIG_CHANNELS, subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(second)
    assert path.stat().st_size < 2_000_000
    return path


@pytest.fixture(scope="module")
def big_flac(tmp_path_factory) -> Path:
    """The report's case: 290 s of 192 kHz 8-channel silence, a 460 kB FLAC."""
    return silent_flac(tmp_path_factory.mktemp("bounds") / "big.flac", BIG_SECONDS)


def test_budget_constant_is_exported():
    assert {"AudioTooLargeError", "MAX_SAMPLES_PER_LIMIT_SECOND"} <= set(audio.__all__)
    assert MAX_SAMPLES_PER_LIMIT_SECOND == 48_000 * 8 == 192_000 * 2


def test_high_rate_multichannel_file_is_refused_from_its_header(big_flac):
    start = time.perf_counter()
    with pytest.raises(AudioTooLargeError) as info:
        load_audio(big_flac, max_seconds=300)
    assert time.perf_counter() - start < 1.0, "the header alone should refuse it"
    err = info.value
    assert isinstance(err, AudioError) and not isinstance(err, AudioTooLongError)
    for part in ("192000 Hz", "8 channels", "290.00 s", "from the header", "300 s",
                 "445,440,000", "115,200,000"):
        assert part in err.problem, (part, err.problem)
    with pytest.raises(AudioTooLargeError):  # bytes, as the server gets them
        load_audio(big_flac.read_bytes(), max_seconds=300)


def test_without_a_limit_memory_stays_near_the_output_size(tmp_path):
    # 30 s at 192 kHz x 8 would be 184 MB as float32 (twice that while concatenating) if
    # decoded whole; the output is 1.9 MB. (290 s, measured by hand: 38 MB over the
    # interpreter's RSS, against 3.6 GB before block-wise decoding.)
    path = silent_flac(tmp_path / "half-minute.flac", 30)
    tracemalloc.start()  # numpy registers its buffers with tracemalloc
    try:
        out = load_audio(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (30 * SAMPLE_RATE,) and not out.any()
    assert peak < 3 * out.nbytes + 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert np.array_equal(load_audio(path, max_seconds=300), out)  # within the budget


@pytest.mark.parametrize(("rate", "channels", "seconds", "max_seconds", "allowed"), [
    (48_000, 8, 1.0, 1.0, True),  # exactly the budget
    (192_000, 2, 1.0, 1.0, True),
    (192_000, 8, 0.25, 1.0, True),  # a quarter of the limit at 192 kHz x 8
    (192_000, 8, 0.3, 1.0, False),
    (192_000, 8, 0.3, 1.25, True),
    (655_350, 1, 0.5, 1.0, True),  # 384000 / 655350: about 59% of the limit
    (655_350, 1, 0.7, 1.0, False),
])
def test_work_budget_is_rate_times_channels_times_seconds(tmp_path, rate, channels, seconds,
                                                          max_seconds, allowed):
    path = tmp_path / "x.flac"
    sf.write(path, noise(int(rate * seconds), channels), rate, subtype="PCM_24")
    if allowed:
        assert len(load_audio(path, max_seconds=max_seconds)) == pytest.approx(
            seconds * SAMPLE_RATE, abs=1)
    else:
        with pytest.raises(AudioTooLargeError, match=f"{rate} Hz x {channels} channel"):
            load_audio(path, max_seconds=max_seconds)
    # Trusted local use: no work bound.
    assert len(load_audio(path)) == pytest.approx(seconds * SAMPLE_RATE, abs=1)


def _whole_file_reference_sf(path: Path) -> np.ndarray:
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(samples.mean(axis=1), rate, SAMPLE_RATE, quality="HQ")


def _whole_file_reference_av(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        planes = [frame.to_ndarray() for frame in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    assert planes[0].dtype == np.float32 and planes[0].ndim == 2  # AAC decodes to planar float
    whole = np.concatenate(planes, axis=1)
    return soxr.resample(whole.mean(axis=0), rate, SAMPLE_RATE, quality="HQ")


@pytest.mark.parametrize("name", ["pcm16.wav", "a.flac", "a.mp3", "aac.m4a"])
def test_block_wise_result_equals_whole_file_resampling(tmp_path, name):
    # 8 s of 44.1 kHz stereo: two libsndfile blocks, or hundreds of FFmpeg frames.
    rate, x = 44100, noise(8 * 44100, 2)
    path = tmp_path / name
    if name == "aac.m4a":
        with av.open(str(path), "w", format="ipod") as out:
            stream = out.add_stream("aac", rate=rate, layout="stereo")
            for start in range(0, len(x), 1024):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(x[start:start + 1024].T), format="fltp", layout="stereo")
                frame.sample_rate = rate
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        expected = _whole_file_reference_av(path)
    else:
        kwargs = {"format": "MP3"} if name.endswith("mp3") else {}
        sf.write(path, x, rate, **kwargs)
        expected = _whole_file_reference_sf(path)
    for max_seconds in (None, 300):
        got = load_audio(path, max_seconds=max_seconds)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_soxr_stream_equals_one_shot_resampling():
    # What the block-wise decoders rely on: chunking does not change soxr's output.
    x = noise(3 * 192_000 + 17, 1)[:, 0]
    expected = soxr.resample(x, 192_000, SAMPLE_RATE, quality="HQ")
    stream = soxr.ResampleStream(192_000, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    pieces = [stream.resample_chunk(x[i:i + 5000]) for i in range(0, len(x), 5000)]
    got = np.concatenate([*pieces, stream.resample_chunk(x[:0], last=True)])
    np.testing.assert_array_equal(got, expected)


class _Pipe(io.RawIOBase):
    """A non-seekable stream, like stdin or an upload body."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._data.readinto(buffer)


def _open_length_flac(rate: int, channels: int, seconds: float) -> bytes:
    """A FLAC whose STREAMINFO leaves the total length open (0), as streaming encoders do."""
    buf = io.BytesIO()
    sf.write(buf, noise(int(rate * seconds), channels), rate, format="FLAC", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    fields = int.from_bytes(data[18:26], "big")
    data[18:26] = (fields & ~((1 << 36) - 1)).to_bytes(8, "big")  # low 36 bits: total samples
    assert sf.info(io.BytesIO(bytes(data))).frames > 2**62  # libsndfile: "unknown"
    return bytes(data)


def _stopped_at(err: AudioError) -> float:
    match = re.search(r"x ([\d.]+) s or more \(decoding stopped\)", err.problem)
    assert match, err.problem
    return float(match.group(1))


def test_open_length_is_stopped_by_the_running_count():
    data = _open_length_flac(192_000, 8, 1.0)  # 1.536 M samples; 1.5 s allow 576 000
    for source in (data, _Pipe(data)):
        with pytest.raises(AudioTooLargeError, match="8 channels") as info:
            load_audio(source, max_seconds=1.5)
        # Stopped within one read block (2 MB) of the budget (0.375 s), before the end.
        assert _stopped_at(info.value) < 0.75
    assert len(load_audio(data)) == SAMPLE_RATE
    assert len(load_audio(data, max_seconds=5)) == SAMPLE_RATE


def test_wav_with_an_open_data_size_is_bounded():
    buf = io.BytesIO()
    sf.write(buf, noise(192_000, 8), 192_000, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    pos = data.find(b"data")
    data[4:8] = data[pos + 4:pos + 8] = b"\xff\xff\xff\xff"  # streaming writers' "unknown"
    for source in (bytes(data), _Pipe(bytes(data))):
        with pytest.raises(AudioTooLargeError, match="192000 Hz x 8 channels"):
            load_audio(source, max_seconds=1.0)
    assert len(load_audio(bytes(data))) == SAMPLE_RATE


def _aac(path: Path, fmt: str, rate: int, layout: str, seconds: float) -> None:
    channels = av.AudioLayout(layout).nb_channels
    x = noise(int(rate * seconds), channels).T
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("aac", rate=rate, layout=layout)
        for start in range(0, x.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(x[:, start:start + 1024]), format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_ffmpeg_path_is_bounded_from_the_header_and_while_decoding(tmp_path):
    # 96 kHz 5.1 AAC: 576 000 samples a second. M4A declares its duration; raw ADTS does not.
    _aac(tmp_path / "surround.m4a", "ipod", 96_000, "5.1", 0.9)
    _aac(tmp_path / "surround.aac", "adts", 96_000, "5.1", 0.9)
    with pytest.raises(AudioTooLargeError, match="6 channels .*from the header"):
        load_audio(tmp_path / "surround.m4a", max_seconds=1.0)
    with pytest.raises(AudioTooLargeError, match="6 channels .*decoding stopped") as info:
        load_audio(tmp_path / "surround.aac", max_seconds=1.0)
    assert _stopped_at(info.value) < 0.8
    for name in ("surround.m4a", "surround.aac"):
        expected = load_audio(tmp_path / name)
        np.testing.assert_array_equal(load_audio(tmp_path / name, max_seconds=2.0), expected)


_EIGHT_CHANNELS = r"""
import sys
import av, numpy as np, soxr
from midashenglm.audio import load_audio

path = sys.argv[1]
got = load_audio(path, max_seconds=300)
with av.open(path) as container:  # independent whole-file reference, packed samples
    stream = container.streams.audio[0]
    to_flt = av.AudioResampler(format="flt", layout=stream.codec_context.layout)
    frames = [f for frame in container.decode(stream) for f in to_flt.resample(frame)]
    frames += to_flt.resample(None)
    rate = stream.codec_context.sample_rate
whole = np.concatenate([f.to_ndarray().reshape(-1, 8) for f in frames])
expected = soxr.resample(whole.mean(axis=1), rate, 16000, quality="HQ")
assert got.shape == expected.shape, (got.shape, expected.shape)
np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
print(len(got))
"""


def test_eight_channel_ffmpeg_input_does_not_crash(tmp_path):
    # 7.1 AAC (films, games) goes through FFmpeg. Reading planar frames of 8 or more channels
    # through PyAV runs past FFmpeg's plane array: this used to kill the process (SIGSEGV),
    # so it runs in a child process to turn a crash into a failure.
    rate, path = 48_000, tmp_path / "surround71.m4a"
    x = noise(2 * rate, 8)
    with av.open(str(path), "w", format="ipod") as out:
        stream = out.add_stream("aac", rate=rate, layout="7.1")
        for start in range(0, len(x), 1024):  # packed input: planar 8-channel frames crash too
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(x[start:start + 1024]).reshape(1, -1), format="flt",
                layout="7.1")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    done = subprocess.run([sys.executable, "-c", _EIGHT_CHANNELS, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert abs(int(done.stdout) - 2 * SAMPLE_RATE) < SAMPLE_RATE // 10


# ---- streams whose rate changes mid-stream (hand-made FLAC frames)


def _crc_table(poly: int, bits: int) -> list[int]:
    top, mask, table = 1 << (bits - 1), (1 << bits) - 1, []
    for byte in range(256):
        c = byte << (bits - 8)
        for _ in range(8):
            c = ((c << 1) ^ poly) & mask if c & top else (c << 1) & mask
        table.append(c)
    return table


_CRC8, _CRC16 = _crc_table(0x07, 8), _crc_table(0x8005, 16)


def _crc(data: bytes, table: list[int], bits: int) -> int:
    c = 0
    for byte in data:
        c = ((c << 8) & ((1 << bits) - 1)) ^ table[(c >> (bits - 8)) ^ byte]
    return c


def _utf8_number(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    assert n < 0x10000
    if n < 0x800:
        return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])
    return bytes([0xE0 | n >> 12, 0x80 | n >> 6 & 0x3F, 0x80 | n & 0x3F])


def _flac_frame(number: int, rate: int, samples: np.ndarray) -> bytes:
    """One fixed-blocksize FLAC frame with its own rate in the header: (n, channels) int16
    samples, a CONSTANT subframe where a channel is constant, else VERBATIM."""
    n, channels = samples.shape
    rate_code, rate_bytes = ((0b1101, rate.to_bytes(2, "big")) if rate < 65536 else
                             (0b1110, (rate // 10).to_bytes(2, "big")))
    head = (bytes([0xFF, 0xF8, 0b0111 << 4 | rate_code, (channels - 1) << 4 | 0b100 << 1])
            + _utf8_number(number) + (n - 1).to_bytes(2, "big") + rate_bytes)
    body = head + bytes([_crc(head, _CRC8, 8)])
    for ch in samples.T:
        if (ch == ch[0]).all():
            body += b"\x00" + int(ch[0]).to_bytes(2, "big", signed=True)
        else:
            body += b"\x02" + ch.astype(">i2").tobytes()
    return body + _crc(body, _CRC16, 16).to_bytes(2, "big")


def _flac(rate: int, channels: int, segments: list[tuple[int, np.ndarray]]) -> bytes:
    """A FLAC stream: STREAMINFO says ``rate`` and an open length; then (rate, samples)
    frames, each with its own rate."""
    info = ((16).to_bytes(2, "big") + (65535).to_bytes(2, "big") + bytes(6)
            + (rate << 44 | (channels - 1) << 41 | 15 << 36).to_bytes(8, "big") + bytes(16))
    frames = b"".join(_flac_frame(i, r, x) for i, (r, x) in enumerate(segments))
    return b"fLaC" + b"\x80" + len(info).to_bytes(3, "big") + info + frames


def test_a_mid_stream_rate_switch_does_not_escape_the_work_budget():
    # The tester's file, scaled down: STREAMINFO and the first frame say 1 kHz x 8 channels
    # and leave the length open, then 600 frames of 65535 samples at 655.35 kHz follow.
    # FFmpeg follows the switch. Counted after resampling to the first frame's rate, each big
    # frame cost 800 samples of work and 0.1 s: the file passed as 61 s under a 70 s limit
    # while decoding 314.6 M samples, 11.7 times the budget of 26.88 M.
    silence = np.zeros((65535, 8), np.int16)
    data = _flac(1000, 8, [(1000, silence[:1000])] + [(655_350, silence)] * 600)
    assert len(data) < 40_000
    max_seconds, frame_work = 70, 65535 * 8
    budget = max_seconds * MAX_SAMPLES_PER_LIMIT_SECOND
    start = time.perf_counter()
    with pytest.raises(AudioTooLargeError, match=r"decoding stopped") as info:
        load_audio(data, max_seconds=max_seconds)
    assert time.perf_counter() - start < 2.0
    problem = info.value.problem
    assert "up to 655350 Hz x 8 channels" in problem, problem
    work = int(re.search(r"is ([\d,]+) samples to decode", problem).group(1).replace(",", ""))
    # Counted at the source rate, frame by frame: stopped within one frame of the budget.
    assert budget < work <= budget + frame_work


def test_each_stretch_is_resampled_from_its_own_rate():
    # 1 s at 8 kHz (440 Hz), then 1 s at 16 kHz (5 kHz: above the first stretch's Nyquist
    # frequency, so resampling everything to the first frame's rate would erase it).
    def tone(rate: int, hz: float) -> np.ndarray:
        return (0.5 * np.sin(2 * np.pi * hz * np.arange(rate) / rate) * 32767).astype(np.int16)

    low, high = tone(8000, 440), tone(16000, 5000)
    segments = [(8000, low[i:i + 4000, None]) for i in (0, 4000)]
    segments += [(16000, high[i:i + 4000, None]) for i in range(0, 16000, 4000)]
    data = _flac(8000, 1, segments)
    for max_seconds in (None, 3):
        y = load_audio(data, max_seconds=max_seconds)
        assert len(y) == pytest.approx(2 * SAMPLE_RATE, abs=2)
        for part, hz in ((y[2000:14000], 440), (y[18000:30000], 5000)):
            spectrum = np.abs(np.fft.rfft(part * np.hanning(len(part))))
            assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(part) - hz) < 5
            assert np.sqrt(np.mean(part**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    with pytest.raises(AudioTooLongError, match=r"1\.75 s long or more \(decoding stopped\)"):
        load_audio(data, max_seconds=1.5)
