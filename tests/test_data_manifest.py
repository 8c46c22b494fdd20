"""Training manifests (issue 13): flat and chat rows, CSV, relative paths, bad rows named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from midashenglm.data.manifest import read_training_manifest, write_training_manifest
from midashenglm.errors import UserError
from tests.conftest import clip


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "clips").mkdir()
    sf.write(tmp_path / "clips" / "a.wav", clip(1.5, seed=1), 16000)
    sf.write(tmp_path / "clips" / "b.flac", clip(2.5, seed=2), 16000)
    return tmp_path


def test_flat_rows_resolve_paths_and_measure_durations(folder):
    path = write_jsonl(folder / "train.jsonl", [
        {"audio": "clips/a.wav", "prompt": "What is it?", "answer": "A tone.", "system": "Be brief."},
        {"audio": ["clips/a.wav", "clips/b.flac"], "answer": "Two tones.", "dataset": "tones",
         "task": "qa", "id": 7, "duration": 9.0},
    ])
    first, second = read_training_manifest(path)
    assert (first.id, first.dataset, first.task, first.source) == ("train.jsonl:1", "default", "caption",
                                                                  f"{path}:1")
    assert first.duration == pytest.approx(1.5)
    assert first.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "audio", "path": str(folder / "clips" / "a.wav")},
                                     {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A tone."}]
    assert (second.id, second.dataset, second.task, second.duration) == ("7", "tones", "qa", 9.0)
    assert [p["path"] for p in second.audio_parts] == [str(folder / "clips" / n) for n in ("a.wav", "b.flac")]
    assert second.messages[0]["content"][-1]["type"] == "audio"  # no prompt: no text part


def test_chat_rows_with_several_clips_and_turns(folder):
    messages = [
        {"role": "user", "content": [{"type": "audio", "path": "clips/a.wav"}, {"type": "text", "text": "First?"}]},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": [{"type": "audio", "shard": "s/train-000000.tar", "key": "s0.1",
                                      "ext": "flac", "duration": 4.0}, {"type": "text", "text": "Then?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Two."}]},
    ]
    (sample,) = read_training_manifest(write_jsonl(folder / "chat.jsonl", [{"messages": messages}]))
    audio = sample.audio_parts
    assert audio[0] == {"type": "audio", "path": str(folder / "clips" / "a.wav")}
    assert audio[1] == {"type": "audio", "shard": str(folder / "s" / "train-000000.tar"), "key": "s0.1.flac",
                        "duration": 4.0}
    assert sample.duration == pytest.approx(5.5)  # 1.5 s read from the header + 4.0 s stated
    assert [m["role"] for m in sample.messages] == ["user", "assistant", "user", "assistant"]


def test_csv_rows_and_round_trip(folder):
    path = folder / "train.csv"
    path.write_text("audio,prompt,answer,dataset,duration\nclips/a.wav,Say?,Hi.,asr,\nclips/b.flac,,Ho.,,2.5\n",
                    encoding="utf-8-sig")
    samples = read_training_manifest(path)
    assert [(s.dataset, s.duration) for s in samples] == [("asr", pytest.approx(1.5)), ("default", 2.5)]
    assert samples[1].source == f"{path}:3"
    write_training_manifest(samples, folder / "copy.jsonl")
    again = read_training_manifest(folder / "copy.jsonl")
    assert [(s.id, s.messages, s.duration) for s in again] == [(s.id, s.messages, s.duration) for s in samples]


@pytest.mark.parametrize("row,field", [
    ({"audio": "a.wav"}, "'answer'"),
    ({"audio": 3, "answer": "x"}, "'audio'"),
    ({"audio": "a.wav", "answer": "x", "duration": "long"}, "'duration'"),
    ({"audio": "a.wav", "answer": "x", "duration": -1}, "'duration'"),
    ({"audio": "a.wav", "answer": ["x"]}, "'answer'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "'messages'"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "'messages[0]'"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}, {"role": "assistant", "content": "x"}]},
     "'messages[0].content[0]'"),
    ({"messages": [{"role": "assistant", "content": [{"type": "audio", "path": "a.wav"}]}]},
     "'messages[0].content[0]'"),
    ({"messages": [{"role": "assistant", "content": "x"}], "answer": "y"}, "'messages'"),
    ('{"audio": "a.wav", ', "invalid JSON"),
    ({"id": "m.jsonl:1", "audio": "a.wav", "answer": "x"}, "already used on line 1"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, field):
    path = write_jsonl(tmp_path / "m.jsonl", [{"audio": "a.wav", "answer": "ok"}, row])
    with pytest.raises(UserError) as err:
        read_training_manifest(path, measure_missing=False)
    assert str(err.value).startswith(f"{path}:2: ") and field in str(err.value)


def test_missing_clip_is_not_a_manifest_error(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"audio": "gone.wav", "answer": "x"}])
    assert read_training_manifest(path)[0].duration is None  # reported when loaded, not here
    with pytest.raises(UserError, match="no such manifest"):
        read_training_manifest(tmp_path / "absent.jsonl")


def test_unknown_fields_are_named_once(tmp_path, capfd):
    manifest = tmp_path / "typo.jsonl"
    manifest.write_text('{"audio": "a.wav", "promt": "x", "answer": "y", "duration": 1}\n'
                        '{"audio": "b.wav", "promt": "x", "answer": "y", "duration": 1}\n')
    (sample, _) = read_training_manifest(manifest)
    assert sample.messages[0]["content"][-1]["type"] == "audio"  # no prompt: the typo is not read
    err = capfd.readouterr().err
    assert err.count("fields ignored") == 1 and "'promt' (line 1)" in err
