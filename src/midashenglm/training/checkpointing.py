"""Training checkpoints: written atomically, the last K kept, everything a resume needs.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-00000120`` holding

* ``model.pt``: the trainable parameters and every buffer (BatchNorm statistics), as a
  full (unsharded) state dict; frozen weights come back from ``model.checkpoint``;
* ``optimizer.pt``: the optimiser state (full state dict, keyed by parameter name);
* ``rng-rank{r}.pt``: each process's torch, CUDA, numpy and Python RNG states;
* ``trainer_state.json``: step, scheduler, sampler position, counters.

It is written into a temporary folder, every file fsynced, then renamed into place and
the parent folder fsynced: a crash at any point leaves either the previous checkpoint
or the new one, never half of one. Files are read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midashenglm.errors import UserError

NAME = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def staging_dir(run_dir: Path, step: int) -> Path:
    """The temporary folder of the checkpoint being written (all ranks write into it)."""
    return checkpoint_dir(run_dir) / f".step-{step:08d}.partial"


def begin(run_dir: Path, step: int) -> Path:
    staging = staging_dir(run_dir, step)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def write_rng(staging: Path, rank: int) -> None:
    _save(rng_state(), staging / f"rng-rank{rank}.pt")


def commit(run_dir: Path, step: int, *, model_state: dict[str, torch.Tensor],
           optimizer_state: dict[str, Any], trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Write the rank-0 files into the staging folder, rename it into place, prune old ones."""
    staging = staging_dir(run_dir, step)
    _save(model_state, staging / "model.pt")
    _save(optimizer_state, staging / "optimizer.pt")
    _write_text(staging / STATE_FILE, json.dumps(trainer_state, indent=1))
    _fsync_dir(staging)
    final = checkpoint_dir(run_dir) / f"step-{step:08d}"
    if final.exists():  # a checkpoint of the same step from a run that was resumed before it
        shutil.rmtree(final)
    os.rename(staging, final)
    _fsync_dir(final.parent)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict | None]:
    """``(model_state, optimizer_state, trainer_state, rng_state of this rank or None)``."""
    path = Path(path)
    try:
        trainer_state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        model_state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        optimizer_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"checkpoint {path}: cannot be read ({err})") from None
    rng_file = path / f"rng-rank{rank}.pt"
    rng = torch.load(rng_file, weights_only=True) if rng_file.is_file() else None
    return model_state, optimizer_state, trainer_state, rng


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
