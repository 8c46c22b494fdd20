"""The six clip categories of the paper's data (MECAT / ACAVCaps): pure or mixed speech, sound,
music.

:func:`categorize` reads the ``tags`` expert's clip-level group scores (``speech``, ``music``,
``sound``: each the highest probability among its AudioSet classes, see
:func:`midashenglm.curation.ontology.group_scores`) and, when it ran, the ``vad`` expert's
``speech_ratio``:

1. A group is **present** when its score is at least :data:`PRESENT` (0.3).
2. VAD corrects speech, both ways. When VAD found speech in less than :data:`VAD_NO_SPEECH`
   of the clip (2 %), speech is *not* present whatever the tagger says (taggers hear "speech"
   in babble-like noise; a VAD is trained for exactly this decision). When VAD found speech
   in at least :data:`VAD_MOSTLY_SPEECH` of the clip (50 %), the tagger gives speech at least
   :data:`WEAK` (0.1) and music is not present, speech *is* present (speech under noise gets
   low tagger scores). Music gates this boost because VADs fire on singing voices, and a
   song should stay music.
3. The **dominant** group is the present group with the highest score (ties: speech, then
   music, then sound). The category is ``"pure <dominant>"`` when it is the only present
   group, else ``"mixed <dominant>"``.
4. When no group is present (silence, a faint or unrecognised sound) the clip is
   ``"pure sound"``: silence and unknown sounds are sounds, not speech or music.

Without the tagger's output (it did not run or failed) the category is None: VAD alone
cannot tell music from other sound. Scores are the tagger's, rounded; VAD does not change
them (it changes only which groups count as present).

Why 0.3: AudioSet taggers are trained on weak 10 s labels and their probabilities are low
for clearly audible but brief or quiet events; 0.3 keeps a speech-over-music mix "mixed"
while a clean recording's stray labels (a "Plop" at 0.18 on synthetic speech, an instrument
at 0.18 on noise) stay out. For the 8-bit YAMNet every threshold between 0.18 and 0.319 acts
the same (its logits come in steps of 0.757, i.e. probabilities 0.094, 0.18, 0.319, 0.5...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRESENT = 0.3  # a group is present from this clip-level score on
WEAK = 0.1  # the least tagger speech score that VAD can confirm
VAD_NO_SPEECH = 0.02  # VAD speech ratio below which the clip holds no speech
VAD_MOSTLY_SPEECH = 0.5  # VAD speech ratio from which speech is present (when music is not)

GROUPS = ("speech", "music", "sound")  # also the tie-break order for the dominant group
CATEGORIES = tuple(f"{kind} {group}" for group in GROUPS for kind in ("pure", "mixed"))


def _score(value: Any) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        return 0.0
    return score if score == score else 0.0  # NaN -> 0


def categorize(experts: Mapping[str, Any]) -> dict[str, Any]:
    """``{"category": one of CATEGORIES or None, "scores": {"speech", "music", "sound"} or None}``.

    ``experts``: a clip's expert outputs by name (``meta["experts"]``); reads ``tags`` (its
    ``speech``, ``music``, ``sound`` in 0..1) and, when present, ``vad`` (its
    ``speech_ratio`` in 0..1). Missing or malformed values count as 0. Never raises on a
    missing expert: without ``tags`` both fields are None.
    """
    tags = experts.get("tags")
    if not isinstance(tags, Mapping):
        return {"category": None, "scores": None}
    scores = {group: round(_score(tags.get(group)), 3) for group in GROUPS}
    present = {group: scores[group] >= PRESENT for group in GROUPS}

    vad = experts.get("vad")
    if isinstance(vad, Mapping) and vad.get("speech_ratio") is not None:
        ratio = _score(vad.get("speech_ratio"))
        if ratio < VAD_NO_SPEECH:
            present["speech"] = False
        elif ratio >= VAD_MOSTLY_SPEECH and scores["speech"] >= WEAK and not present["music"]:
            present["speech"] = True

    found = [group for group in GROUPS if present[group]]
    if not found:
        return {"category": "pure sound", "scores": scores}
    dominant = max(found, key=lambda group: (scores[group], -GROUPS.index(group)))
    kind = "pure" if len(found) == 1 else "mixed"
    return {"category": f"{kind} {dominant}", "scores": scores}
