"""Training logs: JSONL files in the run folder, and TensorBoard when it is installed.

``metrics.jsonl``: one row per logged step (``step``, ``loss``, ``lr``, ``grad_norm``,
``samples_per_s``, ``audio_seconds_per_s``, ``tokens_per_s``, ``padding_fraction``,
``memory_mib``, ``epoch``, ``skipped``, ``time``) and one per validation (``step``,
``val_loss``). ``skipped.jsonl``: every sample that could not be used (id, source,
reason). ``samples.jsonl`` (``logging.log_samples``): the ids each step trained on.
On resume, rows past the checkpoint's step are dropped: the resumed run writes them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midashenglm import jsonl

FILES = ("metrics.jsonl", "skipped.jsonl", "samples.jsonl")


class RunLog:
    """Appends rows to the run's JSONL files (main process only; a no-op elsewhere)."""

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._handles: dict[str, Any] = {}
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional (pip install 'midashenglm[train]')
                pass
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop rows of steps after ``step`` (written by a run that died before its next checkpoint)."""
        if not self.enabled:
            return
        for name in FILES:
            path = self.run_dir / name
            if path.is_file():
                jsonl.repair_tail(path)
                jsonl.rewrite(path, lambda row: int(row.get("step", 0)) <= step)

    def write(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not self.enabled or not rows:
            return
        if name not in self._handles:
            self._handles[name] = open(self.run_dir / name, "a", encoding="utf-8")  # noqa: SIM115
        jsonl.append_rows(self._handles[name], rows)
        if self._tb is not None and name == "metrics.jsonl":
            for row in rows:
                for key, value in row.items():
                    if key not in ("step", "time") and isinstance(value, (int, float)):
                        self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        if self._tb is not None:
            self._tb.close()
