"""What a caption may say about a clip: the experts' outputs reduced to facts.

:meth:`ClipFacts.from_metadata` reads a clip's metadata record (``{"id", "duration",
"experts": {name: output}, "category": {...}}``, written by the pipeline) and keeps what the
writers may state and what :mod:`midashenglm.curation.grounding` allows:

* **sounds**: the tagger's clip-level AudioSet labels scoring at least
  :data:`SOUND_THRESHOLD` (all of them, speech and music classes included: a writer may say
  "speech" when the tagger heard speech);
* **speech**: whether there is speech (VAD; the tagger's speech score when VAD did not run),
  and only when there is: language (Whisper's, when its probability is at least
  :data:`LANGUAGE_MIN_PROBABILITY`), transcript (cut to :data:`TRANSCRIPT_MAX_CHARS`), number
  of speakers, gender, emotion, age group, voice pitch;
* **music**: whether there is music (the category, the tagger's music score, or a genre,
  instrument or singing reported), genres and instruments (score >= :data:`SOUND_THRESHOLD`),
  singing, and only when there is music: tempo (rounded BPM) and key ("C major", when its
  strength is at least :data:`KEY_MIN_STRENGTH`);
* **acoustics**: qualitative words (``(aspect, word)`` pairs) from the signal experts, with
  the thresholds below: noise (SNR), reverberation (RT60), bandwidth, clipping, loudness
  (LUFS), silence.

An expert that did not run (missing, ``None``, or a record with an ``"error"``) gives no facts:
``speech``/``music`` are ``None`` (unknown) rather than ``False`` when nothing said either way.

:meth:`ClipFacts.to_json` is canonical (sorted keys, no spaces): the LLM cache key hashes it,
so equal facts give equal captions. The clip's id is deliberately not a fact.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

# Tags: a clip-level AudioSet label is a fact from this score up (the tagger reports >= 0.1;
# between 0.1 and 0.2 YAMNet's labels are mostly guesses on unrelated classes).
SOUND_THRESHOLD = 0.2
# Speech / music presence from the tagger's group scores when VAD / the music expert say nothing.
SPEECH_SCORE = 0.5
MUSIC_SCORE = 0.3
# Whisper's language guess on short or noisy clips is often wrong; below this it is dropped.
LANGUAGE_MIN_PROBABILITY = 0.5
TRANSCRIPT_MAX_CHARS = 400
# Key strength (0..1, the key expert's correlation with the key profile) below which the key
# is a guess.
KEY_MIN_STRENGTH = 0.4
# Acoustics thresholds (the words a writer may use about the recording).
SNR_CLEAN_DB = 25.0  # snr_db >= 25: "clean"
SNR_NOISY_DB = 10.0  # 10 <= snr_db < 25: "some background noise"; below: "noisy"
RT60_REVERBERANT_S = 0.4  # rt60 < 0.4 s: "dry"; >= 0.4 s: "reverberant"
RT60_VERY_REVERBERANT_S = 1.2  # >= 1.2 s: "very reverberant" (a hall, a church)
NARROWBAND_HZ = 4500.0  # bandwidth below 4.5 kHz: telephone band (300-3400 Hz, 8 kHz rate)
BANDLIMITED_HZ = 6500.0  # below 6.5 kHz: "band-limited"; else "full-band" (16 kHz audio)
QUIET_LUFS = -35.0  # integrated loudness below: "quiet"
VERY_QUIET_LUFS = -50.0
LOUD_LUFS = -12.0  # above: "loud"
SOME_SILENCE = 0.2  # silence_ratio >= 0.2: "some silence"; >= 0.6: "mostly silent"
MOSTLY_SILENT = 0.6
PITCH_LOW_HZ = 130.0  # mean F0 of the voice below: "low-pitched"; above PITCH_HIGH_HZ: "high"
PITCH_HIGH_HZ = 220.0
MIN_VOICED_RATIO = 0.1  # pitch statistics from fewer voiced frames are not used

# Whisper's languages: ISO 639-1 code (Whisper's) -> English names (first is the display name).
LANGUAGES: dict[str, tuple[str, ...]] = {
    "en": ("English",), "zh": ("Chinese", "Mandarin"), "de": ("German",),
    "es": ("Spanish", "Castilian"), "ru": ("Russian",), "ko": ("Korean",), "fr": ("French",),
    "ja": ("Japanese",), "pt": ("Portuguese",), "tr": ("Turkish",), "pl": ("Polish",),
    "ca": ("Catalan",), "nl": ("Dutch", "Flemish"), "ar": ("Arabic",), "sv": ("Swedish",),
    "it": ("Italian",), "id": ("Indonesian",), "hi": ("Hindi",), "fi": ("Finnish",),
    "vi": ("Vietnamese",), "he": ("Hebrew",), "uk": ("Ukrainian",), "el": ("Greek",),
    "ms": ("Malay",), "cs": ("Czech",), "ro": ("Romanian", "Moldavian"), "da": ("Danish",),
    "hu": ("Hungarian",), "ta": ("Tamil",), "no": ("Norwegian",), "th": ("Thai",),
    "ur": ("Urdu",), "hr": ("Croatian",), "bg": ("Bulgarian",), "lt": ("Lithuanian",),
    "la": ("Latin",), "mi": ("Maori",), "ml": ("Malayalam",), "cy": ("Welsh",),
    "sk": ("Slovak",), "te": ("Telugu",), "fa": ("Persian", "Farsi"), "lv": ("Latvian",),
    "bn": ("Bengali", "Bangla"), "sr": ("Serbian",), "az": ("Azerbaijani",),
    "sl": ("Slovenian",), "kn": ("Kannada",), "et": ("Estonian",), "mk": ("Macedonian",),
    "br": ("Breton",), "eu": ("Basque",), "is": ("Icelandic",), "hy": ("Armenian",),
    "ne": ("Nepali",), "mn": ("Mongolian",), "bs": ("Bosnian",), "kk": ("Kazakh",),
    "sq": ("Albanian",), "sw": ("Swahili",), "gl": ("Galician",), "mr": ("Marathi",),
    "pa": ("Punjabi", "Panjabi"), "si": ("Sinhala", "Sinhalese"), "km": ("Khmer",),
    "sn": ("Shona",), "yo": ("Yoruba",), "so": ("Somali",), "af": ("Afrikaans",),
    "oc": ("Occitan",), "ka": ("Georgian",), "be": ("Belarusian",), "tg": ("Tajik",),
    "sd": ("Sindhi",), "gu": ("Gujarati",), "am": ("Amharic",), "yi": ("Yiddish",),
    "lo": ("Lao",), "uz": ("Uzbek",), "fo": ("Faroese",), "ht": ("Haitian Creole", "Haitian"),
    "ps": ("Pashto",), "tk": ("Turkmen",), "nn": ("Nynorsk",), "mt": ("Maltese",),
    "sa": ("Sanskrit",), "lb": ("Luxembourgish",), "my": ("Burmese", "Myanmar"),
    "bo": ("Tibetan",), "tl": ("Tagalog", "Filipino"), "mg": ("Malagasy",),
    "as": ("Assamese",), "tt": ("Tatar",), "haw": ("Hawaiian",), "ln": ("Lingala",),
    "ha": ("Hausa",), "ba": ("Bashkir",), "jw": ("Javanese",), "jv": ("Javanese",),
    "su": ("Sundanese",), "yue": ("Cantonese",),
}

# Emotion labels of common speech-emotion models (IEMOCAP / RAVDESS / MSP style abbreviations).
_EMOTION_WORDS = {"neu": "neutral", "hap": "happy", "ang": "angry", "sad": "sad",
                  "fea": "fearful", "dis": "disgusted", "sur": "surprised", "cal": "calm",
                  "exc": "excited", "fru": "frustrated", "oth": None, "xxx": None}


def language_name(code: str | None) -> str | None:
    """``"de"`` -> ``"German"``; an unknown code is returned as it is (None stays None)."""
    if code is None:
        return None
    names = LANGUAGES.get(code.lower())
    return names[0] if names else code


def label_phrase(label: str) -> str:
    """An AudioSet display name as words for a sentence: its first name, lower-case, without
    the parenthesis (``"Walk, footsteps"`` -> ``"walk"``, ``"Whimper (dog)"`` -> ``"whimper"``).

    Proper nouns keep their capital (``"Music of Latin America"``)."""
    name = label.split(" (")[0].split(", ")[0].strip()
    words = name.split()
    return " ".join(w if w in _PROPER else w.lower() for w in words)


_PROPER = {"Latin", "America", "Africa", "Asia", "Bollywood", "Middle", "Eastern", "Christmas",
           "Hammond", "French", "DTMF", "Christian", "New-age", "Carnatic"}


@dataclass(frozen=True)
class ClipFacts:
    """What the experts found about one clip, in the words a caption may use.

    ``sounds``: ``(AudioSet label, score)`` pairs, score descending. ``acoustics``:
    ``(aspect, word)`` pairs in a fixed aspect order (noise, reverb, bandwidth, clipping,
    loudness, silence). Numbers are rounded (duration 0.1 s, scores 0.01, tempo 1 BPM) so
    that the canonical JSON, hence the LLM cache key, does not move with noise in the
    sixth decimal.
    """

    duration: float | None = None
    category: str | None = None
    sounds: tuple[tuple[str, float], ...] = ()
    speech: bool | None = None
    language: str | None = None
    transcript: str | None = None
    num_speakers: int | None = None
    gender: str | None = None
    emotion: str | None = None
    age: str | None = None
    voice_pitch: str | None = None
    music: bool | None = None
    genres: tuple[str, ...] = ()
    instruments: tuple[str, ...] = ()
    singing: bool | None = None
    tempo_bpm: int | None = None
    key: str | None = None
    acoustics: tuple[tuple[str, str], ...] = ()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> ClipFacts:
        """Facts from a clip's metadata record (see the module docstring for the rules).

        Tolerates any expert being absent, ``None`` or an error record; never raises on
        missing keys inside an expert's output (a field it lacks is no fact).
        """
        experts = meta.get("experts") or {}

        def out(name: str) -> Mapping[str, Any] | None:
            value = experts.get(name)
            if not isinstance(value, Mapping) or "error" in value:
                return None
            return value

        tags, music_out, vad = out("tags"), out("music"), out("vad")
        category_rec = meta.get("category")
        category = (category_rec.get("category") if isinstance(category_rec, Mapping)
                    else category_rec if isinstance(category_rec, str) else None)

        sounds = _labels(tags.get("labels") if tags else None)

        # speech: VAD decides when it ran; else the tagger's speech score.
        speech: bool | None = None
        if vad is not None and vad.get("speech") is not None:
            speech = bool(vad["speech"])
        elif tags is not None and tags.get("speech") is not None:
            speech = float(tags["speech"]) >= SPEECH_SCORE

        language = transcript = gender = emotion = age = voice_pitch = None
        num_speakers: int | None = None
        if speech:
            asr = out("asr")
            if asr:
                prob = asr.get("language_probability")
                if asr.get("language") and (prob is None or prob >= LANGUAGE_MIN_PROBABILITY):
                    language = str(asr["language"]).lower()
                transcript = _cut(" ".join(str(asr.get("transcript") or "").split()))
            speakers = out("speakers")
            if speakers and isinstance(speakers.get("num_speakers"), int) \
                    and speakers["num_speakers"] > 0:
                num_speakers = int(speakers["num_speakers"])
            g = out("gender")
            if g and g.get("gender") in ("male", "female"):
                gender = g["gender"]
            e = out("emotion")
            if e and e.get("emotion"):
                emotion = _emotion_word(str(e["emotion"]))
            a = out("age")
            if a and a.get("age"):
                age = str(a["age"]).strip().lower() or None
            p = out("pitch")
            if p and p.get("f0_mean_hz") and (p.get("voiced_ratio") or 0) >= MIN_VOICED_RATIO:
                f0 = float(p["f0_mean_hz"])
                voice_pitch = ("low-pitched" if f0 < PITCH_LOW_HZ else "high-pitched"
                               if f0 > PITCH_HIGH_HZ else "mid-pitched")

        genres = tuple(label for label, _ in _labels(music_out.get("genres"))) \
            if music_out else ()
        instruments = tuple(label for label, _ in _labels(music_out.get("instruments"))) \
            if music_out else ()
        singing = bool(music_out["singing"]) if music_out and "singing" in music_out else None

        music: bool | None = None
        votes = []
        if isinstance(category, str) and category:
            votes.append(category.endswith("music"))
        if tags is not None and tags.get("music") is not None:
            votes.append(float(tags["music"]) >= MUSIC_SCORE)
        if music_out is not None:
            votes.append(bool(genres or instruments or singing))
        if votes:
            music = any(votes)

        tempo_bpm = key = None
        if music:
            tempo = out("tempo")
            if tempo and tempo.get("bpm"):
                tempo_bpm = int(round(float(tempo["bpm"])))
            k = out("key")
            if k and k.get("key") and (k.get("strength") or 0.0) >= KEY_MIN_STRENGTH:
                key = f"{k['key']} {k['mode']}" if k.get("mode") else str(k["key"])

        duration = meta.get("duration")
        return cls(
            duration=round(float(duration), 1) if duration is not None else None,
            category=category or None, sounds=sounds, speech=speech, language=language,
            transcript=transcript or None, num_speakers=num_speakers, gender=gender,
            emotion=emotion, age=age, voice_pitch=voice_pitch, music=music, genres=genres,
            instruments=instruments, singing=singing, tempo_bpm=tempo_bpm, key=key,
            acoustics=_acoustics(out),
        )

    # ------------------------------------------------------------------ views
    @property
    def sound_labels(self) -> tuple[str, ...]:
        return tuple(label for label, _ in self.sounds)

    @property
    def language_name(self) -> str | None:
        return language_name(self.language)

    def acoustic(self, aspect: str) -> str | None:
        """The word for one aspect (``"noise"``, ``"reverb"``...), or None."""
        return dict(self.acoustics).get(aspect)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sounds"] = [[label, score] for label, score in self.sounds]
        d["acoustics"] = [[a, w] for a, w in self.acoustics]
        d["genres"], d["instruments"] = list(self.genres), list(self.instruments)
        return d

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, compact, UTF-8 text): what cache keys hash."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClipFacts:
        """The inverse of :meth:`to_dict` (e.g. facts read back from a JSON file)."""
        d = dict(d)
        d["sounds"] = tuple((str(a), float(b)) for a, b in d.get("sounds", ()))
        d["acoustics"] = tuple((str(a), str(b)) for a, b in d.get("acoustics", ()))
        d["genres"] = tuple(d.get("genres", ()))
        d["instruments"] = tuple(d.get("instruments", ()))
        return cls(**d)

    def summary_lines(self) -> list[str]:
        """The facts as the lines an LLM prompt shows (and :meth:`evidence` joins).

        Fixed line heads (``Sound events:``, ``Speech:``, ``Transcript:``, ``Music:``,
        ``Acoustics:``); sound labels are separated by ``"; "`` because AudioSet names hold
        commas.
        """
        lines = []
        if self.duration is not None:
            lines.append(f"Duration: {self.duration:g} s")
        if self.category:
            lines.append(f"Category: {self.category}")
        if self.sounds:
            lines.append("Sound events: " + "; ".join(f"{label} ({score:.2f})"
                                                      for label, score in self.sounds))
        else:
            lines.append("Sound events: none reported")
        if self.speech:
            parts = []
            if self.language:
                parts.append(f"language {self.language_name} ({self.language})")
            if self.num_speakers:
                parts.append(f"{self.num_speakers} speaker{'s' if self.num_speakers > 1 else ''}")
            for name in ("gender", "emotion", "age", "voice_pitch"):
                value = getattr(self, name)
                if value:
                    parts.append(f"{name.replace('_', ' ')} {value}")
            lines.append("Speech: yes" + (" - " + "; ".join(parts) if parts else ""))
            if self.transcript:
                lines.append(f'Transcript: "{self.transcript}"')
        elif self.speech is False:
            lines.append("Speech: none")
        if self.music:
            parts = []
            if self.genres:
                parts.append("genres " + ", ".join(self.genres))
            if self.instruments:
                parts.append("instruments " + ", ".join(self.instruments))
            if self.singing:
                parts.append("singing")
            if self.tempo_bpm:
                parts.append(f"tempo about {self.tempo_bpm} BPM")
            if self.key:
                parts.append(f"key {self.key}")
            lines.append("Music: yes" + (" - " + "; ".join(parts) if parts else ""))
        elif self.music is False:
            lines.append("Music: none")
        if self.acoustics:
            lines.append("Acoustics: " + "; ".join(word for _, word in self.acoustics))
        return lines

    def evidence(self) -> str:
        """A text rendering of the facts for text-level consistency scoring (no duration)."""
        return "\n".join(line for line in self.summary_lines()
                         if not line.startswith(("Duration:", "Category:")))


# ---------------------------------------------------------------------- helpers
def _labels(items: Iterable[Any] | None) -> tuple[tuple[str, float], ...]:
    """``[{"label","score"}]`` (or plain label strings, taken as score 1.0) -> pairs scoring at
    least :data:`SOUND_THRESHOLD`, score descending then name; the first of duplicates kept."""
    if not items:
        return ()
    pairs: dict[str, float] = {}
    for item in items:
        if isinstance(item, Mapping):
            label, score = item.get("label"), item.get("score", 1.0)
        elif isinstance(item, str):
            label, score = item, 1.0
        else:
            continue
        if not label or score is None or float(score) < SOUND_THRESHOLD:
            continue
        pairs[str(label)] = max(pairs.get(str(label), 0.0), round(float(score), 2))
    return tuple(sorted(pairs.items(), key=lambda p: (-p[1], p[0])))


def _cut(text: str) -> str:
    if len(text) <= TRANSCRIPT_MAX_CHARS:
        return text
    return text[:TRANSCRIPT_MAX_CHARS].rsplit(" ", 1)[0] + " ..."


def _emotion_word(label: str) -> str | None:
    word = label.strip().lower()
    return _EMOTION_WORDS.get(word[:3], word) if len(word) <= 3 else word


def _acoustics(out: Any) -> tuple[tuple[str, str], ...]:
    words: list[tuple[str, str]] = []
    snr = out("snr")
    if snr and snr.get("snr_db") is not None:
        db = float(snr["snr_db"])
        words.append(("noise", "clean" if db >= SNR_CLEAN_DB else "some background noise"
                       if db >= SNR_NOISY_DB else "noisy"))
    reverb = out("reverb")
    if reverb and reverb.get("rt60_s") is not None:
        rt60 = float(reverb["rt60_s"])
        words.append(("reverb", "very reverberant" if rt60 >= RT60_VERY_REVERBERANT_S
                      else "reverberant" if rt60 >= RT60_REVERBERANT_S else "dry"))
    band = out("bandwidth")
    if band and band.get("bandwidth_hz") is not None:
        hz = float(band["bandwidth_hz"])
        words.append(("bandwidth", "narrow-band (telephone)" if hz < NARROWBAND_HZ
                      else "band-limited" if hz < BANDLIMITED_HZ else "full-band"))
    peak = out("peak")
    if peak and peak.get("clipping"):
        words.append(("clipping", "clipped"))
    loud = out("loudness")
    if loud and loud.get("lufs") is not None:
        lufs = float(loud["lufs"])
        word = ("very quiet" if lufs < VERY_QUIET_LUFS else "quiet" if lufs < QUIET_LUFS
                else "loud" if lufs > LOUD_LUFS else None)
        if word:
            words.append(("loudness", word))
    silence = out("silence")
    if silence:
        ratio = float(silence.get("silence_ratio") or 0.0)
        word = ("silent" if silence.get("silent") else "mostly silent" if ratio >= MOSTLY_SILENT
                else "some silence" if ratio >= SOME_SILENCE else None)
        if word:
            words.append(("silence", word))
    return tuple(words)
