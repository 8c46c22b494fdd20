"""Tests for midashenglm.audio on real files built at test time (no mocks)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from midashenglm.audio import (
    SAMPLE_RATE,
    AudioDecodeError,
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    NonFiniteAudioError,
    UnsupportedFormatError,
    audio_duration,
    describe_source,
    load_audio,
    to_mono_float32,
)

TONE_HZ = 1000.0
SECONDS = 1.0


def tone(rate: int, seconds: float = SECONDS, hz: float = TONE_HZ, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def encode_with_pyav(path: Path, x: np.ndarray, rate: int, fmt: str, codec: str) -> None:
    """Encode mono/stereo float32 ``x`` (channels, n) with PyAV's bundled FFmpeg."""
    layout = "mono" if x.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        for start in range(0, x.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(x[:, start:start + 1024]), format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


# name -> (writer, source rate, lossy, readable by libsndfile)
def _sf_writer(**kwargs):
    return lambda path, x, rate: sf.write(path, x.T, rate, **kwargs)


def _av_writer(fmt, codec):
    return lambda path, x, rate: encode_with_pyav(path, x, rate, fmt, codec)


FORMATS = {
    "pcm16.wav": (_sf_writer(subtype="PCM_16"), 44100, False, True),
    "float.wav": (_sf_writer(subtype="FLOAT"), 48000, False, True),
    "narrow.wav": (_sf_writer(subtype="PCM_16"), 8000, False, True),
    "native.wav": (_sf_writer(subtype="PCM_16"), 16000, False, True),
    "a.flac": (_sf_writer(), 22050, False, True),
    "vorbis.ogg": (_sf_writer(format="OGG", subtype="VORBIS"), 44100, True, True),
    "opus.ogg": (_sf_writer(format="OGG", subtype="OPUS"), 48000, True, True),
    "a.mp3": (_sf_writer(format="MP3"), 44100, True, True),
    "aac.m4a": (_av_writer("ipod", "aac"), 44100, True, False),
    "aac.mp4": (_av_writer("mp4", "aac"), 48000, True, False),
    "opus.webm": (_av_writer("webm", "libopus"), 48000, True, False),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audio")
    made = {}
    for name, (write, rate, _, _) in FORMATS.items():
        x = tone(rate)
        stereo = np.stack([x, x]) if name in ("float.wav", "aac.m4a") else x[None]
        made[name] = root / name
        write(made[name], stereo, rate)
    return made


def expected_len(rate: int, seconds: float = SECONDS) -> float:
    return int(round(rate * seconds)) * SAMPLE_RATE / rate


def run_bounded(fn, *args, limit_s: float = 10.0, **kwargs):
    """Run fn in a thread; fail if it has not returned after limit_s (no pytest-timeout here)."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed back to the test thread
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"{fn.__name__} still running after {limit_s} s"
    return result


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_loads_as_16k_mono_float32(files, name):
    _, rate, lossy, sf_readable = FORMATS[name]
    if not sf_readable:  # documents that this case exercises the PyAV fallback
        with pytest.raises(sf.LibsndfileError):
            sf.info(str(files[name]))
    y = load_audio(files[name])
    assert y.ndim == 1 and y.dtype == np.float32 and y.flags.c_contiguous
    tolerance = 0.1 * SAMPLE_RATE if lossy else 2  # codec priming/padding
    assert abs(len(y) - expected_len(rate)) <= tolerance
    assert abs(peak_hz(y) - TONE_HZ) < 5
    middle = y[len(y) // 4: -len(y) // 4]  # codecs ring at the edges
    assert 0.3 < np.sqrt(np.mean(middle**2)) < 0.41  # a 0.5 sine has RMS 0.354


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_length_and_pitch(tmp_path, rate):
    path = tmp_path / "x.wav"
    sf.write(path, tone(rate, seconds=1.5), rate, subtype="FLOAT")
    y = load_audio(path)
    assert abs(len(y) - expected_len(rate, 1.5)) <= 2
    assert abs(peak_hz(y) - TONE_HZ) < 2


def test_other_target_rate(files):
    y = load_audio(files["pcm16.wav"], sample_rate=24000)
    assert abs(len(y) - 24000) <= 2 and abs(peak_hz(y, 24000) - TONE_HZ) < 2


def test_stereo_file_is_averaged(tmp_path):
    x = tone(16000)
    path = tmp_path / "lr.wav"
    sf.write(path, np.stack([x, np.zeros_like(x)], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), x / 2, atol=1e-7)


def test_layout_and_rate_changes_mid_stream(tmp_path):
    # Raw ADTS streams can switch channel count and rate between frames (e.g. concatenated
    # radio recordings); PyAV's resampler alone would refuse or pass such frames through.
    parts = []
    for i, (rate, channels) in enumerate([(16000, 1), (44100, 1), (16000, 2)]):
        x = np.repeat(tone(rate)[None], channels, axis=0)
        encode_with_pyav(tmp_path / f"{i}.aac", x, rate, "adts", "aac")
        parts.append((tmp_path / f"{i}.aac").read_bytes())
    y = load_audio(b"".join(parts))
    assert abs(len(y) / SAMPLE_RATE - 3.0) < 0.3 and abs(peak_hz(y) - TONE_HZ) < 2


def test_vbr_mp3_without_length_header_is_decoded_to_the_end(tmp_path):
    # Loud then silent VBR MP3 whose Xing tag is blanked out: libsndfile then takes a
    # bitrate guess for the length and stops early, so such files must go to FFmpeg.
    rate = 44100
    noise = np.random.default_rng(0).standard_normal(3 * rate).astype(np.float32) * 0.25
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([noise, np.zeros(3 * rate, np.float32)]), rate, format="MP3",
             bitrate_mode="VARIABLE", compression_level=0.9)
    data = buf.getvalue()
    assert b"Xing" in data[:64]
    data = data.replace(b"Xing", b"\0\0\0\0", 1)
    (tmp_path / "vbr.mp3").write_bytes(data)
    assert abs(len(load_audio(tmp_path / "vbr.mp3")) / SAMPLE_RATE - 6.0) < 0.1
    assert abs(audio_duration(data) - 6.0) < 0.1


def test_flac_with_unknown_length(files):
    # Streaming FLAC encoders may leave STREAMINFO's total sample count at 0 ("unknown");
    # libsndfile then reports 2**63 - 1 frames, which must not size an allocation.
    data = bytearray(files["a.flac"].read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO comes first
    fields = int.from_bytes(data[18:26], "big")
    data[18:26] = (fields & ~((1 << 36) - 1)).to_bytes(8, "big")  # low 36 bits: total samples
    assert sf.info(io.BytesIO(bytes(data))).frames > 2**62
    np.testing.assert_array_equal(load_audio(bytes(data)), load_audio(files["a.flac"]))
    assert audio_duration(bytes(data)) == pytest.approx(1.0)
    raises(AudioTooLongError, bytes(data), max_seconds=0.5, match="decoding stopped")


@pytest.mark.skipif(shutil.which("espeak-ng") is None and not os.environ.get(
    "MIDASHENGLM_REQUIRE_SHARED"), reason="espeak-ng is not installed")
def test_real_speech_from_espeak(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.fail("MIDASHENGLM_REQUIRE_SHARED is set but espeak-ng is not on PATH")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "hello world"], check=True, timeout=30)
    info = sf.info(str(path))
    assert info.samplerate == 22050
    y = load_audio(path)
    assert abs(len(y) - info.frames * SAMPLE_RATE / info.samplerate) <= 2
    assert abs(audio_duration(path) - info.duration) < 1e-9
    assert 0.5 < len(y) / SAMPLE_RATE < 3 and np.sqrt(np.mean(y**2)) > 0.01


# --------------------------------------------------------------------------- other inputs


def test_bytes_and_file_objects(files):
    path = files["a.flac"]
    reference = load_audio(path)
    data = path.read_bytes()

    class PipeLike:  # read() only: no seek, like a socket or stdin
        def __init__(self, raw: bytes) -> None:
            self._buf = io.BytesIO(raw)

        def read(self, n: int = -1) -> bytes:
            return self._buf.read(n)

    offset = io.BytesIO(b"junk" + data)
    offset.seek(4)
    with open(path, "rb") as f:
        for source in (data, bytearray(data), memoryview(data), io.BytesIO(data), f,
                       PipeLike(data), offset):
            np.testing.assert_array_equal(load_audio(source), reference)
        assert not f.closed


def test_pyav_formats_from_bytes_and_file_objects(files):
    path = files["aac.m4a"]
    reference = load_audio(path)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), reference)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(load_audio(f), reference)
        assert not f.closed


def test_numpy_inputs():
    x = tone(16000)
    np.testing.assert_allclose(load_audio(x.astype(np.float64)), x, atol=1e-7)
    pcm = np.round(x * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm), x, atol=1e-4)
    assert load_audio(np.array([-32768, 32767], np.int16)).tolist() == [-1.0, 32767 / 32768]
    assert load_audio(np.array([0, 128, 255], np.uint8)).tolist() == [-1.0, 0.0, 127 / 128]
    assert load_audio(np.array([-(2**31)], np.int32)).tolist() == [-1.0]
    # channels-first, channels-last and a lone channel all mean the same thing
    stereo = np.stack([x, np.zeros_like(x)])
    for arr in (stereo, stereo.T, np.asfortranarray(stereo), x[None], x[:, None]):
        expected = x if arr.shape[0] == 1 or arr.shape[1] == 1 else x / 2
        np.testing.assert_allclose(load_audio(arr), expected, atol=1e-7)


def test_array_resampled_from_source_rate():
    y = load_audio(tone(44100), source_sample_rate=44100)
    assert abs(len(y) - 16000) <= 2 and abs(peak_hz(y) - TONE_HZ) < 2


def test_output_never_aliases_the_input():
    x = tone(16000)
    y = load_audio(x)
    y[:] = 0
    assert np.abs(x).max() > 0.4


def test_torch_inputs():
    x = tone(16000)
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(load_audio(t), x)
    np.testing.assert_allclose(load_audio(t.to(torch.bfloat16)), x, atol=4e-3)
    np.testing.assert_allclose(load_audio(t.half()), x, atol=1e-3)
    np.testing.assert_allclose(load_audio(torch.stack([t, -t])), np.zeros_like(x), atol=1e-7)
    np.testing.assert_allclose(load_audio(t.clone().requires_grad_()), x)
    np.testing.assert_allclose(load_audio((t * 32767).round().to(torch.int16)), x, atol=1e-4)
    y = load_audio(torch.from_numpy(tone(48000)).to(torch.bfloat16), source_sample_rate=48000)
    assert abs(len(y) - 16000) <= 2 and abs(peak_hz(y) - TONE_HZ) < 2


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.int16, st.tuples(st.integers(1, 4), st.integers(5, 300))))
def test_to_mono_float32_properties(arr):
    y = to_mono_float32(arr, "<test>")
    assert y.dtype == np.float32 and y.shape == (max(arr.shape),)
    assert np.all(np.abs(y) <= 1.0)
    np.testing.assert_allclose(y, arr.astype(np.float64).mean(axis=0) / 32768, atol=1e-6)


# --------------------------------------------------------------------------- durations


def test_audio_duration(files):
    assert audio_duration(files["pcm16.wav"]) == pytest.approx(1.0)
    assert audio_duration(files["a.mp3"]) == pytest.approx(1.0, abs=0.01)
    assert audio_duration(files["aac.m4a"]) == pytest.approx(1.0, abs=0.1)
    assert audio_duration(files["opus.webm"].read_bytes()) == pytest.approx(1.0, abs=0.1)
    assert audio_duration(np.zeros((2, 32000))) == 2.0
    assert audio_duration(torch.zeros(44100, 2), source_sample_rate=44100) == 1.0
    with pytest.raises(AudioDecodeError):
        audio_duration(files["a.flac"].parent / "missing.wav")


def test_describe_source(tmp_path):
    assert describe_source(tmp_path / "a.wav") == str(tmp_path / "a.wav")
    assert describe_source(b"1234") == "<bytes: 4 B>"
    assert describe_source(memoryview(b"12")) == "<bytes: 2 B>"
    assert describe_source(io.BytesIO()) == "<file object>"
    assert describe_source(np.zeros((2, 3), np.int16)).startswith("<numpy array")
    assert "bfloat16" in describe_source(torch.zeros(3, dtype=torch.bfloat16))


def test_importing_does_not_import_torch():
    code = "import sys, midashenglm.audio; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- errors


def raises(cls, source, *, match: str = "", **kwargs) -> AudioError:
    with pytest.raises(cls) as info:
        load_audio(source, **kwargs)
    message = str(info.value)
    assert describe_source(source) in message and info.value.source == describe_source(source)
    assert match in message
    return info.value


def test_missing_file_and_non_files(tmp_path):
    raises(AudioDecodeError, tmp_path / "nope.wav", match="file not found")
    raises(AudioDecodeError, str(tmp_path / "nope.wav"), match="file not found")
    raises(AudioDecodeError, tmp_path, match="directory")
    (tmp_path / "zero.wav").write_bytes(b"")
    raises(AudioDecodeError, tmp_path / "zero.wav", match="0 bytes")


def test_empty_audio(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    raises(EmptyAudioError, tmp_path / "empty.wav")
    raises(EmptyAudioError, np.zeros(0, np.float32))
    raises(EmptyAudioError, torch.zeros(2, 0))
    raises(EmptyAudioError, np.zeros(1, np.float32), source_sample_rate=48000, match="resample")


def test_non_finite_samples(tmp_path):
    x = tone(16000)
    x[[3, 10, 20]] = [np.nan, np.inf, -np.inf]
    raises(NonFiniteAudioError, x, match="3 of 16000")
    raises(NonFiniteAudioError, torch.from_numpy(x), match="3 of 16000")
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    raises(NonFiniteAudioError, tmp_path / "nan.wav", match="NaN")


def test_too_long(tmp_path, files):
    err = raises(AudioTooLongError, tone(16000, seconds=2), max_seconds=1.5, match="2.00 s")
    assert err.duration == 2.0 and err.limit == 1.5 and "1.5 s" in str(err)
    raises(AudioTooLongError, files["pcm16.wav"], max_seconds=0.5, match="from the header")
    raises(AudioTooLongError, files["aac.m4a"], max_seconds=0.5, match="from the header")
    assert len(load_audio(files["aac.m4a"], max_seconds=1.2)) > 0
    assert len(load_audio(files["pcm16.wav"], max_seconds=1.0)) == 16000


def test_too_long_stream_without_header_stops_decoding(tmp_path):
    # Raw ADTS AAC declares no duration, so the limit must be enforced while decoding.
    path = tmp_path / "long.aac"
    encode_with_pyav(path, tone(16000, seconds=30)[None], 16000, "adts", "aac")
    err = raises(AudioTooLongError, path, max_seconds=1.0, match="decoding stopped")
    assert 1.0 < err.duration < 1.5


def test_unsupported_inputs(tmp_path):
    raises(UnsupportedFormatError, 123)
    raises(UnsupportedFormatError, [0.1, 0.2])
    raises(UnsupportedFormatError, np.zeros((2, 2, 100)), match="batch")
    raises(UnsupportedFormatError, np.zeros((40, 16000)), match="ambiguous")
    raises(UnsupportedFormatError, np.zeros(10, np.complex64), match="dtype")
    raises(UnsupportedFormatError, torch.zeros(10, dtype=torch.bool), match="dtype")
    (tmp_path / "blob.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    raises(UnsupportedFormatError, tmp_path / "blob.bin", match="unrecognised")
    (tmp_path / "notes.txt").write_text("not audio at all\n" * 50)
    raises(UnsupportedFormatError, tmp_path / "notes.txt")  # FFmpeg sees "tty" video
    with open(tmp_path / "notes.txt") as text_mode:
        raises(UnsupportedFormatError, text_mode, match="'rb'")


def test_video_without_audio_is_unsupported(tmp_path):
    path = tmp_path / "video.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    raises(UnsupportedFormatError, path, match="no audio stream")


def test_playlists_cannot_make_ffmpeg_read_other_files(tmp_path):
    segment = tmp_path / "seg.aac"
    encode_with_pyav(segment, tone(16000)[None], 16000, "adts", "aac")
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{segment}\n#EXT-X-ENDLIST\n"
    (tmp_path / "list.m3u8").write_text(playlist)
    raises(UnsupportedFormatError, tmp_path / "list.m3u8", match="playlist")
    # Without the .m3u8 name FFmpeg does not even detect a playlist.
    raises(UnsupportedFormatError, playlist.encode())


def test_misuse_is_a_plain_value_error(files):
    with pytest.raises(ValueError, match="source_sample_rate") as info:
        load_audio(files["pcm16.wav"], source_sample_rate=44100)
    assert not isinstance(info.value, AudioError)
    for kwargs in ({"sample_rate": 0}, {"max_seconds": -1}, {"source_sample_rate": 1.5}):
        with pytest.raises(ValueError):
            load_audio(np.zeros(10), **kwargs)


def test_implausible_sample_rates_are_corrupt_headers(files):
    wav = bytearray(files["native.wav"].read_bytes())
    assert wav[12:16] == b"fmt " and int.from_bytes(wav[24:28], "little") == 16000
    for rate in (1, 996_061_573):
        wav[24:28] = rate.to_bytes(4, "little")
        raises(AudioDecodeError, bytes(wav), match="sample rate")


def test_errors_pickle_and_are_value_errors():
    err = AudioTooLongError("x.wav", "too long", duration=3.0, limit=2.0)
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), str(copy), copy.duration, copy.limit) == (
        AudioTooLongError, "x.wav: too long", 3.0, 2.0)
    assert isinstance(copy, ValueError) and copy.source == "x.wav" and copy.problem == "too long"


def _malformed_inputs(files: dict[str, Path]) -> dict[str, bytes]:
    rng = np.random.default_rng(1234)
    garbage = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    wav = files["pcm16.wav"].read_bytes()
    cases = {
        "random bytes": garbage,
        "wav header + garbage": wav[:44] + garbage[:1000],
        "riff without fmt": b"RIFF\x00\x10\x00\x00WAVE" + garbage[:2000],
        "mp4 box + garbage": b"\x00\x00\x00\x18ftypM4A " + garbage,
        "ebml + garbage": b"\x1a\x45\xdf\xa3" + garbage,
        "ogg page + garbage": b"OggS" + garbage,
        "id3 + garbage": b"ID3\x04\x00\x00\x00\x00\x00\x00" + garbage,
        "adts sync + garbage": b"\xff\xf1" + garbage,
    }
    for name in ("a.flac", "a.mp3", "aac.m4a", "aac.mp4", "opus.webm", "vorbis.ogg", "pcm16.wav"):
        data = files[name].read_bytes()
        cases[f"{name} cut in half"] = data[: len(data) // 2]
    return cases


def test_malformed_inputs_fail_fast_with_audio_errors(files, tmp_path):
    cases = _malformed_inputs(files)
    (tmp_path / "zero.flac").write_bytes(b"")
    (tmp_path / "half.m4a").write_bytes(cases["aac.m4a cut in half"])
    sources = {**cases, "zero-length file": tmp_path / "zero.flac",
               "half m4a on disk": tmp_path / "half.m4a"}
    for name, source in sources.items():
        for fn in (load_audio, audio_duration):
            if fn is audio_duration and name.endswith("cut in half"):
                continue  # a header-only duration need not notice a cut
            outcome = run_bounded(fn, source, limit_s=10.0)
            assert isinstance(outcome.get("error"), AudioError), (name, fn.__name__, outcome)
            assert describe_source(source) in str(outcome["error"])


def test_truncated_files_are_decode_errors(files):
    for name in ("a.flac", "a.mp3", "aac.m4a", "opus.webm", "pcm16.wav"):
        data = files[name].read_bytes()
        raises(AudioDecodeError, data[: len(data) // 2])
