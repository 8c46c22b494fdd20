"""The benchmark runner end to end: a tiny random model over tiny copies of dataset layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from midashenglm.errors import UserError
from midashenglm.evaluation import runner
from midashenglm.evaluation.results import CORE_FIELDS, read_results
from tests.conftest import clip

CLI = [sys.executable, "-m", "midashenglm.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
FAST = {"max_new_tokens": 3, "progress": False, "score": False}


@pytest.fixture
def librispeech(tmp_path) -> Path:
    """Five utterances in LibriSpeech's layout; the fourth file is not audio."""
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1089" / "134686"
    chapter.mkdir(parents=True)
    lines = []
    for i in range(5):
        sf.write(chapter / f"1089-134686-000{i}.flac", clip(0.4 + 0.1 * i, seed=i), 16000)
        lines.append(f"1089-134686-000{i} HELLO WORLD NUMBER {i}")
    (chapter / "1089-134686.trans.txt").write_text("\n".join(lines) + "\n")
    (chapter / "1089-134686-0003.flac").write_bytes(b"fLaC but not really flac data")
    return tmp_path / "LibriSpeech"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_resumable_run_writes_the_official_format(tiny_checkpoint, librispeech, tmp_path):
    out = tmp_path / "results" / "run.jsonl"
    first = runner.run_benchmark(str(tiny_checkpoint), "librispeech-test-clean", librispeech,
                                 out=out, limit=2, batch_size=2, **FAST)
    assert (first.written, first.errors, first.skipped) == (2, 0, 0)
    assert sorted(r["id"] for r in rows(out)) == ["1089-134686-0000", "1089-134686-0001"]

    second = runner.run_benchmark(str(tiny_checkpoint), "librispeech-test-clean", librispeech,
                                  out=out, batch_size=2, **FAST)
    assert (second.written, second.errors, second.skipped) == (3, 1, 2)
    written = rows(out)
    ids = [r["id"] for r in written]
    # all rows, none twice (written in the order they finish: the engine's, not the data's)
    assert sorted(ids) == [f"1089-134686-000{i}" for i in range(5)]
    assert ids[:2] == ["1089-134686-0000", "1089-134686-0001"]  # the first run's, kept
    assert sorted(r["_row"] for r in written) == list(range(5))  # the writer's resume key

    for row in written:
        assert all(key in row for key in CORE_FIELDS)
        assert row["dataset_name"] == "LibriSpeech_test-clean"
        assert row["prompt"] == "Transcribe the speech into text <|en|>"
        assert row["lang"] == "en" and row["text"].startswith("HELLO WORLD NUMBER")
        assert row["model_name"] == tiny_checkpoint.name
        assert row["audio"] == row["id"] + ".flac"
    bad_line = ids.index("1089-134686-0003") + 1
    bad = written[bad_line - 1]
    assert bad["model_output"] == "" and "1089-134686-0003.flac" in bad["error"]
    assert all("error" not in r and isinstance(r["model_output"], str) for r in written
               if r is not bad)
    # The scorer reads the file: four answers, the error row is accounted as a problem.
    parsed = read_results(out)
    assert len(parsed.rows) == 4 and [p.line for p in parsed.problems] == [bad_line]

    third = runner.run_benchmark(str(tiny_checkpoint), "librispeech-test-clean", librispeech,
                                 out=out, **FAST)
    assert (third.written, third.skipped) == (0, 5)


def test_retry_errors_replaces_the_error_row(tiny_checkpoint, librispeech, tmp_path):
    out = tmp_path / "run.jsonl"
    runner.run_benchmark(str(tiny_checkpoint), "librispeech-test-clean", librispeech, out=out,
                         batch_size=5, **FAST)
    broken = next(librispeech.rglob("1089-134686-0003.flac"))
    sf.write(broken, clip(0.5, seed=3), 16000)
    again = runner.run_benchmark(str(tiny_checkpoint), "librispeech-test-clean", librispeech,
                                 out=out, retry_errors=True, **FAST)
    assert (again.written, again.errors) == (1, 0)
    written = rows(out)
    assert sorted(r["id"] for r in written) == [f"1089-134686-000{i}" for i in range(5)]
    assert not any("error" in r for r in written)


def test_a_crash_mid_line_is_repaired_on_resume(tiny_checkpoint, librispeech, tmp_path,
                                                processor, tiny_model):
    out = tmp_path / "run.jsonl"
    loaded = (tiny_model, processor)
    runner.run_benchmark("tiny", "librispeech-test-clean", librispeech, out=out, limit=2,
                         model_and_processor=loaded, **FAST)
    with out.open("a") as fh:
        fh.write('{"dataset_name": "LibriSpeech_test-clean", "audio": "1089-13')  # killed here
    summary = runner.run_benchmark("tiny", "librispeech-test-clean", librispeech, out=out,
                                   model_and_processor=loaded, **FAST)
    assert summary.skipped == 2
    assert sorted(r["id"] for r in rows(out)) == [f"1089-134686-000{i}" for i in range(5)]


