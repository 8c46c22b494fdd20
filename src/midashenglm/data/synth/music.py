"""Music with known truth: General MIDI pieces rendered by FluidSynth, and real music clips.

A piece is composed here as a MIDI file (``mido``): a melody plus a chord accompaniment, both
on one General MIDI program (or a drum pattern on channel 10, the "drum kit"), at a known tempo
(BPM), key (tonic) and mode (major / minor). FluidSynth renders it at 16 kHz with a General
MIDI SoundFont (Debian ``fluid-soundfont-gm``: ``/usr/share/sounds/sf2/FluidR3_GM.sf2``), and
the render is trimmed to the requested length.

Real recordings: Debian ``asterisk-moh-opsound-wav`` (``/usr/share/asterisk/moh/*.wav``,
8 kHz music on hold, CC-BY-SA opsound.org) as ``source="asterisk-moh"`` with unknown
instrument, tempo and key (None).

Splits: a melody is fixed by its seed, and seeds come from disjoint ranges
(:data:`MELODY_SEEDS`); a real recording is cut into 30 s segments, each assigned by
:func:`~midashenglm.data.synth.base.split_of` of ``"<file name>:<segment index>"``. Program,
tempo, key and mode are drawn from the full ranges in both splits, so every label occurs in both.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

from midashenglm.data.synth.base import RATE, Music, Split, normalise, split_of
from midashenglm.errors import UserError

# The General MIDI Level 1 program names (MIDI Manufacturers Association, "General MIDI System
# Level 1", 1991), index = program number 0-127.
GM_PROGRAMS: tuple[str, ...] = (
    "acoustic grand piano", "bright acoustic piano", "electric grand piano", "honky-tonk piano",
    "electric piano 1", "electric piano 2", "harpsichord", "clavinet",
    "celesta", "glockenspiel", "music box", "vibraphone",
    "marimba", "xylophone", "tubular bells", "dulcimer",
    "drawbar organ", "percussive organ", "rock organ", "church organ",
    "reed organ", "accordion", "harmonica", "tango accordion",
    "acoustic guitar (nylon)", "acoustic guitar (steel)", "electric guitar (jazz)",
    "electric guitar (clean)", "electric guitar (muted)", "overdriven guitar",
    "distortion guitar", "guitar harmonics",
    "acoustic bass", "electric bass (finger)", "electric bass (pick)", "fretless bass",
    "slap bass 1", "slap bass 2", "synth bass 1", "synth bass 2",
    "violin", "viola", "cello", "contrabass",
    "tremolo strings", "pizzicato strings", "orchestral harp", "timpani",
    "string ensemble 1", "string ensemble 2", "synth strings 1", "synth strings 2",
    "choir aahs", "voice oohs", "synth voice", "orchestra hit",
    "trumpet", "trombone", "tuba", "muted trumpet",
    "french horn", "brass section", "synth brass 1", "synth brass 2",
    "soprano sax", "alto sax", "tenor sax", "baritone sax",
    "oboe", "english horn", "bassoon", "clarinet",
    "piccolo", "flute", "recorder", "pan flute",
    "blown bottle", "shakuhachi", "whistle", "ocarina",
    "lead 1 (square)", "lead 2 (sawtooth)", "lead 3 (calliope)", "lead 4 (chiff)",
    "lead 5 (charang)", "lead 6 (voice)", "lead 7 (fifths)", "lead 8 (bass + lead)",
    "pad 1 (new age)", "pad 2 (warm)", "pad 3 (polysynth)", "pad 4 (choir)",
    "pad 5 (bowed)", "pad 6 (metallic)", "pad 7 (halo)", "pad 8 (sweep)",
    "fx 1 (rain)", "fx 2 (soundtrack)", "fx 3 (crystal)", "fx 4 (atmosphere)",
    "fx 5 (brightness)", "fx 6 (goblins)", "fx 7 (echoes)", "fx 8 (sci-fi)",
    "sitar", "banjo", "shamisen", "koto",
    "kalimba", "bagpipe", "fiddle", "shanai",
    "tinkle bell", "agogo", "steel drums", "woodblock",
    "taiko drum", "melodic tom", "synth drum", "reverse cymbal",
    "guitar fret noise", "breath noise", "seashore", "bird tweet",
    "telephone ring", "helicopter", "applause", "gunshot",
)
# The 16 GM program families, eight programs each (same source).
GM_FAMILIES: tuple[str, ...] = (
    "piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive",
    "sound effects",
)
DRUM_PROGRAM = -1  # channel 10 (index 9): the GM percussion key map, not a program
DRUM_NAME = "drum kit"
DRUM_FAMILY = "drums"
KEYS: tuple[str, ...] = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MODES: tuple[str, ...] = ("major", "minor")
TEMPO_RANGE = (60, 180)  # BPM, integers drawn inclusive
# Disjoint melody seed ranges: a melody (rhythm, contour, progression, accompaniment) is a
# function of its seed, so held-out melodies are never heard in training.
MELODY_SEEDS: dict[str, tuple[int, int]] = {"train": (0, 850_000), "heldout": (850_000, 1_000_000)}
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")
MOH_DIR = Path("/usr/share/asterisk/moh")
MOH_SEGMENT_SECONDS = 30.0
MOH_SHARE = 0.1  # share of asterisk-moh clips in MusicSource samples when available
GAIN = 0.6  # fluidsynth -g
TICKS = 480  # MIDI ticks per beat

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)  # natural minor; the V chord takes the raised leading tone
# Chord progressions as scale degrees (0 = tonic), one chord per bar, cadencing on the tonic;
# chosen for essentia's key read-back on piano renders (I-vi-IV-V read as the relative key
# too often and is left out).
_PROGRESSIONS = {"major": ((0, 3, 4, 0), (0, 5, 4, 0), (0, 4, 5, 3), (0, 4, 0, 4)),
                 "minor": ((0, 3, 4, 0), (0, 5, 4, 0), (0, 4, 0, 4))}


def program_info(program: int) -> tuple[str, str]:
    """``(instrument name, family)`` of GM ``program`` 0-127, or of :data:`DRUM_PROGRAM`."""
    if program == DRUM_PROGRAM:
        return DRUM_NAME, DRUM_FAMILY
    if not 0 <= program < 128:
        raise ValueError(f"GM program must be 0-127 or {DRUM_PROGRAM}, got {program}")
    return GM_PROGRAMS[program], GM_FAMILIES[program // 8]


def soundfont() -> str | None:
    """The GM SoundFont to render with: ``$MIDASHENGLM_SOUNDFONT`` or Debian's; None if none."""
    env = os.environ.get("MIDASHENGLM_SOUNDFONT")
    for path in ((env,) if env else SOUNDFONTS):
        if Path(path).is_file():
            return path
    return None


