"""``report.md``, ``report.json`` and the plots of a benchmark run.

Every comparison comes from ``report["comparisons"]``, the rows :func:`compare.compare`
drew from the records; this module only lays them out. Each comparison shows the ratio
of medians beside the ratio of minimums (both sides timed interleaved), what the
arithmetic predicts (MACs, and the roofline: compute or memory bound per phase), each
side's distance from the roofline, the target and whether it is met, and a status:
``unstable``, ``check`` and ``measurement problem`` rows say why, and a measurement
the machine's limits make impossible is never printed as a number.

The plots follow the paper: time to first token and its MACs against audio length
(Figure 7), samples/s against batch size for 30 s clips (Table 13), plus the mixed
workload and the achieved fraction of the matmul peak, and the realistic task mix
(samples/s, and decode tokens computed against tokens asked for).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from midashenglm.bench.compare import find, problems
from midashenglm.bench.costs import fmt_bytes, fmt_macs

LABELS = {
    "midashenglm": "MiDashengLM",
    "midashenglm_engine": "MiDashengLM (engine)",
    "baseline": "Baseline (Qwen2.5-Omni-style)",
    "baseline_pad30": "Baseline, padded to 30 s",
}
COLORS = {
    "midashenglm": "#1f77b4",
    "midashenglm_engine": "#17becf",
    "baseline": "#d62728",
    "baseline_pad30": "#ff7f0e",
}
LOOPS = {"transformers_batched": "transformers, batches of {batch}",
         "prompt_only": "prompt only (1 token), batches of {batch}",
         "transformers_one_at_a_time": "transformers, one at a time",
         "engine": "engine, max batch {batch}",
         "engine_default": "engine, default budgets"}
PROBLEM = "measurement problem"


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write report.json, report.md and the PNG plots into ``out``; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    plots = write_plots(report, out)
    report = {**report, "plots": [p.name for p in plots]}
    (out / "report.md").write_text(markdown(report))
    return [*written, out / "report.md", *plots]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ------------------------------------------------------------------------- formatting
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def _span(time: dict[str, Any]) -> str:
    return f"{_ms(time['median'])} ({_ms(time['min'])}-{_ms(time['max'])})"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def distance(side: dict[str, Any] | None) -> str:
    """A side's distance from the roofline: "1.84x (decode memory)", or the problem."""
    if not side or side.get("distance") is None:
        return "-"
    if side["distance_min"] < 1:
        return f"**below the limit: {PROBLEM}**"
    return f"{side['distance']:.2f}x ({side['limited_by']})"


def target(row: dict[str, Any]) -> str:
    if row.get("target") is None:
        return "-"
    verdict = {True: "met", False: "not met", None: "unclear"}[row.get("met")]
    return f"{row['target']:g}x: {verdict}"


def paper(row: dict[str, Any]) -> str:
    value = row.get("paper")
    if value is None:
        return "-"
    return _x(value) if isinstance(value, float) else str(value)


def status(row: dict[str, Any]) -> str:
    s = row.get("status", "ok")
    return s if s == "ok" else f"**{s}**"


def comparison_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for row in rows:
        body.append([
            row["name"],
            f"**{_x(row['ratio_median'])}**" if row.get("ratio_median") else
            ("; ".join(row["flags"]) or "-"),
            _x(row.get("ratio_min")),
            _x(row.get("analytic_ratio")),
            _x(row.get("roofline_ratio")),
            distance(row.get("a")),
            distance(row.get("b")),
            target(row),
            paper(row),
            status(row),
        ])
    return _table(["comparison (A vs B)", "ratio of medians", "ratio of minimums", "MACs", "roofline",
                   "A: distance from the limit", "B: distance from the limit", "target", "paper", "status"],
                  body)


