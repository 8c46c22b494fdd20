"""The processor remote code saved checkpoints carry, loaded the way vLLM loads it.

vLLM serves MiDashengLM with ``AutoProcessor.from_pretrained(folder, trust_remote_code=True)``
and calls the result as ``processor(text=..., audio=[arrays], return_tensors="pt")``: these
tests do the same, in a subprocess where the midashenglm package cannot be imported, and
check the result against the package's own processor token for token and sample for sample.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from midashenglm import hf_remote
from midashenglm.hf_remote import processing_midashenglm as remote
from midashenglm.modeling import geometry
from midashenglm.processing import MiDashengLMProcessor
from tests.conftest import clip

RATE = 16000
# 0.1 s, 0.2 s, 1 s, 10.08 s, 35 s, and a few lengths around the 3200-sample minimum.
LENGTHS = [1600, 3200, 16000, 161280, 560000, 1, 3199, 3201]
WRAPPED = "<|audio_bos|><|AUDIO|><|audio_eos|>"

# Runs where vLLM runs: transformers only. ``sys.modules["midashenglm"] = None`` makes any
# import of the package fail, so the remote code is checked to stand alone.
CHILD = r"""
import json, sys
sys.modules["midashenglm"] = None
import numpy as np
from transformers import AutoProcessor

folder, clips_file, calls_file, out_file = sys.argv[1:5]
p = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
clips = np.load(clips_file)
out = {"attributes": np.array(json.dumps({
    "class": type(p).__name__, "module": type(p).__module__,
    "audio_token": p.audio_token, "audio_bos_token": p.audio_bos_token,
    "audio_eos_token": p.audio_eos_token, "sampling_rate": p.feature_extractor.sampling_rate,
    "feature_extractor": type(p.feature_extractor).__name__,
}))}
for k, call in enumerate(json.load(open(calls_file))):
    audio = [clips[f"c{i}"] for i in call["clips"]] or None
    # as vLLM calls it (vllm/multimodal/processing/context.py, call_hf_processor)
    batch = p(text=call["text"], audio=audio, return_tensors="pt", truncation=False)
    for name, value in batch.items():
        out[f"{k}:{name}"] = value.numpy()
