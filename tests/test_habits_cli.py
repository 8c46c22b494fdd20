"""One set of habits for the CLI and the server (issue 10): the same defaults (no injected
system prompt, the checkpoint's generation_config), manifest-ordered results, exit codes
that show failure, one-line errors, documented options."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from midashenglm.inference import Engine
from midashenglm.serve.app import ServeConfig, create_app
from tests.conftest import clip
from tests.serve_helpers import ServerThread

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "midashenglm.cli"]
ENV = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"HF_HUB_OFFLINE": "1"}
QUESTION = "What can be heard?"


def cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


@pytest.fixture(scope="module")
def sampling_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint whose generation_config asks for sampling."""
    folder = tmp_path_factory.mktemp("sampling") / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config.update(do_sample=True, temperature=1.3, top_p=0.95, top_k=40)
    config_path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "clip.wav"
    sf.write(path, clip(3.0, seed=5), 16000, subtype="PCM_16")
    return path


def serve(checkpoint: Path, **limits) -> ServerThread:
    engine = Engine.from_pretrained(checkpoint, device="cpu", dtype="float32")
    return ServerThread(create_app(engine, ServeConfig(served_model_name="m", **limits), close_engine=True))


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "generation_config-sampling"])
def test_cli_and_server_answer_alike(tiny_checkpoint, sampling_checkpoint, wav, sampled):
    checkpoint = sampling_checkpoint if sampled else tiny_checkpoint
    seed = ["--seed", 11] if sampled else []
    local = cli("ask", wav, QUESTION, "--model", checkpoint, "--max-new-tokens", 12, "--json", *seed)
    assert local.returncode == 0, local.stderr
    mine = json.loads(local.stdout)
    with serve(checkpoint) as srv:
        body = {"model": "m", "max_tokens": 12, "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.read_bytes()).decode(),
                                                    "format": "wav"}},
            {"type": "text", "text": QUESTION}]}]}
        if sampled:
            body["seed"] = 11
        reply = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120).json()
    assert reply["usage"]["prompt_tokens"] == mine["prompt_tokens"]  # no system prompt on either side
    assert reply["choices"][0]["message"]["content"] == mine["text"]
    if sampled:  # the CLI followed generation_config: a greedy answer would differ (checked below)
        greedy = cli("ask", wav, QUESTION, "--model", checkpoint, "--max-new-tokens", 12, "--json",
                     "--temperature", 0)
        assert json.loads(greedy.stdout)["text"] != mine["text"]


def test_system_prompt_is_added_only_when_asked(tiny_checkpoint, wav):
    plain = json.loads(cli("ask", wav, QUESTION, "-m", tiny_checkpoint, "--max-new-tokens", 1, "--json").stdout)
    asked = json.loads(cli("ask", wav, QUESTION, "-m", tiny_checkpoint, "--max-new-tokens", 1, "--json",
                           "--system-prompt", "Be brief.").stdout)
    assert asked["prompt_tokens"] > plain["prompt_tokens"]


def test_run_endpoint_rows_match_local_rows_in_manifest_order(tiny_checkpoint, tmp_path):
    clips = []
    for i, seconds in enumerate([6.0, 0.5, 4.0, 1.0, 3.0, 0.7]):  # long and short: finish out of order
        path = tmp_path / f"{i}.wav"
        sf.write(path, clip(seconds, seed=i), 16000, subtype="PCM_16")
        clips.append(path)
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(p), "id": i}) + "\n" for i, p in enumerate(clips)))
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    done = cli("run", manifest, "-o", local, "-m", tiny_checkpoint, "--max-new-tokens", 6)
    assert done.returncode == 0, done.stderr
    with serve(tiny_checkpoint) as srv:
        done = cli("run", manifest, "-o", remote, "--endpoint", srv.url, "--max-new-tokens", 6,
                   "--concurrency", 4)
    assert done.returncode == 0, done.stderr
    for out in (local, remote):
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["_row"] for r in rows] == list(range(len(clips)))  # manifest order
    local_rows = [json.loads(line) for line in local.read_text().splitlines()]
    remote_rows = [json.loads(line) for line in remote.read_text().splitlines()]
    for a, b in zip(local_rows, remote_rows, strict=True):
        assert set(a["usage"]) == set(b["usage"])
        assert b["usage"]["audio_tokens"] == a["usage"]["audio_tokens"] is not None
        assert a["model_output"] == b["model_output"]


