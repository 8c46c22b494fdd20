"""torchrun with 2 processes (gloo, CPU) trains exactly as 1 process with the same global batch.

1 process with ``gradient_accumulation_steps=2`` and 2 processes with 1 take the same
micro-batches per optimiser step (rank r takes micro-batches r, r+2, ...) and normalise
by the step's label tokens over all of them, so per-step losses agree to 1e-5 for DDP
and for FSDP2 (``fully_shard``), over several steps (the updates agree too).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from midashenglm.training.recipe import Recipe
from tests.training_helpers import CONFIGS, metric_rows, train_config, write_caption_manifest

STEPS = 3
SETTINGS = (f"training.max_steps={STEPS}", "checkpoint.every_steps=0", "data.max_batch_size=2",
            "optimizer.name=adamw")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("distributed")
    manifest = write_caption_manifest(folder / "data", n=8)
    run = folder / "one-process"
    cfg = train_config("align", run, tiny_checkpoint, manifest, *SETTINGS,
                       "training.gradient_accumulation_steps=2")
    Recipe(cfg, progress=False).run()
    return manifest, metric_rows(run)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(strategy, reference, tiny_checkpoint, tmp_path):
    manifest, expected = reference
    run = tmp_path / strategy
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "midashenglm", "train", str(CONFIGS / "align.yaml"),
            f"model.checkpoint={tiny_checkpoint}", f"data.train={manifest}", f"output_dir={run}",
            "logging.tensorboard=false", f"training.distributed={strategy}", *SETTINGS, "--no-progress"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    got = metric_rows(run)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, abs=1e-5), (strategy, step)
    from midashenglm.modeling.model import MiDashengLM

    MiDashengLM.from_pretrained(run / "model")  # rank 0 exported the gathered model
