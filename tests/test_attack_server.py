"""scripts/attack_server.py --quick: every hostile-client attack of issue 11 against a real
`midashenglm serve` process (a fresh tiny model), and the server holds against each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

# One name prefix per attack kind of issue 11 (the items "held" had held before it).
KINDS = ["decode bomb", "malformed JSON", "huge text", "cross-site", "DNS rebinding",
         "slow client", "dead streams", "held: ", "server log"]


def test_the_quick_attack_run_breaks_nothing():
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "attack_server.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.stdout.strip(), f"no report (exit {run.returncode}):\n{run.stderr[-4000:]}"
    report = json.loads(run.stdout)
    attacks = report["attacks"]
    broken = [(a["name"], a["statuses"], a["note"]) for a in attacks if not a["held"]]
    assert broken == [] and report["broken"] == 0, broken
    assert report["held"] == len(attacks)
    assert run.returncode == 0, run.stderr[-4000:]
    names = [a["name"] for a in attacks]
    missing = [kind for kind in KINDS if not any(name.startswith(kind) for name in names)]
    assert missing == [], names
    # The run really exercised what it names: statuses seen per kind.
    seen = {a["name"]: a["statuses"] for a in attacks}
    assert all(s == {"400 invalid_json": 1} for n, s in seen.items() if n.startswith("malformed JSON"))
    assert all(s == {"421": 1} for n, s in seen.items() if n.startswith("DNS rebinding"))
    assert {n: s for n, s in seen.items() if n.startswith("slow client:")} == {
        "slow client: headers, then nothing": {"408": 1},
        "slow client: 1 byte every 2 s": {"408": 1},
        "slow client: a header line every second (slowloris)": {"closed": 1},
        "slow client: 20,000 one-byte HTTP chunks": {"closed": 1}}
    assert seen["server log"] == {"0 tracebacks": 1}
