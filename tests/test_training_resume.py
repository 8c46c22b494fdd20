"""Checkpoints and exact resume (CPU, fp32).

A run stopped by SIGTERM saves a checkpoint at the step it was on and exits; resumed, it
is killed with SIGKILL at a random step; resumed again, it finishes. Its per-step losses
equal those of an uninterrupted run (1e-6) and it trained on the same samples at every
step: none twice, none lost. LoRA dropout is on, so the RNG states are restored too.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from midashenglm.training import checkpointing
from midashenglm.training.recipe import Recipe
from tests.training_helpers import CONFIGS, metric_rows, train_config, write_caption_manifest

STEPS = 10
SETTINGS = (f"training.max_steps={STEPS}", "checkpoint.every_steps=3", "checkpoint.keep_last=2",
            "data.max_batch_size=3", "logging.log_samples=true", "lora.dropout=0.1")


def _launch(run: Path, checkpoint: Path, manifest: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "midashenglm", "train", str(CONFIGS / "sft.yaml"),
            f"model.checkpoint={checkpoint}", f"data.train={manifest}", f"output_dir={run}",
            "logging.tensorboard=false", *SETTINGS, "--no-progress", *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "metrics.jsonl").is_file() and max(metric_rows(run), default=0) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _samples(run: Path) -> dict[int, list[str]]:
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: r["ids"] for r in rows}


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_equals_uninterrupted(tiny_checkpoint, tmp_path):
    manifest = write_caption_manifest(tmp_path / "data", n=8)
    reference = tmp_path / "reference"
    Recipe(train_config("sft", reference, tiny_checkpoint, manifest, *SETTINGS), progress=False).run()
    expected = metric_rows(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))

    run = tmp_path / "interrupted"
    # 1. SIGTERM: the run saves a checkpoint at the step it is on and exits cleanly.
    proc = _launch(run, tiny_checkpoint, manifest)
    _wait_for_step(proc, run, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "continue with --resume" in err
    stopped_at = int(checkpointing.latest_checkpoint(run).name.split("-")[1])
    assert stopped_at >= 2

    # 2. Resume, then SIGKILL at a random later step: no chance to save anything.
    kill_at = random.Random().randint(stopped_at + 1, STEPS - 1)
    proc = _launch(run, tiny_checkpoint, manifest, "--resume")
    _wait_for_step(proc, run, kill_at)
    proc.kill()
    proc.wait(timeout=30)

    # 3. Resume again (in this process) and finish.
    cfg = train_config("sft", run, tiny_checkpoint, manifest, *SETTINGS)
    Recipe(cfg, resume=True, progress=False).run()

    got = metric_rows(run)
    assert sorted(got) == list(range(1, STEPS + 1)), f"killed at step {kill_at}"
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), (step, kill_at)
    assert _samples(run) == _samples(reference), f"killed at step {kill_at}"
    assert len(checkpointing.list_checkpoints(run)) == 2  # keep_last
    assert not list((run / "checkpoints").glob(".*partial"))
