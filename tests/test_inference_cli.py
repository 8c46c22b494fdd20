"""caption / ask / transcribe / run as a user runs them: real subprocesses, files and HTTP."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from midashenglm.audio import load_audio
from midashenglm.conversation import DEFAULT_SYSTEM_PROMPT, build_conversation
from midashenglm.inference import Engine, Request, SamplingParams
from midashenglm.inference.commands import CAPTION_PROMPT
from midashenglm.terminal import printable_text
from tests.conftest import clip

CLI = [sys.executable, "-m", "midashenglm.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**ENV, **(env or {})})


def no_default_model(folder: Path) -> dict[str, str]:
    """The environment of a checkout where no default model is shipped (an empty folder)."""
    folder.mkdir(exist_ok=True)
    return {"MIDASHENGLM_DEFAULT_MODEL_DIR": str(folder)}


def write_wav(path: Path, seconds: float, seed: int = 0, rate: int = 16000) -> Path:
    sf.write(path, clip(seconds, seed, sample_rate=rate), rate)
    return path


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory, speech_wav) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    (folder / "speech.wav").write_bytes(speech_wav.read_bytes())
    write_wav(folder / "tone.wav", 2.5, seed=1, rate=44100)
    sf.write(folder / "long.flac", clip(12.0, 2), 16000)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 20)
    return folder


def expected_text(tiny_model, processor, path: Path, prompt: str, max_new: int) -> str:
    """What the engine answers in-process: the CLI must print exactly this."""
    request = Request(build_conversation(str(path), prompt, system_prompt=DEFAULT_SYSTEM_PROMPT), SamplingParams(max_new_tokens=max_new))
    return Engine(tiny_model, processor).generate([request])[0].text


def test_caption_ask_transcribe(tiny_checkpoint, tiny_model, processor, audio_dir):
    speech, tone = audio_dir / "speech.wav", audio_dir / "tone.wav"
    one = cli("caption", speech, "--model", tiny_checkpoint, "--max-new-tokens", 8)
    assert one.returncode == 0, one.stderr
    assert one.stdout == expected_text(tiny_model, processor, speech, CAPTION_PROMPT, 8) + "\n"

    asked = cli("ask", tone, "What is it?", "Is there speech?", "-m", tiny_checkpoint,
                "--max-new-tokens", 6, "--json")
    assert asked.returncode == 0, asked.stderr
    answers = [json.loads(ln) for ln in asked.stdout.splitlines()]
    assert [a["prompt"] for a in answers] == ["What is it?", "Is there speech?"]
    assert answers[0]["text"] == expected_text(tiny_model, processor, tone, "What is it?", 6)
    assert all(a["audio_tokens"] == 12 and a["completion_tokens"] <= 6 for a in answers)

    heard = cli("transcribe", speech, "--lang", "en", "-m", tiny_checkpoint, "--max-new-tokens", 6,
                "--json")
    assert heard.returncode == 0, heard.stderr
    record = json.loads(heard.stdout)
    assert record["prompt"] == "Transcribe the speech into text <|en|>"
    assert record["text"] == expected_text(tiny_model, processor, speech, record["prompt"], 6)


def test_several_files_one_corrupt(tiny_checkpoint, tiny_model, processor, audio_dir):
    speech, corrupt, tone = (audio_dir / n for n in ("speech.wav", "corrupt.wav", "tone.wav"))
    mixed = cli("caption", speech, corrupt, tone, "-m", tiny_checkpoint, "--max-new-tokens", 8)
    assert mixed.returncode == 2  # an answer is missing
    assert "corrupt.wav" in mixed.stderr and "Traceback" not in mixed.stderr
    # The good files are answered, with their names, one line each: the control characters
    # the tiny model's answers hold (\r, \n...) are shown escaped (tests/test_terminal_output.py).
    expected = "".join(f"{f}: " + printable_text(expected_text(tiny_model, processor, f, CAPTION_PROMPT, 8))
                       + "\n" for f in (speech, tone))
    assert mixed.stdout == expected


def test_user_errors_before_loading_the_model(tiny_checkpoint, audio_dir, tmp_path):
    missing = cli("caption", audio_dir / "nope.wav", "-m", tiny_checkpoint)
    assert missing.returncode == 2 and "nope.wav: no such file" in missing.stderr
    assert "Traceback" not in missing.stderr

    # Without --model the shipped default model is used (tests/test_default_model*.py); where none
    # is shipped, the error names --model.
    no_model = cli("caption", audio_dir / "tone.wav", timeout=60, env=no_default_model(tmp_path / "none"))
    assert no_model.returncode == 2 and "--model" in no_model.stderr and "Traceback" not in no_model.stderr


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_manifest_jsonl_and_csv(tiny_checkpoint, tiny_model, processor, audio_dir, tmp_path):
    rows = [
        {"audio": str(audio_dir / "speech.wav"), "id": "a", "lang": "en"},
        {"audio": "../audio_rel/tone.wav", "id": "b", "prompt": "What is it?"},  # relative path
        {"audio": str(audio_dir / "missing.wav"), "id": "c"},
        {"audio": str(audio_dir / "corrupt.wav"), "id": "d"},
        {"id": "e"},
        {"audio": str(audio_dir / "long.flac"), "id": "f", "system_prompt": ""},
    ]
    (tmp_path / "audio_rel").mkdir()
    write_wav(tmp_path / "audio_rel" / "tone.wav", 2.5, seed=1, rate=44100)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    manifest = manifests / "jobs.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\nnot json\n")
    out = tmp_path / "out" / "results.jsonl"
    done = cli("run", manifest, "--out", out, "-m", tiny_checkpoint, "--max-new-tokens", 5)
    assert done.returncode == 1, done.stderr  # failed rows: exit 1 (--max-error-rate 0)
    assert "4 of 7 rows failed" in done.stderr
    results = read_jsonl(out)
    assert sorted(r["_row"] for r in results) == list(range(7))
    by_id = {r.get("id", r["_row"]): r for r in results}
    assert by_id["a"]["lang"] == "en" and by_id["a"]["audio"] == rows[0]["audio"]
    assert by_id["a"]["model_output"] == expected_text(tiny_model, processor, audio_dir / "speech.wav",
                                                       CAPTION_PROMPT, 5)
    assert by_id["b"]["model_output"] == expected_text(tiny_model, processor,
                                                       tmp_path / "audio_rel" / "tone.wav", "What is it?", 5)
    assert by_id["b"]["usage"]["audio_tokens"] == 12
    assert by_id["b"]["usage"]["audio_seconds"] == pytest.approx(2.5)
    assert "missing.wav" in by_id["c"]["error"] and "model_output" not in by_id["c"]
    assert "corrupt.wav" in by_id["d"]["error"]
    assert "no 'audio'" in by_id["e"]["error"]
    assert "invalid JSON" in by_id[6]["error"]
    assert by_id["f"]["usage"]["audio_tokens"] == 60 and by_id["f"]["model_output"]
    assert "wrote 7 rows" in done.stderr and "4 with errors" in done.stderr


def test_csv_manifest_rows(tmp_path):
    from midashenglm.inference.manifest import read_manifest

    manifest = tmp_path / "jobs.csv"
    manifest.write_text("audio,id,prompt,system_prompt\nclips/a.wav,x,,\n,y,Why?,none\nb.wav,z,,,extra\n")
    rows = list(read_manifest(manifest))
    assert rows[0].audio_path == tmp_path / "clips" / "a.wav" and rows[0].error is None
    assert "prompt" not in rows[0].data and rows[0].data["id"] == "x"  # empty cell: the default
    assert "no 'audio'" in rows[1].error and rows[1].data["prompt"] == "Why?"
    assert "beyond the header" in rows[2].error


def test_result_writer_repairs_and_retries(tmp_path):
    from midashenglm.errors import UserError
    from midashenglm.inference.manifest import ManifestRow, ResultWriter, output_record

    out = tmp_path / "r.jsonl"
    with ResultWriter(out) as writer:
        writer.write(output_record(ManifestRow(0, {"audio": "a.wav", "x": 1}), output="fine"))
        writer.write(output_record(ManifestRow(1, {"audio": "b.wav"}), error="b.wav: corrupt"))
    with out.open("a") as f:
        f.write('{"_row": 2, "aud')
    with ResultWriter(out) as writer:
        assert writer.repaired == len('{"_row": 2, "aud')
        assert writer.done == {(0, "a.wav"), (1, "b.wav")}
    with ResultWriter(out, retry_errors=True) as writer:
        assert writer.done == {(0, "a.wav")}
    assert [json.loads(ln)["_row"] for ln in out.read_text().splitlines()] == [0]
    with ResultWriter(out, overwrite=True) as writer:
        assert writer.done == set()
    other = tmp_path / "notes.jsonl"
    other.write_text('{"hello": 1}\n')
    with pytest.raises(UserError, match="not a result line"):
        ResultWriter(other)


def test_run_resumes_after_kill(tiny_checkpoint, tiny_model, processor, tmp_path):
    clips_dir = tmp_path / "clips"
    clips_dir.mkdir()
    manifest = tmp_path / "many.jsonl"
    with manifest.open("w") as f:
        for i in range(30):
            # Longest first, as the engine takes a window: rows finish (and are written, in
            # manifest order) one after another, so the kill lands mid-run.
            write_wav(clips_dir / f"{i}.wav", 0.3 + 0.05 * (29 - i), seed=i)
            f.write(json.dumps({"audio": f"clips/{i}.wav", "n": i}) + "\n")
    args = ["-m", tiny_checkpoint, "--max-new-tokens", 16, "--batch-size", 2]

    out = tmp_path / "resumed.jsonl"
    proc = subprocess.Popen([*CLI, "run", str(manifest), "--out", str(out), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    written = out.read_text().count("\n")
    assert 3 <= written < 30
    with out.open("a") as f:
        f.write('{"audio": "clips/29.wav", "_row": 29, "model_out')  # a torn write

    resumed = cli("run", manifest, "--out", out, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "torn last line" in resumed.stderr
    results = read_jsonl(out)
    assert sorted(r["_row"] for r in results) == list(range(30))  # none lost, none twice
    # Same answers as one uninterrupted run (greedy answers do not depend on the batch).
    requests = [Request(build_conversation(str(clips_dir / f"{i}.wav"), CAPTION_PROMPT, system_prompt=DEFAULT_SYSTEM_PROMPT),
                        SamplingParams(max_new_tokens=16)) for i in range(30)]
    uninterrupted = Engine(tiny_model, processor, max_num_seqs=2).generate(requests)
    assert {r["_row"]: r["model_output"] for r in results} == {i: r.text for i, r in enumerate(uninterrupted)}
    assert all(r["n"] == r["_row"] and r["usage"]["completion_tokens"] >= 1 for r in results)


class _FakeOpenAI(BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible server: decodes the audio and says what it heard."""

    seen: list[dict] = []

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != "Bearer secret-key":
            self._reply(401, {"error": {"message": "bad key", "type": "auth"}})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self._authorised() and self.path == "/v1/models":
            self._reply(200, {"object": "list", "data": [{"id": "midashenglm-test", "object": "model",
                                                          "created": 0, "owned_by": "me"}]})

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        user = body["messages"][-1]["content"]
        audio = next(p for p in user if p["type"] == "input_audio")["input_audio"]
        wave = load_audio(base64.b64decode(audio["data"]))
        question = next(p["text"] for p in user if p["type"] == "text")
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else "-"
        text = f"{len(wave) / 16000:.2f} s {audio['format']} | {question} | {system}"
        self._reply(200, {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        })


