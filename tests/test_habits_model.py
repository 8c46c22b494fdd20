"""How users load, save and create models (issue 10): each habit works or fails with one clear line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from midashenglm import MiDashengLM, MiDashengLMProcessor
from midashenglm.checkpoint import CheckpointError, load_model, resolve_device
from tests.conftest import clip

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "midashenglm.cli"]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}
QWEN3 = {"model_type": "qwen3", "vocab_size": 600, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
         "head_dim": 16, "max_position_embeddings": 512}


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=OFFLINE, cwd=cwd)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    return lines[0]


def expected_auto_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wav") / "clip.wav"
    sf.write(path, clip(1.5, seed=3), 16000)
    return path


# ------------------------------------------------------------ 1. init --decoder inline JSON
def test_init_accepts_inline_json(tmp_path):
    out = run("init", "--decoder", json.dumps(QWEN3), "--out", str(tmp_path / "ck"))
    assert out.returncode == 0, out.stderr
    info = json.loads(run("info", str(tmp_path / "ck"), "--json").stdout)
    assert info["decoder"]["model_type"] == QWEN3["model_type"]
    assert info["decoder"]["vocab_size"] == QWEN3["vocab_size"]
    assert info["decoder"]["hidden_size"] == QWEN3["hidden_size"]


@pytest.mark.parametrize(("decoder", "message"), [
    ("[1,2]", "expected a JSON object"),
    ('{"model_type":"nope"}', "model_type 'nope' is not a transformers model type"),
    ('{"vocab_size": 600}', "no model_type"),
    ("{not json", "not valid JSON"),
    ("nope", "not a preset"),
])
def test_init_bad_decoder_is_one_clear_line(tmp_path, decoder, message):
    line = one_error_line(run("init", "--decoder", decoder, "--out", str(tmp_path / "ck")))
    assert message in line
    assert not (tmp_path / "ck").exists()


# ------------------------------------------------------------ 2. a saved folder runs alone
def greedy(model, processor, wave) -> list[int]:
    conversation = [{"role": "user", "content": [
        {"type": "audio", "audio": wave, "sampling_rate": 16000},
        {"type": "text", "text": "Write an audio caption describing the sound"},
    ]}]
    batch = processor.apply_chat_template(conversation, tokenize=True)
    tokens = model.generate(**batch, max_new_tokens=6, do_sample=False)
    return tokens[0].tolist()


def test_save_both_then_reload_from_the_folder_alone(tmp_path, tiny_model, processor, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wave = clip(2.0, seed=5)
    expected = greedy(tiny_model, processor, wave)
    folder = tmp_path / "saved"
    tiny_model.save_pretrained(folder)
    processor.save_pretrained(folder)

    model = MiDashengLM.from_pretrained(folder)
    reloaded = MiDashengLMProcessor.from_pretrained(folder)
    assert reloaded.chat_template == processor.chat_template
    assert len(reloaded.tokenizer) == len(processor.tokenizer)
    assert greedy(model, reloaded, wave) == expected
    # the same folder through the loader every command uses
    model2, processor2 = load_model(folder, device="cpu")
    assert greedy(model2, processor2, wave) == expected


def test_processor_from_a_weights_only_folder_says_what_to_do(tmp_path, tiny_model):
    folder = tmp_path / "weights-only"
    tiny_model.save_pretrained(folder)
    with pytest.raises(CheckpointError) as err:
        MiDashengLMProcessor.from_pretrained(folder)
    text = str(err.value)
    assert str(folder) in text and "processor.save_pretrained" in text
    assert "sentencepiece" not in text


# ------------------------------------------------------------ 3. transformers' keywords, devices
def test_torch_dtype_is_an_alias_of_dtype(tiny_checkpoint):
    model = MiDashengLM.from_pretrained(tiny_checkpoint, torch_dtype=torch.bfloat16)
    assert {p.dtype for p in model.decoder.parameters()} == {torch.bfloat16}
    model = MiDashengLM.from_pretrained(tiny_checkpoint, dtype="bfloat16", torch_dtype=torch.bfloat16)
    assert {p.dtype for p in model.decoder.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="differ"):
        MiDashengLM.from_pretrained(tiny_checkpoint, dtype="float16", torch_dtype="bfloat16")


@pytest.mark.parametrize("device_map", ["cpu", torch.device("cpu"), {"": "cpu"}])
def test_device_map_on_one_device(tiny_checkpoint, device_map):
    model = MiDashengLM.from_pretrained(tiny_checkpoint, device_map=device_map)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_device_auto_and_device_map_auto(tiny_checkpoint):
    want = expected_auto_device()
    assert same_device(resolve_device("auto"), want)
    for kwargs in ({"device": "auto"}, {"device_map": "auto"}):
        model = MiDashengLM.from_pretrained(tiny_checkpoint, **kwargs)
        assert same_device(next(model.parameters()).device, want)
    model, _ = load_model(tiny_checkpoint, device_map={"": "cpu"}, torch_dtype="bfloat16")
    assert next(model.parameters()).device.type == "cpu"
    assert next(model.decoder.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("device_map", [{"decoder": 0, "audio_encoder": "cpu"}, "balanced", "sequential"])
def test_per_module_device_maps_are_refused(tiny_checkpoint, device_map):
    with pytest.raises(ValueError, match="not supported"):
        MiDashengLM.from_pretrained(tiny_checkpoint, device_map=device_map)


def unavailable_devices() -> list[str]:
    devices = ["tpu", f"cuda:{max(torch.cuda.device_count(), 7)}"]
    if not torch.cuda.is_available():
        devices.append("cuda")
    if not torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@pytest.mark.parametrize("device", unavailable_devices())
def test_unavailable_device_is_a_clear_value_error(tiny_checkpoint, device):
    with pytest.raises(ValueError, match=re.escape(repr(device))):
        resolve_device(device)
    with pytest.raises(ValueError):
        MiDashengLM.from_pretrained(tiny_checkpoint, device=device)
    with pytest.raises(ValueError):
        load_model(tiny_checkpoint, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_device_cuda_without_cuda_is_one_error_line(tiny_checkpoint, wav):
    line = one_error_line(run("caption", str(wav), "--model", str(tiny_checkpoint), "--device", "cuda"))
    assert "CUDA is not available on this machine" in line


# ------------------------------------------------------------ 4. the README snippet as written
def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_readme_snippet_runs_as_written(tmp_path, tiny_checkpoint, wav):
    code = readme_snippet()
    assert '"cuda")' not in code.replace('"cuda" if', "")  # no hard-coded CUDA device
    code = code.replace('"mispeech/midashenglm-7b"', repr(str(tiny_checkpoint))).replace('"clip.wav"', repr(str(wav)))
    code = code.replace("max_new_tokens=128", "max_new_tokens=4")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=OFFLINE, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    saved = tmp_path / "my-model"  # the snippet saves model and processor: that folder runs alone
    assert (saved / "config.json").is_file() and (saved / "tokenizer_config.json").is_file()
    MiDashengLMProcessor.from_pretrained(saved)


def test_quickstart_runs_with_the_default_device(tiny_checkpoint, wav):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--model", str(tiny_checkpoint),
                          "--audio", str(wav), "--max-new-tokens", "2"],
                         capture_output=True, text=True, timeout=300, env=OFFLINE)
    assert out.returncode == 0, out.stderr
    assert f"on {expected_auto_device().type}" in out.stdout


# ------------------------------------------------------------ 5. broken files, missing folders
@pytest.fixture
def copy_of(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, folder)
    return folder


def test_truncated_safetensors_names_the_file(copy_of):
    weights = copy_of / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as err:
        MiDashengLM.from_pretrained(copy_of)
    assert str(weights) in str(err.value)
    line = one_error_line(run("info", str(copy_of)))
    assert str(weights) in line and "not a valid safetensors file (truncated?)" in line


def test_garbage_safetensors_names_the_file(copy_of):
    weights = copy_of / "model.safetensors"
    weights.write_bytes(b"\x00" * 7)
    line = one_error_line(run("info", str(copy_of)))
    assert str(weights) in line and "not a valid safetensors file" in line


def test_broken_config_names_the_file(copy_of):
    config = copy_of / "config.json"
    config.write_text('{"model_type": "midashenglm", ')
    with pytest.raises(CheckpointError, match="not valid JSON") as err:
        MiDashengLM.from_pretrained(copy_of)
    assert str(config) in str(err.value)
    assert str(config) in one_error_line(run("info", str(copy_of)))
    config.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object") as err:
        MiDashengLM.from_pretrained(copy_of)
    assert str(config) in str(err.value)


@pytest.mark.parametrize("path", ["/nonexistent", "./not/here", "~/no-such-midashenglm", "a/b/c"])
def test_missing_local_folder_says_it_does_not_exist(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="does not exist") as err:
        MiDashengLM.from_pretrained(path)
    assert "Repo id" not in str(err.value)


def test_init_refuses_a_file_as_out_and_fits_an_inline_decoder_to_the_tokenizer(tmp_path):
    import json
    import subprocess
    import sys

    cli = [sys.executable, "-m", "midashenglm.cli", "init", "--encoder", "tiny"]
    a_file = tmp_path / "c0.wav"
    a_file.write_bytes(b"RIFF")
    bad = subprocess.run([*cli, "--decoder", "tiny", "--out", str(a_file)], capture_output=True, text=True)
    assert bad.returncode == 2 and "is a file" in bad.stderr and "Traceback" not in bad.stderr
    decoder = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
    out = tmp_path / "m2"
    ok = subprocess.run([*cli, "--decoder", json.dumps(decoder), "--out", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    from tokenizers import Tokenizer

    tokens = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    assert json.loads((out / "config.json").read_text())["text_config"]["vocab_size"] == tokens == 512
