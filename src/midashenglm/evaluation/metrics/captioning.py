"""The captioning metrics reported beside FENSE, through ``pycocoevalcap`` (COCO caption code).

What works offline, and why:

- BLEU-1..4, ROUGE-L, CIDEr-D: pure Python in pycocoevalcap; always available.
- METEOR 1.5: the jar ships inside pycocoevalcap, but runs on Java: available when a
  ``java`` executable is on PATH.
- Tokenisation: the COCO protocol uses Stanford's PTB tokenizer (a jar shipped with
  pycocoevalcap, run with Java); without Java a simple Python tokenizer (lower-case,
  punctuation split off and dropped) is used instead and the details say so (values
  then differ slightly from the COCO tools).
- SPICE and therefore SPIDEr (= (CIDEr-D + SPICE) / 2): SPICE needs Stanford CoreNLP
  3.6.0, which pycocoevalcap downloads from nlp.stanford.edu on first use; it is not
  on PyPI, so offline it works only where those jars were fetched before
  (``python -m pycocoevalcap.spice.get_stanford_models`` with internet).

aac-metrics (the audio-captioning package) was not used: it requires torchaudio and an
older transformers, which this project cannot install.
"""

from __future__ import annotations

import re
import shutil
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.metrics.base import MetricOutput, references

_PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!",
                    ",", ":", "-", "--", "...", ";"}
_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def java_available() -> bool:
    return shutil.which("java") is not None


def _require_package() -> None:
    if find_spec("pycocoevalcap") is None:
        raise UserError("captioning metrics need pycocoevalcap: pip install pycocoevalcap")


def spice_available() -> bool:
    """SPICE runs only where Java is present and the Stanford CoreNLP jars were downloaded."""
    spec = find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations or not java_available():
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "spice" / "lib"
    return any(lib.glob("stanford-corenlp-3.6.0*.jar"))


def _python_tokenize(text: str) -> str:
    return " ".join(t for t in _TOKEN.findall(text.lower()) if t not in _PTB_PUNCTUATION)


def tokenize(captions: dict[str, list[str]]) -> tuple[dict[str, list[str]], str]:
    """Tokenised captions per key, and the tokenizer used (``ptb`` or ``python``)."""
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        data = {k: [{"caption": c} for c in v] for k, v in captions.items()}
        return PTBTokenizer().tokenize(data), "ptb"
    return {k: [_python_tokenize(c) for c in v] for k, v in captions.items()}, "python"


@cache
def _meteor() -> Any:
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def coco_scores(candidates: list[str], refs: list[list[str]],
                names: tuple[str, ...]) -> tuple[dict[str, float], str]:
    """The requested corpus scores (``bleu``, ``meteor``, ``rouge_l``, ``cider_d``,
    ``spice``) and the tokenizer used."""
    _require_package()
    keys = [str(i) for i in range(len(candidates))]
    gts, tokenizer = tokenize(dict(zip(keys, refs, strict=True)))
    res, _ = tokenize({k: [c] for k, c in zip(keys, candidates, strict=True)})
    scores: dict[str, float] = {}
    if "bleu" in names:
        from pycocoevalcap.bleu.bleu import Bleu

        values, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"bleu_{n + 1}": float(v) for n, v in enumerate(values)})
    if "rouge_l" in names:
        from pycocoevalcap.rouge.rouge import Rouge

        scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider_d" in names:
        from pycocoevalcap.cider.cider import Cider

        scores["cider_d"] = float(Cider().compute_score(gts, res)[0])
    if "meteor" in names:
        if not java_available():
            raise UserError("METEOR runs on Java (its jar ships with pycocoevalcap): "
                            "install a Java runtime, e.g. apt-get install default-jre-headless")
        scores["meteor"] = float(_meteor().compute_score(gts, res)[0])
    if "spice" in names:
        if not spice_available():
            raise UserError(
                "SPICE (and SPIDEr) need Java and the Stanford CoreNLP 3.6.0 jars, which "
                "pycocoevalcap downloads on first use; with internet run: python -m "
                "pycocoevalcap.spice.get_stanford_models"
            )
        from pycocoevalcap.spice.spice import Spice

        scores["spice"] = float(Spice().compute_score(gts, res)[0])
    return scores, tokenizer


def _metric(rows: list[dict[str, Any]], names: tuple[str, ...], pick: str) -> MetricOutput:
    if not rows:
        return MetricOutput(float("nan"), 0)
    scores, tokenizer = coco_scores([r["model_output"] for r in rows],
                                    [references(r) for r in rows], names)
    if pick == "spider":
        scores["spider"] = (scores["cider_d"] + scores["spice"]) / 2
    return MetricOutput(scores[pick], len(rows), {**scores, "tokenizer": tokenizer})


def bleu(rows: list[dict[str, Any]]) -> MetricOutput:
    """BLEU-4 (BLEU-1..3 in the details), corpus level as in the COCO tools."""
    return _metric(rows, ("bleu",), "bleu_4")


def rouge_l(rows: list[dict[str, Any]]) -> MetricOutput:
    return _metric(rows, ("rouge_l",), "rouge_l")


def cider_d(rows: list[dict[str, Any]]) -> MetricOutput:
    """CIDEr-D (the COCO tools' ``Cider``: Gaussian length penalty, clipped counts, x10)."""
    return _metric(rows, ("cider_d",), "cider_d")


def meteor(rows: list[dict[str, Any]]) -> MetricOutput:
    return _metric(rows, ("meteor",), "meteor")


def spice(rows: list[dict[str, Any]]) -> MetricOutput:
    return _metric(rows, ("spice",), "spice")


def spider(rows: list[dict[str, Any]]) -> MetricOutput:
    return _metric(rows, ("cider_d", "spice"), "spider")
