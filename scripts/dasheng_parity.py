#!/usr/bin/env python
"""Numerical parity of our Dasheng encoder with the reference ``dasheng`` package.

Run with the project venv; the reference runs in a separate venv::

    .venv/bin/python scripts/dasheng_parity.py                   # base config, fp32
    .venv/bin/python scripts/dasheng_parity.py --config tiny --init-values 1e-5
    .venv/bin/python scripts/dasheng_parity.py --save-fixture    # rewrite the test fixture

What it does: random weights (fixed seed, non-trivial BatchNorm running stats,
random LayerNorm/LayerScale/bias values) are written in the reference's key
names; ``scripts/_dasheng_ref.py`` (in ``.venv-dasheng``) builds
``dasheng.pretrained.pretrained.Dasheng``, loads them strictly, saves its own
state dict as an original-format dump ``dasheng_ref.pt`` ({"model", "config"},
with ``init_bn.1.*`` and the torchaudio ``front_end.0.*`` buffers), and runs every
clip alone and the whole padded batch. This script then loads ``dasheng_ref.pt``
through OUR ``load_dasheng_checkpoint`` and compares.

Parity definition. Our front end reflect-pads each clip at its own end and takes
the 120 dB floor from each clip's own maximum, so item i of a padded batch gives
what item i gives alone. The reference computes the STFT over the zero-padded
batch and takes ONE maximum over the whole batch for ``top_db``, so it is not
padding-invariant. Hence: for a mixed-length batch, our batched output for item
i (first ``T_i = (1 + n_i // 160) // 4`` frames) must equal the reference run on
item i alone (``x_length=[n_i]``) within 1e-5 (max abs, fp32), both on the valid
frames (``< n_i // 640``) and on all T_i frames. The reference's own batched
output vs its per-item output is printed too (informational).

The reference venv (``make dasheng-venv`` does the same)::

    python3 -m venv .venv-dasheng
    .venv-dasheng/bin/pip install torch==2.9.1 'torchaudio==2.9.*' dasheng==0.0.9

On x86_64 that pulls the ~7 GB CUDA build of torch from PyPI (the CPU-only wheel
would need PyTorch's own index). It must stay separate from ``.venv``: the
torchaudio wheels on PyPI are built against one exact torch release, do not load
with our torch 2.13, and a broken torchaudio breaks ``import transformers``.
Never install torchaudio or dasheng into ``.venv``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REF_PYTHON = ROOT / ".venv-dasheng" / "bin" / "python"
REF_SCRIPT = ROOT / "scripts" / "_dasheng_ref.py"
FIXTURE_DIR = ROOT / "tests" / "fixtures" / "dasheng_parity"
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640  # hop 160 x patch stride 4 = 40 ms
TOLERANCE = 1e-5
GENERATOR = "splitmix64-tone-v1"

# 0.25 s, 1 s, 2.7 s, 3.03125 s (n % 640 = 500 >= 480: one frame more than the valid
# ones), 10.08 s (exactly one window), 10.11 s (n % 640 = 500: a second window holding
# only a frame without audio), 10.5 s, 23 s, 35 s.
PARITY_LENGTHS = [4000, 16000, 43200, 48500, 161280, 161780, 168000, 368000, 560000]
# Small, for the checked-in fixture of the tiny config.
FIXTURE_LENGTHS = [4800, 17800, 40000, 161780, 168000]
FIXTURE_SEED = 1234


# ------------------------------------------------------------------------ inputs
def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (wrapping arithmetic): exact everywhere."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def synth_waveform(num_samples: int, seed: int, index: int) -> np.ndarray:
    """A deterministic test clip: a tone plus noise, with a per-clip gain and a short
    stretch of digital silence, so that the 120 dB floor and per-clip maxima matter.

    Built from integer hashing and float64 maths only, so it is reproducible without
    storing the samples (the fixture keeps a seed and the lengths).
    """
    i = np.arange(num_samples, dtype=np.uint64)
    key = np.uint64((seed * 1_000_003 + index * 7_919) % (1 << 63))
    with np.errstate(over="ignore"):
        bits = _splitmix64(i * np.uint64(0x2545F4914F6CDD1D) + key)
    noise = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 2.0 - 1.0  # U[-1, 1)
    t = np.arange(num_samples, dtype=np.float64) / SAMPLE_RATE
    freq = 110.0 * 2.0 ** ((index * 5 + seed) % 37 / 6.0)
    gain = (0.8, 0.02, 0.3, 0.003, 0.5, 0.1)[index % 6]
    wave = gain * (0.6 * np.sin(2.0 * np.pi * freq * t) + 0.25 * noise)
    if index % 2 == 1 and num_samples > 8000:
        start = num_samples // 3
        wave[start : start + 1600] = 0.0  # 0.1 s of digital silence
    return wave.astype(np.float32)


def make_inputs(lengths: list[int], seed: int) -> list[np.ndarray]:
    return [synth_waveform(n, seed, i) for i, n in enumerate(lengths)]


def pad_batch(waves: list[np.ndarray]):
    import torch

    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    return batch, lengths


def checksums(waves: list[np.ndarray]) -> list[list[float]]:
    """(sum, sum of |x|) per clip in float64: detects a generator that drifted."""
    return [
        [float(w.astype(np.float64).sum()), float(np.abs(w).astype(np.float64).sum())]
        for w in waves
    ]


def frames_of(n: int) -> tuple[int, int]:
    """(frames the clip has alone, frames that hold audio)."""
    return (1 + n // 160) // 4, n // SAMPLES_PER_FRAME


# ----------------------------------------------------------------------- weights
def make_config(name: str, init_values: float | None):
    from midashenglm.modeling.config import DashengConfig

    return DashengConfig.from_preset(name, init_values=init_values)


def make_reference_weights(config: Any, seed: int) -> dict:
    """Random encoder weights in the reference's key names (``init_bn.1.*``).

    Everything that could hide a loading bug is non-trivial: BatchNorm running
    statistics and affine parameters, LayerNorm weights and biases, linear biases
    and LayerScale gammas (which the reference initialises to a constant).
    """
    import torch

    from midashenglm.modeling.encoder import DashengEncoder

    torch.manual_seed(seed)
    encoder = DashengEncoder(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)

    def uniform(t: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen) * (high - low) + low

    with torch.no_grad():
        bn = encoder.init_bn
        bn.running_mean.copy_(uniform(bn.running_mean, -60.0, -10.0))
        bn.running_var.copy_(uniform(bn.running_var, 50.0, 400.0))
        bn.weight.copy_(uniform(bn.weight, 0.5, 1.5))
        bn.bias.copy_(uniform(bn.bias, -0.5, 0.5))
        bn.num_batches_tracked.fill_(123_456)
        for name, param in encoder.named_parameters():
            if name.startswith("init_bn."):
                continue
            if name.endswith("gamma"):
                param.copy_(uniform(param, 0.2, 1.0))
            elif ("norm" in name) and name.endswith("weight"):
                param.copy_(uniform(param, 0.7, 1.3))
            elif name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    state = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("init_bn."):
            key = "init_bn.1." + key[len("init_bn.") :]
        state[key] = value.detach().clone().contiguous()
    return state


# --------------------------------------------------------------------- reference
def thread_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


def check_reference_venv() -> None:
    if not REF_PYTHON.exists():
        raise SystemExit(
            f"{REF_PYTHON} not found. Create the reference venv first:\n"
            "  make dasheng-venv\n"
            "or\n"
            "  python3 -m venv .venv-dasheng && .venv-dasheng/bin/pip install "
            "torch==2.9.1 'torchaudio==2.9.*' dasheng==0.0.9"
        )


def write_reference_inputs(folder: Path, config: Any, weights: dict, inputs: dict) -> None:
    import torch

    spec = {
        "embed_dim": config.embed_dim,
        "depth": config.depth,
        "num_heads": config.num_heads,
        "init_values": config.init_values,
    }
    (folder / "spec.json").write_text(json.dumps(spec) + "\n")
    torch.save(weights, folder / "weights.pt")
    torch.save(inputs, folder / "inputs.pt")


def run_reference(folder: Path, threads: int | None) -> None:
    check_reference_venv()
    cmd = [str(REF_PYTHON), str(REF_SCRIPT), "parity", "--in", str(folder), "--out", str(folder)]
    if threads:
        cmd += ["--threads", str(threads)]
    subprocess.run(cmd, check=True, env=thread_env(threads), cwd=ROOT)


# ------------------------------------------------------------------------ compare
def compare(ours, mask, lengths: list[int], alone: list, batched) -> list[dict]:
    rows = []
    for i, n in enumerate(lengths):
        total, valid = frames_of(n)
        ref = alone[i].float()
        if ref.shape[0] != total:
            raise SystemExit(f"item {i}: reference has {ref.shape[0]} frames, expected {total}")
        mine = ours[i, :total].float()
        diff = (mine - ref).abs()
        ref_batch = (batched[i, :total].float() - ref).abs()
        if mask is not None and int(mask[i].sum()) != valid:
            raise SystemExit(
                f"item {i}: our mask has {int(mask[i].sum())} valid frames, not {valid}"
            )
        rows.append(
            {
                "item": i,
                "samples": n,
                "seconds": n / SAMPLE_RATE,
                "frames": total,
                "valid_frames": valid,
                "diff_valid": float(diff[:valid].max()) if valid else 0.0,
                "diff_all": float(diff.max()),
                "ref_batched_vs_alone": float(ref_batch.max()),
            }
        )
    return rows


def print_table(rows: list[dict], title: str) -> None:
    head = (
        f"{'item':>4} {'samples':>8} {'seconds':>8} {'frames':>6} {'valid':>5} "
        f"{'ours-vs-ref valid':>17} {'ours-vs-ref all':>15} {'ref batch-vs-alone':>18}"
    )
    print(title)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['item']:>4} {r['samples']:>8} {r['seconds']:>8.4f} {r['frames']:>6} "
            f"{r['valid_frames']:>5} {r['diff_valid']:>17.3e} {r['diff_all']:>15.3e} "
            f"{r['ref_batched_vs_alone']:>18.3e}"
        )
    print("-" * len(head))


def run(
    config_name: str,
    init_values: float | None,
    lengths: list[int],
    seed: int,
    threads: int | None,
    keep: Path | None = None,
) -> dict:
    import torch

    from midashenglm.checkpoint import load_dasheng_checkpoint

    config = make_config(config_name, init_values)
    weights = make_reference_weights(config, seed)
    waves = make_inputs(lengths, seed)
    batch, length_tensor = pad_batch(waves)

    tmp = Path(tempfile.mkdtemp(prefix="dasheng-parity-"))
    try:
        write_reference_inputs(tmp, config, weights, {"waveforms": batch, "lengths": length_tensor})
        run_reference(tmp, threads)
        ref = torch.load(tmp / "ref_outputs.pt", map_location="cpu", weights_only=True)
        ref_meta = json.loads((tmp / "ref_meta.json").read_text())

        encoder = load_dasheng_checkpoint(tmp / "dasheng_ref.pt")
        for name in ("running_mean", "running_var", "weight", "bias"):
            stored = weights[f"init_bn.1.{name}"]
            if not torch.equal(getattr(encoder.init_bn, name), stored):
                raise SystemExit(f"init_bn.{name} was not loaded from dasheng_ref.pt")
        with torch.inference_mode():
            ours, mask = encoder(batch, length_tensor)
        rows = compare(ours, mask, lengths, ref["alone"], ref["batched"])
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp / "dasheng_ref.pt", keep / "dasheng_ref.pt")
            np.savez(
                keep / "reference_outputs.npz",
                **{f"item_{i}": t.float().numpy() for i, t in enumerate(ref["alone"])},
            )
            info = {
                "description": "Reference dasheng outputs for tests/test_dasheng_parity.py; "
                "written by scripts/dasheng_parity.py --save-fixture",
                "config": config_name,
                "embed_dim": config.embed_dim,
                "depth": config.depth,
                "num_heads": config.num_heads,
                "init_values": config.init_values,
                "generator": GENERATOR,
                "seed": seed,
                "lengths": lengths,
                "checksums": checksums(waves),
                "tolerance": TOLERANCE,
                "reference": {k: ref_meta[k] for k in ("torch", "torchaudio", "dasheng")},
            }
            (keep / "inputs.json").write_text(json.dumps(info, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "config": config_name,
        "init_values": init_values,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "ours_torch": torch.__version__,
        "reference": ref_meta,
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Parity of midashenglm's Dasheng encoder with the dasheng package."
    )
    parser.add_argument("--config", choices=["tiny", "base", "0.6B", "1.2B"], default=None)
    parser.add_argument("--init-values", type=float, default=None, help="LayerScale init")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads, both sides")
    parser.add_argument(
        "--save-fixture",
        action="store_true",
        help=f"tiny config, short clips: write {FIXTURE_DIR.relative_to(ROOT)}/",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()

    env = thread_env(args.threads)
    os.environ.update({k: env[k] for k in env if k.endswith("_NUM_THREADS")})
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.save_fixture:
        if args.config not in (None, "tiny"):
            parser.error("--save-fixture always uses the tiny config")
        config_name, lengths, seed, keep = "tiny", FIXTURE_LENGTHS, FIXTURE_SEED, FIXTURE_DIR
    else:
        config_name, lengths, seed, keep = args.config or "base", PARITY_LENGTHS, args.seed, None
    if keep is not None:
        # Write to a scratch folder and move into place only if parity holds.
        scratch = Path(tempfile.mkdtemp(prefix="dasheng-fixture-"))
    else:
        scratch = None

    result = run(config_name, args.init_values, lengths, seed, args.threads, keep=scratch)
    ref = result["reference"]
    print(
        f"config {config_name} (init_values={args.init_values}), seed {seed}, fp32, "
        f"{result['threads']} threads"
    )
    print(f"ours: torch {result['ours_torch']}")
    print(
        f"reference: dasheng {ref['dasheng']}, torch {ref['torch']}, torchaudio {ref['torchaudio']}"
    )
    print_table(
        result["rows"],
        "max |ours batched - reference alone| per item; last column: "
        "max |reference batched - reference alone| (informational)",
    )
    worst = max(max(r["diff_valid"], r["diff_all"]) for r in result["rows"])
    ok = worst <= TOLERANCE
    print(f"worst parity diff {worst:.3e} (tolerance {TOLERANCE:.0e}): {'PASS' if ok else 'FAIL'}")
    result["worst"] = worst
    result["pass"] = ok
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if scratch is not None:
        if ok:
            FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
            for name in ("dasheng_ref.pt", "reference_outputs.npz", "inputs.json"):
                shutil.move(str(scratch / name), FIXTURE_DIR / name)
            size = sum(f.stat().st_size for f in FIXTURE_DIR.iterdir())
            print(f"fixture written to {FIXTURE_DIR} ({size / 1e6:.2f} MB)")
        else:
            print("fixture NOT written: parity failed")
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
