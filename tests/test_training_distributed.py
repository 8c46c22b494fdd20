"""torchrun with 2 processes (gloo, CPU) trains exactly as 1 process with the same global batch.

1 process with ``gradient_accumulation_steps=2`` and 2 processes with 1 take the same
micro-batches per optimiser step (rank r takes micro-batches r, r+2, ...) and normalise
by the step's label tokens over all of them, so per-step losses agree to 1e-5 for DDP
and for FSDP2 (``fully_shard``), over several steps (the updates agree too). DDP runs the
align stage (everything trains), FSDP the sft stage (LoRA adapters sharded with the rest;
their initial weights must agree across ranks), with one sample in two unreadable and
micro-batches of one sample (a rank often has nothing to train on and runs a filler at
weight 0) and 3 validation batches over 2 ranks: FSDP gathers in every forward, so any
rank running fewer forwards than the other hangs. LoRA dropout is 0: with dropout each
rank draws its own masks, so no run on another number of processes can match exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from midashenglm.training.recipe import Recipe
from tests.training_helpers import CONFIGS, metric_rows, train_config, write_caption_manifest

STEPS = 3
SETTINGS = (f"training.max_steps={STEPS}", "checkpoint.every_steps=0", "data.max_batch_size=2",
            "optimizer.name=adamw")
STAGES = {"ddp": ("align",), "fsdp": ("sft", "lora.dropout=0", "data.max_batch_size=1", "validation.every_steps=2")}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_caption_manifest(tmp_path_factory.mktemp("distributed") / "data", n=8)


def _half_bad(manifest, folder):
    """The manifest with an unreadable clip after every good one, and 3 validation rows."""
    (folder / "bad.wav").write_bytes(b"not a wav file")
    rows = manifest.read_text().splitlines()
    good = [json.loads(r) | {"audio": str(manifest.parent / json.loads(r)["audio"])} for r in rows]
    bad = [{"id": f"bad{i}", "audio": str(folder / "bad.wav"), "answer": "x", "duration": 1.0} for i in range(8)]
    train, validation = folder / "half-bad.jsonl", folder / "validation.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for pair in zip(good, bad, strict=True) for r in pair))
    validation.write_text("".join(json.dumps(r) + "\n" for r in good[:3]))
    return train, validation


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(strategy, manifest, tiny_checkpoint, tmp_path):
    stage, *extra = STAGES[strategy]
    if strategy == "fsdp":
        manifest, validation = _half_bad(manifest, tmp_path)
        extra.append(f"data.validation={validation}")
    one = tmp_path / "one-process"
    cfg = train_config(stage, one, tiny_checkpoint, manifest, *SETTINGS, *extra,
                       "training.gradient_accumulation_steps=2")
    Recipe(cfg, progress=False).run()
    expected = metric_rows(one)
    run = tmp_path / strategy
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "midashenglm", "train", str(CONFIGS / f"{stage}.yaml"),
            f"model.checkpoint={tiny_checkpoint}", f"data.train={manifest}", f"output_dir={run}",
            "logging.tensorboard=false", f"training.distributed={strategy}", *SETTINGS, *extra, "--no-progress"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    got = metric_rows(run)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, abs=1e-5), (strategy, step)
    # Validation uses the running BatchNorm statistics: 2 ranks average theirs after each
    # step, 1 process updates them micro-batch after micro-batch, so these agree less closely.
    assert metric_rows(run, "val_loss") == pytest.approx(metric_rows(one, "val_loss"), abs=2e-3)
    from midashenglm.modeling.model import MiDashengLM

    MiDashengLM.from_pretrained(run / "model")  # rank 0 exported the gathered model