# --------------------------------------------------------------------------- markdown
def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    rows = report.get("comparisons") or []
    parts = [
        "# MiDashengLM speed report",
        "",
        f"`{meta.get('command', 'midashenglm bench')}`, {meta.get('date', '')}",
        "",
        _meta_table(meta, report.get("peak")),
        "",
        "**Method.** Random weights (speed does not depend on their values). Timings run end to end "
        "from conversations in memory to token ids (template, audio-token expansion, audio path, "
        "decoder), every repeat on fresh random audio, after a warm-up. The two sides of every "
        "comparison are timed interleaved (A, B, A, B, ...), so load from other processes hits "
        "both; each comparison gives the ratio of the medians and the ratio of the minimums (each "
        "side's best run), and is flagged *unstable* when they differ by more than 25 %. Beside "
        "them, what the arithmetic predicts: the ratio of the MACs, and the ratio of the roofline "
        "times (per phase, max(2 x MACs / matmul peak, bytes moved / memory bandwidth), both "
        "limits measured in this run); each side's *distance from the limit* is its median time / "
        "its roofline time. A side faster than its roofline, or an achieved FLOP/s above the "
        "peak, is a *measurement problem* (the limits were measured low) and is not printed as a "
        "number. The baseline is a Qwen2.5-Omni-style audio path (Whisper-large-v3-shaped encoder, "
        "2 s attention chunks, 25 tokens/s) on *the same decoder module* and the same generation "
        "loop as MiDashengLM, so their ratio is the architecture's. 'transformers' is "
        "`model.generate` (greedy, exactly N new tokens); 'engine' is "
        "`midashenglm.inference.Engine` with `ignore_eos`.",
        "",
    ]
    summary = headline(report)
    if summary:
        parts += ["## Summary", "", "```", *summary, "```", ""]
    if report.get("skipped_for_time_budget"):
        parts += ["**Skipped (time budget spent):** " + ", ".join(report["skipped_for_time_budget"]), ""]
    flagged = problems(rows)
    if flagged:
        parts += ["## Flagged results", "",
                  *[f"- **{r['status']}**: {r['name']}: {'; '.join(r['flags'])}" for r in flagged], ""]
    parts += _architecture_section(report, [r for r in rows if r["group"] == "architecture"])
    parts += _implementation_section(report, [r for r in rows if r["group"] == "implementation"])
    parts += _hardware_section(report, [r for r in rows if r["group"] == "hardware"])
    parts += _memory_section(report)
    parts += _analytic_section(report)
    for plot in report.get("plots", []):
        parts += [f"![{plot}]({plot})", ""]
    return "\n".join(parts).rstrip() + "\n"


def _meta_table(meta: dict[str, Any], peak: dict[str, Any] | None) -> str:
    machine = meta.get("machine", {})
    rows = [
        ["scale", f"{meta.get('scale')}: {meta.get('scale_note', '')}"],
        ["device, dtype", f"{meta.get('device')}, {meta.get('dtype')}"],
        ["hardware", machine.get("gpu") or machine.get("cpu", "?")],
        ["threads", _threads(meta.get("threads", {}))],
        ["software", f"torch {machine.get('torch')}, transformers {machine.get('transformers')}, "
                     f"Python {machine.get('python')}"],
        ["parameters", ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in meta.get("parameters", {}).items())],
        ["prompt", f"{meta.get('text_tokens')} text tokens around the audio; "
                   f"{meta.get('new_tokens')} new tokens per request (the realistic task mix: "
                   "each task's own prompt and answer length)"],
        ["load average (1, 5, 15 min)", f"start {machine.get('load_average_at_start')}, "
                                        f"end {meta.get('load_average_at_end')}"],
        ["wall time", f"{meta.get('wall_time_s')} s"],
    ]
    if peak:
        rows.insert(4, ["limits (measured)", limits_text(peak)])
    return _table(["", ""], rows)


def limits_text(peak: dict[str, Any]) -> str:
    text = (f"matmul peak {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['dtype']} {peak['size']}x{peak['size']}), "
            f"memory bandwidth {peak['bytes_per_s'] / 1e9:.1f} GB/s ({fmt_bytes(peak['bandwidth_size_bytes'])} "
            "streamed)")
    runs = peak.get("measurements") or []
    if len(runs) == 2:
        text += (f"; start / end {runs[0]['matmul']['flops_per_s'] / 1e9:.1f} / "
                 f"{runs[1]['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s, "
                 f"{runs[0]['bandwidth']['bytes_per_s'] / 1e9:.1f} / {runs[1]['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s")
    return text


def _threads(info: dict[str, Any]) -> str:
    text = f"{info.get('torch_threads', '?')} intra-op"
    if info.get("cpu_affinity"):
        text += f", pinned to CPU(s) {', '.join(str(c) for c in info['cpu_affinity'])}"
    return text


