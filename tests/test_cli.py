"""The command line, run as a user runs it: a real subprocess of the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from midashenglm import MiDashengLM

CLI = [sys.executable, "-m", "midashenglm.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_help_explains_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "info" in out.stdout and "init" in out.stdout


@pytest.fixture(scope="module")
def initialised(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("init") / "tiny"
    out = run("init", "--encoder", "tiny", "--decoder", "tiny", "--out", str(folder), "--seed", "1")
    assert out.returncode == 0, out.stderr
    return folder


def test_init_writes_a_loadable_checkpoint(initialised):
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "preprocessor_config.json"):
        assert (initialised / name).is_file(), name
    model = MiDashengLM.from_pretrained(initialised)
    from midashenglm import MiDashengLMProcessor

    processor = MiDashengLMProcessor.from_pretrained(initialised)
    assert model.config.audio_token_id == processor.audio_token_id
    assert model.generation_config.eos_token_id == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_info_table_and_json(initialised):
    table = run("info", str(initialised))
    assert table.returncode == 0, table.stderr
    assert "audio_encoder" in table.stdout and "5 per second" in table.stdout
    data = json.loads(run("info", str(initialised), "--json").stdout)
    model = MiDashengLM.from_pretrained(initialised)
    counts = data["parameters"]
    assert counts["audio_encoder"] == sum(p.numel() for p in model.audio_encoder.parameters())
    assert counts["audio_projector"] == sum(p.numel() for p in model.audio_projector.parameters())
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert data["audio_tokens_per_second"] == 5.0
    assert data["context_window_tokens"] == 4096
    assert data["dtype"] == ["float32", "int64"]


def test_init_from_a_decoder_config_file(tmp_path):
    decoder = {"model_type": "qwen3", "vocab_size": 600, "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
               "head_dim": 16, "max_position_embeddings": 512}
    (tmp_path / "decoder.json").write_text(json.dumps(decoder))
    out = run("init", "--decoder", str(tmp_path / "decoder.json"), "--out", str(tmp_path / "ck"),
              "--dtype", "bfloat16")
    assert out.returncode == 0, out.stderr
    data = json.loads(run("info", str(tmp_path / "ck"), "--json").stdout)
    assert data["decoder"]["model_type"] == "qwen3" and "bfloat16" in data["dtype"]


@pytest.mark.parametrize(("args", "message"), [
    (("info", "/nonexistent/checkpoint"), "no such checkpoint folder"),
    (("init", "--encoder", "huge", "--out", "/tmp/x-never"), "--encoder 'huge'"),
    (("init", "--decoder", "nope", "--out", "/tmp/x-never"), "not a preset"),
])
def test_user_errors_have_no_traceback(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_init_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    out = run("init", "--out", str(tmp_path))
    assert out.returncode == 2 and "not empty" in out.stderr


def test_init_takes_inline_json_longer_than_a_file_name(tmp_path):
    """An inline --decoder config over 255 bytes once crashed with 'File name too long'."""
    from typer.testing import CliRunner

    from midashenglm.cli import app

    config = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 512, "rope_theta": 1000000.0, "tie_word_embeddings": True,
              "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_dropout": 0.0}
    text = json.dumps(config, indent=1)
    assert len(text.encode()) > 255
    result = CliRunner().invoke(app, ["init", "--out", str(tmp_path / "m"), "--decoder", text])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["text_config"]
    assert saved["hidden_size"] == 64 and saved["num_hidden_layers"] == 1
