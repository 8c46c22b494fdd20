"""``midashenglm bench vllm``: our inference engine against vLLM, side by side in one run.

Same model on both sides: the bench's shapes (``--scale cpu``: widths / 8, depths / 4 of
the 7B system) with a decoder vLLM can build (Qwen2, head_dim 64, rope_theta 1e6: see
``docs/vllm.md``), random weights written once by our ``save_pretrained``. Same requests:
the paper's Figure 3 clip lengths (100 new tokens each), the realistic task mix (each
task's prompt and answer length) and 30 s clips at batch 1..16; every round on fresh
clips (so vLLM's multimodal and prefix caches never see a clip twice; our encoder cache
is off), the same WAV files for both sides.

Each engine runs in a process of its own (``vllm_worker.py``, run with each engine's
Python: vLLM lives in its own venv), started once and warmed up; the bench sends both the
same requests and alternates (ours, vLLM, ours, vLLM, ...), stopping (``SIGSTOP``) the
idle side's processes so that its polling threads take no CPU from the other. A run
hands every request of a workload to the engine at once (vLLM's ``LLM.chat`` with
OpenAI-style messages holding base64 WAV, ours ``Engine.generate`` with the WAV bytes;
greedy, ``ignore_eos``) and is timed from there to the last result. Time to first token
is measured the same way on both sides: the same workload with one new token per request
(``max_tokens=1``), i.e. until every request has its first token (at batch 1, the
request's TTFT). Peak memory is each side's process tree's peak resident set (every
process's ``VmHWM``, reset before each run, summed).

The ratios are ours / vLLM in speed (vLLM's time / ours): > 1 means ours is faster.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]  # the repository, for an editable install
WORKER = Path(__file__).with_name("vllm_worker.py")
SIDES = ("ours", "vllm")
KINDS = ("ttft", "run")
UNSTABLE = 0.25  # as bench/compare.py: ratio of medians and of minimums further apart than this
OTHER_LOAD = 0.3  # cores kept busy by other processes during a run: flagged above this
VLLM_ENV_BUILD = "make vllm-env"


# ======================================================================= processes
# Shared with scripts/check_vllm.py.
def vllm_env(extra: dict[str, str] | None = None, *, kv_cache_gib: int | None = 1) -> dict[str, str]:
    """The environment of a vLLM process: offline, no usage statistics, no PYTHONPATH of
    ours. ``kv_cache_gib``: on the CPU backend vLLM otherwise reserves a fraction of RAM
    (--gpu-memory-utilization, 0.92 by default: fails on a shared machine)."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    if kv_cache_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    env.pop("PYTHONPATH", None)
    env.update(extra or {})
    return env


class Procs:
    """Child process groups (vLLM spawns more processes), ended on exit."""

    def __init__(self) -> None:
        self.groups: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kw: Any) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.groups.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 15.0) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass
        # the group may outlive its leader (spawned engine processes)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.groups:
            self.groups.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.groups):
            self.stop(proc, grace=5.0)


def tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(lines[-n:])


def cause(logfile: Path, fallback: str) -> str:
    """The root-cause line of a failed engine start (the engine process logs it)."""
    lines = logfile.read_text(errors="replace").splitlines() if logfile.is_file() else []
    errors = [ln.split("] ", 2)[-1] if "] " in ln else ln for ln in lines
              if ("Error:" in ln or "Exception:" in ln) and "Traceback" not in ln]
    errors = [e for e in errors if "Engine core initialization failed" not in e
              and "WorkerProc initialization failed" not in e]
    return errors[0].strip() if errors else fallback


class SideError(RuntimeError):
    """An engine process failed: its message says which and why, in one line."""