def _architecture_section(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    parts = ["## 1. Architecture: MiDashengLM vs the baseline (same decoder, same loop)", ""]
    if rows:
        parts += ["Speed-up of MiDashengLM (A) over the baseline (B), per request.", "", comparison_table(rows), ""]
    if report.get("ttft"):
        parts += _ttft_table(report["ttft"])
    if report.get("throughput"):
        parts += _throughput_table(report)
    if report.get("mixed"):
        mixed = report["mixed"]
        parts += [f"**Mixed-length workload, fixed answers** ({len(mixed['lengths_s'])} requests, mean "
                  f"{mixed['mean_length_s']:.1f} s, lengths drawn like the paper's Figure 3, "
                  f"{mixed['new_tokens']} new tokens each; all loops timed interleaved).", "",
                  _runs_table(mixed["runs"], with_tokens=False), "",
                  "The decode steps run the same decoder with nearly the same cost in both models, so the "
                  "more new tokens per request, the closer the ratio gets to 1; the roofline column says how "
                  "much of that is memory-bound (every decode step reads all the decoder's weights).", ""]
    if report.get("realistic"):
        parts += _realistic_tables(report["realistic"])
    return parts


def _ttft_table(records: list[dict[str, Any]]) -> list[str]:
    by = {(r["model"], r["loop"], r["seconds"]): r for r in records if r.get("status") == "ok" and "time" in r}
    columns = [("midashenglm", "transformers"), ("baseline", "transformers"), ("baseline_pad30", "transformers"),
               ("midashenglm", "engine")]
    columns = [c for c in columns if any(k[:2] == c for k in by)]
    header = ["audio"] + [f"{LABELS[m] if loop != 'engine' else LABELS['midashenglm_engine']} ms"
                          for m, loop in columns]
    body = []
    for s in sorted({r["seconds"] for r in records}):
        body.append([f"{s:g} s"] + [_span(by[(m, loop, s)]["time"]) if (m, loop, s) in by else "-"
                                    for m, loop in columns])
    out = ["**Time to first token**, batch 1: median (min-max) over the interleaved rounds.", "",
           _table(header, body), ""]
    if ("midashenglm", "engine") in columns:
        out += ["The engine column runs as a service does: its cache of prompt heads (system prompt and user "
                "header, computed once) is warm, so it prefills only what follows them (its roofline counts "
                "only that prefill); the model comparison uses transformers for both.", ""]
    return out


def _throughput_table(report: dict[str, Any]) -> list[str]:
    records = report["throughput"]
    if not any(r.get("timed") for r in records):
        body = [[r["model"], r["batch"], r["status"], fmt_bytes(r.get("peak_memory_bytes") or 0)] for r in records]
        return ["**Peak memory** of one generation per batch size (not timed).", "",
                _table(["model", "batch", "status", "peak memory above the weights"], body), ""]
    by = {(r["model"], r["batch"]): r for r in records}
    body = []
    for batch in sorted({r["batch"] for r in records}):
        ours, base = by.get(("midashenglm", batch), {}), by.get(("baseline", batch), {})
        body.append([batch, _rate(ours), _rate(base), fmt_bytes(ours.get("peak_memory_bytes") or 0),
                     fmt_bytes(base.get("peak_memory_bytes") or 0)])
    s = report.get("settings", {})
    return [f"**Throughput**, {s.get('clip_seconds', 30):g} s clips, {s.get('new_tokens')} new tokens each, EOS "
            "ignored (the paper's Table 13): samples/s (median) and peak memory above the weights.", "",
            _table(["batch", "MiDashengLM", "baseline", "peak mem MiDashengLM", "peak mem baseline"], body), ""]


def _rate(record: dict[str, Any]) -> str:
    if record.get("status") != "ok":
        return record.get("status", "-")
    return f"{record['samples_per_s']:.3g}"


def _runs_table(runs: list[dict[str, Any]], with_tokens: bool) -> str:
    body = []
    for run in runs:
        if "time" not in run:
            body.append([LABELS.get(run["model"], run["model"]), run["description"], run["requests"], run["status"],
                         "-"] + (["-"] if with_tokens else []))
            continue
        t = run["time"]
        row = [LABELS.get(run["model"], run["model"]), run["description"], run["requests"],
               f"{run['samples_per_s']:.3g}", f"{t['median']:.2f} ({t['min']:.2f}-{t['max']:.2f})"]
        if with_tokens:
            row.append(f"{run['new_tokens_made']} / {run.get('new_tokens_computed', run['new_tokens_made'])}")
        body.append(row)
    header = ["model", "loop", "requests", "samples/s", "seconds"]
    return _table(header + (["decode tokens asked / computed"] if with_tokens else []), body)


def _realistic_tables(real: dict[str, Any]) -> list[str]:
    counts: dict[str, int] = {}
    for r in real["requests"]:
        counts[r["task"]] = counts.get(r["task"], 0) + 1
    tasks = []
    for t in real["tasks"]:
        length = (f"{t['tokens_per_second']:g} per second of audio, +-20 %" if t["tokens_per_second"]
                  else f"{t['answer_tokens'][0]}-{t['answer_tokens'][1]}")
        # A pipe ends a table cell even inside backticks: escape it.
        prompts = " / ".join(f"`{q.splitlines()[0]}`".replace("|", "\\|") for q in t["questions"])
        tasks.append([t["name"], f"{100 * t['share']:.0f} %", counts.get(t["name"], 0), prompts, length,
                      t.get("note", "")])
    answers = [r["new_tokens"] for r in real["requests"]]
    return [
        f"**Realistic task mix** ({len(answers)} requests, clip lengths as above, mean "
        f"{real['mean_length_s']:.1f} s; answers {min(answers)}-{max(answers)} tokens, mean "
        f"{real['mean_new_tokens']:.1f}; EOS ignored, so every request makes exactly its answer length). "
        "The tasks, their share, the paper's prompts and the answer lengths assumed:", "",
        _table(["task", "share", "requests here", "prompt(s)", "answer tokens", "why"], tasks), "",
        _runs_table(real["runs"], with_tokens=True), "",
        "Short answers leave the prompt (audio path and prefill), which the architecture shrinks, a larger "
        "share of the work than 100 tokens do.", "",
    ]


def _implementation_section(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    parts = ["## 2. Implementation: our engine vs plain transformers (MiDashengLM)", ""]
    if not rows:
        engine = (report.get("mixed") or {}).get("engine")
        return [*parts, f"Engine: {engine}." if engine else
                "Not measured in this run (`bench throughput` measures it).", ""]
    note = ("The engine batches continuously: a row that finishes leaves the batch and a waiting request takes "
            "its place at once. A plain batched `generate` runs every row of a batch until its longest answer "
            "is done, and the next batch starts only then; with fixed answers both do the same decode steps, "
            "with the task mix they do not. The roofline of each side is that of the work asked with at most "
            "its number of rows per pass, so the extra work a loop does shows as its distance from the limit.")
    return [*parts, comparison_table(rows), "", note, ""]


def _hardware_section(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    parts = ["## 3. Hardware: achieved vs peak, distance from the roofline", ""]
    peak = report.get("peak")
    if peak:
        parts += [f"Limits measured in this run (start and end, the better kept): {limits_text(peak)}.", ""]
    for row in rows:
        if row["section"] == "limits":
            parts += [f"**{row['status']}**: {'; '.join(row['flags'])}.", ""]
    body = []
    for row in rows:
        if row["section"] != "efficiency":
            continue
        a = row["a"]
        if row.get("fraction_of_peak") is None and row["status"] == PROBLEM:
            achieved = f"**{PROBLEM}**: {'; '.join(row['flags'])}"
        elif row.get("fraction_of_peak") is not None:
            achieved = (f"**{100 * row['fraction_of_peak']:.0f} %** "
                        f"({100 * row['fraction_of_peak_median']:.0f} % at the median)")
        else:
            achieved = "-"
        body.append([LABELS.get(row["model"], row["model"]), row["stage"], row["batch"], fmt_macs(row["macs"]),
                     f"{_ms(a['median_s'])} ({_ms(a['min_s'])})",
                     f"{row['flops_per_s'] / 1e9:.1f}" if row.get("fraction_of_peak") is not None else "-",
                     achieved, distance(a)])
    if "efficiency" not in report:
        return [*parts, "Achieved FLOP/s not measured in this run (`bench encoder` measures them).", ""]
    return [*parts,
            f"Achieved = 2 x useful MACs / best time (the peak is a best case too), "
            f"{report.get('settings', {}).get('clip_seconds', 30):g} s clips.", "",
            _table(["model", "stage", "batch", "useful MACs", "ms median (best)", "GFLOP/s (best)", "of the matmul peak",
                    "distance from the limit"], body), ""]


def _memory_section(report: dict[str, Any]) -> list[str]:
    memory = report.get("memory")
    if not memory:
        return []
    budget = memory.get("budget_bytes")
    rows = []
    for name, entry in memory["models"].items():
        rows.append([
            LABELS.get(name, name),
            fmt_bytes(entry["weights_bytes"]),
            fmt_bytes(entry["kv_bytes_per_sample"]),
            fmt_bytes(entry["fit_bytes_per_sample"]) if entry.get("fit_bytes_per_sample") else "-",
            entry.get("largest_batch_measured"),
            entry.get("first_oom_batch") or "-",
            entry.get("largest_batch_in_budget", "-"),
        ])
    note = (f"Budget {fmt_bytes(budget)}: largest batch = (budget - weights - fitted intercept) / "
            "fitted bytes per sample, from the peak memory of the measured batch sizes."
            if budget else "No memory budget given (`--memory-budget-gib`).")
    return ["## Memory", "", note, "",
            _table(["model", "weights", "KV per sample (analytic)", "peak per sample (fit)",
                    "largest batch run", "first OOM", "largest batch in budget"], rows), ""]


def _analytic_section(report: dict[str, Any]) -> list[str]:
    analytic = report.get("analytic")
    if not analytic:
        return []
    parts = ["## Analytical cost per request", ""]
    for key, title in (("full_bf16", "Published 7B shapes, bf16 KV cache, 30 text tokens"),
                       ("run", "The shapes measured here")):
        rows = []
        by = {(r["model"], r["seconds"]): r for r in analytic[key]}
        for s in sorted({r["seconds"] for r in analytic[key]}):
            ours, base, pad = by[("midashenglm", s)], by[("baseline", s)], by[("baseline_pad30", s)]
            moved = ""
            if "bytes" in ours:
                moved = " / ".join(f"{fmt_bytes(ours['bytes'][p])} vs {fmt_bytes(base['bytes'][p])}"
                                   for p in ("audio", "prefill", "decode"))
            rows.append([
                f"{s:g} s",
                f"{fmt_macs(ours['encoder'])} / {fmt_macs(base['encoder'])} / {fmt_macs(pad['encoder'])}",
                f"{fmt_macs(ours['projector'])} / {fmt_macs(base['projector'])}",
                f"{ours['prefill_tokens']} / {base['prefill_tokens']}",
                f"{fmt_macs(ours['prefill'])} / {fmt_macs(base['prefill'])}",
                f"{fmt_macs(ours['decode'])} / {fmt_macs(base['decode'])}",
                f"{_x(base['ttft_macs'] / ours['ttft_macs'])} / {_x(pad['ttft_macs'] / ours['ttft_macs'])}",
                f"{fmt_bytes(ours['kv_bytes_per_token'])}",
                f"{fmt_bytes(ours['kv_bytes'])} / {fmt_bytes(base['kv_bytes'])}",
                moved,
            ])
        weights = ""
        if analytic[key] and "weights_bytes" in analytic[key][0]:
            w = {r["model"]: r["weights_bytes"] for r in analytic[key]}
            weights = (f" Weights read per pass: audio path {fmt_bytes(w['midashenglm']['audio'])} vs "
                       f"{fmt_bytes(w['baseline']['audio'])}, decoder {fmt_bytes(w['midashenglm']['decoder'])}.")
        parts += [f"**{title}** (MiDashengLM / baseline / padded-30 s baseline; bytes moved at batch 1 per "
                  f"phase: audio path / prefill / decode).{weights}", "",
                  _table(["audio", "encoder MACs", "projector MACs", "prefill tokens", "prefill MACs",
                          "decode MACs", "TTFT MACs ratio", "KV per token", "KV per sample",
                          "bytes moved (MiDashengLM vs baseline)"], rows), ""]
    return parts


# ------------------------------------------------------------------------------ plots
def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots (matplotlib, Agg backend); none when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for name, draw in (("ttft.png", _plot_ttft), ("throughput.png", _plot_throughput),
                       ("comparisons.png", _plot_comparisons), ("realistic.png", _plot_realistic)):
        fig = draw(plt, report)
        if fig is None:
            continue
        path = out / name
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _plot_ttft(plt: Any, report: dict[str, Any]) -> Any:
    if not report.get("ttft"):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, model, loop in (("midashenglm", "midashenglm", "transformers"),
                             ("midashenglm_engine", "midashenglm", "engine"),
                             ("baseline", "baseline", "transformers"),
                             ("baseline_pad30", "baseline_pad30", "transformers")):
        rows = sorted((r for r in report["ttft"] if r["model"] == model and r["loop"] == loop and "time" in r),
                      key=lambda r: r["seconds"])
        if not rows:
            continue
        xs = [r["seconds"] for r in rows]
        med = [r["time"]["median"] * 1000 for r in rows]
        err = [[m - r["time"]["min"] * 1000 for m, r in zip(med, rows, strict=True)],
               [r["time"]["max"] * 1000 - m for m, r in zip(med, rows, strict=True)]]
        left.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=LABELS[key], color=COLORS[key])
        if loop != "engine":
            right.plot(xs, [r["ttft_macs"] / 1e9 for r in rows], marker="s", label=LABELS[key], color=COLORS[key])
    left.set(xlabel="audio length (s)", ylabel="time to first token (ms)", title="TTFT (measured)")
    right.set(xlabel="audio length (s)", ylabel="GMACs before the first token",
              title="Work before the first token (analytic)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_subtitle(report), fontsize=9)
    return fig


def _plot_throughput(plt: Any, report: dict[str, Any]) -> Any:
    rows = report.get("throughput")
    if not rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    timed = any(r.get("timed", True) for r in rows if r["status"] == "ok")
    for model in ("midashenglm", "baseline"):
        ok = sorted((r for r in rows if r["model"] == model and r["status"] == "ok"), key=lambda r: r["batch"])
        if timed and ok:
            left.plot([r["batch"] for r in ok], [r["samples_per_s"] for r in ok], marker="o",
                      label=LABELS[model], color=COLORS[model])
        if ok and ok[0].get("peak_memory_bytes") is not None:
            right.plot([r["batch"] for r in ok], [(r["peak_memory_bytes"] or 0) / 2**30 for r in ok],
                       marker="o", label=LABELS[model], color=COLORS[model])
        for r in rows:
            if r["model"] == model and r["status"] == "OOM":
                left.annotate("OOM", (r["batch"], 0), color=COLORS[model], ha="center", fontsize=8)
    for row in find(report.get("comparisons") or [], "throughput"):
        if row.get("ratio_median"):
            left.annotate(f"{row['ratio_median']:.1f}x", (row["batch"], row["a"]["requests"] / row["a"]["median_s"]),
                          textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    s = report.get("settings", {})
    left.margins(y=0.15)
    left.set(xlabel="batch size", ylabel="samples / s",
             title=f"Throughput, {s.get('clip_seconds', 30):g} s clips, {s.get('new_tokens')} tokens")
    right.set(xlabel="batch size", ylabel="GiB", title="Peak memory above the weights")
    batches = sorted({r["batch"] for r in rows})
    if not timed:
        left.text(0.5, 0.5, "not timed in this run", ha="center", va="center", transform=left.transAxes)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(_subtitle(report), fontsize=9)
    return fig


def _plot_comparisons(plt: Any, report: dict[str, Any]) -> Any:
    mixed = report.get("mixed")
    hw = [r for r in find(report.get("comparisons") or [], "efficiency")]
    if not mixed and not hw:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    runs = [r for r in (mixed or {}).get("runs", []) if "samples_per_s" in r]
    if runs:
        names = [f"{LABELS.get(r['model'], r['model'])}\n{LOOPS.get(r['loop'], r['loop']).format(batch=mixed['batch'])}"
                 for r in runs]
        values = [r["samples_per_s"] for r in runs]
        ys = list(range(len(values)))[::-1]
        left.barh(ys, values, color=[COLORS.get(r["model"], "gray") for r in runs])
        left.set_yticks(ys, names, fontsize=7)
        for y, v in zip(ys, values, strict=True):
            left.annotate(f"{v:.3g}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        left.set(xlabel="samples / s",
                 title=f"Mixed lengths, {mixed['new_tokens']} tokens each ({len(mixed['lengths_s'])} "
                       f"requests, mean {mixed['mean_length_s']:.1f} s)")
        left.grid(axis="x", alpha=0.3)
    if hw:
        labels = [f"{LABELS[r['model']].split(' (')[0]}, {r['stage']}, batch {r['batch']}" for r in hw]
        ys = list(range(len(hw)))[::-1]
        values = [100 * (r.get("fraction_of_peak") or 0) for r in hw]
        right.barh(ys, values, color=[COLORS[r["model"]] for r in hw])
        right.set_yticks(ys, labels, fontsize=7)
        for y, v, r in zip(ys, values, hw, strict=True):
            text = f"{v:.0f} %" if r.get("fraction_of_peak") is not None else PROBLEM
            right.annotate(text, (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        right.set(xlabel="% of the matmul peak measured in the same run (best runs)", title="Achieved vs peak FLOP/s")
        right.grid(axis="x", alpha=0.3)
    fig.suptitle(_subtitle(report), fontsize=9)
    fig.tight_layout()
    return fig


def _plot_realistic(plt: Any, report: dict[str, Any]) -> Any:
    real = report.get("realistic")
    runs = [r for r in (real or {}).get("runs", []) if "samples_per_s" in r]
    if not runs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [f"{LABELS.get(r['model'], r['model'])}\n{LOOPS.get(r['loop'], r['loop']).format(batch=real['batch'])}"
             for r in runs]
    colors = [COLORS.get(r["model"], "gray") for r in runs]
    ys = list(range(len(runs)))[::-1]
    values = [r["samples_per_s"] for r in runs]
    left.barh(ys, values, color=colors)
    left.set_yticks(ys, names, fontsize=7)
    for y, v in zip(ys, values, strict=True):
        left.annotate(f"{v:.3g}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    left.set(xlabel="samples / s", title=f"Realistic task mix ({len(real['requests'])} requests, "
             f"mean {real['mean_length_s']:.1f} s, mean answer {real['mean_new_tokens']:.0f} tokens)")
    left.grid(axis="x", alpha=0.3)
    per_request = [(r["new_tokens_computed"] / r["requests"], r["new_tokens_made"] / r["requests"]) for r in runs]
    right.barh(ys, [c for c, _ in per_request], color="#cccccc", label="computed (rows x steps)")
    right.barh(ys, [a for _, a in per_request], color=colors, label="asked for")
    right.set_yticks(ys, names, fontsize=7)
    right.set(xlabel="decode tokens per request", title="Decode tokens: asked for vs computed")
    right.legend(fontsize=8)
    right.grid(axis="x", alpha=0.3)
    fig.suptitle(_subtitle(report), fontsize=9)
    fig.tight_layout()
    return fig


def _subtitle(report: dict[str, Any]) -> str:
    meta = report.get("meta", {})
    machine = meta.get("machine", {})
    hw = machine.get("gpu") or machine.get("cpu", "")
    return f"scale {meta.get('scale')}, {meta.get('device')} {meta.get('dtype')}, {hw}, " \
           f"{meta.get('threads', {}).get('torch_threads', '?')} threads"


# ---------------------------------------------------------------------------- headline
def _ratios(row: dict[str, Any] | None) -> str:
    """"2.31x (min 2.40x; MACs 2.5x, roofline 2.2x)", or the reason there is no ratio."""
    if row is None:
        return "n/a"
    if row.get("ratio_median") is None:
        return "; ".join(row.get("flags") or ["n/a"])
    text = f"{row['ratio_median']:.2f}x (min {_x(row['ratio_min'])}"
    extra = [f"MACs {_x(row['analytic_ratio'])}" if row.get("analytic_ratio") else "",
             f"roofline {_x(row['roofline_ratio'])}" if row.get("roofline_ratio") else ""]
    extra = [e for e in extra if e]
    text += ("; " + ", ".join(extra) if extra else "") + ")"
    if row.get("target") is not None:
        text += f", target {target(row)}"
    if row.get("status", "ok") != "ok":
        text += f" -- {row['status'].upper()}"
    return text


def _first(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


def headline(report: dict[str, Any]) -> list[str]:
    """The three comparisons in a few lines, for the terminal."""
    rows = report.get("comparisons") or []
    lines = []
    full = {(r["model"], r["seconds"]): r for r in report.get("analytic", {}).get("full_bf16", [])}
    longest = max((s for _, s in full), default=None)
    if longest is not None:
        ours, base = full[("midashenglm", longest)], full[("baseline", longest)]
        lines.append(
            f"0. analytic, published 7B shapes, {longest:g} s clip: encoder {fmt_macs(ours['encoder'])} vs "
            f"{fmt_macs(base['encoder'])}, prefill {ours['prefill_tokens']} vs {base['prefill_tokens']} "
            f"tokens, KV {fmt_bytes(ours['kv_bytes_per_token'])} per token (bf16), work before the "
            f"first token {base['ttft_macs'] / ours['ttft_macs']:.2f}x"
        )
    ttft = find(rows, "ttft", "architecture", b_model="baseline")
    if ttft:
        row = max(ttft, key=lambda r: r["seconds"])
        lines.append(f"1. architecture: TTFT at {row['seconds']:g} s, MiDashengLM vs the baseline: {_ratios(row)}")
    tput = [r for r in find(rows, "throughput") if r.get("ratio_median")]
    if tput:
        row = tput[-1]
        lines.append(f"   throughput at batch {row['batch']} (30 s clips): {_ratios(row)}")
    mixed = report.get("mixed") or {}
    for loop, what in (("transformers_batched", f"{mixed.get('new_tokens')} new tokens each"),
                       ("prompt_only", "prompt processing only (1 new token)")):
        base = _first(find(rows, "mixed", "architecture", loop=loop, b_model="baseline"))
        pad = _first(find(rows, "mixed", "architecture", loop=loop, b_model="baseline_pad30"))
        if base:
            lines.append(f"   mixed lengths, {what}: vs the baseline {_ratios(base)}; vs the padded-30 s one "
                         f"{_ratios(pad)}")
    if report.get("realistic") and find(rows, "realistic", "architecture"):
        answers = [r["new_tokens"] for r in report["realistic"]["requests"]]
        tb = _first(find(rows, "realistic", "architecture", loop="transformers_batched", b_model="baseline"))
        eng = _first(find(rows, "realistic", "architecture", loop="engine", b_model="baseline"))
        lines.append(f"   realistic task mix (answers {min(answers)}-{max(answers)} tokens, mean "
                     f"{sum(answers) / len(answers):.1f}), vs the baseline: transformers {_ratios(tb)}; engine for "
                     f"both {_ratios(eng)}")
    impl = _first(find(rows, "mixed", "implementation", loop="engine", against="transformers_batched"))
    if impl:
        one = _first(find(rows, "mixed", "implementation", loop="engine", against="transformers_one_at_a_time"))
        lines.append(f"2. implementation, {mixed.get('new_tokens')} tokens each: engine vs transformers batched "
                     f"(same batch size) {_ratios(impl)}; vs one at a time {_ratios(one)}")
    elif mixed.get("engine"):
        lines.append(f"2. implementation: engine {mixed['engine']}")
    real = _first(find(rows, "realistic", "implementation", loop="engine", against="transformers_batched"))
    if real:
        batch = report["realistic"]["batch"]
        lines.append(f"   implementation, realistic task mix: engine (at most {batch} rows, continuous batching) "
                     f"vs transformers batches of {batch}: {_ratios(real)}")
    hw = find(rows, "efficiency")
    if hw:
        ok = [r for r in hw if r.get("fraction_of_peak") is not None]
        bad = [r for r in hw if r["status"] == PROBLEM]
        text = "3. hardware: "
        if ok:
            best = max(ok, key=lambda r: r["fraction_of_peak"])
            text += (f"best {100 * best['fraction_of_peak']:.0f} % of the matmul peak ({best['model']} "
                     f"{best['stage']}, batch {best['batch']})")
        if bad:
            text += ("; " if ok else "") + f"{PROBLEM} in {len(bad)} row(s): achieved above the measured limits"
        lines.append(text)
    elif report.get("peak"):
        lines.append(f"3. hardware: {limits_text(report['peak'])}")
    flagged = problems(rows)
    if flagged:
        counts: dict[str, int] = {}
        for r in flagged:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        lines.append("   flagged: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + " (see the report)")
    return lines