@pytest.fixture
def openai_server():
    _FakeOpenAI.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_run_against_an_openai_compatible_endpoint(openai_server, audio_dir, tmp_path):
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(
        "audio,prompt,system_prompt\n"
        f"{audio_dir / 'tone.wav'},What is it?,\n"
        f"{audio_dir / 'long.flac'},,Answer briefly.\n"
        f"{audio_dir / 'missing.wav'},,\n"
    )
    out = tmp_path / "remote.jsonl"
    done = cli("run", manifest, "--out", out, "--endpoint", openai_server, "--api-key", "secret-key",
               "--concurrency", 2, "--max-new-tokens", 7, "--temperature", 0.5, "--seed", 3,
               "--max-error-rate", 0.5, timeout=120)
    assert done.returncode == 0, done.stderr  # 1 of 3 rows failed: within --max-error-rate
    results = sorted(read_jsonl(out), key=lambda r: r["_row"])
    assert results[0]["model_output"] == "2.50 s wav | What is it? | -"  # no system prompt by default
    assert results[1]["model_output"] == f"12.00 s wav | {CAPTION_PROMPT} | Answer briefly."
    assert results[1]["usage"]["completion_tokens"] == 3
    assert "missing.wav" in results[2]["error"]
    request = _FakeOpenAI.seen[0]
    assert request["model"] == "midashenglm-test"  # the first model the server lists
    assert request["max_tokens"] == 7 and request["temperature"] == 0.5 and request["seed"] == 3

    denied = cli("run", manifest, "--out", tmp_path / "denied.jsonl", "--endpoint",
                 openai_server + "/v1/chat/completions", "--api-key", "wrong", timeout=120)
    assert denied.returncode == 2 and "--endpoint" in denied.stderr and "Traceback" not in denied.stderr


