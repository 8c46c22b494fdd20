"""Music source of the synthetic corpus: GM tables, MIDI composition, FluidSynth renders whose
tempo and key the project's own experts read back, music-on-hold clips, and split hygiene."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from midashenglm.data.synth import music
from midashenglm.errors import UserError
from tests.conftest import need


def _need_fluidsynth() -> None:
    need(music.fluidsynth_problem() is None, f"cannot render: {music.fluidsynth_problem()}")


def test_gm_tables():
    assert len(music.GM_PROGRAMS) == 128 and len(set(music.GM_PROGRAMS)) == 128
    assert len(music.GM_FAMILIES) == 16
    assert music.program_info(0) == ("acoustic grand piano", "piano")
    assert music.program_info(40) == ("violin", "strings")
    assert music.program_info(127) == ("gunshot", "sound effects")
    assert music.program_info(music.DRUM_PROGRAM) == ("drum kit", "drums")
    with pytest.raises(ValueError):
        music.program_info(128)


@pytest.mark.parametrize("mode", ["major", "minor"])
def test_compose_has_truth_in_midi(mode):
    pytest.importorskip("mido")
    midi = music.compose(33, 97, "E", mode, 6.0, seed=3)
    messages = list(midi.tracks[0])
    tempos = [m.tempo for m in messages if m.type == "set_tempo"]
    assert tempos == [round(60_000_000 / 97)]
    assert {m.program for m in messages if m.type == "program_change"} == {33}
    notes = [m.note for m in messages if m.type == "note_on"]
    scale = music._MAJOR if mode == "major" else music._MINOR
    allowed = {(4 + s) % 12 for s in scale} | ({(4 + 11) % 12} if mode == "minor" else set())
    assert notes and {n % 12 for n in notes} <= allowed
    assert midi.length >= 6.0


def test_drum_kit_uses_channel_10():
    pytest.importorskip("mido")
    midi = music.compose(music.DRUM_PROGRAM, 120, "C", "major", 4.0, seed=0)
    channels = {m.channel for m in midi.tracks[0] if m.type == "note_on"}
    assert channels == {9}


def test_missing_fluidsynth_gives_reason(monkeypatch):
    monkeypatch.setattr(music.shutil, "which", lambda name: None)
    reason = music.fluidsynth_problem()
    assert reason and "fluidsynth" in reason
    assert music.available_sources()["fluidsynth"] == reason
    with pytest.raises(UserError, match="fluidsynth is not installed"):
        music.render(object(), 1.0)


# Cases whose key essentia reads back (about 3 in 4 piano renders do; see the module notes).
@pytest.mark.parametrize("tempo,key,mode,seed", [(100, "D", "major", 1), (120, "A", "minor", 2)])
def test_piano_render_reads_back_tempo_and_key(tempo, key, mode, seed):
    _need_fluidsynth()
    need(importlib.util.find_spec("essentia") is not None, "essentia is not installed")
    from midashenglm.curation.experts.signal import Key, Tempo

    piece = music.synthesize(0, tempo, key, mode, 12.0, seed=seed)
    assert piece.audio.dtype == np.float32 and piece.audio.shape == (12 * music.RATE,)
    assert np.sqrt(np.mean(piece.audio**2)) > 0.02
    assert (piece.instrument, piece.family, piece.source) == ("acoustic grand piano", "piano",
                                                              "fluidsynth")
    bpm = Tempo().analyze(piece.audio, {})["bpm"]
    assert abs(bpm / piece.tempo - 1) < 0.03
    read = Key().analyze(piece.audio, {})
    assert (read["key"], read["mode"]) == (key, mode)


def test_source_samples_and_splits():
    _need_fluidsynth()
    rng = np.random.default_rng(0)
    source = music.MusicSource("heldout", moh_share=0.0)
    piece = source.sample(rng, 3.0)
    assert piece.source == "fluidsynth" and piece.audio.shape == (3 * music.RATE,)
    assert np.max(np.abs(piece.audio)) == pytest.approx(0.5, abs=1e-4)
    train, heldout = music.MELODY_SEEDS["train"], music.MELODY_SEEDS["heldout"]
    assert train[1] <= heldout[0]


def test_music_on_hold_clip_and_split():
    need(music.available_sources()["asterisk-moh"] is None, "asterisk-moh-opsound-wav absent")
    train, heldout = music._moh_segments("train"), music._moh_segments("heldout")
    assert train and heldout and not set(train) & set(heldout)
    clip = music.moh_clip("heldout", np.random.default_rng(1), 4.0)
    assert clip.source == "asterisk-moh" and clip.instrument is None and clip.tempo is None
    assert clip.audio.shape == (4 * music.RATE,) and np.sqrt(np.mean(clip.audio**2)) > 0.01
