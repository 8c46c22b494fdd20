"""Labelled sound events: real recordings shipped by Debian packages plus DSP-made sounds.

Sources
    ``tuxpaint``: the sound effects of Tux Paint's stamps (package ``tuxpaint-stamps-default``,
    ``/usr/share/tuxpaint/stamps/**/NAME.ogg``; ``NAME_desc_*.ogg`` spoken descriptions and the
    spoken letters/numbers under ``symbols/`` are not used). Labels come from
    :data:`TUXPAINT_LABELS`, written by hand from each stamp's name and folder; stamps whose
    sound cannot be told from the name (a gift, a road sign, a flag...) are left out.
    ``freedesktop``: the freedesktop.org sound theme (package ``sound-theme-freedesktop``,
    ``/usr/share/sounds/freedesktop/stereo/*.oga``), labels in :data:`FREEDESKTOP_LABELS`
    (spoken "front left"-style channel tests are left out).
    ``dsp``: synthesised here (:data:`DSP_LABELS`): alarm beeps, a wailing siren, knocking, an
    engine hum, rain, wind and a ticking clock.

Splits: a file belongs to the split :func:`~midashenglm.data.synth.base.split_of` gives its
path (relative to its package folder); a DSP sound to the split of ``"dsp:SEED"`` (its seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from midashenglm.data.synth.base import RATE, Sound, Split, normalise, split_of
from midashenglm.errors import UserError

TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
FREEDESKTOP_DIR = Path("/usr/share/sounds/freedesktop/stereo")

# Stamp sound (path under TUXPAINT_DIR, without ".ogg") -> label.
TUXPAINT_LABELS: dict[str, str] = {
    "animals/amphibians/frog": "frog croaking",
    "animals/birds/blackbird": "bird singing",
    "animals/birds/crow": "crow cawing",
    "animals/birds/cuckoo": "cuckoo calling",
    "animals/birds/drake": "duck quacking",
    "animals/birds/duck": "duck quacking",
    "animals/birds/gander": "goose honking",
    "animals/birds/hen": "chicken clucking",
    "animals/birds/lark": "bird singing",
    "animals/birds/owl": "owl hooting",
    "animals/birds/rooster": "rooster crowing",
    "animals/birds/seagull": "seagull calling",
    "animals/birds/turkey": "turkey gobbling",
    "animals/insects/bee": "bee buzzing",
    "animals/insects/grasshopper": "grasshopper chirping",
    "animals/insects/hornet": "insect buzzing",
    "animals/insects/mosquito": "mosquito buzzing",
    "animals/mammals/apes/chimp": "chimpanzee calling",
    "animals/mammals/apes/gorilla": "gorilla",
    "animals/mammals/aquatic/dolphin": "dolphin clicking",
    "animals/mammals/aquatic/orca": "whale calling",
    "animals/mammals/aquatic/sea_lion": "sea lion barking",
    "animals/mammals/aquatic/whale": "whale calling",
    "animals/mammals/bears/bear": "bear growling",
    "animals/mammals/bovines/bison": "cattle mooing",
    "animals/mammals/bovines/bull": "cattle mooing",
    "animals/mammals/bovines/cow": "cattle mooing",
    "animals/mammals/bovines/cow_white": "cattle mooing",
    "animals/mammals/bovines/goat": "goat bleating",
    "animals/mammals/bovines/mountaingoat": "goat bleating",
    "animals/mammals/bovines/ram": "sheep bleating",
    "animals/mammals/bovines/sheep": "sheep bleating",
    "animals/mammals/bovines/sheep_lamb": "sheep bleating",
    "animals/mammals/camel/camel": "camel",
    "animals/mammals/camel/dromedary": "camel",
    "animals/mammals/cats/lion": "lion roaring",
    "animals/mammals/cats/tiger": "tiger roaring",
    "animals/mammals/deer/deer": "deer calling",
    "animals/mammals/dogs/dog": "dog barking",
    "animals/mammals/dogs/fox": "fox calling",
    "animals/mammals/elephant": "elephant trumpeting",
    "animals/mammals/equines/donkey": "donkey braying",
    "animals/mammals/equines/horse": "horse neighing",
    "animals/mammals/equines/zebra": "zebra calling",
    "animals/mammals/pig": "pig oinking",
    "animals/mammals/pig_golden": "pig oinking",
    "animals/mammals/pig_golden2": "pig oinking",
    "animals/mammals/rodents/mouse": "mouse squeaking",
    "seasonal/halloween/blackcat": "cat meowing",
    "hobbies/camera_35mm": "camera shutter",
    "hobbies/music/percussion/cymbal_crash": "cymbal crash",
    "hobbies/music/percussion/drum_tomtom_floor": "drum",
    "hobbies/music/percussion/drumkit": "drum kit",
    "hobbies/music/string/cello": "cello",
    "hobbies/music/string/violin": "violin",
    "hobbies/music/wind/bassoon": "bassoon",
    "household/Washing-machine": "washing machine",
    "household/arttools/scissors_small_closed": "scissors cutting",
    "household/arttools/scissors_small_open": "scissors cutting",
    "household/dishes/glass": "glass clinking",
    "household/kettle": "kettle",
    "household/rubberduck": "squeaky toy",
    "household/toilet": "toilet flushing",
    "household/tools/hammer": "hammering",
    "household/tools/mallet_metal": "hammering",
    "household/tools/saw": "sawing",
    "household/vacuum_cleaner": "vacuum cleaner",
    "naturalforces/lightningbolt": "thunder",
    "seasonal/newyears/fireworks": "fireworks",
    "vehicles/emergency/firetruck": "siren",
}

# Theme sound (file stem under FREEDESKTOP_DIR) -> label.
FREEDESKTOP_LABELS: dict[str, str] = {
    "alarm-clock-elapsed": "alarm clock",
    "bell": "bell",
    "camera-shutter": "camera shutter",
    "screen-capture": "camera shutter",
    "phone-incoming-call": "telephone ringing",
    "phone-outgoing-busy": "telephone busy signal",
    "phone-outgoing-calling": "telephone ringback tone",
    "complete": "notification chime",
    "message": "notification chime",
    "message-new-instant": "notification chime",
    "dialog-information": "notification chime",
    "dialog-warning": "notification chime",
    "dialog-error": "notification chime",
    "window-attention": "notification chime",
    "window-question": "notification chime",
    "service-login": "notification chime",
    "service-logout": "notification chime",
    "device-added": "notification chime",
    "device-removed": "notification chime",
    "network-connectivity-established": "notification chime",
    "network-connectivity-lost": "notification chime",
    "power-plug": "notification chime",
    "power-unplug": "notification chime",
    "suspend-error": "notification chime",
    "audio-volume-change": "click",
}

# DSP kind -> label.
DSP_LABELS: dict[str, str] = {
    "beeps": "alarm beeping",
    "siren": "siren",
    "knock": "knocking",
    "engine": "engine humming",
    "rain": "rain",
    "wind": "wind",
    "ticking": "clock ticking",
}
SOURCES = ("tuxpaint", "freedesktop", "dsp")


@dataclass(frozen=True)
class SoundFile:
    """A labelled recording: ``path`` on disk, ``key`` its split key, ``label``, ``source``."""

    path: Path
    key: str
    label: str
    source: str


def available_sources() -> dict[str, str | None]:
    """Each source name -> None when usable here, else why not (a missing Debian package)."""
    return {
        "tuxpaint": None if TUXPAINT_DIR.is_dir() else
        f"{TUXPAINT_DIR} is absent (install the Debian package tuxpaint-stamps-default)",
        "freedesktop": None if FREEDESKTOP_DIR.is_dir() else
        f"{FREEDESKTOP_DIR} is absent (install the Debian package sound-theme-freedesktop)",
        "dsp": None,
    }


def sound_files(split: Split | None = None) -> list[SoundFile]:
    """The labelled recordings installed here, in ``split`` (all splits when None)."""
    files = []
    for stem, label in TUXPAINT_LABELS.items():
        path = TUXPAINT_DIR / f"{stem}.ogg"
        if path.is_file():
            files.append(SoundFile(path, f"tuxpaint/{stem}", label, "tuxpaint"))
    for stem, label in FREEDESKTOP_LABELS.items():
        path = FREEDESKTOP_DIR / f"{stem}.oga"
        if path.is_file():
            files.append(SoundFile(path, f"freedesktop/{stem}", label, "freedesktop"))
    return [f for f in files if split is None or split_of(f.key) == split]


def label_table() -> dict[str, dict[str, int]]:
    """label -> {"train": files, "heldout": files} over the recordings installed here; DSP
    labels count 0 files (their seeds are split instead)."""
    table: dict[str, dict[str, int]] = {}
    for f in sound_files():
        table.setdefault(f.label, {"train": 0, "heldout": 0})[split_of(f.key)] += 1
    for label in DSP_LABELS.values():
        table.setdefault(label, {"train": 0, "heldout": 0})
    return dict(sorted(table.items()))


class SoundSource:
    """Draws labelled sound events of ``split`` from the ``sources`` available here.

    ``sample(rng, seconds)`` picks a source uniformly, then a file (or DSP kind and seed)
    uniformly; a longer recording is cut to its loudest ``seconds`` window, a shorter one is
    padded with silence at a random offset. Audio: 16 kHz float32 peaking at 0.5.
    """

    def __init__(self, split: Split, sources: tuple[str, ...] = SOURCES):
        unknown = set(sources) - set(SOURCES)
        if unknown:
            raise UserError(f"unknown sound sources {sorted(unknown)}; known: {SOURCES}")
        self.split = split
        self.files = {s: [f for f in sound_files(split) if f.source == s]
                      for s in sources if s != "dsp"}
        self.sources = tuple(s for s in sources if s == "dsp" or self.files.get(s))
        if not self.sources:
            raise UserError(f"no sound source is available for {sources}: {available_sources()}")
        self._cache: dict[Path, np.ndarray] = {}

    def sample(self, rng: np.random.Generator, seconds: float = 4.0) -> Sound:
        n = int(round(seconds * RATE))
        if n <= 0:
            raise UserError(f"seconds must be positive, got {seconds}")
        source = self.sources[int(rng.integers(len(self.sources)))]
        if source == "dsp":
            kind = list(DSP_LABELS)[int(rng.integers(len(DSP_LABELS)))]
            seed = dsp_seed(self.split, rng)
            audio = synthesize(kind, np.random.default_rng(seed), n)
            return Sound(normalise(audio), DSP_LABELS[kind], f"dsp:{kind}:{seed}")
        f = self.files[source][int(rng.integers(len(self.files[source])))]
        return Sound(normalise(_fit(self._load(f.path), n, rng)), f.label, f.key)

    def _load(self, path: Path) -> np.ndarray:
        if path not in self._cache:
            from midashenglm.audio import load_audio

            self._cache[path] = load_audio(str(path))
        return self._cache[path]


def dsp_seed(split: Split, rng: np.random.Generator) -> int:
    """A seed (0 .. 2**31) whose key ``"dsp:SEED"`` falls in ``split``."""
    while True:
        seed = int(rng.integers(2**31))
        if split_of(f"dsp:{seed}") == split:
            return seed


def _fit(audio: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``audio`` cut to its loudest ``n``-sample window, or padded with silence to ``n``."""
    if len(audio) >= n:
        energy = np.concatenate([[0.0], np.cumsum(np.square(audio, dtype=np.float64))])
        start = int(np.argmax(energy[n:] - energy[:-n]))
        return audio[start:start + n]
    out = np.zeros(n, dtype=np.float32)
    start = int(rng.integers(n - len(audio) + 1))
    out[start:start + len(audio)] = audio
    return out


