#!/usr/bin/env python
"""How right the curation experts are, measured on a `midashenglm data synth` corpus whose
truth is known: category, speech language, gender and transcript (WER), tempo, key, RT60,
band limit and clipping.

    midashenglm data synth --out corpus --split heldout --clips 120 --seed 1
    midashenglm curate corpus/manifest.jsonl --out curated --writer none
    python scripts/measure_experts.py corpus/manifest.jsonl curated [--out report.md]

The truth is used here only to measure the experts (and, in training, to build the task
answers); the captions come from the experts alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rate(hits: int, n: int) -> str:
    return f"{hits}/{n} = {100 * hits / n:.1f} %" if n else "-"


def measure(truth_rows: list[dict], meta_rows: list[dict]) -> list[tuple[str, str, str]]:
    """``(measure, result, what it is over)`` rows."""
    import jiwer

    from midashenglm.evaluation.metrics.wer import normalize  # the suite's normaliser

    meta = {m["id"]: m for m in meta_rows}
    pairs = [(t, meta[t["id"]]) for t in truth_rows if t["id"] in meta]
    out = []
    cat = [(t["category"], (m.get("category") or {}).get("category")) for t, m in pairs]
    out.append(("category (6 classes)", _rate(sum(a == b for a, b in cat), len(cat)),
                "all clips"))
    kind = [(a.split()[1], (b or " none").split()[1]) for a, b in cat]
    out.append(("main kind (speech/sound/music)", _rate(sum(a == b for a, b in kind), len(kind)),
                "all clips"))
    speech = [(t, m) for t, m in pairs if t["speech"]]
    lang = [(t["speech"]["language"], m["experts"].get("asr", {}).get("language"))
            for t, m in speech]
    out.append(("speech language", _rate(sum(a == b for a, b in lang), len(lang)),
                "clips whose main event is speech"))
    gender = [(t["speech"]["gender"], m["experts"].get("gender", {}).get("gender"))
              for t, m in speech]
    out.append(("speaker gender", _rate(sum(a == b for a, b in gender), len(gender)),
                "clips whose main event is speech"))
    refs, hyps = [], []
    for t, m in speech:
        if t["speech"]["language"] == "en" and t["category"] == "pure speech":
            refs.append(normalize(t["speech"]["text"], "en"))
            hyps.append(normalize(m["experts"].get("asr", {}).get("transcript", ""), "en"))
    if refs:
        out.append(("WER, English pure speech (Whisper base)",
                    f"{100 * jiwer.wer(refs, hyps):.1f} %", f"{len(refs)} clips"))
    music = [(t, m) for t, m in pairs if t["music"] and t["music"].get("tempo")]
    tempo = []
    for t, m in music:
        bpm = (m["experts"].get("tempo") or {}).get("bpm")
        true = t["music"]["tempo"]
        tempo.append(bpm is not None and min(abs(bpm - true), abs(bpm - 2 * true),
                                             abs(bpm - true / 2)) <= 0.04 * true)
    out.append(("tempo within 4 % (octave errors allowed)", _rate(sum(tempo), len(tempo)),
                "MIDI music clips"))
    keyed = [(t, m) for t, m in pairs if t["music"] and t["music"].get("key")]
    keys = [(f"{t['music']['key']} {t['music']['mode']}",
             f"{(m['experts'].get('key') or {}).get('key')} "
             f"{(m['experts'].get('key') or {}).get('mode')}") for t, m in keyed]
    out.append(("key and mode", _rate(sum(a == b for a, b in keys), len(keys)),
                "MIDI music clips with a key"))
    rt = [(t["acoustics"]["rt60_s"], (m["experts"].get("reverb") or {}).get("rt60_s"))
          for t, m in pairs if t["acoustics"]["rt60_s"]]
    within = [e is not None and abs(e - r) <= 0.25 * r for r, e in rt]
    out.append(("RT60 within 25 %", _rate(sum(within), len(within)),
                f"reverberated clips ({sum(e is not None for _, e in rt)} estimated)"))
    band = [(t["acoustics"]["bandwidth_hz"],
             (m["experts"].get("bandwidth") or {}).get("bandwidth_hz")) for t, m in pairs
            if t["acoustics"]["bandwidth_hz"]]
    near = [e is not None and abs(e - b) <= 0.15 * b for b, e in band]
    out.append(("band limit within 15 %", _rate(sum(near), len(near)), "band-limited clips"))
    clip = [(t["acoustics"]["clipped"], bool((m["experts"].get("peak") or {}).get("clipping")))
            for t, m in pairs]
    tp = sum(a and b for a, b in clip)
    out.append(("clipping found", _rate(tp, sum(a for a, _ in clip)),
                f"clipped clips; {sum(b and not a for a, b in clip)} false alarms"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="the corpus manifest (data synth)")
    parser.add_argument("curated", type=Path, help="the curate output folder")
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args()
    rows = measure(_rows(args.manifest), _rows(args.curated / "metadata.jsonl"))
    lines = ["| measure | result | over |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
