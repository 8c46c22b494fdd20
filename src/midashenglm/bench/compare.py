"""The comparisons of a run, as a pure function of its measurement records.

:func:`compare` takes the records the measurement modules return (``peak``, ``ttft``,
``throughput``, ``efficiency``, ``mixed``, ``realistic``) and returns one row per
comparison, nothing else read or measured. A row compares side **A** with side **B**:

* ``ratio_median``: B's median time per request / A's (A's speed-up; > 1: A is faster),
  and ``ratio_min``, the same with each side's best run. Both sides were timed
  interleaved (A, B, A, B, ...), so a burst of load hits both; when the two ratios
  still differ by more than :data:`UNSTABLE`, the row is flagged ``unstable``.
* ``analytic_ratio`` (MACs per request) and ``roofline_ratio`` (roofline time per
  request, ``roofline.py``: compute *or* memory bound per phase), what the arithmetic
  predicts; an architecture ratio further than :data:`FAR` from the roofline's is
  flagged ``check``.
* per side, ``distance``: median time / roofline time, how far the measurement is
  from what the machine's measured limits allow. A side faster than its roofline
  (best run below it) is impossible: the row is a ``measurement problem`` and the
  distance is not given as a number.
* ``target`` and ``met`` (True, False, or None when the two ratios disagree about it
  or the row has a measurement problem); ``paper`` where the paper gives a number.

Hardware rows give achieved FLOP/s as a fraction of the matmul peak (``2 x MACs /
best time / peak``; both best cases); above 100 % it is a measurement problem and
``fraction_of_peak`` is None.
"""

from __future__ import annotations

from typing import Any

from midashenglm.bench.peak import DRIFT
from midashenglm.bench.roofline import roofline, total_bytes, total_macs

UNSTABLE = 0.25  # ratio of medians and ratio of minimums further apart than this: unstable
FAR = 2.0  # an architecture ratio more than this factor from the roofline's: check
MODELS = ("midashenglm", "baseline", "baseline_pad30")
NAMES = {"midashenglm": "MiDashengLM", "baseline": "baseline", "baseline_pad30": "padded-30 s baseline"}
LOOPS = {"transformers": "transformers", "transformers_batched": "transformers batches",
         "prompt_only": "prompt only (1 token)", "transformers_one_at_a_time": "transformers one at a time",
         "engine": "engine", "engine_default": "engine, default budgets"}
# The targets: 3x on the mixed workload (architecture), 2x for the engine against
# transformers at the same batch size on the realistic task mix (implementation).
TARGETS = {("mixed", "transformers_batched"): 3.0, ("mixed", "prompt_only"): 3.0,
           ("realistic", "engine", "transformers_batched"): 2.0}
# The paper's Table 13 (samples/s, MiDashengLM / Qwen2.5-Omni, 30 s clips, 100 tokens).
PAPER_THROUGHPUT = {1: 0.65 / 0.45, 4: 2.42 / 1.21, 8: 4.67 / 1.44, 16: "baseline OOM"}
STATUS_ORDER = ("ok", "check", "unstable", "measurement problem")


def compare(records: dict[str, Any]) -> list[dict[str, Any]]:
    """Every comparison row of a run's ``records`` (see the module's docstring)."""
    peak = records.get("peak") or {}
    rows: list[dict[str, Any]] = []
    rows += _ttft(records.get("ttft") or [], peak)
    rows += _throughput(records.get("throughput") or [], peak)
    for section in ("mixed", "realistic"):
        if records.get(section):
            rows += _workload(section, records[section], peak)
    rows += _hardware(records.get("efficiency") or [], peak)
    return rows


# ------------------------------------------------------------------------------ sides
def label(model: str, loop: str) -> str:
    return f"{NAMES.get(model, model)}, {LOOPS.get(loop, loop)}"


def side(record: dict[str, Any] | None, peak: dict[str, Any]) -> dict[str, Any] | None:
    """One side of a comparison: time per request, work, roofline and distance."""
    if not record or record.get("status", "ok") != "ok" or "time" not in record:
        return None
    n = record.get("requests", 1)
    time = record["time"]
    out: dict[str, Any] = {"model": record["model"], "loop": record.get("loop", record.get("stage")),
                           "label": label(record["model"], record.get("loop", record.get("stage", ""))),
                           "requests": n, "median_s": time["median"], "min_s": time["min"],
                           "repeats": len(time.get("times") or [time["median"]])}
    work = record.get("work")
    if work:
        out["macs"], out["bytes"] = total_macs(work), total_bytes(work)
        roof = roofline(work, peak.get("flops_per_s"), peak.get("bytes_per_s"))
        if roof and roof["seconds"] > 0:
            out["roofline_s"] = roof["seconds"]
            out["bound"] = {p: v["bound"] for p, v in roof["phases"].items()}
            top = max(roof["phases"], key=lambda p: roof["phases"][p]["seconds"])
            out["limited_by"] = f"{top} {roof['phases'][top]['bound']}"  # the phase that dominates
            out["distance"] = time["median"] / roof["seconds"]
            out["distance_min"] = time["min"] / roof["seconds"]
    return out


