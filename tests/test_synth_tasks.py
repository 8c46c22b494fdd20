"""``midashenglm data tasks``: answers read from hand-written truth rows, only what the truth
defines, and output rows that the training reader, ``run`` and ``evaluate`` accept (no model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf
from typer.testing import CliRunner

from midashenglm.data.synth.tasks import TASK_LIST, TASKS, corpus_items, select_tasks, task_items

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"rt60_s": None, "bandwidth_hz": None, "clipped": False, "noise": None}


def _row(index: int, category: str, **truth) -> dict:
    row = {"id": f"heldout-1-{index:07d}", "index": index, "audio": f"clips/c{index}.wav",
           "split": "heldout", "seed": 1, "category": category, "speech": None, "sound": None,
           "music": None, "background": None, "acoustics": dict(QUIET), "duration": 1.0}
    row.update(truth)
    return row


SPEECH_DE = _row(0, "mixed speech", speech={
    "text": "Wir haben gestern Abend einen lustigen Film gesehen.", "language": "de",
    "voice": "de+m4", "gender": "male", "source": "espeak-ng"},
    background={"kind": "music", "snr_db": 8.7, "instrument": None},
    acoustics={**QUIET, "clipped": True})
SPEECH_EN = _row(1, "pure speech", speech={"text": "The lights went out.", "language": "en",
                                           "voice": "flite-awb", "gender": "male", "source": "flite"})
MUSIC = _row(2, "pure music", music={
    "instrument": "electric bass (finger)", "program": 33, "family": "bass",
    "tempo": 83.99996640001343, "key": "B", "mode": "minor", "source": "fluidsynth"},
    acoustics={**QUIET, "rt60_s": 0.58, "bandwidth_hz": 4000.0})
SOUND = _row(3, "pure sound", sound={"label": "camera shutter",
                                     "source": "freedesktop/screen-capture"},
             acoustics={**QUIET, "noise": {"kind": "pink", "snr_db": 27.8}})
GUNSHOT = _row(4, "pure music", music={
    "instrument": "gunshot", "program": 127, "family": "sound effects", "tempo": 120.0,
    "key": "C", "mode": "major", "source": "fluidsynth"})
MOH = _row(5, "pure music", music={"instrument": None, "program": None, "family": None,
                                   "tempo": None, "key": None, "mode": None,
                                   "source": "asterisk-moh"})


def _answers(row: dict) -> dict[str, str]:
    return {item.task: item.answer for item in task_items(row, "/corpus")}


def test_answers_come_from_the_truth_and_only_where_it_defines_them():
    from midashenglm.inference.commands import transcribe_prompt

    items = {i.task: i for i in task_items(SPEECH_DE, "/corpus")}
    assert items["transcription"].prompt == transcribe_prompt("de") == \
        "Transcribe the speech into text <|de|>"
    assert items["transcription"].answer == SPEECH_DE["speech"]["text"]
    assert items["transcription"].lang == "de" and items["transcription"].audio == Path(
        "/corpus/clips/c0.wav")
    assert items["gender"].prompt == "What is the gender of the speaker?"
    # A background music bed: noisy yes; clipping applied: yes; no "no" without a clean clip.
    assert _answers(SPEECH_DE) == {
        "transcription": SPEECH_DE["speech"]["text"], "gender": "male", "language": "German",
        "category": "speech", "clipped": "yes", "noisy": "yes"}
    # Clean synthetic speech: every acoustic question answered "no".
    assert _answers(SPEECH_EN) == {
        "transcription": "The lights went out.", "gender": "male", "language": "English",
        "category": "speech", "reverberant": "no", "band-limited": "no", "clipped": "no",
        "noisy": "no"}
    # FluidSynth renders with its own reverb: "reverberant" only when a room was simulated.
    assert _answers(MUSIC) == {
        "instrument": "electric bass (finger)", "instrument-family": "bass",
        "tempo": "about 84 BPM", "key": "B minor", "category": "music", "reverberant": "yes",
        "band-limited": "yes", "clipped": "no", "noisy": "no"}
    tempo = next(i for i in task_items(MUSIC, "/c") if i.task == "tempo")
    assert tempo.reference == "84" and abs(tempo.value - 84.0) < 1e-3
    # A real recording: no "no" answers; faint noise (27.8 dB SNR) is not asked about.
    assert _answers(SOUND) == {"sound": "camera shutter", "category": "sound"}
    # Unpitched GM sound effects: no key, and not asked whether it is music.
    assert "key" not in _answers(GUNSHOT) and "category" not in _answers(GUNSHOT)
    assert _answers(GUNSHOT)["instrument"] == "gunshot"
    # Music on hold: no instrument/tempo/key truth, 8 kHz audio (no "band-limited: no").
    assert _answers(MOH) == {"category": "music"}


def test_task_selection_and_names():
    assert [t.name for t in select_tasks("key, gender")] == ["gender", "key"]
    assert select_tasks(None) == list(TASK_LIST)
    try:
        select_tasks("gender,nope")
    except Exception as err:  # UserError
        assert "nope" in str(err) and "transcription" in str(err)
    else:
        raise AssertionError("an unknown task must be refused")
    assert all(t.metric in ("wer", "gender_accuracy", "accuracy", "qa_accuracy") for t in TASK_LIST)


def _corpus(folder: Path, rows: list[dict]) -> Path:
    (folder / "clips").mkdir(parents=True)
    for row in rows:
        sf.write(folder / row["audio"], np.zeros(16000, np.float32), 16000)
    lines = [json.dumps(r) for r in rows]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + '\n{"id": "torn', encoding="utf-8")
    return folder


def _cli(*args: str):
    from midashenglm.cli import app

    result = CliRunner().invoke(app, ["data", "tasks", *args])
    assert result.exit_code == 0, result.output
    return result


def test_cli_rows_are_read_by_training_run_and_evaluate(tmp_path):
    from midashenglm.data.manifest import read_training_manifest
    from midashenglm.evaluation.loaders import load_manifest
    from midashenglm.evaluation.scoring import score_rows
    from midashenglm.inference.manifest import read_manifest

    corpus = _corpus(tmp_path / "corpus", [SPEECH_DE, SPEECH_EN, MUSIC, SOUND])
    train = tmp_path / "out" / "train.jsonl"
    _cli(str(corpus), "--out", str(train))
    samples = read_training_manifest(train)
    expected = [i for row in (SPEECH_DE, SPEECH_EN, MUSIC, SOUND) for i in task_items(row, corpus)]
    assert [s.id for s in samples] == [i.id for i in expected]
    first = samples[0]
    assert first.dataset == "synth-transcription" and first.task == "transcription"
    assert Path(first.messages[0]["content"][0]["path"]).resolve() == (corpus / "clips/c0.wav").resolve()
    assert first.messages[-1]["content"] == SPEECH_DE["speech"]["text"]
    assert not Path(json.loads(train.read_text().splitlines()[0])["audio"]).is_absolute()

    evals = tmp_path / "out" / "eval.jsonl"
    _cli(str(corpus / "manifest.jsonl"), "--out", str(evals), "--format", "eval")
    rows = [json.loads(line) for line in evals.read_text().splitlines()]
    assert all(r.data.get("prompt") and r.error is None and r.audio_path.is_file()
               for r in read_manifest(evals))
    loaded = list(load_manifest(evals))
    assert [i["id"] for i in loaded] == [r["id"] for r in rows]
    # With the answer as the model's output, every task's metric gives a perfect score.
    for task in {r["task"] for r in rows}:
        mine = [dict(r, model_output=next(i.answer for i in expected if i.id == r["id"]))
                for r in rows if r["task"] == task]
        result = score_rows(mine, mine[0]["metric"])
        assert result.skipped == 0 and result.count == len(mine), (task, result.problems)
        assert result.value == (0.0 if TASKS[task].metric == "wer" else 1.0), task


def test_per_clip_draw_is_bounded_and_repeatable(tmp_path):
    corpus = _corpus(tmp_path / "c", [SPEECH_EN, MUSIC])
    one = corpus_items([corpus], per_clip=2, seed=5)
    assert [i.clip for i in one].count(SPEECH_EN["id"]) == 2 and len(one) == 4
    assert [i.id for i in one] == [i.id for i in corpus_items([corpus], per_clip=2, seed=5)]
    assert len(corpus_items([corpus], select_tasks("gender"))) == 1


def test_every_option_is_documented():
    import typer

    from midashenglm.cli import app

    command = typer.main.get_command(app).commands["data"].commands["tasks"]
    options = {o for p in command.params for o in p.opts + p.secondary_opts if o.startswith("--")}
    documented = set(re.findall(r"`(--[a-z0-9-]+)", (ROOT / "docs" / "data.md").read_text()))
    assert options - {"--help"} <= documented, options - documented