def test_run_needs_a_model_or_an_endpoint(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "x.wav"}) + "\n")
    out = cli("run", manifest, "--out", tmp_path / "o.jsonl", timeout=60, env=no_default_model(tmp_path / "none"))
    assert out.returncode == 2 and "--model" in out.stderr and "Traceback" not in out.stderr
    bad = tmp_path / "m.txt"
    bad.write_text("x")
    out = cli("run", bad, "--out", tmp_path / "o.jsonl", "--endpoint", "http://127.0.0.1:9", timeout=60)
    assert out.returncode == 2 and ".jsonl or .csv" in out.stderr


def test_wav_payload_round_trips():
    from midashenglm.inference.client import api_base, wav_bytes

    wave = np.sin(np.linspace(0, 100, 16000)).astype(np.float32) * 0.5
    assert np.abs(load_audio(wav_bytes(wave)) - wave).max() < 1e-4
    assert api_base("http://h:8000") == api_base("http://h:8000/v1/chat/completions") == "http://h:8000/v1"


def test_run_refuses_to_write_over_its_manifest_and_reads_bom_csv(tiny_checkpoint, tmp_path):
    write_wav(tmp_path / "a.wav", 0.5)
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("\ufeffaudio,prompt\na.wav,What is it?\n", encoding="utf-8")
    same = cli("run", manifest, "--out", manifest, "-m", tiny_checkpoint, "--overwrite")
    assert same.returncode == 2 and "is the manifest itself" in same.stderr
    assert manifest.read_text(encoding="utf-8").startswith("\ufeffaudio")  # untouched
    out = tmp_path / "out.jsonl"
    ok = cli("run", manifest, "--out", out, "-m", tiny_checkpoint, "--max-new-tokens", 2)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(out.read_text())["audio"] == "a.wav"
    latin = tmp_path / "latin.csv"
    latin.write_bytes("audio\ncaf\xe9.wav\n".encode("latin-1"))
    bad = cli("run", latin, "--out", tmp_path / "x.jsonl", "-m", tiny_checkpoint)
    assert bad.returncode == 2 and "latin.csv: not UTF-8 text" in bad.stderr and "Traceback" not in bad.stderr
