"""Speech sources of the synthetic corpus: every source decodes, the truth fields are right (a
pitch check confirms the gender table), durations stay in 1-12 s, and the splits are disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from midashenglm.data.synth import speech as S
from midashenglm.data.synth.base import RATE
from midashenglm.errors import UserError
from tests.conftest import need


def _need(source: str) -> None:
    need(S.available_sources()[source] is None, f"{source}: {S.available_sources()[source]}")


def _median_f0(audio: np.ndarray) -> float:
    """Median F0 in Hz of voiced 40 ms frames (autocorrelation peak in 60-400 Hz)."""
    n, lo, hi = 640, RATE // 400, RATE // 60
    found = []
    for i in range(0, audio.size - n, n // 2):
        x = audio[i : i + n] - audio[i : i + n].mean()
        if np.sqrt(np.mean(x**2)) < 0.03:
            continue
        ac = np.correlate(x, x, "full")[n - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            found.append(RATE / lag)
    return float(np.median(found))


def _check(item, source: str, language: str) -> None:
    assert item.source == source and item.language == language
    assert item.gender in ("male", "female") and item.voice and item.text
    assert item.audio.dtype == np.float32 and item.audio.ndim == 1
    assert S.MIN_SECONDS <= item.audio.size / RATE <= S.MAX_SECONDS
    assert np.max(np.abs(item.audio)) == pytest.approx(0.5, abs=1e-4)


def test_sentences_and_prompts_split_disjointly():
    for language in S.LANGUAGES:
        train, heldout = S.sentences(language, "train"), S.sentences(language, "heldout")
        assert train and heldout and not set(train) & set(heldout)
        assert len(train) + len(heldout) == (len(S.SENTENCES_EN) if language == "en" else 40)
    assert len(set(S.SENTENCES_EN)) == len(S.SENTENCES_EN) >= 190
    # Each split keeps both genders in espeak-ng, and has a voice of its own.
    for split in ("train", "heldout"):
        assert set(S.espeak_voices(split).values()) == {"male", "female"}
    assert not set(S.espeak_voices("train")) & set(S.espeak_voices("heldout"))
    assert not set(S.flite_voices("train")) & set(S.flite_voices("heldout"))


def test_asterisk_prompts_split_disjointly():
    _need("asterisk")
    train = {t for _, t in S.asterisk_prompts("train")}
    heldout = {t for _, t in S.asterisk_prompts("heldout")}
    assert len(train) > 100 and len(heldout) > 10 and not train & heldout
    assert not any("[" in t for t in train | heldout)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_espeak_every_language(split):
    _need("espeak-ng")
    source = S.SpeechSource(split, sources=["espeak-ng"])
    rng = np.random.default_rng(1)
    for language in S.LANGUAGES:
        item = source.sample_from("espeak-ng", rng, language)
        _check(item, "espeak-ng", language)
        assert item.text in S.sentences(language, split)
        variant = item.voice.partition("+")[2]
        assert S.ESPEAK_VARIANTS[variant] == (item.gender, split)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_flite_and_asterisk(split):
    _need("flite")
    _need("asterisk")
    source = S.SpeechSource(split, languages=["en"], sources=["flite", "asterisk"])
    rng = np.random.default_rng(2)
    item = source.sample_from("flite", rng)
    _check(item, "flite", "en")
    assert S.FLITE_VOICES[item.voice.removeprefix("flite-")] == (item.gender, split)
    assert item.text in S.sentences("en", split)
    item = source.sample_from("asterisk", rng)
    _check(item, "asterisk", "en")
    assert item.gender == "female" and item.text in {t for _, t in S.asterisk_prompts(split)}


def test_gender_table_matches_pitch():
    """Male voices speak below 150 Hz, female ones above: the gender labels are true."""
    _need("espeak-ng")
    _need("flite")
    text = "The children are playing in the garden."
    for variant, (gender, _) in S.ESPEAK_VARIANTS.items():
        f0 = _median_f0(S.speak_espeak(text, "en", variant))
        assert (f0 > 150) == (gender == "female"), (variant, f0)
    for voice, (gender, _) in S.FLITE_VOICES.items():
        f0 = _median_f0(S.speak_flite(text, voice))
        assert (f0 > 150) == (gender == "female"), (voice, f0)


def test_mixed_sampling_and_errors():
    _need("espeak-ng")
    source = S.SpeechSource("train")
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(12):
        item = source.sample(rng)
        _check(item, item.source, item.language)
        seen.add(item.language)
    assert len(seen) >= 3
    with pytest.raises(UserError):
        S.SpeechSource("train", languages=["xx"])
    with pytest.raises(UserError):
        S.SpeechSource("train", languages=["de"], sources=["flite"])
    with pytest.raises(UserError):
        S.SpeechSource("test")  # type: ignore[arg-type]


def test_missing_tools_give_reasons(monkeypatch):
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    reasons = S.available_sources()
    assert "apt install espeak-ng" in reasons["espeak-ng"]
    assert "apt install flite" in reasons["flite"]
    with pytest.raises(UserError, match="espeak-ng is not installed"):
        S.SpeechSource("train", languages=["de"], sources=["espeak-ng"])
