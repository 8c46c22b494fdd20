#!/usr/bin/env python
"""CPU speed of our Dasheng encoder, against the reference ``dasheng`` package.

Run with the project venv; the reference runs in ``.venv-dasheng`` (see
``scripts/dasheng_parity.py`` or docs/dasheng-parity.md for how to create it)::

    .venv/bin/python scripts/bench_encoder.py                     # base, 2 threads
    .venv/bin/python scripts/bench_encoder.py --threads 4 --iters 5 --json bench.json

(a) Ours vs reference, identical weights (the reference's own dump, loaded into
    ours with ``load_dasheng_checkpoint``) and identical inputs, both processes
    at the same thread count (``torch.set_num_threads`` + OMP/MKL/OPENBLAS env).
    The reference process stays alive and times its own runs on request, so runs
    alternate ours, ref, ours, ref, ... after one warm-up run each (which also
    checks that both give the same numbers). Workloads: 8 x 10 s, 1 x 30 s.
(b) Ours on a mixed batch (one 30 s clip + seven 2 s clips): real lengths, which
    skip windows without audio (3 + 7 = 10 windows), against every length set
    to the padded length (8 x 3 = 24 windows), alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dasheng_parity as parity  # noqa: E402  (sibling script)

SR = parity.SAMPLE_RATE


def _stats(times: list[float]) -> dict:
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "n": len(times),
        "times": times,
    }


def bench_clips(lengths: list[int], seed: int) -> list:
    """Clips of one loudness without silence: the reference's single batch-wide 120 dB
    floor then clips nothing, so both implementations must agree on the whole batch."""
    return [parity.synth_waveform(n, seed + i, 0) for i, n in enumerate(lengths)]


def windows_computed(lengths: list[int], padded: int, config) -> int:
    """Windows our encoder runs: per clip, the windows that hold any of its frames."""
    win = config.window_patches
    total = (1 + padded // config.hop_length) // config.patch_stride[1]
    count = 0
    for n in lengths:
        frames = min((1 + n // config.hop_length) // config.patch_stride[1], total)
        count += -(-frames // win)
    return count


class Reference:
    """The reference encoder in its own process, answering JSON commands."""

    def __init__(self, folder: Path, threads: int) -> None:
        parity.check_reference_venv()
        cmd = [
            str(parity.REF_PYTHON),
            str(parity.REF_SCRIPT),
            "bench",
            "--in",
            str(folder),
            "--threads",
            str(threads),
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=parity.thread_env(threads),
            cwd=parity.ROOT,
        )
        self.meta = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"reference process died (exit {self.proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise SystemExit(f"reference: {answer['error']}")
        return answer

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(cmd="quit")
            finally:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(
        h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    print()
    print(title)
    print(line)
    print("-" * len(line))
    for r in rows:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(description="Dasheng encoder CPU benchmark")
    parser.add_argument("--config", choices=["tiny", "base", "0.6B", "1.2B"], default="base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed runs per side, per workload")
    parser.add_argument("--mixed-iters", type=int, default=3, help="timed runs per case in (b)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true", help="only part (b)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()

    os.environ.update(
        {k: v for k, v in parity.thread_env(args.threads).items() if k.endswith("_NUM_THREADS")}
    )
    import torch

    from midashenglm.checkpoint import load_dasheng_checkpoint

    torch.set_num_threads(args.threads)
    config = parity.make_config(args.config, None)
    workloads = {
        "8x10s": [10 * SR] * 8,
        "1x30s": [30 * SR],
    }
    inputs = {}
    for name, lengths in workloads.items():
        waves, length_tensor = parity.pad_batch(bench_clips(lengths, args.seed))
        inputs[name] = {"waveforms": waves, "lengths": length_tensor}
    result: dict = {
        "config": args.config,
        "threads": args.threads,
        "ours": {"torch": torch.__version__},
    }
    start_all = time.perf_counter()
    result["load_average_before"] = os.getloadavg()[0]

    # ---------------------------------------------------------------- (a) vs reference
    with tempfile.TemporaryDirectory(prefix="dasheng-bench-") as tmp:
        folder = Path(tmp)
        weights = parity.make_reference_weights(config, args.seed)
        parity.write_reference_inputs(folder, config, weights, inputs)
        del weights
        encoder = None
        if not args.skip_reference:
            ref = Reference(folder, args.threads)
            try:
                encoder = load_dasheng_checkpoint(folder / "dasheng_ref.pt")
                result["reference"] = {
                    k: ref.meta[k] for k in ("torch", "torchaudio", "dasheng", "threads")
                }
                rows, result["vs_reference"] = [], {}
                for name, work in inputs.items():
                    # Warm-up, once each, which also checks that both agree.
                    with torch.inference_mode():
                        ours_out, _ = encoder(work["waveforms"], work["lengths"])
                    ref.ask(cmd="check", workload=name)
                    ref_out = torch.load(folder / f"check_{name}.pt", weights_only=True)
                    diff = float((ours_out - ref_out).abs().max())
                    ours_t, ref_t = [], []
                    for _ in range(args.iters):
                        with torch.inference_mode():
                            t0 = time.perf_counter()
                            encoder(work["waveforms"], work["lengths"])
                            ours_t.append(time.perf_counter() - t0)
                        ref_t.extend(ref.ask(cmd="time", workload=name, iters=1)["times"])
                    ours_s, ref_s = _stats(ours_t), _stats(ref_t)
                    ratio = ref_s["median"] / ours_s["median"]
                    ratio_min = ref_s["min"] / ours_s["min"]
                    result["vs_reference"][name] = {
                        "ours": ours_s,
                        "reference": ref_s,
                        "ratio_ref_over_ours": ratio,
                        "ratio_ref_over_ours_min": ratio_min,
                        "max_abs_diff": diff,
                    }
                    for who, s in (("ours", ours_s), ("reference", ref_s)):
                        rows.append(
                            [
                                name,
                                who,
                                f"{s['median']:.3f}",
                                f"{s['min']:.3f}",
                                f"{s['max']:.3f}",
                                str(s["n"]),
                                f"{ratio:.2f}" if who == "reference" else "",
                                f"{ratio_min:.2f}" if who == "reference" else "",
                                f"{diff:.1e}" if who == "reference" else "",
                            ]
                        )
            finally:
                ref.close()
            print(
                f"config {args.config}, fp32, {args.threads} threads per process; "
                f"ours: torch {torch.__version__}; reference: dasheng "
                f"{result['reference']['dasheng']}, torch {result['reference']['torch']}, "
                f"torchaudio {result['reference']['torchaudio']}"
            )
            print_table(
                "(a) seconds per batch, alternating ours/reference after one warm-up each",
                [
                    "workload",
                    "impl",
                    "median s",
                    "min s",
                    "max s",
                    "runs",
                    "ref/ours median",
                    "ref/ours min",
                    "max|diff|",
                ],
                rows,
            )
        else:
            encoder = load_dasheng_checkpoint_from_weights(folder, config)

    # -------------------------------------------------------- (b) skipping empty windows
    lengths = [30 * SR] + [2 * SR] * 7
    waves, real = parity.pad_batch(parity.make_inputs(lengths, args.seed + 7))
    padded = waves.shape[1]
    full = torch.full_like(real, padded)
    cases = {
        "without skipping (all lengths = padded)": (full, [padded] * len(lengths)),
        "with skipping (real lengths)": (real, lengths),
    }
    with torch.inference_mode():
        encoder(waves, real)  # warm-up (the encoder is already warm after part (a))
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.mixed_iters):
            for key, (length_tensor, _) in cases.items():
                t0 = time.perf_counter()
                encoder(waves, length_tensor)
                times[key].append(time.perf_counter() - t0)
    rows, result["mixed_batch"] = [], {}
    base_median = statistics.median(times["without skipping (all lengths = padded)"])
    for key, (_, lens) in cases.items():
        s = _stats(times[key])
        n_windows = windows_computed(lens, padded, config)
        speedup = base_median / s["median"]
        result["mixed_batch"][key] = s | {"windows": n_windows, "speedup": speedup}
        rows.append(
            [
                key,
                str(n_windows),
                f"{s['median']:.3f}",
                f"{s['min']:.3f}",
                f"{s['max']:.3f}",
                str(s["n"]),
                f"{speedup:.2f}x",
            ]
        )
    print_table(
        "(b) ours, one 30 s clip + seven 2 s clips (seconds per batch)",
        ["case", "windows", "median s", "min s", "max s", "runs", "speed-up"],
        rows,
    )
    result["total_seconds"] = time.perf_counter() - start_all
    result["load_average_after"] = os.getloadavg()[0]
    print(
        f"\ntotal {result['total_seconds']:.0f} s; 1-min load average "
        f"{result['load_average_before']:.2f} before, {result['load_average_after']:.2f} after "
        f"(on {os.cpu_count()} CPUs: other processes inflate and scatter the times)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def load_dasheng_checkpoint_from_weights(folder: Path, config):
    """Our encoder from the generated weights, without the reference (``--skip-reference``)."""
    import torch

    from midashenglm.modeling.encoder import DashengEncoder

    encoder = DashengEncoder(config).eval()
    state = torch.load(folder / "weights.pt", weights_only=True)
    state = {k.replace("init_bn.1.", "init_bn."): v for k, v in state.items()}
    encoder.load_state_dict(state, strict=True)
    return encoder


if __name__ == "__main__":
    sys.exit(main())