# ---------------------------------------------------------------------------------------------
# DSP sounds. Each takes a generator and a length in samples and returns float64 audio.

def synthesize(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` samples of DSP sound ``kind`` (a key of :data:`DSP_LABELS`), drawn with ``rng``."""
    makers = {"beeps": _beeps, "siren": _siren, "knock": _knock, "engine": _engine,
              "rain": _rain, "wind": _wind, "ticking": _ticking}
    if kind not in makers:
        raise UserError(f"unknown DSP sound {kind!r}; known: {', '.join(makers)}")
    return makers[kind](rng, n)


def _t(n: int) -> np.ndarray:
    return np.arange(n) / RATE


def _beeps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Square-ish beeps (1.5-4 kHz) of 50-200 ms, 2-6 per second, as an alarm or timer."""
    t = _t(n)
    freq = rng.uniform(1500, 4000)
    period = 1 / rng.uniform(2, 6)
    on = rng.uniform(0.05, min(0.2, period * 0.7))
    gate = (t % period) < on
    tone = np.sign(np.sin(2 * np.pi * freq * t)) * 0.5 + np.sin(2 * np.pi * freq * t) * 0.5
    return tone * gate


def _siren(rng: np.random.Generator, n: int) -> np.ndarray:
    """A wail: pitch sweeping sinusoidally between ~600 and ~1400 Hz every 2-6 s, with
    harmonics."""
    t = _t(n)
    low, high = rng.uniform(500, 800), rng.uniform(1200, 1600)
    rate = 1 / rng.uniform(2, 6)
    freq = low + (high - low) * 0.5 * (1 - np.cos(2 * np.pi * rate * t))
    phase = 2 * np.pi * np.cumsum(freq) / RATE
    return sum(np.sin(k * phase) / k for k in (1, 2, 3))


def _knock(rng: np.random.Generator, n: int) -> np.ndarray:
    """Groups of 2-4 knocks on a door: damped low resonances (80-250 Hz) excited by short noise
    bursts, 0.15-0.3 s apart, a group every 1-2.5 s."""
    out = np.zeros(n)
    length = int(0.15 * RATE)
    tt = _t(length)
    pos = int(rng.uniform(0, 0.3) * RATE)
    while pos < n:
        gap = rng.uniform(0.15, 0.3)
        for _ in range(int(rng.integers(2, 5))):
            if pos >= n:
                break
            f0 = rng.uniform(80, 250)
            body = (np.sin(2 * np.pi * f0 * tt) + 0.5 * np.sin(2 * np.pi * 2.7 * f0 * tt))
            hit = body * np.exp(-tt / 0.02) + rng.standard_normal(length) * np.exp(-tt / 0.003)
            end = min(n, pos + length)
            out[pos:end] += hit[: end - pos]
            pos += int(gap * RATE)
        pos += int(rng.uniform(1.0, 2.5) * RATE)
    return out


def _engine(rng: np.random.Generator, n: int) -> np.ndarray:
    """An idling engine: a 20-60 Hz firing rate with harmonics, slow rpm drift, plus rumble."""
    from midashenglm.data.synth.acoustics import background_noise

    t = _t(n)
    f0 = rng.uniform(20, 60) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    tone = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k**0.7 for k in range(1, 12))
    return tone / 4 + 0.3 * background_noise(rng, n, "brown")


def _rain(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rain: pink noise plus many random drops (short decaying high-passed clicks)."""
    from scipy.signal import butter, sosfilt

    from midashenglm.data.synth.acoustics import background_noise

    drops = np.zeros(n)
    count = int(rng.uniform(100, 400) * n / RATE)
    drops[rng.integers(0, n, count)] = rng.uniform(0.2, 1.0, count) * rng.choice([-1, 1], count)
    decay = np.exp(-_t(int(0.004 * RATE)) / 0.001)
    drops = np.convolve(drops, decay)[:n]
    drops = sosfilt(butter(4, 1000, btype="high", fs=RATE, output="sos"), drops)
    return 0.5 * background_noise(rng, n, "pink") + drops


def _wind(rng: np.random.Generator, n: int) -> np.ndarray:
    """Wind: brown noise with a slow random gust envelope (0.2-1 Hz)."""
    from midashenglm.data.synth.acoustics import background_noise

    steps = max(2, int(n / RATE * rng.uniform(0.2, 1.0)) + 2)
    knots = rng.uniform(0.2, 1.0, steps)
    envelope = np.interp(np.linspace(0, steps - 1, n), np.arange(steps), knots)
    return background_noise(rng, n, "brown") * envelope


def _ticking(rng: np.random.Generator, n: int) -> np.ndarray:
    """A clock: sharp clicks (2-5 kHz resonance, 5 ms) once a second or twice (tick-tock, the
    tock a little lower)."""
    out = np.zeros(n)
    interval = rng.choice([0.5, 1.0]) * RATE
    length = int(0.005 * RATE)
    tt = _t(length)
    f0 = rng.uniform(2000, 5000)
    pos, k = int(rng.uniform(0, interval)), 0
    while pos < n:
        f = f0 if k % 2 == 0 else f0 * 0.8
        click = np.sin(2 * np.pi * f * tt) * np.exp(-tt / 0.001)
        end = min(n, pos + length)
        out[pos:end] += click[: end - pos]
        pos, k = pos + int(interval), k + 1
    return out
