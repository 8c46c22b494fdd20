"""Fenced snippets of README.md and docs/*.md: parsing and offline substitutions.

Used by tests/test_docs_snippets.py. A snippet is one shell command (```bash, ```sh,
```shell, ```console: one command per line, ``$ `` prompts stripped, ``\\`` continuations
joined, comments dropped) or one ```python block. Its id is stable under edits elsewhere
in the file: ``FILE: first command`` (shell) or ``FILE: first statement`` (python, the
first line that is not an import), never a line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


@dataclass
class Snippet:
    file: str  # relative to the repository root, e.g. "docs/inference.md"
    line: int  # 1-based line of the command (or of the python block's first line), for messages only
    kind: str  # "shell" or "python"
    text: str  # the command (continuations joined) or the python source
    block: str  # id of the block's first snippet (a skip entry may cover a whole block)
    index: int = 0  # position in the file among snippets of the same kind
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.file}: {self.head}"

    @property
    def head(self) -> str:
        if self.kind == "shell":
            return self.text
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        for ln in lines:
            if not ln.startswith(("import ", "from ")):
                return ln
        return lines[0] if lines else ""


def doc_files(repo: Path) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def strip_comment(line: str) -> str:
    """Drop a shell comment (``#`` at the start of a word, outside quotes)."""
    quote = None
    prev = " "
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev.isspace():
            return line[:i].rstrip()
        prev = ch
    return line.rstrip()


def shell_commands(body: list[str], first_line: int, lang: str) -> list[tuple[int, str]]:
    prompts = lang == "console" or any(ln.lstrip().startswith("$ ") for ln in body)
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for offset, raw in enumerate(body):
        line = raw.strip()
        if not pending:
            if prompts:
                if not line.startswith("$ "):
                    continue  # output shown in a console block
                line = line[2:].strip()
            if not line or line.startswith("#"):
                continue
            start = first_line + offset
        line = strip_comment(line) if not line.endswith("\\") else line
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        out.append((start, " ".join(p for p in pending if p)))
        pending = []
    if pending:
        out.append((start, " ".join(pending)))
    return out


def parse_file(path: Path, repo: Path) -> list[Snippet]:
    rel = path.relative_to(repo).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    counts = {"shell": 0, "python": 0}
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(2), m.group(3).lower()
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        body = lines[start:j]
        i = j + 1
        if lang in SHELL_LANGS:
            block = None
            for line_no, cmd in shell_commands(body, start + 1, lang):
                s = Snippet(rel, line_no, "shell", cmd, "", counts["shell"])
                block = block or s.id
                s.block = block
                counts["shell"] += 1
                snippets.append(s)
        elif lang in {"python", "py", "python3"}:
            s = Snippet(rel, start + 1, "python", "\n".join(body) + "\n", "", counts["python"])
            s.block = s.id
            counts["python"] += 1
            snippets.append(s)
    return snippets


def all_snippets(repo: Path) -> list[Snippet]:
    out: list[Snippet] = []
    for path in doc_files(repo):
        out.extend(parse_file(path, repo))
    return out


# ---- substitutions ---------------------------------------------------------------------

def word(token: str) -> str:
    """A placeholder as a whole shell word (not part of a path or a longer name)."""
    return r"(?<![\w/.$-])" + re.escape(token) + r"(?![\w/-])"


def unwrap_optional(cmd: str) -> str:
    """``[--opt VALUE]`` in a synopsis becomes ``--opt VALUE``: every documented option is tried."""
    prev = None
    while prev != cmd:
        prev = cmd
        cmd = re.sub(r"\[(--[^\[\]]*)\]", r"\1", cmd)
    return cmd


def substitute_shell(cmd: str, model: str, extra: list[tuple[str, str]] = ()) -> str:
    for old, new in extra:
        cmd = cmd.replace(old, new)
    cmd = unwrap_optional(cmd)
    rules = [
        (re.escape("mispeech/midashenglm-7b"), model),
        (word("path/to/checkpoint"), model),
        (word("DIR"), model),
        (word("CHECKPOINT"), model),
        (r"(--model\s+)M(?![\w/-])", r"\g<1>" + model),
        (word("FILE"), "clip.wav"),
        (word("MANIFEST.jsonl"), "manifest.jsonl"),
        (word("MANIFEST.csv"), "manifest.csv"),
        (r"--device\s+cuda(:\d+)?", "--device cpu"),
        (r"--max-new-tokens\s+(\d+|N)", "--max-new-tokens 4"),
        (r"--limit\s+N\b", "--limit 2"),
        (r'--prompt\s+"\.\.\."', '--prompt "Write an audio caption describing the sound"'),
    ]
    for pattern, new in rules:
        cmd = re.sub(pattern, new.replace("\\", "\\\\") if "\\g<" not in new else new, cmd)
    if re.match(r"midashenglm (caption|ask|transcribe|run)\b", cmd) and "--max-new-tokens" not in cmd:
        cmd += " --max-new-tokens 4"  # a random tiny model never ends by itself: cap its answers
    return cmd


def substitute_python(src: str, model: str, extra: list[tuple[str, str]] = ()) -> str:
    for old, new in extra:
        src = src.replace(old, new)
    for hub in ('"mispeech/midashenglm-7b"', '"DIR"', '"CHECKPOINT"'):
        src = src.replace(hub, repr(model))
    src = re.sub(r'dtype="bfloat16"', 'dtype="float32"', src)
    src = re.sub(r'device="cuda(:\d+)?"', 'device="cpu"', src)
    src = re.sub(r'\.to\("cuda(:\d+)?"\)', '.to("cpu")', src)
    src = re.sub(r"max_new_tokens=\d+", "max_new_tokens=4", src)
    src = re.sub(r"max_tokens=\d+", "max_tokens=4", src)
    return src


# ---- running python snippets of one file in one process ---------------------------------

DRIVER = r'''
import json, sys, traceback
snippets = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
for s in snippets:
    print(f"\n=== snippet {s['id']}", flush=True)
    try:
        exec(compile(s["preamble"], f"<preamble of {s['id']}>", "exec"), ns)
        exec(compile(s["source"], f"<{s['id']}>", "exec"), ns)
    except BaseException:
        traceback.print_exc()
        print(f"=== FAILED {s['id']}", flush=True)
    else:
        print(f"=== OK {s['id']}", flush=True)
'''
