"""The report: a folder of result files scored and set beside the paper's numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from midashenglm.evaluation import report

CLI = [sys.executable, "-m", "midashenglm.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
OFFICIAL = ("LibriSpeech_test-clean", "NSynth", "VoxCeleb-Gender", "MuChoMusic")


@pytest.fixture
def results(shared_dir, tmp_path) -> Path:
    """Official MiDashengLM-7B result files (copies), an MMAU file and an unscorable file."""
    folder = tmp_path / "results"
    folder.mkdir()
    for name in OFFICIAL:
        shutil.copy(shared_dir / "fixtures" / "official-outputs" / f"MiDashengLM_{name}.jsonl",
                    folder)
    mmau = []
    for task, right in (("sound", 3), ("music", 2), ("speech", 1)):
        for i in range(4):
            mmau.append({"dataset_name": "MMAU", "audio": f"{task}{i}.wav", "question": "Q?",
                         "choices": ["cat", "dog"], "answer": "B", "task": task,
                         "prompt": "Q?\n(A) cat\n(B) dog\nAnswer with a single Letter: ",
                         "model_output": "B" if i < right else "A", "model_name": "mine"})
    (folder / "mine_MMAU.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mmau))
    (folder / "odd.jsonl").write_text(json.dumps({"dataset_name": "SomethingElse",
                                                  "model_output": "x"}) + "\n")
    return folder


def table_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows of the main table, by their first cell."""
    out = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| result") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            out.setdefault(cells[0], cells)
    return out


def test_report_sets_scores_beside_the_paper(results, tmp_path):
    md, chart = report.write_report(results, tmp_path / "out" / "report.md")
    text = md.read_text()
    rows = table_rows(text)

    libri = rows["LibriSpeech_test-clean"]
    # result, model, metric, better is, rows, this run, paper, diff, Qwen, Kimi, notes
    assert libri[2:6] == ["wer", "lower", "2620", "3.72"]
    assert libri[6:10] == ["3.70", "+0.02 (worse)", "1.70", "1.30"]
    assert rows["NSynth"][5:8] == ["80.52", "80.52", "0.00 (same)"]
    assert rows["VoxCeleb-Gender"][5:7] == ["96.12", "96.12"]
    assert rows["MuChoMusic"][3] == "higher" and rows["MuChoMusic"][5] == "71.36"

    # MMAU: correct / all (MMAU's evaluation.py), each task beside the paper's, and our
    # stricter reading beside the official value.
    assert rows["MMAU Average"][5] == "50.00" and rows["MMAU Average"][6] == "66.30"
    assert "qa_accuracy_strict 50.00 (a deviation" in rows["MMAU Average"][10]
    assert "mean of the task accuracies 50.00" in rows["MMAU Average"][10]
    assert "qa_accuracy_strict" in rows["MuChoMusic"][10]
    assert rows["MMAU Sound"][5:7] == ["75.00", "68.47"]
    assert rows["MMAU Music"][5] == "50.00" and rows["MMAU Speech"][5] == "25.00"
    assert rows["MMAU Speech"][8:10] == ["59.76", "57.66"]

    # The unscorable file is named, the others still reported.
    assert "## Not scored" in text and "odd.jsonl" in text
    # Paper rows without results are listed with the baselines' numbers.
    assert "| 7 | AutoACD | fense | higher | 66.52 | 55.93 | 44.76 |" in text
    assert "| 10 | GigaSpeech2 Thai | wer | lower | 36.90 | 53.80 | >100 |" in text

    assert chart == md.with_suffix(".png") and f"]({chart.name})" in text
    with Image.open(chart) as image:
        image.verify()
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 400


def test_report_command(results, tmp_path):
    out = tmp_path / "r.md"
    done = subprocess.run([*CLI, "report", str(results), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and out.with_suffix(".png").is_file()
    assert "LibriSpeech_test-clean" in out.read_text()

    empty = tmp_path / "empty"
    empty.mkdir()
    failed = subprocess.run([*CLI, "report", str(empty)], capture_output=True, text=True,
                            timeout=120, env=ENV)
    assert failed.returncode == 2
    assert "no *.jsonl result files" in " ".join(failed.stderr.split())  # rich wraps lines


def test_rows_for_mecat_groups():
    class Score:  # the shape of scoring.ScoreResult
        dataset, metric, value, count, skipped, problems = "MECAT-Caption", "mecat", 0.5, 9, 0, []
        details = {"metric": "fense", "groups": {
            "pure_speech": {"value": 0.4, "count": 3}, "environment": {"value": 0.6, "count": 6}}}

    rows = report.rows_for_result(Path("x_MECAT.jsonl"), Score())
    by_label = {r.label: r for r in rows}
    assert by_label["MECAT Overall"].value == 50.0
    assert by_label["MECAT Pure Speech"].value == pytest.approx(40.0)
    assert by_label["MECAT Pure Speech"].paper.ours == 50.69
    assert by_label["MECAT Environment"].difference == pytest.approx(60.0 - 51.38)


def test_fense_rows_compare_the_official_unpenalised_average(tmp_path):
    """The official compute_fense.py averages the similarity before the penalty."""
    from midashenglm.evaluation.report import rows_for_result
    from midashenglm.evaluation.scoring import ScoreResult

    result = ScoreResult(file="x", dataset="AutoACD", metric="fense", value=0.60, count=10,
                         skipped=0, details={"fense": 0.60, "similarity": 0.66})
    row = rows_for_result(tmp_path / "MiDashengLM_AutoACD.jsonl", result)[0]
    assert row.value == pytest.approx(66.0)
    assert any("penalised FENSE 60.00" in note for note in row.notes)