def fluidsynth_problem() -> str | None:
    """Why MIDI pieces cannot be rendered here, or None when they can."""
    if shutil.which("fluidsynth") is None:
        return "fluidsynth is not installed (Debian: apt-get install fluidsynth)"
    if soundfont() is None:
        return ("no General MIDI SoundFont: install Debian fluid-soundfont-gm "
                "or set MIDASHENGLM_SOUNDFONT to a .sf2 file")
    try:
        import mido  # noqa: F401
    except ImportError:
        return "the Python package mido is not installed (pip install mido)"
    return None


@cache
def _moh_files() -> tuple[Path, ...]:
    return tuple(sorted(MOH_DIR.glob("*.wav"))) if MOH_DIR.is_dir() else ()


@cache
def _moh_segments(split: str) -> tuple[tuple[Path, int], ...]:
    """``(file, segment index)`` of every whole 30 s segment of the music-on-hold files that
    belongs to ``split``."""
    import soundfile

    out = []
    for path in _moh_files():
        frames = soundfile.info(str(path)).duration
        for index in range(int(frames // MOH_SEGMENT_SECONDS)):
            if split_of(f"{path.name}:{index}") == split:
                out.append((path, index))
    return tuple(out)


def available_sources() -> dict[str, str | None]:
    """Each music source with None when usable here, else the reason it is not."""
    moh = None if _moh_files() else (
        f"no music on hold in {MOH_DIR} (Debian: apt-get install asterisk-moh-opsound-wav)")
    return {"fluidsynth": fluidsynth_problem(), "asterisk-moh": moh}


def _tempo_us(bpm: float) -> int:
    return round(60_000_000 / bpm)


def compose(program: int, tempo: float, key: str, mode: str, seconds: float, seed: int):
    """A ``mido.MidiFile`` of at least ``seconds`` (plus one bar) at ``tempo`` BPM in 4/4.

    Pitched programs: a melody (channel 1) in ``key`` ``mode`` over one triad per bar
    (channel 2, same ``program``) following a cadencing progression, every beat sounded by the
    accompaniment so the pulse is clear; bass programs play an octave lower. The drum kit
    (:data:`DRUM_PROGRAM`): kick, snare and hi-hat on channel 10 (key and mode are ignored).
    ``seed`` fixes rhythm, contour, progression and accompaniment pattern.
    """
    import mido

    if key not in KEYS or mode not in MODES:
        raise ValueError(f"key must be one of {KEYS} and mode one of {MODES}")
    program_info(program)
    rng = np.random.default_rng(seed)
    bars = math.ceil(seconds * tempo / 60 / 4) + 1
    events: list[tuple[int, int, int, int, int]] = []  # (tick, order, channel, note, velocity)

    def note(start: float, beats: float, channel: int, pitch: int, velocity: int) -> None:
        on = round(start * TICKS)
        off = on + max(1, round(beats * TICKS * 0.92))
        events.append((on, 1, channel, pitch, velocity))
        events.append((off, 0, channel, pitch, 0))

    if program == DRUM_PROGRAM:
        hat = 42 if rng.random() < 0.7 else 46  # closed / open hi-hat
        kick_on_3 = rng.random() < 0.7
        for bar in range(bars):
            b = bar * 4
            for half in range(8):
                note(b + half / 2, 0.5, 9, hat, 70 if half % 2 else 90)
            note(b, 1, 9, 36, 110)
            if kick_on_3:
                note(b + 2, 1, 9, 36, 100)
            note(b + 1, 1, 9, 38, 100)
            note(b + 3, 1, 9, 38, 100)
            if bar % 4 == 3 and rng.random() < 0.5:
                note(b + 3.5, 0.5, 9, 45, 90)
    else:
        scale = _MAJOR if mode == "major" else _MINOR
        tonic = KEYS.index(key)
        shift = -12 if GM_FAMILIES[program // 8] == "bass" else 0
        base = 60 + tonic + shift  # melody tonic in octave 4 (C4 = 60)

        def pitch(degree: int, octave_base: int) -> int:
            octave, step = divmod(degree, 7)
            return octave_base + 12 * octave + scale[step]

        def triad(root: int) -> list[int]:
            notes = [pitch(root + i, base - 12) for i in (0, 2, 4)]
            if mode == "minor" and root % 7 == 4:
                notes[1] += 1  # harmonic minor: major V chord with the leading tone
            return notes

        progressions = _PROGRESSIONS[mode]
        progression = progressions[rng.integers(len(progressions))]
        pattern = int(rng.integers(3))
        degree = 7 + int(rng.choice((0, 2, 4)))
        for bar in range(bars):
            b = bar * 4
            root = progression[bar % len(progression)]
            chord = triad(root)
            for beat in range(4):
                if pattern == 0:  # block chords on every beat
                    for p in chord:
                        note(b + beat, 1, 1, p, 72 if beat == 0 else 58)
                elif pattern == 1:  # bass on 1 and 3, chord on 2 and 4
                    if beat % 2 == 0:
                        note(b + beat, 1, 1, chord[0] - 12, 80)
                    else:
                        for p in chord:
                            note(b + beat, 1, 1, p, 60)
                else:  # arpeggio, one chord tone per beat
                    note(b + beat, 1, 1, (chord + [chord[1]])[beat], 72 if beat == 0 else 60)
            beat = 0.0
            while beat < 4:
                strong = beat in (0.0, 2.0)
                length = float(rng.choice((0.5, 1.0, 2.0), p=(0.25, 0.55, 0.2)))
                length = min(length, 4 - beat)
                if length == 0.5:
                    length = 1.0 if beat % 1 else 0.5
                if strong:  # land on a chord tone
                    options = [d for d in range(degree - 3, degree + 4) if (d - root) % 7 in (0, 2, 4)]
                    degree = int(rng.choice(options))
                else:
                    degree += int(rng.choice((-2, -1, 1, 2)))
                degree = min(max(degree, 3), 12)
                if bar == bars - 1 and beat == 0:
                    degree = 7  # end on the tonic
                p = pitch(degree, base - 12)
                if mode == "minor" and degree % 7 == 6 and root % 7 == 4:
                    p += 1
                note(b + beat, length, 0, p, 92 if strong else 80)
                beat += length

    events.sort()
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=_tempo_us(tempo), time=0))
    track.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    if program != DRUM_PROGRAM:
        for channel in (0, 1):
            track.append(mido.Message("program_change", channel=channel, program=program))
    now = 0
    for tick, order, channel, p, velocity in events:
        kind = "note_on" if order else "note_off"
        track.append(mido.Message(kind, channel=channel, note=p, velocity=velocity,
                                  time=tick - now))
        now = tick
    midi = mido.MidiFile(ticks_per_beat=TICKS)
    midi.tracks.append(track)
    return midi


def render(midi, seconds: float | None = None) -> np.ndarray:
    """Render a ``mido.MidiFile`` with FluidSynth (``-g 0.6``, 16 kHz) to mono float32,
    trimmed to ``seconds`` (not padded), peak-normalised to 0.5. Raises
    :class:`~midashenglm.errors.UserError` when fluidsynth or a SoundFont is missing."""
    problem = fluidsynth_problem()
    if problem:
        raise UserError(f"cannot render music: {problem}")
    import soundfile

    with tempfile.TemporaryDirectory(prefix="midashenglm-music-") as tmp:
        mid, wav = Path(tmp) / "piece.mid", Path(tmp) / "piece.wav"
        midi.save(str(mid))
        command = ["fluidsynth", "-ni", "-q", "-F", str(wav), "-T", "wav", "-r", str(RATE),
                   "-g", str(GAIN), soundfont(), str(mid)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or not wav.is_file():
            raise UserError(f"fluidsynth failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        audio, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
    if rate != RATE:
        raise UserError(f"fluidsynth wrote {rate} Hz instead of {RATE} Hz")
    audio = audio.mean(axis=1)
    if seconds is not None:
        audio = audio[: round(seconds * RATE)]
    return normalise(audio)


def synthesize(program: int, tempo: float, key: str, mode: str, seconds: float,
               seed: int = 0) -> Music:
    """One rendered piece of ``seconds`` with the given truth (see :func:`compose`)."""
    name, family = program_info(program)
    audio = render(compose(program, tempo, key, mode, seconds, seed), seconds)
    drums = program == DRUM_PROGRAM
    return Music(audio=audio, instrument=name, program=program, family=family,
                 tempo=60_000_000 / _tempo_us(tempo), key=None if drums else key,
                 mode=None if drums else mode, source="fluidsynth")


def moh_clip(split: Split, rng: np.random.Generator, seconds: float) -> Music:
    """A clip of at most ``seconds`` (and at most 30 s: one segment) of real music on hold,
    from a segment of ``split``, resampled 8 -> 16 kHz."""
    import soundfile

    from midashenglm.audio import load_audio

    segments = _moh_segments(split)
    if not segments:
        raise UserError(f"no asterisk music-on-hold segments for split {split!r} in {MOH_DIR}")
    path, index = segments[rng.integers(len(segments))]
    info = soundfile.info(str(path))
    length = min(seconds, MOH_SEGMENT_SECONDS)
    offset = float(rng.uniform(0, MOH_SEGMENT_SECONDS - length))
    start = round((index * MOH_SEGMENT_SECONDS + offset) * info.samplerate)
    raw, rate = soundfile.read(str(path), start=start, frames=round(length * info.samplerate),
                               dtype="float32", always_2d=True)
    audio = load_audio(raw.mean(axis=1), source_sample_rate=rate)
    return Music(audio=normalise(audio), instrument=None, program=None, family=None, tempo=None,
                 key=None, mode=None, source="asterisk-moh")


class MusicSource:
    """Random music for ``split``: FluidSynth-rendered GM pieces (program uniform over the 128
    GM programs and the drum kit, tempo uniform integer 60-180 BPM, key uniform over 12 tonics,
    mode major/minor 50/50, melody seed from the split's range), and with probability
    ``moh_share`` a real asterisk music-on-hold clip (when installed)."""

    def __init__(self, split: Split, moh_share: float = MOH_SHARE):
        if split not in MELODY_SEEDS:
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        self.split = split
        sources = available_sources()
        self.moh_share = moh_share if sources["asterisk-moh"] is None and _moh_segments(
            split) else 0.0
        self.fluidsynth = sources["fluidsynth"] is None
        if not self.fluidsynth and not self.moh_share:
            raise UserError(f"no music source is usable: {sources}")

    def sample(self, rng: np.random.Generator, seconds: float = 10.0) -> Music:
        """One clip of ``seconds`` (asterisk-moh clips at most 30 s)."""
        if not self.fluidsynth or rng.random() < self.moh_share:
            return moh_clip(self.split, rng, seconds)
        program = int(rng.integers(-1, 128))
        tempo = int(rng.integers(TEMPO_RANGE[0], TEMPO_RANGE[1] + 1))
        key = KEYS[int(rng.integers(12))]
        mode = MODES[int(rng.integers(2))]
        seed = int(rng.integers(*MELODY_SEEDS[self.split]))
        return synthesize(program, tempo, key, mode, seconds, seed)
