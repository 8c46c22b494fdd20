"""The official MiDashengLM-7B result files: the suite must print what the official scripts print.

The files live in ../shared/fixtures/official-outputs/ (not in this repository); the
tests skip where that folder is absent and fail under CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from midashenglm.evaluation.scoring import score_file
from tests.conftest import need

# file -> (metric, value the official script prints)
OFFICIAL = {
    "MiDashengLM_LibriSpeech_test-clean.jsonl": ("wer", 0.037189),
    "MiDashengLM_NSynth.jsonl": ("accuracy", 0.805176),
    "MiDashengLM_VoxCeleb-Gender.jsonl": ("gender_accuracy", 0.961223),
    "MiDashengLM_FSD50K.jsonl": ("map", 0.375779),
    "MiDashengLM_MuChoMusic.jsonl": ("qa_accuracy", 0.713564),
}
# FENSE files: the paper's numbers (the official script averages the unpenalised similarity).
OFFICIAL_FENSE = {"MiDashengLM_AutoACD.jsonl": 0.6652, "MiDashengLM_MusicQA.jsonl": 0.6235}


@pytest.fixture(scope="module")
def official_dir(shared_dir) -> Path:
    folder = shared_dir / "fixtures" / "official-outputs"
    need(folder.is_dir(), f"{folder} is absent")
    return folder


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_reproduces_official_value(official_dir, name):
    metric, expected = OFFICIAL[name]
    path = official_dir / name
    need(path.is_file(), f"{path} is absent")
    result = score_file(path)
    assert result.metric == metric
    assert round(result.value, 4) == round(expected, 4)
    assert result.value == pytest.approx(expected, abs=5e-7)
    lines = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    assert result.count == lines and result.skipped == 0 and not result.problems


def test_cli_json_on_official_files(official_dir):
    paths = [official_dir / name for name in sorted(OFFICIAL)]
    for path in paths:
        need(path.is_file(), f"{path} is absent")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "midashenglm.cli", "evaluate", *map(str, paths), "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p in paths]
    for line, path in zip(lines, paths, strict=True):
        metric, expected = OFFICIAL[path.name]
        assert line["metric"] == metric
        assert round(line["value"], 4) == round(expected, 4)
        assert line["skipped"] == 0 and line["count"] > 1000
        assert isinstance(line["dataset"], str)


def _paper_models_present() -> bool:
    from midashenglm.errors import UserError
    from midashenglm.evaluation.metrics.fense import load_sentence_model, resolve_echecker

    try:
        resolve_echecker(None)
        load_sentence_model(None)
    except UserError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(OFFICIAL_FENSE))
def test_fense_files_with_paper_models(official_dir, name):
    """Runs only where paraphrase-TinyBERT-L6-v2 and the echecker are available locally."""
    if not _paper_models_present():
        pytest.skip("the FENSE paper models are not available offline "
                    "(see docs/evaluation-metrics.md)")
    result = score_file(official_dir / name, device="cpu", batch_size=64)
    assert result.metric == "fense"
    assert result.details["similarity"] == pytest.approx(OFFICIAL_FENSE[name], abs=6e-5)
    assert result.value <= result.details["similarity"]