class Side:
    """One engine's worker process: started once, sent commands, paused while idle."""

    def __init__(self, name: str, python: Path, spec: dict[str, Any], work: Path, env: dict[str, str],
                 procs: Procs) -> None:
        self.name, self.python, self.work, self.env, self.procs = name, python, work, env, procs
        self.spec_path = work / f"{name}_spec.json"
        self.spec_path.write_text(json.dumps(spec))
        self.log = work / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._commands: Any = None
        self._replies = -1
        self._buffer = b""
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        read, write = os.pipe()
        with open(self.log, "w") as log:
            self.proc = self.procs.start(
                [str(self.python), str(WORKER), "--engine", self.name, "--spec", str(self.spec_path),
                 "--reply-fd", str(write)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                pass_fds=(write,), cwd=self.work)
        os.close(write)
        self._replies, self._commands = read, self.proc.stdin

    def ready(self, timeout: float) -> dict[str, Any]:
        reply = self._reply(timeout)
        if "error" in reply:
            raise SideError(f"{self.name}: the engine did not start: "
                            f"{cause(self.log, reply['error']).splitlines()[0]} (log: {self.log})")
        self.info = reply
        return reply

    def call(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self._commands is not None
        self._commands.write((json.dumps(command) + "\n").encode())
        self._commands.flush()
        reply = self._reply(timeout)
        if "error" in reply:
            raise SideError(f"{self.name}: {reply['error']} (log: {self.log})")
        return reply

    def _reply(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            assert self.proc is not None
            left = deadline - time.monotonic()
            if left <= 0:
                raise SideError(f"{self.name}: no answer within {timeout:.0f} s (log: {self.log})")
            ready, _, _ = select.select([self._replies], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise SideError(f"{self.name}: the engine process exited "
                                    f"({cause(self.log, tail(self.log, 3))}; log: {self.log})")
                self._buffer += chunk
            elif self.proc.poll() is not None:
                raise SideError(f"{self.name}: the engine process exited with status {self.proc.returncode} "
                                f"({cause(self.log, tail(self.log, 3))}; log: {self.log})")
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    # -------------------------------------------------------------- the process tree
    def tree(self) -> list[Any]:
        import psutil

        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pause(self) -> None:
        self._signal("suspend")

    def resume(self) -> None:
        self._signal("resume")

    def _signal(self, what: str) -> None:
        import psutil

        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                getattr(p, what)()

    def reset_peak(self) -> int:
        """Reset every process's peak RSS (``/proc/PID/clear_refs``); returns the tree's RSS now."""
        total = 0
        for p in self.tree():
            with contextlib.suppress(OSError):
                Path(f"/proc/{p.pid}/clear_refs").write_text("5")
            total += _status_kib(p.pid, "VmRSS") * 1024
        return total

    def peak_rss(self) -> int:
        """The sum of every process's peak RSS since :meth:`reset_peak`."""
        return sum(_status_kib(p.pid, "VmHWM") * 1024 for p in self.tree())

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the tree's processes so far."""
        import psutil

        total = 0.0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def pss(self) -> int:
        """The tree's proportional set size now (shared pages split between the processes
        that map them, so libraries loaded by every process count once)."""
        total = 0
        for p in self.tree():
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in Path(f"/proc/{p.pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        return total

    def threads(self) -> list[dict[str, Any]]:
        """Every process of the tree: name, threads, CPUs it may run on, its OpenMP settings."""
        import psutil

        out = []
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                env = {}
                with contextlib.suppress(psutil.Error, OSError):
                    env = p.environ()
                out.append({"pid": p.pid, "name": p.name(), "threads": p.num_threads(),
                            "cpu_affinity": p.cpu_affinity() if hasattr(p, "cpu_affinity") else None,
                            **{k: env[k] for k in ("OMP_NUM_THREADS", "OMP_PLACES", "OMP_PROC_BIND",
                                                   "GOMP_CPU_AFFINITY", "KMP_AFFINITY") if k in env}})
        return out

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._commands.write(b'{"op": "quit"}\n')
            self._commands.flush()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.procs.stop(self.proc)
        with contextlib.suppress(OSError):
            os.close(self._replies)


def busy_cpu_seconds() -> float | None:
    """CPU time the whole machine has spent busy (``/proc/stat``), all cores together."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return None


class OtherLoad:
    """The cores kept busy by other processes while a side runs: the machine's busy CPU time
    less the side's and this process's, over the wall time (``/proc/stat`` ticks: 10 ms)."""

    def __init__(self, side: Side) -> None:
        self.side = side

    def __enter__(self) -> OtherLoad:
        self.start = (time.perf_counter(), busy_cpu_seconds(), self.side.cpu_seconds(), _own_cpu())
        self.cores: float | None = None
        return self

    def __exit__(self, *exc: Any) -> None:
        wall, busy, side, own = self.start
        end_busy = busy_cpu_seconds()
        if busy is None or end_busy is None:
            return
        wall = time.perf_counter() - wall
        other = (end_busy - busy) - (self.side.cpu_seconds() - side) - (_own_cpu() - own)
        self.cores = max(0.0, other / wall) if wall > 0 else None


def other_load(window: float = 0.5) -> float | None:
    """Cores kept busy by other processes over ``window`` seconds (while both sides are paused)."""
    busy, own = busy_cpu_seconds(), _own_cpu()
    time.sleep(window)
    end = busy_cpu_seconds()
    if busy is None or end is None:
        return None
    return max(0.0, (end - busy - (_own_cpu() - own)) / window)


class QuietWait:
    """Before each run, wait (at most ``per_run`` seconds, ``total`` in all) until other
    processes keep fewer than :data:`OTHER_LOAD` cores busy: a shared machine's bursts of
    load then fall between runs more often than into them."""

    def __init__(self, per_run: float, total: float) -> None:
        self.per_run, self.left, self.waited = per_run, total, 0.0

    def __call__(self) -> float | None:
        start = time.perf_counter()
        load = None
        while self.left > 0 and self.per_run > 0:
            load = other_load()
            spent = time.perf_counter() - start
            if load is None or load < OTHER_LOAD or spent >= self.per_run or spent >= self.left:
                break
        spent = time.perf_counter() - start
        self.left -= spent
        self.waited += spent
        return load


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# ========================================================================== the model
def model_configs(scale: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Encoder and decoder configs: the bench's shapes of ``scale`` with a decoder vLLM
    builds (Qwen2, no mRoPE section, head_dim 64 -- vLLM's CPU attention refuses 16 --,
    rope_theta 1e6, which vLLM assumes whatever the config says)."""
    from midashenglm.bench.models import scale_spec

    spec = scale_spec(scale)
    decoder = {k: v for k, v in spec.decoder.items() if k != "rope_scaling"}
    decoder.update(model_type="qwen2", rope_theta=1e6)
    decoder.setdefault("head_dim", decoder["hidden_size"] // decoder["num_attention_heads"])
    if decoder["head_dim"] != 64 and scale != "full":
        raise ValueError(f"--scale {scale}: head_dim {decoder['head_dim']}; vLLM's CPU attention needs 64")
    return dict(spec.dasheng), decoder


def write_model(folder: Path, scale: str, seed: int) -> dict[str, Any]:
    """Random weights in float32, saved by our ``save_pretrained`` (model and processor:
    the folder carries ``processing_midashenglm.py``, which vLLM loads as remote code)."""
    import torch

    from midashenglm.modeling.config import DashengConfig, MiDashengLMConfig
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.processing import MiDashengLMProcessor
    from midashenglm.tokenizer import build_tiny_tokenizer

    encoder, decoder = model_configs(scale)
    processor = MiDashengLMProcessor(build_tiny_tokenizer())
    config = MiDashengLMConfig(audio_encoder_config=DashengConfig(**encoder).to_dict(), text_config=decoder,
                               audio_token_id=processor.audio_token_id)
    torch.manual_seed(seed)
    model = MiDashengLM(config).eval()
    gen = model.generation_config
    gen.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    gen.pad_token_id = processor.tokenizer.pad_token_id
    gen.bos_token_id = None
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    return {"encoder": encoder, "decoder": decoder,
            "parameters": {"encoder+projector": count(model.audio_encoder) + count(model.audio_projector),
                           "decoder": count(model.decoder)}}


# ====================================================================== the workloads
@dataclass(frozen=True)
class Workload:
    """Requests handed to both engines at once: clip lengths, questions and answer lengths."""

    key: str
    title: str
    seconds: tuple[float, ...]
    questions: tuple[str, ...]
    new_tokens: tuple[int, ...]
    system: str | None

    @property
    def requests(self) -> int:
        return len(self.seconds)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(requests=self.requests, mean_seconds=sum(self.seconds) / self.requests,
                   output_tokens=sum(self.new_tokens))
        return out


def workloads(settings: Any) -> list[Workload]:
    """The paper's Figure 3 lengths (``new_tokens`` each), the realistic task mix, then
    ``clip_seconds`` clips at every batch size; the system prompt as every path of the package."""
    from midashenglm.bench.workloads import QUESTION, mixed_lengths, realistic_requests
    from midashenglm.processing import DEFAULT_SYSTEM_PROMPT

    s = settings
    lengths = tuple(mixed_lengths(s.mixed_requests, s.seed))
    tasks = realistic_requests(s.realistic_requests, s.seed)
    out = [
        Workload("figure3", f"Figure 3 lengths, {len(lengths)} requests, {s.new_tokens} tokens each",
                 lengths, (QUESTION,) * len(lengths), (s.new_tokens,) * len(lengths), DEFAULT_SYSTEM_PROMPT),
        Workload("realistic", f"realistic task mix, {len(tasks)} requests",
                 tuple(t.seconds for t in tasks), tuple(t.question for t in tasks),
                 tuple(t.new_tokens for t in tasks), DEFAULT_SYSTEM_PROMPT),
    ]
    for batch in s.batch_sizes:
        out.append(Workload(f"batch{batch}", f"{s.clip_seconds:g} s clips, batch {batch}",
                            (float(s.clip_seconds),) * batch, (QUESTION,) * batch, (s.new_tokens,) * batch,
                            DEFAULT_SYSTEM_PROMPT))
    return out


def requests_for(workload: Workload, kind: str, wavs: list[Path]) -> list[dict[str, Any]]:
    """The worker's requests: a ``ttft`` measurement asks one token of each."""
    return [{"wav": str(w), "system": workload.system, "question": q, "max_tokens": 1 if kind == "ttft" else n}
            for w, q, n in zip(wavs, workload.questions, workload.new_tokens, strict=True)]


def write_clips(folder: Path, seconds: tuple[float, ...], seed: int) -> list[Path]:
    """One fresh random clip per length (the bench's noise + tone), as 16-bit WAV."""
    import numpy as np
    import soundfile as sf

    from midashenglm.bench.workloads import SAMPLE_RATE, random_clip

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(seconds):
        wave = np.clip(random_clip(s, seed * 100_003 + i), -1.0, 32767 / 32768)
        path = folder / f"{i:03d}.wav"
        sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
    return paths


# ============================================================================ timing
Call = Callable[[str, Workload, str, int], dict[str, Any]]


def alternate(work: list[Workload], repeats: int, call: Call, *, sides: tuple[str, ...] = SIDES,
              on_run: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """For each workload and kind (``ttft``, then ``run``), ``repeats`` rounds of every side
    in turn (ours, vLLM, ours, vLLM, ...); ``call(side, workload, kind, round)`` runs one
    and returns its measurement. Returns one record per call, in order."""
    records = []
    for w in work:
        for kind in KINDS:
            for r in range(repeats):
                for side in sides:
                    record = {"workload": w.key, "kind": kind, "side": side, "round": r,
                              "requests": w.requests, **call(side, w, kind, r)}
                    records.append(record)
                    if on_run is not None:
                        on_run(record)
    return records


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _ratio(b: float | None, a: float | None) -> float | None:
    return b / a if a and b is not None else None


def summarise(work: list[Workload], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per workload: each side's TTFT, requests/s, output tokens/s and peak memory,
    and ours / vLLM in speed (vLLM's time / ours: > 1, ours faster), from the medians
    and from the best runs."""
    rows = []
    for w in work:
        row: dict[str, Any] = {"workload": w.key, "title": w.title, "requests": w.requests, "flags": []}
        for side in SIDES:
            mine = [r for r in records if r["workload"] == w.key and r["side"] == side]
            ttft = _stats([r["wall_s"] for r in mine if r["kind"] == "ttft"])
            run = [r for r in mine if r["kind"] == "run"]
            wall = _stats([r["wall_s"] for r in run])
            tokens = sorted({r["output_tokens"] for r in run})
            peaks = [r["peak_rss_bytes"] for r in mine if r.get("peak_rss_bytes")]
            pss = [r["pss_after_bytes"] for r in mine if r.get("pss_after_bytes")]
            other = [r["other_cores"] for r in mine if r.get("other_cores") is not None]
            row[side] = {
                "ttft_s": ttft, "run_s": wall, "output_tokens": tokens[0] if len(tokens) == 1 else tokens,
                "requests_per_s": w.requests / wall["median"] if wall else None,
                "output_tokens_per_s": (sum(r["output_tokens"] for r in run) / sum(r["wall_s"] for r in run)
                                        if run else None),
                "peak_rss_bytes": max(peaks) if peaks else None,
                "pss_after_bytes": max(pss) if pss else None,
                "other_cores": _stats(other),
            }
            if len(tokens) > 1 or (tokens and tokens[0] != sum(w.new_tokens)):
                row["flags"].append(f"{side} made {tokens} tokens, {sum(w.new_tokens)} asked")
        ours, theirs = row["ours"], row["vllm"]
        busy = {side: row[side]["other_cores"]["max"] for side in SIDES if row[side]["other_cores"]}
        if any(v > OTHER_LOAD for v in busy.values()):
            row["flags"].append("other processes kept up to " + ", ".join(
                f"{v:.1f} cores busy during {'our' if side == 'ours' else 'vLLM' + chr(39) + 's'} runs"
                for side, v in busy.items()))
        for metric, key in (("ttft", "ttft_s"), ("throughput", "run_s")):
            a, b = ours[key], theirs[key]
            median = _ratio(b and b["median"], a and a["median"])
            best = _ratio(b and b["min"], a and a["min"])
            row[f"{metric}_ratio"], row[f"{metric}_ratio_min"] = median, best
            if median and best and abs(median / best - 1) > UNSTABLE:
                row["flags"].append(f"{metric}: ratio of medians {median:.2f}x and of minimums {best:.2f}x differ "
                                    f"by {100 * abs(median / best - 1):.0f} %: unstable (load on the machine?)")
            row[f"{metric}_verdict"] = verdict(median, best)
        row["memory_ratio"] = _ratio(ours["peak_rss_bytes"], theirs["peak_rss_bytes"])
        rows.append(row)
    return rows


def verdict(median: float | None, best: float | None) -> str:
    """"faster" / "slower" when both ratios agree about 1 (as fast or better counts as faster), else "unclear"."""
    if median is None or best is None:
        return "not measured"
    if min(median, best) >= 1:
        return "faster"
    if max(median, best) < 1:
        return "slower"
    return "unclear"


# ============================================================================ report
def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def ratio_table(rows: list[dict[str, Any]]) -> list[str]:
    from midashenglm.bench.report import _table

    body = []
    for r in rows:
        body.append([
            r["title"],
            f"**{_x(r['ttft_ratio'])}** ({_x(r['ttft_ratio_min'])})",
            f"**{_x(r['throughput_ratio'])}** ({_x(r['throughput_ratio_min'])})",
            _num(r["memory_ratio"], 2),
            ", ".join(v for v in (r["ttft_verdict"], r["throughput_verdict"])),
        ])
    return [_table(["workload", "TTFT: ours / vLLM", "throughput: ours / vLLM", "peak memory: ours / vLLM",
                    "ours is (TTFT, throughput)"], body)]


def absolute_table(rows: list[dict[str, Any]]) -> list[str]:
    from midashenglm.bench.report import _table

    body = []
    for r in rows:
        o, v = r["ours"], r["vllm"]
        body.append([
            r["title"],
            f"{_ms(o['ttft_s'] and o['ttft_s']['median'])} / {_ms(v['ttft_s'] and v['ttft_s']['median'])}",
            f"{_num(o['requests_per_s'])} / {_num(v['requests_per_s'])}",
            f"{_num(o['output_tokens_per_s'])} / {_num(v['output_tokens_per_s'])}",
            f"{_gib(o['peak_rss_bytes'])} / {_gib(v['peak_rss_bytes'])}",
            f"{_gib(o.get('pss_after_bytes'))} / {_gib(v.get('pss_after_bytes'))}",
            "; ".join(r["flags"]) or "-",
        ])
    return [_table(["workload", "TTFT ms, ours / vLLM", "requests/s, ours / vLLM",
                    "output tokens/s, ours / vLLM", "peak RSS GiB, ours / vLLM", "PSS after GiB, ours / vLLM",
                    "flags"], body)]


def headline(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for metric in ("ttft", "throughput"):
        values = [r[f"{metric}_ratio"] for r in rows if r.get(f"{metric}_ratio")]
        if not values:
            continue
        slower = [r["title"] for r in rows if r[f"{metric}_verdict"] == "slower"]
        unclear = [r["title"] for r in rows if r[f"{metric}_verdict"] == "unclear"]
        name = "TTFT" if metric == "ttft" else "throughput"
        text = (f"{name}, ours / vLLM: {min(values):.2f}x to {max(values):.2f}x "
                f"(geometric mean {statistics.geometric_mean(values):.2f}x); ")
        faster = len(rows) - len(slower) - len(unclear)
        if not slower and not unclear:
            text += "ours at least as fast on every workload"
        else:
            text += f"ours at least as fast on {faster} of {len(rows)} workloads"
            if slower:
                text += f"; slower on: {'; '.join(slower)}"
            if unclear:
                text += f"; unclear (the median and best-run ratios disagree) on: {'; '.join(unclear)}"
        lines.append(text)
    return lines


def _threads_line(info: dict[str, Any]) -> str:
    parts = []
    for p in info.get("processes", []):
        omp = {k: v for k, v in p.items() if k.startswith(("OMP", "GOMP", "KMP"))}
        parts.append(f"`{p['name']}` {p['threads']} threads, CPUs {p.get('cpu_affinity')}"
                     + (f" ({', '.join(f'{k}={v}' for k, v in omp.items())})" if omp else ""))
    return "; ".join(parts) or "-"


def markdown(report: dict[str, Any]) -> str:
    from midashenglm.bench.report import _table

    meta, rows = report["meta"], report["rows"]
    ours, theirs = meta["ours"], meta["vllm"]
    ov, vv = ours.get("versions", {}), theirs.get("versions", {})
    model = meta["model"]
    lines = [
        "# Our engine against vLLM (same model, same requests)",
        "",
        f"`{meta['command']}`, {meta['date']}. Written by `midashenglm bench vllm` "
        "(`src/midashenglm/bench/vllm.py`); see [docs/vllm.md](../../vllm.md).",
        "",
        "## Summary",
        "",
        "```",
        *headline(rows),
        "```",
        "",
        *ratio_table(rows),
        "",
        "Ratios are ours / vLLM in speed (vLLM's time divided by ours): above 1, ours is faster. "
        "In bold the ratio of the medians over the rounds, in brackets the ratio of each side's "
        "best round. A verdict needs both on the same side of 1 (else *unclear*). Peak memory: "
        "ours / vLLM (below 1, ours uses less).",
        "",
        "## Measured",
        "",
        *absolute_table(rows),
        "",
        "TTFT: the workload's requests, each asking one new token, handed to the engine at once, "
        "until every request has its first token (at batch 1, the request's time to first token). "
        "Requests/s and output tokens/s: the same requests with their answer lengths (EOS "
        "ignored), from handing them over to the last result. Medians over the rounds; "
        "every round and its raw numbers are in `report.json`. Peak RSS sums each process's own "
        "peak, so a library every process maps counts once per process; PSS (after the run, the "
        "largest over the rounds) splits shared pages between the processes that map them.",
        "",
        "## Setup",
        "",
        _table(["", ""], [
            ["machine", f"{meta['machine'].get('cpu')}, {meta['machine'].get('cpu_cores_visible')} cores visible, "
                        f"{meta['device']}, {meta['dtype']}"],
            ["load average (1, 5, 15 min)", f"start {meta['machine'].get('load_average_at_start')}, "
                                             f"end {meta.get('load_average_at_end')}"],
            ["ours", f"midashenglm {ov.get('midashenglm', '?')}, torch {ov.get('torch')}, transformers "
                     f"{ov.get('transformers')}, Python {ov.get('python')}; torch threads "
                     f"{ours.get('torch_threads')} (inter-op {ours.get('interop_threads')})"],
            ["vLLM", f"vllm {vv.get('vllm')}, torch {vv.get('torch')}, transformers {vv.get('transformers')}, "
                     f"Python {vv.get('python')}; {theirs.get('mode', '')}"],
            ["ours: processes", _threads_line(ours)],
            ["vLLM: processes", _threads_line(theirs)],
            ["vLLM: thread binding", "; ".join(theirs.get("binding_log", [])) or "-"],
            ["vLLM: environment", ", ".join(f"{k}={v}" for k, v in theirs.get("env", {}).items()) or "-"],
            ["ours: engine", ", ".join(f"{k}={v}" for k, v in ours.get("engine", {}).items())],
            ["vLLM: engine", ", ".join(f"{k}={v}" for k, v in theirs.get("engine", {}).items())
             + "; " + ", ".join(f"{k}={v}" for k, v in meta["vllm_kwargs"].items())],
            ["model", f"{meta['scale_note']}; encoder {json.dumps(model['encoder'])}; decoder "
                      f"{model['decoder']['model_type']}, hidden {model['decoder']['hidden_size']}, "
                      f"{model['decoder']['num_hidden_layers']} layers, heads "
                      f"{model['decoder']['num_attention_heads']}/{model['decoder']['num_key_value_heads']}, "
                      f"head_dim {model['decoder']['head_dim']}, vocabulary {model['decoder']['vocab_size']}, "
                      f"rope_theta {model['decoder']['rope_theta']:g}; parameters "
                      + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in model["parameters"].items())],
            ["start-up (s)", f"ours {ours.get('startup_s', 0):.1f}, vLLM {theirs.get('startup_s', 0):.1f} "
                             "(once per run, not timed)"],
            ["rounds", f"{report['settings']['repeats']} per workload and measurement, alternating "
                       "ours, vLLM, ours, vLLM, ...; wall time of the whole run "
                       f"{meta['wall_time_s']:.0f} s, of which {meta.get('quiet_wait_s', 0):.0f} s waiting for "
                       "other processes to quiet down"],
        ]),
        "",
        "**Method.** " + report["method"],
        "",
        "## Workloads",
        "",
        _table(["workload", "requests", "clip lengths (s)", "new tokens"], [
            [w["title"], w["requests"], f"mean {w['mean_seconds']:.1f}, {min(w['seconds']):g} to {max(w['seconds']):g}",
             f"{w['output_tokens']} in all ({min(w['new_tokens'])} to {max(w['new_tokens'])} each)"]
            for w in report["workloads"]]),
        "",
    ]
    if report.get("plots"):
        lines += [f"![ours / vLLM]({p})" for p in report["plots"]] + [""]
    profiles = report.get("profiles") or {}
    if profiles:
        lines += ["## Profiles of our engine", "",
                  "Our engine once more on each workload where it was not clearly faster, under torch.profiler "
                  "and cProfile (the full tables are in the files):", ""]
        for name, entry in profiles.items():
            lines += [f"* `{entry['file']}` ({name}): " + "; ".join(entry.get("top", []))]
        lines.append("")
    if report.get("notes"):
        lines += ["## Findings (written after the run)", "", report["notes"].strip(), ""]
    return "\n".join(lines)


def write_plot(report: dict[str, Any], path: Path) -> Path | None:
    """Ratios per workload (TTFT and throughput), a line at 1; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.55 * len(rows)))
    ys = list(range(len(rows)))[::-1]
    for offset, (key, label, color) in enumerate((("ttft", "time to first token", "#4c72b0"),
                                                  ("throughput", "throughput (requests/s)", "#dd8452"))):
        values = [r.get(f"{key}_ratio") or 0 for r in rows]
        pos = [y + (0.2 if offset == 0 else -0.2) for y in ys]
        ax.barh(pos, values, height=0.38, color=color, label=label)
        for y, v, r in zip(pos, values, rows, strict=True):
            best = r.get(f"{key}_ratio_min")
            text = f"{v:.2f}x" + (f" (best {best:.2f}x)" if best else "")
            ax.annotate(text, (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1)
    top = max([r.get(k) or 0 for r in rows for k in ("ttft_ratio", "throughput_ratio")] + [1.0])
    ax.set_xlim(0, top * 1.4)
    ax.set_yticks(ys, [r["title"] for r in rows], fontsize=8)
    ax.set_xlabel("ours / vLLM in speed (vLLM's time / ours): > 1, ours faster")
    meta = report["meta"]
    ax.set_title(f"Our engine vs vLLM {meta['vllm'].get('versions', {}).get('vllm', '?')} "
                 f"({meta['device']}, {meta['dtype']}, {meta['scale_note']})", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / len(rows)), ncol=2)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """report.json, report.png (when matplotlib is installed) and report.md in ``out``."""
    from midashenglm.bench.report import _jsonable

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json"]
    plot = write_plot(report, out / "report.png")
    report = {**report, "plots": [plot.name] if plot else []}
    files[0].write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    if plot:
        files.append(plot)
    (out / "report.md").write_text(markdown(report))
    return [*files, out / "report.md"]


METHOD = (
    "Both engines run the same random-weight checkpoint (float32, written once by our "
    "`save_pretrained`), each in a process of its own started once and warmed up; each run "
    "hands every request of the workload to the engine at once (vLLM: `LLM.chat` with "
    "OpenAI-style messages holding the clip as base64 WAV; ours: `Engine.generate` with the "
    "WAV bytes), greedy, end-of-sequence ignored, and is timed from there to the last result, "
    "audio decoding, chat template and tokenization included. Every round uses fresh clips "
    "(vLLM's multimodal and prefix caches never see a clip twice; our encoder cache is off, "
    "our cache of prompt heads and vLLM's prefix caching stay on, as shipped); both sides get "
    "the same WAV files. The sides alternate (ours, vLLM, ours, vLLM, ...); the idle side's "
    "processes are stopped (SIGSTOP) meanwhile, so that vLLM's polling threads take no CPU from "
    "ours. Before each run the bench waits (briefly, with a cap) until other processes keep fewer "
    "than 0.3 cores busy, and it records the cores they kept busy during the run (`/proc/stat` less "
    "the side's processes): rows where that exceeded 0.3 cores are flagged. Peak memory: the sum "
    "over the side's processes of each one's peak resident set (`VmHWM`, reset before every run "
    "through `/proc/PID/clear_refs`); it includes memory the allocators keep from earlier runs and "
    "vLLM's preallocated KV cache."
)


# ============================================================================== run
def default_vllm_python() -> Path:
    for base in (Path.cwd(), ROOT):
        candidate = base / ".venv-vllm" / "bin" / "python"
        if candidate.exists():
            return candidate
    return Path(".venv-vllm") / "bin" / "python"


def check_vllm_python(path: Path) -> None:
    from midashenglm.errors import UserError

    if not (path.is_file() and os.access(path, os.X_OK)):
        raise UserError(f"no vLLM Python at {path}: build vLLM's venv with `{VLLM_ENV_BUILD}` "
                        "(or pass --vllm-python PATH to another venv's python)")
    # Before anything is started: a Python without vLLM would fail only after our side loaded.
    probe = subprocess.run([str(path), "-c", "import vllm"], capture_output=True, text=True,
                           timeout=300)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"{path} cannot import vllm ({last}): build vLLM's venv with "
                        f"`{VLLM_ENV_BUILD}` or pass --vllm-python PATH to a python that has it")


def vllm_kwargs(device: str, dtype: str, max_num_seqs: int, eager: bool, kv_cache_bytes: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "dtype": dtype, "max_model_len": 4096, "limit_mm_per_prompt": {"audio": 1}, "seed": 0,
        "max_num_seqs": max_num_seqs, "enforce_eager": eager, "trust_remote_code": True,
        # The profiling run encodes dozens of dummy 10 s clips at start-up: not what is measured.
        "skip_mm_profiling": True,
    }
    if device == "cpu":
        kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
    else:
        kwargs["gpu_memory_utilization"] = 0.4  # our engine shares the GPU
    return kwargs


def run(options: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """The whole comparison (see the module's docstring); returns the report."""
    import torch

    from midashenglm.bench.measure import load_average, machine_info
    from midashenglm.bench.models import scale_spec
    from midashenglm.bench.settings import Settings
    from midashenglm.checkpoint import resolve_device
    from midashenglm.errors import UserError

    python = Path(options["vllm_python"]) if options.get("vllm_python") else default_vllm_python()
    check_vllm_python(python)
    device = resolve_device(options["device"])
    if device.type not in ("cpu", "cuda"):
        device = torch.device("cpu")
    scale = options["scale"]
    if scale == "full" and device.type != "cuda":
        raise UserError("--scale full builds the 7B shapes: it needs a CUDA GPU; use --scale cpu")
    dtype = options["dtype"] if options["dtype"] != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    settings = Settings.for_scale(scale, device, quick=options["quick"])
    from dataclasses import replace

    overrides = {k: options.get(k) for k in ("repeats", "new_tokens", "mixed_requests", "realistic_requests")}
    if options.get("batch_sizes"):
        overrides["batch_sizes"] = tuple(sorted(set(options["batch_sizes"])))
    settings = replace(settings, seed=options["seed"], **{k: v for k, v in overrides.items() if v is not None})
    work_items = workloads(settings)
    max_num_seqs = max(options["max_num_seqs"], max(settings.batch_sizes))
    eager = options["quick"] if options.get("vllm_eager") is None else options["vllm_eager"]
    threads = options.get("threads") or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                         else os.cpu_count())

    started = time.perf_counter()
    machine = machine_info(device)
    work = Path(options["work"]) if options.get("work") else Path.cwd() / "out" / "bench_vllm"
    work.mkdir(parents=True, exist_ok=True)
    log(f"writing the model ({scale_spec(scale).note}, Qwen2 decoder, head_dim 64, rope_theta 1e6)")
    model = write_model(work / "model", scale, options["seed"])
    kv_bytes = int(options["vllm_kv_cache_gib"] * 2**30)
    kwargs = vllm_kwargs(device.type, dtype, max_num_seqs, eager, kv_bytes)
    spec = {"model": str(work / "model"), "device": device.type, "dtype": dtype, "threads": threads,
            "max_num_seqs": max_num_seqs, "vllm_kwargs": kwargs}
    # Each engine sets its threads itself (ours: --threads; vLLM binds its OpenMP threads,
    # VLLM_CPU_OMP_THREADS_BIND): a caller's OMP_NUM_THREADS (the test suite's 1) stays out.
    ours_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    theirs_env = vllm_env(kv_cache_gib=None)
    for env in (ours_env, theirs_env):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(var, None)
    procs = Procs()
    sides = {"ours": Side("ours", Path(sys.executable), spec, work, ours_env, procs),
             "vllm": Side("vllm", python, spec, work, theirs_env, procs)}
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        log(f"starting both engines (vLLM: {python}; {'eager' if eager else 'compiled, about a minute'})")
        for side in sides.values():
            side.start()
        for name, side in sides.items():
            side.ready(options["timeout"])
            side.pause()
            log(f"{name} ready in {side.info['startup_s']:.1f} s")
        warm = Workload("warmup", "warm-up", (0.7, 3.0, 12.0, 30.0), ("warm up",) * 4, (8,) * 4, None)
        wavs = write_clips(work / "clips" / "warmup", warm.seconds, 999_999)
        for side in sides.values():
            side.resume()
            side.call({"op": "run", "requests": requests_for(warm, "run", wavs)}, options["timeout"])
            side.call({"op": "run", "requests": requests_for(warm, "ttft", wavs)}, options["timeout"])
            side.info["processes"] = side.threads()
            side.pause()

        clips: dict[tuple[str, str, int], list[Path]] = {}
        quiet = QuietWait(options["quiet_wait"], options["quiet_wait_total"])

        def call(name: str, w: Workload, kind: str, r: int) -> dict[str, Any]:
            key = (w.key, kind, r)
            if key not in clips:
                for old in list(clips):
                    shutil.rmtree(work / "clips" / "-".join(map(str, old)), ignore_errors=True)
                    del clips[old]
                seed = options["seed"] * 1_000_003 + hash_key(*key)
                clips[key] = write_clips(work / "clips" / "-".join(map(str, key)), w.seconds, seed)
            side = sides[name]
            quiet_before = quiet()
            side.resume()
            try:
                before = side.reset_peak()
                with OtherLoad(side) as other:
                    reply = side.call({"op": "run", "requests": requests_for(w, kind, clips[key])},
                                      options["timeout"])
                reply.update(peak_rss_bytes=side.peak_rss(), rss_before_bytes=before, pss_after_bytes=side.pss(),
                             other_cores=other.cores, other_cores_before=quiet_before)
            finally:
                side.pause()
            return {k: reply[k] for k in ("wall_s", "output_tokens", "prompt_tokens", "peak_rss_bytes",
                                          "rss_before_bytes", "pss_after_bytes", "other_cores",
                                          "other_cores_before")}

        def on_run(record: dict[str, Any]) -> None:
            log(f"{record['workload']} {record['kind']} round {record['round'] + 1}/{settings.repeats}: "
                f"{record['side']} {record['wall_s']:.3f} s, {record['output_tokens']} tokens, "
                f"peak RSS {record['peak_rss_bytes'] / 2**30:.2f} GiB, other processes "
                f"{record['other_cores'] if record['other_cores'] is not None else float('nan'):.2f} cores")

        records = alternate(work_items, settings.repeats, call, on_run=on_run)
        rows = summarise(work_items, records)
        profiles = {}
        if options.get("profile"):
            profiles = profile_ours(sides["ours"], work_items, rows, work, options, log)
    finally:
        for side in sides.values():
            side.stop()
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
    shutil.rmtree(work / "clips", ignore_errors=True)

    vllm_info = sides["vllm"].info
    vllm_info["binding_log"] = binding_lines(sides["vllm"].log)
    vllm_info["env"] = {k: v for k, v in sides["vllm"].env.items()
                        if k.startswith("VLLM_") and k != "VLLM_NO_USAGE_STATS"}
    vllm_info["mode"] = ("eager" if eager else "compiled (vLLM's default: torch.compile, inductor)") + \
        ", the default multiprocessing engine (front end, engine core and worker processes)"
    command = " ".join(["midashenglm bench vllm", *command_options(options)])
    report: dict[str, Any] = {
        "meta": {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device.type,
                 "dtype": dtype, "scale": scale, "scale_note": scale_spec(scale).note, "machine": machine,
                 "load_average_at_end": load_average(), "wall_time_s": round(time.perf_counter() - started, 1),
                 "model": model, "ours": sides["ours"].info, "vllm": vllm_info, "vllm_kwargs": kwargs,
                 "vllm_python": str(python), "quiet_wait_s": round(quiet.waited, 1)},
        "settings": {"repeats": settings.repeats, "new_tokens": settings.new_tokens,
                     "mixed_requests": settings.mixed_requests, "realistic_requests": settings.realistic_requests,
                     "batch_sizes": list(settings.batch_sizes), "clip_seconds": settings.clip_seconds,
                     "max_num_seqs": max_num_seqs, "seed": settings.seed, "threads": threads},
        "method": METHOD,
        "workloads": [w.summary() for w in work_items],
        "rows": rows,
        "records": records,
        "profiles": profiles,
    }
    if options.get("notes"):
        report["notes"] = Path(options["notes"]).read_text()
    return report


def command_options(options: dict[str, Any]) -> list[str]:
    """The options of a run that change what it measures, as given on the command line."""
    out = ["--quick"] if options.get("quick") else []
    for key in ("threads", "repeats", "new_tokens", "mixed_requests", "realistic_requests", "max_num_seqs",
                "scale", "device", "dtype", "seed"):
        value = options.get(key)
        defaults = {"max_num_seqs": 32, "scale": "cpu", "device": "auto", "dtype": "auto", "seed": 0}
        if value is not None and value != defaults.get(key):
            out.append(f"--{key.replace('_', '-')} {value}")
    if options.get("batch_sizes"):
        out.append("--batch-sizes " + ",".join(map(str, options["batch_sizes"])))
    if options.get("vllm_eager") is not None:
        out.append("--vllm-eager" if options["vllm_eager"] else "--vllm-compile")
    for key, default in (("quiet_wait", 10.0), ("quiet_wait_total", 240.0)):
        if options.get(key) is not None and options[key] != default:
            out.append(f"--{key.replace('_', '-')} {options[key]:g}")
    if options.get("profile"):
        out.append("--profile")
    return out


def hash_key(*parts: Any) -> int:
    """A stable seed for a round's clips (Python's ``hash`` of a str changes per process)."""
    import zlib

    return zlib.crc32("/".join(map(str, parts)).encode()) % 1_000_003


def binding_lines(logfile: Path) -> list[str]:
    """vLLM's own lines about its OpenMP binding and torch threads."""
    keep = ("core ids=", "reserved_cpus=", "Torch threads", "OMP_NUM_THREADS")
    lines = logfile.read_text(errors="replace").splitlines() if logfile.is_file() else []
    out = []
    for ln in lines:
        if any(k in ln for k in keep):
            text = ln.split("] ", 1)[-1].strip()
            if text not in out:
                out.append(text)
    return out


def profile_ours(side: Side, work_items: list[Workload], rows: list[dict[str, Any]], work: Path,
                 options: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Our engine once more, under the profilers, on every workload and measurement where
    it was not faster; the tables go to ``--out`` (or the work folder)."""
    out_dir = Path(options["out"]) if options.get("out") else work
    out_dir.mkdir(parents=True, exist_ok=True)
    profiles = {}
    by_key = {w.key: w for w in work_items}
    side.resume()
    try:
        for row in rows:
            for kind, metric in (("ttft", "ttft"), ("run", "throughput")):
                if row[f"{metric}_verdict"] == "faster":
                    continue
                w = by_key[row["workload"]]
                wavs = write_clips(work / "clips" / f"profile-{w.key}-{kind}", w.seconds, 7_777_777)
                path = out_dir / f"profile-{w.key}-{kind}.txt"
                log(f"profiling ours on {w.key} {kind}")
                reply = side.call({"op": "run", "requests": requests_for(w, kind, wavs), "profile": str(path)},
                                  options["timeout"])
                profiles[f"{w.title}, {'TTFT' if kind == 'ttft' else 'throughput'}"] = {
                    "file": path.name, "wall_s": reply["wall_s"], "top": top_operators(path)}
    finally:
        side.pause()
    return profiles


def top_operators(path: Path, n: int = 5) -> list[str]:
    """The first ``n`` operators of a profile's torch.profiler table, with their self CPU share."""
    out = []
    in_table = False
    for line in path.read_text().splitlines():
        if line.startswith("== torch.profiler"):
            in_table = True
            continue
        if in_table and line.startswith("=="):
            break
        parts = line.split()
        if in_table and len(parts) > 3 and parts[1].endswith("%") and not line.startswith(("Name", "-")):
            out.append(f"{parts[0]} {parts[1]}")
            if len(out) == n:
                break
    return out
