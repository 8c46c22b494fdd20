"""Corpus WER / CER with the official MiDashengLM normalisation chain, quirks included.

Per row (``lang`` from the row, else the ``<|xx|>`` tag of the prompt, else the caller's
default):

1. drop ``<|..|>`` tags, collapse spaces, remove spaces before ``!,.?;:``; Chinese
   (``zh``) also loses every remaining space;
2. ``yue``: traditional -> simplified characters (zhconv);
3. ``en``: Whisper's English normaliser (transformers, fed the English spelling map),
   **and then** the basic normaliser, because the official if/else chain runs both
   (so ``$10.50`` ends up as ``10 50``);
   ``zh``: the SpeechIO-style Chinese normaliser (:mod:`.chinese_tn`) only;
   any other language: Whisper's basic normaliser only (it turns combining marks,
   e.g. Thai vowel signs, into spaces);
4. lower-case, split on spaces, drop tokens made only of punctuation; ``zh`` and
   ``yue`` are then scored per character;
5. pairs whose reference or hypothesis is empty are skipped (counted, with a reason);
6. WER = total edits / total reference tokens over the corpus (jiwer).
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import cache
from importlib.resources import files
from typing import Any

from midashenglm.evaluation.metrics.base import MetricOutput

CHARACTER_LANGUAGES = ("zh", "yue")
_TAG = re.compile(r"<\|.*?\|>")
_LANG_TAG = re.compile(r"<\|([a-zA-Z]{2,3}(?:[-_][a-zA-Z]+)?)\|>")
_SPACE_BEFORE_PUNCT = re.compile(r" ?([!,.?;:])")


def row_language(row: dict[str, Any], default: str | None = None) -> str | None:
    """The row's language: its ``lang`` field, else the ``<|xx|>`` tag of its prompt."""
    lang = row.get("lang")
    if isinstance(lang, str) and lang.strip():
        return lang.strip().lower()
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        tags = _LANG_TAG.findall(prompt)
        if tags:
            return tags[-1].lower()
    return default


def strip_special(text: str, lang: str) -> str:
    """Step 1: tags out, spaces collapsed, no space before punctuation (none at all for zh)."""
    text = _TAG.sub(" ", text)
    text = re.sub(r"\s+", " ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text).lstrip(" ")
    if lang == "zh":
        text = re.sub(r"\s+", "", text)
    return text


@cache
def _english() -> Any:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(english_spelling_map())


@cache
def _basic() -> Any:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


@cache
def _chinese() -> Any:
    from midashenglm.evaluation.metrics.chinese_tn import ChineseTextNormalizer

    return ChineseTextNormalizer()


@cache
def english_spelling_map() -> dict[str, str]:
    """Whisper's British -> American spelling map, as shipped by ``whisper-normalizer``."""
    try:
        resource = files("whisper_normalizer").joinpath("normalizers/english.json")
        return json.loads(resource.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise RuntimeError(
            "the English spelling map of Whisper's normaliser is missing: "
            "pip install whisper-normalizer (only its english.json is used)"
        ) from err


def normalize(text: str, lang: str) -> str:
    """Steps 1-3 of the chain for one text."""
    text = strip_special(text, lang)
    if lang == "yue":
        import zhconv

        text = zhconv.convert(text, "zh-cn")
    if lang == "en":
        text = _english()(text)
    if lang == "zh":
        return _chinese()(text)
    return _basic()(text)


def tokenize(text: str, lang: str) -> list[str]:
    """Steps 1-4: the tokens (words, or characters for zh/yue) that are compared."""
    words = [
        w.lower()
        for w in normalize(text, lang).split(" ")
        if not all(unicodedata.category(c).startswith("P") for c in w)
    ]
    tokens = " ".join(words).split()
    if lang in CHARACTER_LANGUAGES:
        return list("".join(tokens))
    return tokens


def wer(
    rows: list[dict[str, Any]],
    *,
    lang: str | None = None,
    characters: bool | None = None,
) -> MetricOutput:
    """Corpus word (or character) error rate of ``rows`` (``text`` vs ``model_output``).

    ``lang`` is the default language for rows that name none (no ``lang`` field, no
    ``<|xx|>`` tag); ``characters=True`` scores every language per character (CER).
    """
    import jiwer

    refs: list[str] = []
    hyps: list[str] = []
    skipped: list[tuple[int, str]] = []
    languages: dict[str, int] = {}
    for index, row in enumerate(rows):
        row_lang = row_language(row, lang)
        if row_lang is None:
            skipped.append((index, "no language: no 'lang' field, no <|xx|> tag, no default"))
            continue
        ref_tokens = tokenize(row["text"], row_lang)
        hyp_tokens = tokenize(row["model_output"], row_lang)
        if characters and row_lang not in CHARACTER_LANGUAGES:
            ref_tokens, hyp_tokens = list("".join(ref_tokens)), list("".join(hyp_tokens))
        if not ref_tokens or not hyp_tokens:
            side = "reference" if not ref_tokens else "model output"
            skipped.append((index, f"empty {side} after normalisation (skipped, as officially)"))
            continue
        refs.append(" ".join(ref_tokens))
        hyps.append(" ".join(hyp_tokens))
        languages[row_lang] = languages.get(row_lang, 0) + 1

    if not refs:
        return MetricOutput(float("nan"), 0, {"languages": languages}, skipped)
    out = jiwer.process_words(refs, hyps)
    ref_tokens_total = out.hits + out.substitutions + out.deletions
    char_level = bool(characters) or all(k in CHARACTER_LANGUAGES for k in languages)
    details = {
        "unit": "character" if char_level else "word",
        "languages": languages,
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "reference_tokens": ref_tokens_total,
    }
    return MetricOutput(out.wer, len(refs), details, skipped)


def cer(rows: list[dict[str, Any]], *, lang: str | None = None) -> MetricOutput:
    """Character error rate: :func:`wer` with every language scored per character."""
    return wer(rows, lang=lang, characters=True)