np.savez(out_file, **out)
"""


def _calls(ours: MiDashengLMProcessor) -> list[dict]:
    chat = ours.apply_chat_template(
        [{"role": "user", "content": [
            {"type": "audio", "path": "a.wav"}, {"type": "text", "text": "Compare"},
            {"type": "audio", "path": "b.wav"}, {"type": "text", "text": "with this."},
        ]}],
        tokenize=False,
    )
    return [
        # vLLM's own call: its dummy text, one wrapped placeholder per clip
        {"text": WRAPPED * len(LENGTHS), "clips": list(range(len(LENGTHS)))},
        {"text": chat, "clips": [0, 4]},
        # a batch; bare and half-wrapped placeholders get wrapped as needed
        {"text": ["describe <|AUDIO|> please", f"{WRAPPED} and <|AUDIO|><|audio_eos|> too"],
         "clips": [2, 3, 1]},
        {"text": "hello world", "clips": []},
    ]


@pytest.fixture(scope="module")
def remote_outputs(tiny_checkpoint, tmp_path_factory):
    """Outputs of the checkpoint's AutoProcessor, run in a subprocess without midashenglm."""
    work = tmp_path_factory.mktemp("hf-remote")
    ours = MiDashengLMProcessor.from_pretrained(tiny_checkpoint)
    clips = {f"c{i}": clip(n / RATE, seed=i) for i, n in enumerate(LENGTHS)}
    assert [len(c) for c in clips.values()] == LENGTHS
    np.savez(work / "clips.npz", **clips)
    calls = _calls(ours)
    (work / "calls.json").write_text(json.dumps(calls))
    env = {**os.environ, "HF_MODULES_CACHE": str(work / "modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_checkpoint), str(work / "clips.npz"),
         str(work / "calls.json"), str(work / "out.npz")],
        capture_output=True, text=True, timeout=300, env=env, cwd=work,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "instantiate a model of type" not in done.stderr  # loads without warnings
    return ours, clips, calls, dict(np.load(work / "out.npz"))


def test_remote_formula_agrees_with_the_package():
    """The remote file carries its own copy of the formula; the package's is the truth."""
    assert remote.MIN_AUDIO_SAMPLES == geometry.MIN_AUDIO_SAMPLES
    lengths = set(range(0, 20000)) | set(range(0, 3_000_000, 997))
    lengths |= {k * 3200 + d for k in range(1, 300) for d in (-1, 0, 1)}
    for n in sorted(lengths):
        assert remote.num_audio_tokens(n) == geometry.num_audio_tokens(n), n
    for hop, stride, sub, minimum in [(160, 4, 5, 3200), (320, 2, 3, 0), (100, 4, 1, 1600)]:
        for n in range(0, 100000, 37):
            assert remote.num_audio_tokens(n, hop, stride, sub, minimum) == \
                geometry.num_audio_tokens(n, hop_length=hop, patch_stride=stride,
                                          subsample_factor=sub, min_samples=minimum), n


def test_checkpoint_carries_the_remote_code(tiny_checkpoint):
    assert (tiny_checkpoint / hf_remote.REMOTE_CODE_FILE).read_bytes() == \
        hf_remote.source_path().read_bytes()
    entry = {"AutoProcessor": "processing_midashenglm.MiDashengLMProcessor"}
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        data = json.loads((tiny_checkpoint / name).read_text())
        assert data["auto_map"] == entry, name
        assert data["processor_class"] == "MiDashengLMProcessor", name
    processor_config = json.loads((tiny_checkpoint / "processor_config.json").read_text())
    assert processor_config["min_audio_samples"] == 3200
    assert processor_config["audio_token"] == "<|AUDIO|>"
    preprocessor = json.loads((tiny_checkpoint / "preprocessor_config.json").read_text())
    assert preprocessor["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert preprocessor["sampling_rate"] == RATE and preprocessor["do_normalize"] is False


def test_auto_processor_has_what_vllm_reads(remote_outputs):
    _, _, _, out = remote_outputs
    attributes = json.loads(str(out["attributes"]))
    assert attributes["class"] == "MiDashengLMProcessor"
    assert attributes["module"].startswith("transformers_modules.")  # the checkpoint's file
    assert attributes["audio_token"] == "<|AUDIO|>"
    assert attributes["audio_bos_token"] == "<|audio_bos|>"
    assert attributes["audio_eos_token"] == "<|audio_eos|>"
    assert attributes["sampling_rate"] == RATE
    assert attributes["feature_extractor"] == "Wav2Vec2FeatureExtractor"


def test_auto_processor_matches_the_package_processor(remote_outputs):
    ours, clips, calls, out = remote_outputs
    audio_id = ours.audio_token_id
    for k, call in enumerate(calls):
        audio = [clips[f"c{i}"] for i in call["clips"]]
        expected = ours(text=call["text"], audio=audio or None, sampling_rate=RATE)
        got = {name: torch.from_numpy(out[key]) for key in out
               if key.startswith(f"{k}:") for name in [key.split(":", 1)[1]]}
        assert set(got) == set(expected.keys()), (k, set(got), set(expected.keys()))
        assert torch.equal(got["input_ids"], expected["input_ids"]), k
        assert torch.equal(got["attention_mask"], expected["attention_mask"]), k
        counts = [geometry.num_audio_tokens(len(a)) for a in audio]
        assert int((got["input_ids"] == audio_id).sum()) == sum(counts), k
        if not audio:
            continue
        assert got["input_values"].dtype == torch.float32
        assert torch.equal(got["input_values"], expected["input_values"]), k
        assert got["audio_length"].tolist() == expected["audio_length"].tolist(), k
        # short clips are zero-padded to 3200 samples, the rest are kept whole
        assert got["audio_length"].tolist() == [max(len(a), 3200) for a in audio], k
        # each placeholder became one run of its clip's token count, in order
        runs = [len(run) for row in got["input_ids"].tolist()
                for run in "".join("a" if t == audio_id else " " for t in row).split()]
        assert runs == counts, k


def test_init_writes_the_remote_code(tmp_path):
    folder = tmp_path / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "midashenglm.cli", "init", "--out", str(folder)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (folder / "processing_midashenglm.py").read_bytes() == \
        hf_remote.source_path().read_bytes()
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        data = json.loads((folder / name).read_text())
        assert data["auto_map"] == dict(hf_remote.AUTO_MAP), name
        assert data["processor_class"] == "MiDashengLMProcessor", name


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_our_loader_never_imports_the_checkpoint_code(tiny_checkpoint, tmp_path):
    from midashenglm.checkpoint import load_model

    folder = _copy(tiny_checkpoint, tmp_path / "trap")
    trap = "raise RuntimeError('the checkpoint code was imported')\n"
    (folder / "processing_midashenglm.py").write_text(trap)
    (folder / "modeling_midashenglm.py").write_text(trap)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_midashenglm.MiDashengLMModel"}
    (folder / "config.json").write_text(json.dumps(config))
    before = set(sys.modules)
    model, processor = load_model(folder, device="cpu")
    again = MiDashengLMProcessor.from_pretrained(folder)
    assert processor.audio_token_id == again.audio_token_id == model.config.audio_token_id
    loaded = {name for name in set(sys.modules) - before if "midashenglm" in name.split(".")[-1]
              and not name.startswith("midashenglm")}
    assert not loaded, loaded


def _published(tiny_checkpoint: Path, to: Path) -> Path:
    """A checkpoint with remote code of its own: a marked file, a module it imports, and
    configs with fields the package would not write."""
    folder = _copy(tiny_checkpoint, to)
    body = hf_remote.source_path().read_text().split("\n", 1)[1]
    (folder / "processing_midashenglm.py").write_text(
        "# PUBLISHED-REMOTE-CODE marker\nfrom .helpers_midashenglm import HELPER  # noqa\n" + body)
    (folder / "helpers_midashenglm.py").write_text("HELPER = 'published'\n")
    entry = {"AutoProcessor": "processing_midashenglm.MiDashengLMProcessor"}
    (folder / "processor_config.json").write_text(json.dumps(
        {"auto_map": entry, "processor_class": "MiDashengLMProcessor", "published": 1}))
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {**preprocessor, "auto_map": entry, "published": True}, indent=4))
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer["auto_map"] = {**entry, "Published": "helpers_midashenglm.HELPER"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return folder


def test_a_published_checkpoint_keeps_its_remote_code(tiny_checkpoint, tiny_model, tmp_path):
    from midashenglm.checkpoint import load_model

    source = _published(tiny_checkpoint, tmp_path / "published")
    for way in ("processor", "load_model"):
        out = tmp_path / f"saved-{way}"
        if way == "processor":
            MiDashengLMProcessor.from_pretrained(source).save_pretrained(out)
        else:
            model, processor = load_model(source, device="cpu")
            model.save_pretrained(out)
            processor.save_pretrained(out)
        for name in ("processing_midashenglm.py", "helpers_midashenglm.py",
                     "processor_config.json", "preprocessor_config.json"):
            assert (out / name).read_bytes() == (source / name).read_bytes(), (way, name)
        saved = json.loads((out / "tokenizer_config.json").read_text())
        original = json.loads((source / "tokenizer_config.json").read_text())
        assert saved["auto_map"] == original["auto_map"], way
        assert saved["processor_class"] == original["processor_class"], way
        assert MiDashengLMProcessor.from_pretrained(out).audio_token_id == \
            tiny_model.config.audio_token_id


def test_an_older_own_version_is_replaced_on_save(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint, tmp_path / "old")
    old = hf_remote.OWN_MARKER.decode() + " an older version\n# ...\n"
    (folder / "processing_midashenglm.py").write_text(old)
    (folder / "processor_config.json").unlink()
    out = tmp_path / "new"
    MiDashengLMProcessor.from_pretrained(folder).save_pretrained(out)
    assert (out / "processing_midashenglm.py").read_bytes() == \
        hf_remote.source_path().read_bytes()
    assert json.loads((out / "processor_config.json").read_text())["auto_map"] == \
        dict(hf_remote.AUTO_MAP)


def test_remote_processor_refuses_bad_input(processor):
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0,
                                         do_normalize=False, return_attention_mask=True)
    p = remote.MiDashengLMProcessor(extractor, processor.tokenizer)
    with pytest.raises(ValueError, match="1 <|AUDIO|> placeholder"):
        p(text=WRAPPED, audio=[clip(1.0), clip(1.0)])
    with pytest.raises(ValueError, match="resample"):
        p(text=WRAPPED, audio=[clip(1.0)], sampling_rate=8000)
    with pytest.raises(ValueError, match="1-D"):
        p(text=WRAPPED, audio=[np.zeros((2, 16000), np.float32)])
    with pytest.raises(TypeError, match="float"):
        p(text=WRAPPED, audio=[np.zeros(16000, np.int16)])
    single = p(text=WRAPPED, audio=torch.from_numpy(clip(0.1)))  # one clip, as a tensor
    assert single["audio_length"].tolist() == [3200]
    assert torch.equal(single["input_values"][0, 1600:], torch.zeros(1600))