def test_systematic_endpoint_errors_stop_with_exit_2(tiny_checkpoint, wav, tmp_path):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(wav), "n": i}) + "\n" for i in range(12)))
    with serve(tiny_checkpoint, max_tokens_limit=64) as srv:
        wrong = cli("run", manifest, "-o", tmp_path / "a.jsonl", "--endpoint", srv.url,
                    "--served-model", "nope")
        too_many = cli("run", manifest, "-o", tmp_path / "b.jsonl", "--endpoint", srv.url,
                       "--max-new-tokens", 5000, "--concurrency", 1)
    assert wrong.returncode == 2 and "'nope'" in wrong.stderr and "--served-model" in wrong.stderr
    assert not (tmp_path / "a.jsonl").exists() or not (tmp_path / "a.jsonl").read_text()
    assert too_many.returncode == 2 and "3 requests in a row" in too_many.stderr, too_many.stderr
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) < 12  # stopped early
    refused = cli("run", manifest, "-o", tmp_path / "c.jsonl", "--endpoint", "http://127.0.0.1:9")
    assert refused.returncode == 2 and "error:" in refused.stderr


def test_failed_rows_exit_1_unless_within_max_error_rate(tiny_checkpoint, wav, tmp_path):
    manifest = tmp_path / "jobs.jsonl"
    rows = [{"audio": str(wav)}] * 3 + [{"audio": str(tmp_path / "missing.wav")}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    strict = cli("run", manifest, "-o", tmp_path / "a.jsonl", "-m", tiny_checkpoint, "--max-new-tokens", 2)
    assert strict.returncode == 1
    assert "1 of 4 rows failed" in strict.stderr and "missing.wav" in strict.stderr
    lenient = cli("run", manifest, "-o", tmp_path / "b.jsonl", "-m", tiny_checkpoint, "--max-new-tokens", 2,
                  "--max-error-rate", 0.3)
    assert lenient.returncode == 0, lenient.stderr


def test_long_error_stays_one_line_in_a_file(tiny_checkpoint, tmp_path):
    folder = tmp_path / ("a-rather-long-folder-name-" * 6)
    folder.mkdir()
    corrupt = folder / ("corrupt-recording-with-a-long-name-" * 3 + ".wav")
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        done = subprocess.run([*CLI, "caption", str(corrupt), "-m", str(tiny_checkpoint)],
                              stdout=subprocess.PIPE, stderr=stderr, text=True, env=ENV, timeout=300)
    assert done.returncode == 2
    errors = [line for line in log.read_text().splitlines() if "error:" in line]
    assert errors and str(corrupt) in errors[0], log.read_text()


def test_bench_help_states_the_cpu_budget():
    done = subprocess.run([*CLI, "bench", "memory", "--help"], capture_output=True, text=True,
                          env=ENV | {"COLUMNS": "300"}, timeout=120)
    assert "none on CPU" not in done.stdout and "MemAvailable" in done.stdout


def _options(command: list[str]) -> set[str]:
    import typer

    from midashenglm.cli import app

    group = typer.main.get_command(app)
    for name in command:
        group = group.commands[name]
    return {opt for p in group.params for opt in p.opts + p.secondary_opts if opt.startswith("--")}


@pytest.mark.parametrize("command,doc", [
    (["caption"], "inference.md"), (["ask"], "inference.md"), (["transcribe"], "inference.md"),
    (["run"], "inference.md"), (["serve"], "serving.md"), (["bench", "memory"], "efficiency.md"),
    (["train"], "training.md"), (["finetune"], "training.md"), (["plot"], "training.md"),
    (["probe"], "probe.md"), (["data", "pack"], "data.md"), (["data", "stats"], "data.md"),
    (["curate"], "curation.md"), (["data", "synth"], "data.md"),
])
def test_every_option_is_documented(command, doc):
    text = (ROOT / "docs" / doc).read_text()
    documented = set(re.findall(r"`(--[a-z0-9-]+)", text))
    missing = sorted(_options(command) - documented - {"--help"})
    assert not missing, f"{' '.join(command)}: {missing} not in docs/{doc}"


def test_serve_vllm_script_defaults_to_loopback():
    script = (ROOT / "scripts" / "serve_vllm.sh").read_text()
    assert '${HOST:-127.0.0.1}' in script and "VLLM_API_KEY" in script and "MIDASHENGLM_API_KEY" in script
