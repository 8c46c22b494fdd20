"""The template writer: facts -> caption and QA pairs by fixed rules, offline and instant.

**Lower quality than an LLM**, by design: the sentences are assembled from the facts
(speech, then other sounds, then music, then the recording), so they read stiffly, list
AudioSet names as they are ("sounds of bark and vehicle") and never paraphrase. What it
offers: it is deterministic (the same facts always give the same text; the phrasing varies
between clips through a hash of the facts, not at random), it needs nothing, and it is
grounded by construction (it only writes words the facts support), which is why the LLM
writers fall back to it when their answers keep failing the grounding check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import ClassVar

from midashenglm.curation.facts import ClipFacts, label_phrase
from midashenglm.curation.qa import SUBCATEGORIES, QAPair

TEMPLATE_VERSION = "template-v1"
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
                 8: "eight", 9: "nine", 10: "ten"}
# Names that read badly as the first AudioSet name ("walk", "inside").
_PHRASES = {
    "Walk, footsteps": "footsteps", "Run": "running footsteps", "Hands": "hand sounds",
    "Shuffle": "shuffling", "Inside, small room": "small-room ambience",
    "Inside, large room or hall": "large-hall ambience",
    "Inside, public space": "public-space ambience",
    "Outside, urban or manmade": "urban outdoor ambience",
    "Outside, rural or natural": "rural outdoor ambience",
    "Bird vocalization, bird call, bird song": "bird calls",
    "Vehicle horn, car horn, honking": "a car horn", "Fill (with liquid)": "liquid filling",
    "Tapping (guitar technique)": "guitar tapping",
    "Scratching (performance technique)": "turntable scratching",
    "Domestic animals, pets": "domestic animals",
    "Livestock, farm animals, working animals": "livestock",
}


def _speech_labels() -> frozenset[str]:
    from midashenglm.curation import ontology

    return ontology.SPEECH


def _music_labels() -> frozenset[str]:
    from midashenglm.curation import ontology

    return ontology.MUSIC


def phrase(label: str) -> str:
    """The words the template uses for an AudioSet label."""
    return _PHRASES.get(label) or label_phrase(label)


def join(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _a(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


class TemplateWriter:
    """Rules from facts to a caption and five QA pairs (see the module docstring).

    Same interface as the LLM writers (``name``, ``model``, ``settings``, ``concurrency``,
    :meth:`caption`, :meth:`qa`); ``feedback`` is accepted and ignored (the rules never
    write what the facts lack).
    """

    name: ClassVar[str] = "template"
    model: ClassVar[str] = TEMPLATE_VERSION
    settings: ClassVar[dict] = {}
    concurrency: ClassVar[int] = 4
    uses_cache: ClassVar[bool] = False

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _pick(facts: ClipFacts, salt: str, options: Sequence[str]) -> str:
        digest = hashlib.sha256((salt + "\0" + facts.to_json()).encode("utf-8")).digest()
        return options[int.from_bytes(digest[:4], "big") % len(options)]

    @staticmethod
    def _other_sounds(facts: ClipFacts, limit: int = 3) -> list[str]:
        speech, music = _speech_labels(), _music_labels()
        out = [label for label in facts.sound_labels
               if label not in speech and label not in music and label != "Silence"]
        return [phrase(label) for label in out[:limit]]

    @staticmethod
    def _speaker(facts: ClipFacts) -> str:
        n = facts.num_speakers
        if n and n > 1:
            who = f"{_NUMBER_WORDS.get(n, str(n))} speakers"
            if facts.gender:
                who += f" (mainly a {facts.gender} voice)"
            return who
        return {"male": "a man", "female": "a woman"}.get(facts.gender or "", "someone")

    def _speech(self, facts: ClipFacts) -> str | None:
        if not facts.speech:
            return None
        many = (facts.num_speakers or 0) > 1
        verb = self._pick(facts, "verb", ("talk", "speak") if many else ("talks", "speaks"))
        text = f"{self._speaker(facts)} {verb}"
        if facts.language_name:
            text += f" in {facts.language_name}"
        descr = [w for w in (facts.voice_pitch, facts.emotion) if w]
        if descr and not many:
            text += (f" in {_a(descr[0])} {', '.join(descr)} voice" if facts.voice_pitch
                     else f" in {_a(descr[0])} {facts.emotion} tone")
        if facts.transcript:
            words = facts.transcript.split()
            # The sentence supplies its own full stop: none inside the quote ('west.".').
            quote = (" ".join(words[:12]).rstrip(".!?,;: ")
                     + (" ..." if len(words) > 12 else ""))
            text += f', saying "{quote}"'
        return text

    def _music(self, facts: ClipFacts) -> str | None:
        speech, music = _speech_labels(), _music_labels()
        tagged = [label for label in facts.sound_labels if label in music and label not in speech]
        genres = list(facts.genres) or [label for label in tagged if _is_genre(label)]
        instruments = list(facts.instruments) or [label for label in tagged
                                                  if _is_instrument(label)]
        if not (facts.music or tagged or genres or instruments):
            return None
        if genres:
            g = phrase(genres[0])
            text = g if "music" in g.lower() else f"{g} music"
        else:
            text = self._pick(facts, "music", ("music", "a piece of music"))
        if instruments:
            text += " with " + join([phrase(i) for i in instruments[:3]])
        if facts.singing:
            text += " and singing" if instruments else " with singing"
        details = []
        if facts.tempo_bpm:
            details.append(f"at about {facts.tempo_bpm} BPM")
        if facts.key:
            details.append(f"in {facts.key}")
        return text + (" plays " + " ".join(details) if details else " plays")

    @staticmethod
    def _acoustic_words(facts: ClipFacts) -> list[str]:
        words = []
        for aspect, word in facts.acoustics:
            if aspect == "bandwidth":
                if word.startswith("narrow"):
                    words.append("narrow-band like a telephone line")
                elif word == "band-limited":
                    words.append("band-limited")
            elif aspect == "noise":
                words.append({"some background noise": "somewhat noisy"}.get(word, word))
            elif aspect == "silence":
                words.append({"some silence": "with some silence"}.get(word, word))
            else:
                words.append(word)
        return words

    # ------------------------------------------------------------------ caption
    def caption(self, facts: ClipFacts, feedback: Sequence[str] | None = None) -> str:
        """One caption: speech, other sounds, music, then the recording conditions."""
        speech, music, sounds = self._speech(facts), self._music(facts), self._other_sounds(facts)
        parts = []
        if speech:
            parts.append(speech)
        if music:
            parts.append(music if not parts else self._pick(
                facts, "music-join", ("while " + music, "as " + music)))
        if sounds:
            listed = join(sounds)
            if parts:
                parts.append(self._pick(facts, "sound-join", (
                    f"with {listed} in the background", f"alongside sounds of {listed}",
                    f"over {listed}")))
            else:
                parts.append(self._pick(facts, "sound-only", (
                    f"sounds of {listed} can be heard", f"the clip features {listed}",
                    f"{listed} can be heard")))
        if not parts:
            if dict(facts.acoustics).get("silence") in ("silent", "mostly silent"):
                parts.append("a nearly silent recording")
            else:
                parts.append("an audio recording with no clearly identified sound events")
        sentence = _capital(", ".join(parts[:1]) + (" " + " ".join(parts[1:]) if parts[1:]
                                                     else "")) + "."
        words = self._acoustic_words(facts)
        if words:
            lead = self._pick(facts, "acoustics", ("The recording is", "The audio is",
                                                   "Acoustically, the clip is"))
            sentence += f" {lead} {join(words)}."
        return sentence

    # ------------------------------------------------------------------ QA
    def qa(self, facts: ClipFacts, feedback: Sequence[str] | None = None) -> list[QAPair]:
        """Five pairs: one per sub-category, minus one chosen by the facts' hash."""
        makers = {
            "direct perception": self._qa_perception,
            "sound characteristics": self._qa_characteristics,
            "quality assessment": self._qa_quality,
            "environment reasoning": self._qa_environment,
            "inference and judgement": self._qa_inference,
            "application context": self._qa_application,
        }
        drop = self._pick(facts, "qa-drop", SUBCATEGORIES)
        return [QAPair(sub, *makers[sub](facts)) for sub in SUBCATEGORIES if sub != drop]

    def _sources(self, facts: ClipFacts) -> str:
        items = []
        speech = self._speech(facts)
        if speech:
            items.append(speech.split(", saying")[0])
        music = self._music(facts)
        if music:
            items.append(music.rsplit(" plays", 1)[0])
        items.extend(self._other_sounds(facts))
        return join(items) if items else "no clearly identified sound events"

    def _qa_perception(self, facts: ClipFacts) -> tuple[str, str]:
        q = self._pick(facts, "q-perception", ("What can be heard in this audio clip?",
                                               "What are the main sounds in this recording?"))
        return q, _capital(self._sources(facts)) + "."

    def _qa_characteristics(self, facts: ClipFacts) -> tuple[str, str]:
        if facts.speech and (facts.voice_pitch or facts.emotion or facts.gender):
            descr = join([w for w in (facts.voice_pitch, facts.emotion) if w])
            who = {"male": "a male voice", "female": "a female voice"}.get(
                facts.gender or "", "the voice")
            if not facts.gender:
                return "How does the speaking voice sound?", f"The voice sounds {descr}."
            return ("How does the speaking voice sound?",
                    f"It is {who}, {descr}." if descr else f"It is {who}.")
        if facts.music and (facts.tempo_bpm or facts.key):
            bits = [f"a tempo of about {facts.tempo_bpm} BPM" if facts.tempo_bpm else "",
                    f"the key of {facts.key}" if facts.key else ""]
            return "What are the tempo and key of the music?", \
                f"The music has {join([b for b in bits if b])}."
        if facts.sounds:
            top, score = facts.sounds[0]
            level = "clearly" if score >= 0.5 else "faintly"
            return ("Which sound is the most prominent?",
                    f"The most prominent sound is {phrase(top)}, heard {level}.")
        return ("How would you describe the sound?",
                "There is little distinct sound to describe.")

    def _qa_quality(self, facts: ClipFacts) -> tuple[str, str]:
        words = self._acoustic_words(facts)
        q = self._pick(facts, "q-quality", ("How good is the recording quality?",
                                            "What is the audio quality like?"))
        if not words:
            return q, "The signal measurements give no verdict on the recording quality."
        clean = dict(facts.acoustics).get("noise") == "clean" and not dict(
            facts.acoustics).get("clipping")
        verdict = "good" if clean else "imperfect"
        return q, f"The quality is {verdict}: the recording is {join(words)}."

    def _qa_environment(self, facts: ClipFacts) -> tuple[str, str]:
        q = "What can be said about the acoustic environment?"
        reverb = dict(facts.acoustics).get("reverb")
        scene = [phrase(label) for label in facts.sound_labels if label.startswith(
            ("Inside,", "Outside,"))]
        if scene:
            return q, f"The tags suggest {scene[0]}."
        if reverb in ("reverberant", "very reverberant"):
            return q, f"The sound is {reverb}, which suggests a large or hard-walled space."
        if reverb == "dry":
            return q, "The sound is dry, suggesting a small, damped space or close recording."
        return q, "The clip gives few cues about its environment."

    def _qa_inference(self, facts: ClipFacts) -> tuple[str, str]:
        if facts.speech:
            lang = f" in {facts.language_name}" if facts.language_name else ""
            return "Is anyone speaking, and in what language?", f"Yes, there is speech{lang}."
        if facts.music:
            return "Is this clip music or everyday sound?", "It contains music."
        if facts.speech is False and facts.music is False:
            return ("Does the clip contain speech or music?",
                    "No, it contains neither speech nor music.")
        return ("Is the main content speech, music or other sound?",
                f"The main content is {self._sources(facts)}.")

    def _qa_application(self, facts: ClipFacts) -> tuple[str, str]:
        q = "What could this clip be used for?"
        if facts.speech:
            return q, "It could serve as data for speech recognition or speaker analysis."
        if facts.music:
            return q, "It could serve as data for music tagging or tempo estimation."
        sounds = self._other_sounds(facts, limit=2)
        if sounds:
            return q, f"It could help train a detector of {join(sounds)}."
        return q, "It could serve as an example of audio without clear sound events."


def _is_genre(label: str) -> bool:
    from midashenglm.curation import ontology

    return label in ontology.GENRES


def _is_instrument(label: str) -> bool:
    from midashenglm.curation import ontology

    return label in ontology.INSTRUMENTS