def _ratio(b: float | None, a: float | None) -> float | None:
    return b / a if a and b is not None else None


def pair(section: str, group: str, name: str, a_rec: dict[str, Any] | None, b_rec: dict[str, Any] | None,
         peak: dict[str, Any], *, target: float | None = None, paper: Any = None, expect: bool = False,
         **extra: Any) -> dict[str, Any] | None:
    """The row comparing ``a_rec`` (A) with ``b_rec`` (B); None when A was not measured or B
    has no record at all (a B that was skipped or ran out of memory gives a row saying so).

    ``expect``: the two sides run the same loop, so the measured ratio should follow the
    roofline's (architecture rows); a ratio further than :data:`FAR` from it is flagged.
    """
    a = side(a_rec, peak)
    if a is None or b_rec is None:
        return None
    b = side(b_rec, peak)
    row: dict[str, Any] = {"section": section, "group": group, "name": name, **extra, "a": a, "b": b,
                           "ratio_median": None, "ratio_min": None, "analytic_ratio": None,
                           "roofline_ratio": None, "target": target, "paper": paper, "met": None,
                           "status": "ok", "flags": []}
    if b is None:
        status = b_rec.get("status", "not measured")
        row["flags"].append(f"B {status}")
        return row
    per = lambda s, k: s[k] / s["requests"] if s.get(k) is not None else None  # noqa: E731
    row["ratio_median"] = _ratio(per(b, "median_s"), per(a, "median_s"))
    row["ratio_min"] = _ratio(per(b, "min_s"), per(a, "min_s"))
    row["analytic_ratio"] = _ratio(per(b, "macs"), per(a, "macs"))
    row["roofline_ratio"] = _ratio(per(b, "roofline_s"), per(a, "roofline_s"))
    flags, statuses = row["flags"], ["ok"]
    for tag, s in (("A", a), ("B", b)):
        if s.get("distance_min") is not None and s["distance_min"] < 1:
            flags.append(f"{tag} ran faster than the roofline allows ({s['distance_min']:.2f} of it): the "
                         "machine's limits were measured low (load during their measurement?)")
            statuses.append("measurement problem")
    rm, rn = row["ratio_median"], row["ratio_min"]
    if rm and rn and abs(rm / rn - 1) > UNSTABLE:
        flags.append(f"ratio of medians {rm:.2f}x and of minimums {rn:.2f}x differ by "
                     f"{100 * abs(rm / rn - 1):.0f} %: timings unstable (load on the machine?)")
        statuses.append("unstable")
    expected = row["roofline_ratio"] or row["analytic_ratio"]
    if expect and expected and rn and not (1 / FAR <= rn / expected <= FAR):
        flags.append(f"{rn:.2f}x is more than {FAR:g}x away from the arithmetic's {expected:.2f}x")
        statuses.append("check")
    row["status"] = max(statuses, key=STATUS_ORDER.index)
    if target is not None and row["status"] != "measurement problem" and rm and rn:
        if min(rm, rn) >= target:
            row["met"] = True
        elif max(rm, rn) < target:
            row["met"] = False
    return row


# --------------------------------------------------------------------------- sections
def _find(records: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in records if all(r.get(k) == v for k, v in match.items())), None)


