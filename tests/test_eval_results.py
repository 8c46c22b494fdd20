"""Result files: writing, reading, and every kind of bad line reported with file:line."""

from __future__ import annotations

import io
import json

import pytest
from typer.testing import CliRunner

from midashenglm.errors import UserError
from midashenglm.evaluation.results import read_results, write_results, write_row
from midashenglm.evaluation.scoring import score_file, score_rows


def _row(text: str, output: str, **extra) -> dict:
    return {"dataset_name": "LibriSpeech_test-clean", "audio": "a.flac", "lang": "en",
            "text": text, "prompt": "Transcribe the speech into text <|en|>",
            "model_output": output, "model_name": "MiDashengLM", **extra}


def test_write_and_read_roundtrip(tmp_path):
    buffer = io.StringIO()
    write_row(buffer, _row("你好", "你好"))
    assert buffer.getvalue().endswith("\n") and "你好" in buffer.getvalue()  # UTF-8, no escapes
    with pytest.raises(ValueError, match="model_output"):
        write_row(buffer, {"text": "x"})
    path = write_results(tmp_path / "r.jsonl", [_row("a b", "a b"), _row("c", "d")])
    result = read_results(path)
    assert [r.line for r in result.rows] == [1, 2] and not result.problems
    assert result.rows[1]["model_output"] == "d"
    assert result.dataset_names == {"LibriSpeech_test-clean": 2}


BAD_LINES = [
    (json.dumps(_row("hello world", "hello world")), None),  # 1 good
    ('{"dataset_name": "LibriSpeech_test-clean", "text": "x", "model_output": "x"',
     "invalid JSON"),  # 2
    ("[1, 2, 3]", "not a JSON object"),  # 3
    (json.dumps({k: v for k, v in _row("a", "a").items() if k != "model_output"}),
     "missing field 'model_output'"),  # 4
    (json.dumps(_row("a", "a") | {"model_output": 7}), "'model_output' is not a string (got int)"),  # 5
    (json.dumps(_row("a", "a") | {"model_output": None}), "'model_output' is not a string (got null)"),  # 6
    (json.dumps(_row("a", "")), "empty model output"),  # 7: WER skips it, as officially
    (json.dumps(_row("a", "   ")), "empty model output"),  # 8
    (json.dumps({k: v for k, v in _row("a", "a").items() if k != "text"}),
     "missing field 'text'"),  # 9
    (json.dumps(_row("a", "a") | {"text": ["a", "b"]}), "'text' is not a string (got list)"),  # 10
    ("", None),  # 11 blank: ignored, not a problem
    (json.dumps(_row("...", "something")), "empty reference after normalisation"),  # 12
    (json.dumps(_row("good bye", "good day")), None),  # 13 good
]


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(line for line, _ in BAD_LINES) + "\n", encoding="utf-8")
    return path


def test_every_bad_line_is_reported(bad_file):
    result = score_file(bad_file)
    assert result.metric == "wer" and result.dataset == "LibriSpeech_test-clean"
    assert result.count == 2  # lines 1 and 13
    assert result.value == pytest.approx(1 / 4)  # "good day" vs "good bye"
    expected = {i: reason for i, (_, reason) in enumerate(BAD_LINES, start=1) if reason}
    assert [p.line for p in result.problems] == sorted(expected)
    for problem in result.problems:
        assert problem.file == str(bad_file)
        assert expected[problem.line] in problem.reason
        assert str(problem).startswith(f"{bad_file}:{problem.line}: ")
    assert result.skipped == len(expected) == 10
    assert sum(v for k, v in result.skipped_reasons.items() if "empty model output" in k) == 2
    assert result.skipped_reasons["invalid JSON"] == 1
    assert sum(result.skipped_reasons.values()) == result.skipped
    # nothing is lost: scored + skipped = every non-blank line
    assert result.count + result.skipped == len([line for line, _ in BAD_LINES if line])


def test_empty_outputs_count_as_wrong_answers_and_are_listed(tmp_path):
    rows = [{"dataset_name": "NSynth", "label": "guitar", "model_output": out, "prompt": "p"}
            for out in ("a guitar", "", "bass")]
    path = tmp_path / "nsynth.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = score_file(path)
    assert result.metric == "accuracy" and result.count == 3 and result.skipped == 0
    assert result.value == pytest.approx(1 / 3)  # the empty answer is wrong, as officially
    assert [(p.line, p.reason) for p in result.empty_outputs] == [(2, "empty 'model_output'")]
    assert result.to_json()["empty_outputs"] == 1


def test_cli_lists_problems_and_prints_json(bad_file):
    from midashenglm.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(bad_file), "--json",
                                      "--max-problems", "3"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip())
    assert line["skipped"] == 10 and line["count"] == 2 and line["metric"] == "wer"
    assert set(line) >= {"file", "dataset", "metric", "value", "count", "skipped"}
    assert f"{bad_file}:2: invalid JSON" in result.stderr
    assert "and 7 more" in result.stderr

    table = CliRunner().invoke(app, ["evaluate", str(bad_file), "--metric", "cer"])
    assert table.exit_code == 0 and "cer" in table.stdout and "bad.jsonl" in table.stdout


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="no such result file"):
        read_results(tmp_path / "missing.jsonl")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"model_output": "\xff\xfe"}\n')
    with pytest.raises(UserError, match="not UTF-8"):
        read_results(binary)
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"dataset_name": "Mystery", "model_output": "x"}) + "\n")
    with pytest.raises(UserError, match="--metric"):
        score_file(unknown)


def test_cli_keeps_going_after_a_bad_file(tmp_path):
    from midashenglm.cli import app

    good = write_results(tmp_path / "good.jsonl", [_row("a b", "a b")])
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nope.jsonl"), str(good),
                                      "--json"])
    assert result.exit_code == 2
    assert "no such result file" in result.stderr
    assert json.loads(result.stdout)["value"] == 0.0


def test_score_rows_numbers_plain_dicts():
    rows = [{"label": ["dog"], "model_output": "a dog"}, {"model_output": "cat"}]
    result = score_rows(rows, "accuracy", file="mem")
    assert result.value == 1.0 and result.count == 1
    assert [str(p) for p in result.problems] == ["mem:2: missing field 'label'"]
