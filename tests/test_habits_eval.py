"""Issue 10: the habits of the evaluation commands (units, short options, exit status,
error hints, offline FENSE, documented options)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from midashenglm.cli import app
from midashenglm.evaluation import runner
from midashenglm.evaluation.scoring import ScoreResult

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "benchmarks.md").read_text() + (
    ROOT / "docs" / "evaluation-metrics.md").read_text()


def _command(name: str):
    group = typer.main.get_command(app)
    return group.commands[name]


def _options(name: str) -> dict[str, list[str]]:
    """Every option of a command: its destination -> its flags."""
    return {p.name: list(p.opts) + list(p.secondary_opts)
            for p in _command(name).params if p.param_type_name == "option"}


# ------------------------------------------------------------------ 3: -o means --out
def test_short_o_means_out_everywhere():
    bench = _options("benchmark")
    assert "-o" in bench["out"] and "--out" in bench["out"]
    assert bench["option"] == ["--option"]
    run = _options("run")
    assert "-o" in run.get("out", []) or "-o" in run.get("output", [])


# ---------------------------------------------------------------- 2: x100 everywhere
def test_evaluate_table_shows_x100_and_json_fractions(tmp_path):
    path = tmp_path / "ls.jsonl"
    rows = [{"dataset_name": "LibriSpeech", "text": "a b c d", "model_output": "a b c x",
             "lang": "en"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # 1 substitution in 4 reference words: WER 0.25, shown as 25.00 (x100).
    table = CliRunner().invoke(app, ["evaluate", str(path)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "x100" in table.stdout and "25.00" in table.stdout
    assert "0.2500" not in table.stdout
    line = CliRunner().invoke(app, ["evaluate", str(path), "--json"])
    assert json.loads(line.stdout)["value"] == 0.25


# ------------------------------------------------------------------ 4: exit status
def _score(value: float, count: int) -> ScoreResult:
    return ScoreResult(file="f.jsonl", dataset="LibriSpeech", metric="wer", value=value,
                       count=count, skipped=0)


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    summaries = []

    def run_benchmark(*args, **kwargs):
        return summaries.pop(0)

    monkeypatch.setattr(runner, "make_engine", lambda *a, **k: object())
    monkeypatch.setattr(runner, "run_benchmark", run_benchmark)

    def invoke(summary, *extra):
        summaries.append(summary)
        return CliRunner().invoke(app, [
            "benchmark", "--model", "m", "--task", "librispeech-test-clean",
            "--data", str(tmp_path), *extra], env={"COLUMNS": "200"})
    return invoke


def _summary(written, errors, score=None, score_error=None):
    s = runner.RunSummary(Path("out.jsonl"), written=written, answered=written - errors,
                          errors=errors, score=score, score_error=score_error)
    s.error_examples = [f"item{i}: boom" for i in range(min(errors, 5))]
    return s


def test_benchmark_exit_status(fake_run):
    ok = fake_run(_summary(10, 0, _score(0.1, 10)))
    assert ok.exit_code == 0, ok.output
    assert "score: wer = 10.00 (x100" in ok.stdout

    failed = fake_run(_summary(10, 0, score_error="UserError: no model"))
    assert failed.exit_code == 2
    assert "was not scored: UserError: no model" in failed.stderr

    nothing = fake_run(_summary(10, 0, _score(float("nan"), 0)))
    assert nothing.exit_code == 2 and "no row could be scored" in nothing.stderr

    every = fake_run(_summary(3, 3, _score(float("nan"), 0)))
    assert every.exit_code == 2 and "every row attempted (3) failed" in every.stderr

    # 1 of 10 rows failed: 10 % > the default 0 (as `run`): exit 1, the job did its work.
    some = fake_run(_summary(10, 1, _score(0.1, 9)))
    assert some.exit_code == 1
    assert "1 of 10 rows attempted failed (10.0 %)" in some.stdout
    assert "item0: boom" in some.stdout and "--max-error-rate 0" in some.stderr
    tolerated = fake_run(_summary(10, 1, _score(0.1, 9)), "--max-error-rate", "0.2")
    assert tolerated.exit_code == 0, tolerated.output
    # The error summary comes after the score, at the end.
    assert tolerated.stdout.index("score:") < tolerated.stdout.index("1 of 10 rows")

    unscored = fake_run(_summary(10, 0), "--no-score")
    assert unscored.exit_code == 0, unscored.output


# -------------------------------------------------------------------- 5: error hints
SOURCES = sorted((ROOT / "src" / "midashenglm" / "evaluation").rglob("*.py"))


def test_no_hint_names_huggingface_cli():
    for path in SOURCES:
        assert "huggingface-cli" not in path.read_text(), path


def test_hints_name_only_options_of_the_command_that_prints_them():
    from midashenglm.errors import UserError
    from midashenglm.evaluation.metrics import fense

    evaluate, report = _options("evaluate"), _options("report")
    flags_of = {name: {f for fs in opts.values() for f in fs}
                for name, opts in (("evaluate", evaluate), ("report", report))}
    with pytest.raises(UserError) as missing:
        fense.resolve_echecker("no-such-echecker")
    message = str(missing.value)
    # Qualified with the commands that have them; the environment variable works everywhere.
    assert "MIDASHENGLM_ECHECKER" in message
    for flag in re.findall(r"--[a-z][a-z-]*", message):
        assert flag in flags_of["evaluate"] and flag in flags_of["report"], flag
    # benchmark has no FENSE options: its scoring error points to `evaluate`.
    bench_flags = {f for fs in _options("benchmark").values() for f in fs}
    assert "--sbert-model" not in bench_flags and "--echecker" not in bench_flags
    source = (ROOT / "src/midashenglm/evaluation/runner.py").read_text()
    assert "`midashenglm evaluate {summary.out}`" in source


# --------------------------------------------------------------- 6: offline, at once
def test_hub_reachable_gives_up_quickly(monkeypatch):
    from midashenglm.evaluation.metrics import fense

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for host in (("127.0.0.1", 9), ("10.255.255.1", 443)):  # refused; unroutable
        monkeypatch.setattr(fense, "HUB_HOST", host)
        start = time.monotonic()
        assert fense.hub_reachable(timeout=1.0) is False
        assert time.monotonic() - start < 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fense.hub_reachable() is False


def test_missing_sentence_model_fails_fast_without_hf_hub_offline(tmp_path, monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE when imported: a fresh interpreter without it.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache: the model is not there
    code = (
        "import time\n"
        "from midashenglm.evaluation.metrics import fense\n"
        "from midashenglm.errors import UserError\n"
        "import sentence_transformers\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    fense.load_sentence_model('paraphrase-TinyBERT-L6-v2')\n"
        "except UserError as err:\n"
        "    print('ELAPSED', time.monotonic() - start)\n"
        "    print('MESSAGE', err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=180)
    elapsed = re.search(r"ELAPSED ([0-9.]+)", done.stdout)
    assert elapsed, done.stdout + done.stderr
    assert float(elapsed.group(1)) < 10
    assert "hf download sentence-transformers/paraphrase-TinyBERT-L6-v2" in done.stdout


# -------------------------------------------------------------- 7: every option documented
@pytest.mark.parametrize("command", ["evaluate", "benchmark", "report"])
def test_every_option_is_documented(command):
    section = DOCS.split(f"### `{command}` options", 1)
    assert len(section) == 2, f"no '### `{command}` options' table in the docs"
    table = section[1].lstrip("\n").split("\n\n", 1)[0]
    for flags in _options(command).values():
        if "--help" in flags:
            continue
        assert any(f"`{flag}" in table for flag in flags), (command, flags)
