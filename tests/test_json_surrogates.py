"""JSON output of names that are not UTF-8 (lone surrogates in Python): always valid UTF-8,
one line per record, and read back to the exact original bytes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from midashenglm import jsonl
from midashenglm.evaluation.results import write_row
from tests.conftest import clip

CLI = [sys.executable, "-m", "midashenglm.cli"]
BAD = b"bad\xff\xfe.wav"  # not UTF-8: Python names it 'bad\udcff\udcfe.wav'
LOCALES = {"c-utf8": {"LC_ALL": "C.UTF-8"}, "pythonioencoding": {"PYTHONIOENCODING": "utf-8"}}


def cli(args: list, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI with bytes out: the test decodes stdout itself, strictly."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **env}
    return subprocess.run([*CLI, *(a if isinstance(a, bytes) else str(a) for a in args)],
                          capture_output=True, timeout=timeout, env=environ)


def json_lines(data: bytes) -> list[dict]:
    """Every line strictly UTF-8 and a JSON object."""
    lines = data.decode("utf-8").split("\n")
    assert lines[-1] == ""
    return [json.loads(line) for line in lines[:-1]]


def write_wav(folder: Path, name: bytes, seconds: float, seed: int) -> Path:
    plain = folder / f"plain-{seed}.wav"
    sf.write(plain, clip(seconds, seed), 16000)
    target = os.path.join(os.fsencode(folder), name)
    try:
        os.rename(os.fsencode(plain), target)
    except OSError as err:  # e.g. a file system that only takes UTF-8 names
        pytest.skip(f"cannot create a non-UTF-8 file name here: {err}")
    return Path(os.fsdecode(target))


# ------------------------------------------------------------------------------ the helper
@pytest.mark.parametrize("obj", [
    {"file": os.fsdecode(BAD), "text": "café 你好"},
    {"x": "\ud800", "y": ["\udfff", "é"]},
    {"t": "a\u2028b\u2029c\x85d\ne"},
    {"plain": "ascii only"},
])
def test_dumps_line_is_utf8_one_line_and_exact(obj):
    line = jsonl.dumps_line(obj)
    line.encode("utf-8")  # never raises
    assert len(line.splitlines()) == 1
    assert json.loads(line) == obj


def test_dumps_line_escapes_only_lines_with_surrogates():
    assert jsonl.dumps_line({"t": "café"}) == '{"t": "café"}'  # readable as before
    assert jsonl.dumps_line({"t": "café", "f": "\udcff"}) == '{"t": "caf\\u00e9", "f": "\\udcff"}'
    assert jsonl.dumps_line({"p": Path("x")}, default=str) == '{"p": "x"}'


@pytest.mark.parametrize("encoding", ["ascii", "latin-1", "utf-8"])
def test_print_line_writes_utf8_whatever_the_stream_encoding(encoding):
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding=encoding)
    stream.write("before\n")  # text printed earlier stays first
    jsonl.print_line({"text": "你好 é", "file": os.fsdecode(BAD)}, stream=stream)
    jsonl.print_line({"text": "你好"}, stream=stream)
    assert raw.getvalue().decode("utf-8") == \
        'before\n{"text": "\\u4f60\\u597d \\u00e9", "file": "bad\\udcff\\udcfe.wav"}\n{"text": "你好"}\n'
    text_only = io.StringIO()
    jsonl.print_line({"text": "你好"}, stream=text_only)
    assert text_only.getvalue() == '{"text": "你好"}\n'


def test_result_rows_with_surrogates_are_written_and_read_back(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"audio": os.fsdecode(BAD), "model_output": "ok"}, {"audio": "é", "model_output": "\ud800"}]
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            write_row(fh, row)
    with path.open("a", encoding="utf-8") as fh:
        jsonl.append_rows(fh, [{"_row": 2, "audio": os.fsdecode(BAD)}])
    assert [row for _, row in jsonl.existing_rows(path)] == [*rows, {"_row": 2, "audio": os.fsdecode(BAD)}]


# ------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("env", LOCALES.values(), ids=LOCALES.keys())
def test_caption_json_with_a_non_utf8_file_name(tiny_checkpoint, tmp_path, env):
    bad = write_wav(tmp_path, BAD, 1.0, seed=1)
    good = write_wav(tmp_path, "café.wav".encode(), 1.5, seed=2)
    done = cli(["caption", os.fsencode(bad), os.fsencode(good), "--json", "--model", tiny_checkpoint,
                "--max-new-tokens", 4], env)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    records = json_lines(done.stdout)
    assert [os.fsencode(r["file"]) for r in records] == [os.fsencode(bad), os.fsencode(good)]
    assert all(r["error"] is None and isinstance(r["text"], str) for r in records)


@pytest.mark.parametrize("env", LOCALES.values(), ids=LOCALES.keys())
def test_run_with_non_utf8_names_writes_valid_lines_and_resumes(tiny_checkpoint, tmp_path, env):
    (tmp_path / "names").mkdir()
    write_wav(tmp_path / "names", BAD, 1.0, seed=1)
    write_wav(tmp_path / "names", b"ok.wav", 1.0, seed=2)
    rows = [{"audio": "names/ok.wav"},
            {"audio": os.fsdecode(b"names/" + BAD), "note": "café"},  # \udcff escapes in the manifest
            {"audio": "names/ok.wav", "tag": "\ud800"},  # any field with a lone surrogate
            {"audio": os.fsdecode(b"names/" + BAD), "prompt": "What is it?"}]
    manifest = tmp_path / "man.jsonl"
    out = tmp_path / "res.jsonl"
    args = ["--out", out, "--model", tiny_checkpoint, "--max-new-tokens", 3]

    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")
    first = cli(["run", manifest, *args], env)
    assert first.returncode == 0, first.stderr.decode("utf-8", "replace")
    assert len(json_lines(out.read_bytes())) == 2

    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for _ in range(2):  # resumes after the first two rows, then finds everything done
        again = cli(["run", manifest, *args], env)
        assert again.returncode == 0, again.stderr.decode("utf-8", "replace")
        assert b"resuming" in again.stderr
        results = json_lines(out.read_bytes())
        assert [r["_row"] for r in results] == [0, 1, 2, 3]
    assert all("error" not in r and isinstance(r["model_output"], str) for r in results)
    assert [os.fsencode(r["audio"]) for r in results] == [os.fsencode(r["audio"]) for r in rows]
    assert os.fsencode(results[1]["audio"]) == b"names/" + BAD
    assert (results[1]["note"], results[2]["tag"]) == ("café", "\ud800")