@pytest.mark.parametrize("wave,problem", [
    (np.full(16000, np.nan, np.float32), "NaN or infinite"),
    (np.array([0.0, np.inf] * 2000, np.float32), "NaN or infinite"),
    (np.zeros(0, np.float32), "no samples"),
], ids=["NaN", "inf", "empty"])
def test_the_remote_processor_refuses_what_ours_refuses(tiny_checkpoint, wave, problem):
    """vLLM hands clips to this processor: a NaN or empty clip must be an error there as in
    our loader (NonFiniteAudioError, EmptyAudioError), never silent padding (found by a tester)."""
    from transformers import AutoProcessor

    loaded = AutoProcessor.from_pretrained(str(tiny_checkpoint), trust_remote_code=True)
    with pytest.raises(ValueError, match=problem):
        loaded(text=[f"{loaded.audio_token} What?"], audio=[wave])


def test_an_auto_map_path_outside_the_folder_is_ignored(tiny_checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (tmp_path / "evil.py").write_text("raise SystemExit('checkpoint code ran')\n")
    for name in ("processor_config.json", "preprocessor_config.json"):
        config = json.loads((folder / name).read_text())
        config["auto_map"] = {"AutoProcessor": f"{tmp_path}/evil.MiDashengLMProcessor"}
        (folder / name).write_text(json.dumps(config))
    processor = MiDashengLMProcessor.from_pretrained(folder)  # no crash, no code run
    out = tmp_path / "saved"
    processor.save_pretrained(out)
    assert not (out / "evil.py").exists()