def test_refuses_to_mix_datasets_or_models(tiny_model, processor, librispeech, tmp_path):
    out = tmp_path / "run.jsonl"
    out.write_text(json.dumps({"dataset_name": "NSynth", "model_output": "bass",
                               "model_name": "tiny", "audio": "a.wav"}) + "\n")
    with pytest.raises(UserError, match="holds results of 'NSynth'"):
        runner.run_benchmark("tiny", "librispeech-test-clean", librispeech, out=out,
                             model_and_processor=(tiny_model, processor), **FAST)
    with pytest.raises(UserError, match="holds results of model 'tiny'"):
        runner.run_benchmark("other", "nsynth", librispeech, out=out,
                             model_and_processor=(tiny_model, processor), **FAST)


def test_model_failure_on_one_item_is_recorded(tiny_model, processor, librispeech, tmp_path,
                                               monkeypatch):
    """An item the engine fails on (an error Result) becomes an error row; the others are
    answered; the engine is the caller's, created once and used for several runs."""
    from midashenglm.inference.engine import Engine, Result

    class Flaky(Engine):
        def iter_results(self, requests, **kw):
            for index, result in super().iter_results(requests, **kw):
                if result.request_id.endswith("0002"):
                    result = Result(result.request_id, "", [], "error",
                                    error="RuntimeError: CUDA out of memory (simulated)")
                yield index, result

    engine = Flaky(tiny_model, processor)
    monkeypatch.setattr(runner, "make_engine", None)  # the runner never builds its own here
    out = tmp_path / "run.jsonl"
    summary = runner.run_benchmark("tiny", "librispeech-test-clean", librispeech, out=out,
                                   engine=engine, **FAST)
    written = {r["id"]: r for r in rows(out)}
    assert len(written) == 5 and summary.errors == 2 and summary.answered == 3
    assert "out of memory" in written["1089-134686-0002"]["error"]
    assert "error" not in written["1089-134686-0000"] and "error" not in written["1089-134686-0001"]
    again = runner.run_benchmark("tiny", "librispeech-test-clean", librispeech,
                                 out=tmp_path / "again.jsonl", engine=engine, limit=2, **FAST)
    assert (again.written, again.errors) == (2, 0)


def test_kill_9_then_rerun_gives_one_row_per_item(tiny_checkpoint, librispeech, tmp_path):
    out = tmp_path / "killed.jsonl"
    code = f"""
import os, signal
from midashenglm.inference import manifest
from midashenglm.evaluation import runner
real = manifest.ResultWriter.write
def write(self, record):
    real(self, record)
    if len(self.done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
manifest.ResultWriter.write = write
runner.run_benchmark({str(tiny_checkpoint)!r}, "librispeech-test-clean", {str(librispeech)!r},
                     out={str(out)!r}, device="cpu", max_new_tokens=3, progress=False,
                     score=False)
"""
    killed = subprocess.run([sys.executable, "-c", code], env=ENV, timeout=300,
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert len(rows(out)) == 2
    summary = runner.run_benchmark(str(tiny_checkpoint), "librispeech-test-clean", librispeech,
                                   out=out, device="cpu", **FAST)
    assert (summary.skipped, summary.written) == (2, 3)
    assert sorted(r["id"] for r in rows(out)) == [f"1089-134686-000{i}" for i in range(5)]


def test_changed_data_or_old_files_are_refused(tiny_model, processor, librispeech, tmp_path):
    out = tmp_path / "run.jsonl"
    engine = runner.make_engine("tiny", model_and_processor=(tiny_model, processor))
    runner.run_benchmark("tiny", "librispeech-test-clean", librispeech, out=out, limit=2,
                         engine=engine, **FAST)
    trans = next(librispeech.rglob("*.trans.txt"))  # a new first item shifts all the others
    sf.write(trans.parent / "1089-134686-000a.flac", clip(0.3), 16000)
    trans.write_text("1089-134686-000a NEW\n" + trans.read_text())
    with pytest.raises(UserError, match="the data changed"):
        runner.run_benchmark("tiny", "librispeech-test-clean", librispeech, out=out,
                             engine=engine, **FAST)
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"dataset_name": "LibriSpeech_test-clean", "model_name": "tiny",
                               "audio": "a.flac", "model_output": "x"}) + "\n")
    with pytest.raises(UserError, match="no '_row'"):
        runner.run_benchmark("tiny", "librispeech-test-clean", librispeech, out=old,
                             engine=engine, **FAST)


