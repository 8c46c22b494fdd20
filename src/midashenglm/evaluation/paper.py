"""The MiDashengLM technical report's numbers, as data (tables 7-13, SYSTEM.md section 10).

Every value is in the paper's unit: percent (FENSE x 100, accuracy %, mAP x 100, WER/CER %).
``values`` maps a model to its number; a string (``">100"``) is kept where the paper prints
one instead of a number. The report looks rows up by the dataset name of a result file
(the ``dataset_name`` of the official JSONL rows) and, for benchmarks scored per part
(MMAU, MECAT), by subset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MIDASHENGLM = "MiDashengLM"
QWEN = "Qwen2.5-Omni"
KIMI = "Kimi-Audio-Instruct"
MODELS = (MIDASHENGLM, QWEN, KIMI)

HIGHER_IS_BETTER = {
    "fense": True,
    "accuracy": True,
    "map": True,
    "wer": False,
    "cer": False,
}


@dataclass(frozen=True)
class PaperResult:
    """One row of a results table of the paper."""

    table: int
    dataset: str  # the dataset_name used in result files
    subset: str | None  # a part scored on its own (MMAU "sound", MECAT "pure_speech"), or None
    metric: str  # fense | accuracy | map | wer | cer
    values: dict[str, float | str]
    label: str = ""  # how the paper names the row
    note: str = ""
    dataset_aliases: tuple[str, ...] = field(default=())  # other names of the dataset
    subset_aliases: tuple[str, ...] = field(default=())  # other names of the subset

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.metric]

    @property
    def ours(self) -> float | str | None:
        return self.values.get(MIDASHENGLM)

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        return f"{self.dataset} ({self.subset})" if self.subset else self.dataset


def _row(table: int, dataset: str, metric: str, ours, qwen, kimi, *, subset: str | None = None,
         label: str = "", note: str = "", aliases: tuple[str, ...] = (),
         subset_aliases: tuple[str, ...] = ()) -> PaperResult:
    return PaperResult(table, dataset, subset, metric, {MIDASHENGLM: ours, QWEN: qwen, KIMI: kimi},
                       label=label, note=note, dataset_aliases=aliases,
                       subset_aliases=subset_aliases)


_MECAT_FORMULA_NOTE = (
    "the paper's overall does not follow from its own rows by MECAT's formula "
    "(0.4(0.8 Long + 0.2 Short) + 0.4(0.6 Speech + 0.3 Music + 0.1 Sound) + 0.2 Env "
    "gives 55.90)"
)

PAPER_RESULTS: tuple[PaperResult, ...] = (
    # Table 7: captioning, FENSE
    _row(7, "MusicCaps", "fense", 59.71, 43.71, 35.43),
    _row(7, "Songdescriber", "fense", 45.39, 45.31, 44.63),
    _row(7, "AudioCaps", "fense", 62.18, 60.79, 49.00),
    _row(7, "ClothoV2", "fense", 49.20, 47.55, 48.01, aliases=("Clotho",)),
    _row(7, "AutoACD", "fense", 66.52, 55.93, 44.76),
    # Table 8: MECAT captions, FENSE
    _row(8, "MECAT-Caption", "fense", 60.11, 48.34, 40.83, subset="content_long",
         label="MECAT Content Long"),
    _row(8, "MECAT-Caption", "fense", 61.38, 45.29, 45.72, subset="content_short",
         label="MECAT Content Short"),
    _row(8, "MECAT-Caption", "fense", 50.69, 37.27, 25.57, subset="pure_speech",
         label="MECAT Pure Speech"),
    _row(8, "MECAT-Caption", "fense", 53.78, 46.60, 35.75, subset="pure_sound",
         label="MECAT Pure Sound"),
    _row(8, "MECAT-Caption", "fense", 66.17, 50.68, 39.54, subset="pure_music",
         label="MECAT Pure Music"),
    _row(8, "MECAT-Caption", "fense", 51.06, 37.43, 27.12, subset="mixed_speech",
         label="MECAT Mixed Speech"),
    _row(8, "MECAT-Caption", "fense", 32.40, 32.07, 19.44, subset="mixed_sound",
         label="MECAT Mixed Sound"),
    _row(8, "MECAT-Caption", "fense", 59.50, 34.71, 16.18, subset="mixed_music",
         label="MECAT Mixed Music"),
    _row(8, "MECAT-Caption", "fense", 51.38, 47.84, 16.66, subset="environment",
         label="MECAT Environment"),
    _row(8, "MECAT-Caption", "fense", 57.53, 43.80, 36.32, subset=None,
         label="MECAT Overall", note=_MECAT_FORMULA_NOTE,
         subset_aliases=("score_caption", "overall")),
    # Table 9: classification and paralinguistics
    _row(9, "VoxCeleb1", "accuracy", 92.36, 59.71, 82.72,
         label="VoxCeleb1 (speaker verification, pairs)"),
    _row(9, "VoxLingua107", "accuracy", 93.41, 51.03, 73.65),
    _row(9, "VoxCeleb-Gender", "accuracy", 96.12, 99.82, 99.69),
    _row(9, "VGGSound", "accuracy", 52.11, 0.97, 2.20),
    _row(9, "CochlScene", "accuracy", 74.06, 23.88, 18.34),
    _row(9, "NSynth", "accuracy", 80.52, 60.45, 38.09),
    _row(9, "FMA", "accuracy", 63.73, 66.77, 27.91),
    _row(9, "FSDKaggle2018", "accuracy", 75.25, 31.38, 24.75),
    _row(9, "AudioSet", "map", 8.86, 6.48, 3.47),
    _row(9, "FSD50K", "map", 37.58, 23.87, 27.23),
    # Table 10: ASR, WER (CER for Chinese)
    _row(10, "LibriSpeech_test-clean", "wer", 3.7, 1.7, 1.3),
    _row(10, "LibriSpeech_test-other", "wer", 6.2, 3.4, 2.4),
    _row(10, "PeoplesSpeech", "wer", 27.8, 28.6, 22.3, label="People's Speech"),
    _row(10, "AISHELL2_Mic", "cer", 3.2, 2.5, 2.7),
    _row(10, "AISHELL2_iOS", "cer", 2.9, 2.6, 2.6),
    _row(10, "AISHELL2_Android", "cer", 3.1, 2.7, 2.6),
    _row(10, "GigaSpeech2_Indo", "wer", 20.8, 21.2, ">100", label="GigaSpeech2 Indonesian"),
    _row(10, "GigaSpeech2_Thai", "wer", 36.9, 53.8, ">100", label="GigaSpeech2 Thai"),
    _row(10, "GigaSpeech2_Viet", "wer", 18.1, 18.6, ">100", label="GigaSpeech2 Vietnamese"),
    # Table 11: question answering
    _row(11, "MuChoMusic", "accuracy", 71.35, 64.79, 67.40),
    _row(11, "MMAU", "accuracy", 68.47, 67.87, 74.17, subset="sound", label="MMAU Sound"),
    _row(11, "MMAU", "accuracy", 66.77, 69.16, 61.08, subset="music", label="MMAU Music"),
    _row(11, "MMAU", "accuracy", 63.66, 59.76, 57.66, subset="speech", label="MMAU Speech"),
    _row(11, "MMAU", "accuracy", 66.30, 65.60, 64.30, subset=None, label="MMAU Average",
         note="the paper's prose swaps MMAU and MuChoMusic; table 11 is right",
         subset_aliases=("average",)),
    _row(11, "MusicQA", "fense", 62.35, 60.60, 40.00),
    _row(11, "AudioCaps-QA", "fense", 54.31, 53.28, 47.34),
    # Table 12: MECAT-QA, FENSE
    _row(12, "MECAT-QA", "fense", 65.89, 49.65, 37.45, subset="direct_perception",
         label="MECAT-QA Direct Perception"),
    _row(12, "MECAT-QA", "fense", 62.10, 43.81, 32.48, subset="sound_characteristics",
         label="MECAT-QA Sound Characteristics"),
    _row(12, "MECAT-QA", "fense", 61.76, 40.47, 19.24, subset="quality_assessment",
         label="MECAT-QA Quality Assessment"),
    _row(12, "MECAT-QA", "fense", 63.02, 44.09, 37.53, subset="environment_reasoning",
         label="MECAT-QA Environment Reasoning"),
    _row(12, "MECAT-QA", "fense", 59.57, 42.50, 38.83, subset="inference_judgement",
         label="MECAT-QA Inference & Judgement", subset_aliases=("inference_judgment",)),
    _row(12, "MECAT-QA", "fense", 60.12, 41.92, 33.82, subset="application_context",
         label="MECAT-QA Application Context"),
    _row(12, "MECAT-QA", "fense", 62.08, 43.74, 33.22, subset=None, label="MECAT-QA Average",
         subset_aliases=("score_qa", "average")),
)

# Table 13: throughput in samples/s (30 s audio, 100 output tokens, bf16, one 80 GB GPU).
THROUGHPUT_SAMPLES_PER_SECOND: dict[int, dict[str, float | str]] = {
    1: {MIDASHENGLM: 0.65, QWEN: 0.45},
    4: {MIDASHENGLM: 2.42, QWEN: 1.21},
    8: {MIDASHENGLM: 4.67, QWEN: 1.44},
    16: {MIDASHENGLM: 8.93, QWEN: "OOM"},
    64: {MIDASHENGLM: 19.54, QWEN: "OOM"},
    512: {MIDASHENGLM: 29.04, QWEN: "OOM"},
}
TTFT_SECONDS = {MIDASHENGLM: 0.040, QWEN: 0.160}  # "up to 4x lower"


def normalize(name: str) -> str:
    """Compare names loosely: case, spaces, dashes and underscores do not matter."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def paper_rows(dataset: str) -> list[PaperResult]:
    """Every paper row of a dataset (its headline row and its subsets), in table order."""
    key = normalize(dataset)
    return [r for r in PAPER_RESULTS
            if key in {normalize(n) for n in (r.dataset, *r.dataset_aliases)}]


def paper_row(dataset: str, subset: str | None = None) -> PaperResult | None:
    """The paper row of ``dataset`` and ``subset`` (``None``: the dataset's headline row).

    A subset that names the headline row ("overall", "score_caption", "average") finds it too.
    """
    rows = paper_rows(dataset)
    if subset is None:
        return next((r for r in rows if r.subset is None), None)
    key = normalize(subset)
    for row in rows:
        if key in {normalize(n) for n in (row.subset or "", *row.subset_aliases) if n}:
            return row
    return None