def _ttft(records: list[dict[str, Any]], peak: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for seconds in sorted({r["seconds"] for r in records}):
        ours = _find(records, model="midashenglm", loop="transformers", seconds=seconds)
        for base in ("baseline", "baseline_pad30"):
            rows.append(pair("ttft", "architecture", f"TTFT {seconds:g} s: MiDashengLM vs {NAMES[base]}",
                             ours, _find(records, model=base, loop="transformers", seconds=seconds), peak,
                             expect=True, paper="up to 4x" if base == "baseline" else None, seconds=seconds))
        rows.append(pair("ttft", "implementation", f"TTFT {seconds:g} s: engine vs transformers (MiDashengLM)",
                         _find(records, model="midashenglm", loop="engine", seconds=seconds), ours, peak,
                         seconds=seconds))
    return [r for r in rows if r]


def _throughput(records: list[dict[str, Any]], peak: dict[str, Any]) -> list[dict[str, Any]]:
    if not any(r.get("timed") for r in records):
        return []  # the memory command alone: one untimed run per batch size
    rows = []
    for batch in sorted({r["batch"] for r in records}):
        rows.append(pair("throughput", "architecture", f"throughput, batch {batch} of 30 s clips: "
                         "MiDashengLM vs baseline", _find(records, model="midashenglm", batch=batch),
                         _find(records, model="baseline", batch=batch), peak, expect=True,
                         paper=PAPER_THROUGHPUT.get(batch), batch=batch))
    return [r for r in rows if r]


def _workload(section: str, record: dict[str, Any], peak: dict[str, Any]) -> list[dict[str, Any]]:
    runs = record.get("runs") or []
    title = (f"mixed lengths, {record.get('new_tokens')} tokens each" if section == "mixed"
             else "realistic task mix")
    rows = []

    def run(model: str, loop: str) -> dict[str, Any] | None:
        return _find(runs, model=model, loop=loop)

    loops = ["transformers_batched", "engine"] + (["prompt_only"] if section == "mixed" else [])
    for loop in loops:
        for base in ("baseline", "baseline_pad30"):  # (the fixed workload's engine: the baseline only)
            rows.append(pair(section, "architecture", f"{title}, {LOOPS[loop]}: MiDashengLM vs {NAMES[base]}",
                             run("midashenglm", loop), run(base, loop), peak, expect=True,
                             target=TARGETS.get((section, loop)), loop=loop))
    for a_loop, b_loop in (("engine", "transformers_batched"), ("engine", "transformers_one_at_a_time"),
                           ("engine_default", "transformers_batched"),
                           ("transformers_batched", "transformers_one_at_a_time")):
        rows.append(pair(section, "implementation", f"{title}: {LOOPS[a_loop]} vs {LOOPS[b_loop]} (MiDashengLM)",
                         run("midashenglm", a_loop), run("midashenglm", b_loop), peak,
                         target=TARGETS.get((section, a_loop, b_loop)), loop=a_loop, against=b_loop))
    return [r for r in rows if r]


def _hardware(records: list[dict[str, Any]], peak: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    drift = peak.get("drift") or {}
    changed = {k: v for k, v in drift.items() if v > DRIFT}
    if changed:
        rows.append({"section": "limits", "group": "hardware", "status": "unstable",
                     "name": "the machine's limits, measured at the start and at the end of the run",
                     "flags": [f"{k} measured {100 * v:.0f} % lower once than the other time: the load changed "
                               "during the run" for k, v in changed.items()]})
    flops = peak.get("flops_per_s")
    for rec in records:
        if rec.get("status") != "ok" or "time" not in rec:
            continue
        s = side(rec, peak)
        assert s is not None
        row: dict[str, Any] = {"section": "efficiency", "group": "hardware", "model": rec["model"],
                               "stage": rec["stage"], "batch": rec["batch"],
                               "name": f"{NAMES.get(rec['model'], rec['model'])} {rec['stage']}, batch {rec['batch']}",
                               "macs": rec["macs"], "a": s, "status": "ok", "flags": []}
        if flops:
            best, typical = 2 * rec["macs"] / rec["time"]["min"], 2 * rec["macs"] / rec["time"]["median"]
            row["flops_per_s"], row["flops_per_s_median"] = best, typical
            row["fraction_of_peak"], row["fraction_of_peak_median"] = best / flops, typical / flops
            if best > flops:
                row["status"] = "measurement problem"
                row["flags"].append(f"achieved {best / 1e9:.1f} GFLOP/s is above the measured peak of "
                                    f"{flops / 1e9:.1f}: the peak was measured low (load during its measurement?)")
                row["fraction_of_peak"] = row["fraction_of_peak_median"] = None
        if s.get("distance_min") is not None and s["distance_min"] < 1 and row["status"] == "ok":
            row["status"] = "measurement problem"
            row["flags"].append(f"ran faster than the roofline allows ({s['distance_min']:.2f} of it)")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- helpers
def find(rows: list[dict[str, Any]], section: str, group: str | None = None, **match: Any) -> list[dict[str, Any]]:
    """The rows of ``section`` (and ``group``) whose fields equal ``match``; A's and B's
    model and loop match as ``a_model=``, ``b_loop=``, ..."""
    out = []
    for row in rows:
        if row["section"] != section or (group and row["group"] != group):
            continue
        ok = True
        for key, value in match.items():
            if key[:2] in ("a_", "b_"):
                s = row.get(key[0]) or {}
                ok &= s.get(key[2:]) == value
            else:
                ok &= row.get(key) == value
        if ok:
            out.append(row)
    return out


def problems(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that are not plainly ``ok``."""
    return [r for r in rows if r.get("status", "ok") != "ok"]