def test_closed_qa_manifest_and_pair_audio(tiny_model, processor, tmp_path):
    sf.write(tmp_path / "a.wav", clip(0.3), 16000)
    sf.write(tmp_path / "b.wav", clip(0.2, seed=1), 16000)
    manifest = tmp_path / "qa.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "question": "Which genre?",
                                    "choices": ["Reggae", "Pop"], "answer": "B"}) + "\n")
    out = tmp_path / "qa_out.jsonl"
    runner.run_benchmark("tiny", "muchomusic", manifest, out=out,
                         model_and_processor=(tiny_model, processor), **FAST)
    (row,) = rows(out)
    assert row["prompt"] == "Which genre?\n(A) Reggae\n(B) Pop\nAnswer with a single Letter: "
    assert (row["answer"], row["answer_letter"], row["answer_text"]) == ("B", "B", "Pop")
    assert row["choices"] == ["Reggae", "Pop"] and row["question"] == "Which genre?"

    # MMAU stores the option text; the row holds the form the prompt asks for, because the
    # official string match compares answer and output as they are.
    mmau = tmp_path / "mmau.jsonl"
    mmau.write_text(json.dumps({"audio": "a.wav", "question": "Which animal?",
                                "choices": ["Cat", "Dog"], "answer": "Dog",
                                "task": "sound"}) + "\n")
    for style, answer in (("midashenglm", "B"), ("kimi-audio", "B"), ("qwen2.5-omni", "Dog")):
        out = tmp_path / f"mmau_{style}.jsonl"
        runner.run_benchmark("tiny", "mmau", mmau, out=out, prompt_style=style,
                             model_and_processor=(tiny_model, processor), **FAST)
        (row,) = rows(out)
        assert (row["answer"], row["answer_letter"], row["answer_text"]) == (answer, "B", "Dog")

    pair = {"id": "p", "source": [tmp_path / "a.wav", tmp_path / "b.wav"]}
    joined = runner.load_item_audio(pair, 16000)
    assert len(joined) == 4800 + int(runner.PAIR_GAP_SECONDS * 16000) + 3200
    assert np.all(joined[4800:4800 + 8000] == 0)
    # A pair is joined into one clip of the request; a single clip goes as its path.
    request = runner.item_request(pair, runner.T.Prompt("Same?", "sys"), 4, 16000)
    assert request.request_id == "p" and request.sampling.max_new_tokens == 4
    system, user = request.conversation
    assert system == {"role": "system", "content": "sys"}
    assert np.array_equal(user["content"][0]["audio"], joined)
    single = runner.item_request({"id": "s", "source": tmp_path / "a.wav"},
                                 runner.T.Prompt("Q"), 4, 16000)
    assert single.conversation == [{"role": "user", "content": [
        {"type": "audio", "path": str(tmp_path / "a.wav")}, {"type": "text", "text": "Q"}]}]


def test_benchmark_through_the_cli(tiny_checkpoint, librispeech, tmp_path):
    out = tmp_path / "cli.jsonl"
    done = subprocess.run(
        [*CLI, "benchmark", "--model", str(tiny_checkpoint), "--task", "librispeech-test-clean",
         "--data", str(librispeech), "--out", str(out), "--limit", "2", "--batch-size", "2",
         "--max-new-tokens", "3", "--device", "cpu", "--model-name", "MiDashengLM"],
        capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 rows" in done.stdout
    assert "score: wer" in done.stdout  # scored with the paper's metric right away
    assert [r["model_name"] for r in rows(out)] == ["MiDashengLM", "MiDashengLM"]

    listing = subprocess.run([*CLI, "benchmark", "--task", "list"], capture_output=True,
                             text=True, timeout=120, env=ENV)
    assert listing.returncode == 0 and "mecat-caption" in listing.stdout

    wrong = subprocess.run([*CLI, "benchmark", "--model", str(tiny_checkpoint), "--task",
                            "nope", "--data", str(librispeech)], capture_output=True, text=True,
                           timeout=120, env=ENV)
    assert wrong.returncode == 2
    assert "error:" in wrong.stderr and "unknown task" in " ".join(wrong.stderr.split())
    assert "Traceback" not in wrong.stderr


def test_pairs_with_a_corrupt_clip_become_error_rows(tiny_model, processor, tmp_path):
    """VoxCeleb1 trials join two clips in the runner; a clip that fails there is an error row."""
    folder = tmp_path / "wav" / "id10270" / "x6uYqmx31kE"
    folder.mkdir(parents=True)
    sf.write(folder / "00001.wav", clip(0.3), 16000)
    (folder / "00002.wav").write_bytes(b"RIFF but not a wave file")
    (tmp_path / "veri_test2.txt").write_text(
        "1 id10270/x6uYqmx31kE/00001.wav id10270/x6uYqmx31kE/00001.wav\n"
        "0 id10270/x6uYqmx31kE/00001.wav id10270/x6uYqmx31kE/00002.wav\n")
    out = tmp_path / "pairs.jsonl"
    summary = runner.run_benchmark("tiny", "voxceleb1", tmp_path, out=out,
                                   model_and_processor=(tiny_model, processor), **FAST)
    assert (summary.written, summary.errors, summary.answered) == (2, 1, 1)
    by_label = {r["label"][0]: r for r in rows(out)}
    assert "error" not in by_label["Same"]
    assert by_label["Different"]["error"].startswith("audio: ") and "00002.wav" in \
        by_label["Different"]["error"]
    again = runner.run_benchmark("tiny", "voxceleb1", tmp_path, out=out, retry_errors=True,
                                 model_and_processor=(tiny_model, processor), **FAST)
    assert (again.skipped, again.written, again.errors) == (1, 1, 1) and len(rows(out)) == 2
