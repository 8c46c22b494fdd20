"""The reference side of the Dasheng parity check and benchmark.

Runs inside ``.venv-dasheng`` (torch 2.9.1 + torchaudio + ``dasheng==0.0.9``), never
in the project venv: ``midashenglm`` is not importable here and the reference
``dasheng`` package is not importable there. The two sides talk through files in
a folder written by ``scripts/dasheng_parity.py`` / ``scripts/bench_encoder.py``:

* ``spec.json``   - {"embed_dim", "depth", "num_heads", "init_values"}
* ``weights.pt``  - encoder weights in the reference's names (``init_bn.1.*``),
  without the front-end buffers, which the reference module computes itself
* ``inputs.pt``   - {"waveforms": (B, N) float32 zero-padded, "lengths": (B,) long}

Modes::

    python scripts/_dasheng_ref.py parity --in DIR --out DIR [--threads N]
    python scripts/_dasheng_ref.py bench  --in DIR --out DIR [--threads N]

``parity`` builds ``Dasheng(...)``, loads the weights strictly, writes its own
state dict in the original dump format (``dasheng_ref.pt``: {"model", "config"}),
reloads that file with ``Dasheng.from_pretrained`` to prove the format, then runs
every clip alone (``x_length=[n_i]``) and the whole padded batch and writes
``ref_outputs.pt`` and ``ref_meta.json``.

``bench`` does the same set-up, then serves JSON commands, one per stdin line,
answering one JSON line each on stdout, so the caller can alternate timed runs
of both implementations without paying this process's start-up each time::

    {"cmd": "check", "workload": NAME}            -> writes DIR/check_NAME.pt
    {"cmd": "time", "workload": NAME, "iters": K} -> {"times": [seconds, ...]}
    {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _set_threads(threads: int | None) -> None:
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)


def _dump_config(spec: dict) -> dict:
    """The ``config`` block of the dump: what ``Dasheng(**config)`` needs to rebuild it."""
    config = {
        "embed_dim": spec["embed_dim"],
        "depth": spec["depth"],
        "num_heads": spec["num_heads"],
        "patch_size": (64, 4),
        "patch_stride": (64, 4),
        "target_length": 1008,
        "n_fft": 512,
        "n_mels": 64,
        "hop_size": 160,
        "win_size": 512,
        "f_min": 0,
        "f_max": 8000,
        "center": True,
    }
    if spec.get("init_values"):
        config["init_values"] = spec["init_values"]
    return config


def build_reference(in_dir: Path, out_dir: Path):
    """The reference ``Dasheng`` with the given weights, and its dump written to out_dir."""
    import torch
    from dasheng.pretrained.pretrained import Dasheng

    spec = json.loads((in_dir / "spec.json").read_text())
    config = _dump_config(spec)
    model = Dasheng(**config)
    own = model.state_dict()
    weights = torch.load(in_dir / "weights.pt", map_location="cpu", weights_only=True)
    buffers = {k: v for k, v in own.items() if k.startswith("front_end.")}
    missing = sorted(set(own) - set(weights) - set(buffers))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise SystemExit(f"weights do not fit Dasheng: missing {missing}, unexpected {unexpected}")
    model.load_state_dict({**buffers, **weights}, strict=True)
    model.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    dump_path = out_dir / "dasheng_ref.pt"
    dump = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    dump["config"] = config
    torch.save(dump, dump_path)
    # The published loader must read the dump back to the same module.
    again = Dasheng.from_pretrained(str(dump_path)).eval()
    for key, value in again.state_dict().items():
        if not torch.equal(value, dump["model"][key]):
            raise SystemExit(f"Dasheng.from_pretrained({dump_path}) changed {key}")
    return model


def meta() -> dict:
    import dasheng
    import torch
    import torchaudio

    try:
        from importlib.metadata import version

        dasheng_version = version("dasheng")
    except Exception:  # pragma: no cover - metadata absent
        dasheng_version = getattr(dasheng, "__version__", "?")
    return {
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "dasheng": dasheng_version,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }


def run_parity(in_dir: Path, out_dir: Path) -> None:
    import torch

    model = build_reference(in_dir, out_dir)
    inputs = torch.load(in_dir / "inputs.pt", map_location="cpu", weights_only=True)
    wav, lengths = inputs["waveforms"].float(), inputs["lengths"].long()
    alone, alone_seconds = [], []
    with torch.inference_mode():
        for i, n in enumerate(lengths.tolist()):
            start = time.perf_counter()
            out = model(wav[i : i + 1, :n].contiguous(), x_length=torch.tensor([n]))
            alone_seconds.append(time.perf_counter() - start)
            alone.append(out[0].clone())
        start = time.perf_counter()
        batched = model(wav, x_length=lengths).clone()
        batched_seconds = time.perf_counter() - start
    torch.save({"alone": alone, "batched": batched}, out_dir / "ref_outputs.pt")
    info = meta() | {"alone_seconds": alone_seconds, "batched_seconds": batched_seconds}
    (out_dir / "ref_meta.json").write_text(json.dumps(info, indent=2) + "\n")


def run_bench(in_dir: Path, out_dir: Path) -> None:
    import torch

    model = build_reference(in_dir, out_dir)
    workloads = torch.load(in_dir / "inputs.pt", map_location="cpu", weights_only=True)

    def reply(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True} | meta())
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            reply({"bye": True})
            return
        work = workloads[cmd["workload"]]
        wav, lengths = work["waveforms"].float(), work["lengths"].long()
        with torch.inference_mode():
            if cmd["cmd"] == "check":
                out = model(wav, x_length=lengths)
                torch.save(out.clone(), out_dir / f"check_{cmd['workload']}.pt")
                reply({"ok": True})
            elif cmd["cmd"] == "time":
                times = []
                for _ in range(int(cmd.get("iters", 1))):
                    start = time.perf_counter()
                    model(wav, x_length=lengths)
                    times.append(time.perf_counter() - start)
                reply({"times": times})
            else:
                reply({"error": f"unknown command {cmd['cmd']!r}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["parity", "bench"])
    parser.add_argument("--in", dest="in_dir", type=Path, required=True)
    parser.add_argument("--out", dest="out_dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    _set_threads(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = args.out_dir or args.in_dir
    if args.mode == "parity":
        run_parity(args.in_dir, out_dir)
    else:
        run_bench(args.in_dir, out_dir)


if __name__ == "__main__":
    main()
