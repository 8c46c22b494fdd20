"""Terminal output cannot be forged: names quoted as GNU ls does, control characters escaped.

The expected strings are written by hand from the rules of ``ls --quoting-style=shell-escape``
(and checked against the real ``ls`` and ``bash``); the command line is run as a user runs
it, on real files with hostile names, and its JSON output must keep every name exact.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from midashenglm.conversation import DEFAULT_SYSTEM_PROMPT, build_conversation
from midashenglm.inference import Engine, Request, SamplingParams
from midashenglm.inference.commands import CAPTION_PROMPT
from midashenglm.terminal import markup_text, printable_text, quote_name
from tests.conftest import clip

CLI = [sys.executable, "-m", "midashenglm.cli"]
# No forced colours: rich then writes no escape sequences of its own, so any ESC is a leak.
ENV = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
ENV |= {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1"}

FORGED = "x\nok.wav: FAKE\ny.wav"
# What ls prints for FORGED (shell-escape): quoted parts, the newlines as $'\n'.
FORGED_QUOTED = "'x'$'\\n''ok.wav: FAKE'$'\\n''y.wav'"
# Raw control bytes that must never reach the terminal (newline excepted: it ends lines).
RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xaa-\xae]|\xe2\x81[\xa6-\xa9]")

# name -> what ``ls --quoting-style=shell-escape`` prints (by its rules in gnulib quotearg.c).
LS_STYLE = {
    "speech.wav": "speech.wav",
    "café 中文.wav": "'café 中文.wav'",
    "café.wav": "café.wav",
    "a b.wav": "'a b.wav'",
    "it's.wav": '"it\'s.wav"',  # a single quote and nothing else special: double quotes
    "it's $HOME.wav": "'it'\\''s $HOME.wav'",
    "a$b": "'a$b'",
    'say "hi"': "'say \"hi\"'",
    "back\\slash": "'back\\slash'",  # no escape needed inside single quotes
    "[bold]x.wav": "'[bold]x.wav'",
    "a]b": "a]b",
    "#x": "'#x'",
    "x#": "x#",
    "~x": "'~x'",
    "{": "'{'",
    "{a}": "{a}",
    "a=b": "'a=b'",
    "what?": "'what?'",
    "user@host:file,1+2%.wav": "user@host:file,1+2%.wav",
    "a\nb": "'a'$'\\n''b'",
    "\n": "''$'\\n'",
    "tab\there": "'tab'$'\\t''here'",
    "cr\r": "'cr'$'\\r'",
    "\x1b[31mred": "''$'\\033''[31mred'",
    "\x1b]0;title\x07": "''$'\\033'']0;title'$'\\a'",
    "so\x0esi\x0f": "'so'$'\\016''si'$'\\017'",
    "del\x7f": "'del'$'\\177'",
    "c1\x9b": "'c1'$'\\302\\233'",
    "a'\nb": "'a'\\'''$'\\n''b'",
    "\n'": "''$'\\n'\\'''",
    FORGED: FORGED_QUOTED,
}
# Not UTF-8: os.fsdecode keeps the bytes as surrogates; ls writes them in octal.
LS_STYLE_BYTES = {
    b"b\xffx.wav": "'b'$'\\377''x.wav'",
    b"cut\xe2\x82": "'cut'$'\\342\\202'",
    b"\xe2\x82z": "''$'\\342\\202''z'",
}
# Where we escape on purpose and ls does not: bidi controls reorder what is shown.
OURS_ONLY = {
    "evil\u202egnp.wav": "'evil'$'\\342\\200\\256''gnp.wav'",
    "iso\u2066late\u2069": "'iso'$'\\342\\201\\246''late'$'\\342\\201\\251'",
    "nul\0": "'nul'$'\\0'",  # no file name holds NUL, a str may
    "": "''",
}


@pytest.mark.parametrize(("name", "expected"), [*LS_STYLE.items(), *OURS_ONLY.items()])
def test_quote_name(name, expected):
    assert quote_name(name) == expected


@pytest.mark.parametrize(("raw", "expected"), LS_STYLE_BYTES.items())
def test_quote_name_of_undecodable_bytes(raw, expected):
    assert quote_name(os.fsdecode(raw)) == expected
    assert quote_name(raw) == expected  # bytes and paths work as well
    assert quote_name(Path(os.fsdecode(raw))) == expected


def test_quote_name_accepts_paths():
    assert quote_name(Path("dir") / "a b.wav") == "'dir/a b.wav'"
    assert quote_name(Path("dir/plain.wav")) == "dir/plain.wav"


def _gnu_ls() -> str:
    ls = shutil.which("ls")
    if ls is None:
        pytest.skip("no ls")
    version = subprocess.run([ls, "--version"], capture_output=True, text=True).stdout
    if "GNU coreutils" not in version:
        pytest.skip("ls is not GNU ls")
    return ls


def _utf8_locale() -> str:
    locales = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.split() \
        if shutil.which("locale") else []
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8", "en_US.utf8"):
        if name in locales:
            return name
    pytest.skip("no UTF-8 locale for ls")


def test_quote_name_matches_gnu_ls(tmp_path):
    """The real ls, on real files: the same bytes for every name where we mean to match it."""
    ls, locale = _gnu_ls(), _utf8_locale()
    names = [os.fsencode(n) for n in LS_STYLE] + list(LS_STYLE_BYTES)
    folder = os.fsencode(tmp_path)
    for raw in names:
        open(os.path.join(folder, raw), "wb").close()
    env = {"LC_ALL": locale, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for raw in names:
        shown = subprocess.run([ls, "-1d", "--quoting-style=shell-escape", "--", raw], cwd=tmp_path,
                               capture_output=True, env=env, check=True).stdout
        assert shown.endswith(b"\n")
        assert quote_name(os.fsdecode(raw)).encode() == shown[:-1], raw
    # And the bidi names we escape where ls does not: ls prints the raw bytes.
    raw = "evil\u202egnp.wav".encode()
    open(os.path.join(folder, raw), "wb").close()
    shown = subprocess.run([ls, "-1d", "--quoting-style=shell-escape", "--", raw], cwd=tmp_path,
                           capture_output=True, env=env, check=True).stdout
    assert shown == raw + b"\n" and quote_name(os.fsdecode(raw)).isascii()


def test_quoted_names_are_shell_words():
    """Pasted into bash, every quoted name is the original name, byte for byte."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    names = [os.fsencode(n) for n in [*LS_STYLE, *OURS_ONLY] if "\0" not in n and n] + list(LS_STYLE_BYTES)
    for raw in names:
        word = quote_name(os.fsdecode(raw))
        assert word.isprintable() and "\n" not in word
        got = subprocess.run([bash, "-c", f"printf %s {word}"], capture_output=True, check=True).stdout
        assert got == raw, (raw, word)


# --------------------------------------------------------------------------- printable_text
@pytest.mark.parametrize(("text", "expected"), [
    ("a dog barks, then a car passes", "a dog barks, then a car passes"),
    ("café 中文 👨\u200d👩\u200d👧 ÿ", "café 中文 👨\u200d👩\u200d👧 ÿ"),  # printable: untouched
    ("back\\slash and \\n as typed", "back\\slash and \\n as typed"),  # backslashes kept
    ("line\nok.wav: FAKE", "line\\nok.wav: FAKE"),
    ("tab\there\r\n", "tab\\there\\r\\n"),
    ("nul\0 so\x0e si\x0f", "nul\\0 so\\x0e si\\x0f"),
    ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\a"),
    ("bs\b ff\f vt\v", "bs\\b ff\\f vt\\v"),
    ("del\x7f c1\x9b\x85", "del\\x7f c1\\x9b\\x85"),
    ("evil\u202egnp", "evil\\u202egnp"),
    ("\u2066\u2067\u2068\u2069\u202a\u202b\u202c\u202d\u200e\u200f\u061c",
     "\\u2066\\u2067\\u2068\\u2069\\u202a\\u202b\\u202c\\u202d\\u200e\\u200f\\u061c"),
    ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
    (os.fsdecode(b"byte\xff"), "byte\\xff"),  # a surrogate-escaped byte: the byte
    ("lone\ud800", "lone\\ud800"),
])
def test_printable_text(text, expected):
    assert printable_text(text) == expected


def test_printable_text_keeps_lines_when_asked():
    text = "first\n\tsecond\r\x1b[1mthird\x0f"
    assert printable_text(text, keep_newlines=True) == "first\n\tsecond\\r\\x1b[1mthird\\x0f"
    assert printable_text(text) == "first\\n\\tsecond\\r\\x1b[1mthird\\x0f"


def test_printable_text_leaves_no_control_character():
    everything = "".join(map(chr, range(0x110000)))
    shown = printable_text(everything)
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]", shown)
    assert "\n" in printable_text(everything, keep_newlines=True)
    shown.encode("utf-8")  # printable to any UTF-8 stream: no surrogate is left


def test_markup_text_is_literal_in_rich():
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, color_system=None, width=200)
    user = "[bold]x[/] [/y] \\[z]\x1b[2J"
    console.print(f"[bold red]error:[/] {markup_text(user)}")
    assert buffer.getvalue() == "error: [bold]x[/] [/y] \\[z]\\x1b[2J\n"


# ----------------------------------------------------------------------- the command line
def cli(*args: str | Path | int, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Bytes, not text: text mode would turn a raw \\r into \\n and hide it."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, timeout=timeout, env=ENV, cwd=cwd)


def answer(tiny_model, processor, path: Path, max_new: int) -> str:
    request = Request(build_conversation(str(path), CAPTION_PROMPT, system_prompt=DEFAULT_SYSTEM_PROMPT),
                      SamplingParams(max_new_tokens=max_new))
    return Engine(tiny_model, processor).generate([request])[0].text


@pytest.fixture
def hostile(tmp_path) -> Path:
    """A folder with a forged name (newlines) and a plain one, both real 1 s WAVs."""
    sf.write(tmp_path / FORGED, clip(1.0, 0), 16000)
    sf.write(tmp_path / "plain.wav", clip(1.0, 2), 16000)
    return tmp_path


def test_caption_quotes_a_forged_name(hostile, tiny_checkpoint, tiny_model, processor):
    done = cli("caption", FORGED, "plain.wav", "-m", tiny_checkpoint, "--max-new-tokens", 16, cwd=hostile)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert not RAW_CONTROL.search(done.stdout) and not RAW_CONTROL.search(done.stderr)
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 2  # one line per file, whatever the name and the answer hold
    assert not any(line.startswith(("ok.wav: FAKE", "y.wav")) for line in lines)
    forged_text = answer(tiny_model, processor, hostile / FORGED, 16)
    plain_text = answer(tiny_model, processor, hostile / "plain.wav", 16)
    assert lines == [f"{FORGED_QUOTED}: {printable_text(forged_text)}", f"plain.wav: {printable_text(plain_text)}"]
    # The tiny model's answer holds control bytes (SO/SI and friends): shown escaped.
    assert re.search("[\x00-\x1f]", forged_text), "the tiny model no longer answers with control bytes"
    assert "\\x" in lines[0]


def test_json_and_out_files_keep_names_exact(hostile, tiny_checkpoint, tiny_model, processor):
    done = cli("caption", FORGED, "-m", tiny_checkpoint, "--max-new-tokens", 16, "--json", cwd=hostile)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1  # json.dumps escapes the newlines: still one line
    record = json.loads(lines[0])
    assert record["file"] == FORGED  # exact, not shell-quoted
    assert record["text"] == answer(tiny_model, processor, hostile / FORGED, 16)  # raw control bytes kept

    manifest = hostile / "jobs.jsonl"
    missing = "gone\x1b[2J\n.wav"
    manifest.write_text(json.dumps({"audio": FORGED, "id": "a\nb\x1b"}) + "\n"
                        + json.dumps({"audio": missing, "id": "c"}) + "\n")
    out = hostile / "out [1].jsonl"
    ran = cli("run", manifest, "-o", out.name, "-m", tiny_checkpoint, "--max-new-tokens", 16, cwd=hostile)
    assert ran.returncode == 1  # the missing file fails its row
    assert not RAW_CONTROL.search(ran.stderr), ran.stderr
    stderr = ran.stderr.decode()
    assert "'out [1].jsonl'" in stderr and "gone\\x1b[2J\\n.wav" in stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["audio"] == FORGED and rows[0]["id"] == "a\nb\x1b"
    assert rows[0]["model_output"] == record["text"]
    assert missing in rows[1]["error"] and rows[1]["id"] == "c"


def test_one_line_errors_quote_names_and_ignore_markup(tmp_path):
    name = "nope\n[bold]x[/] \x1b[31m.wav"
    done = cli("caption", name, cwd=tmp_path, timeout=120)  # fails before any model loads
    assert done.returncode == 2
    assert done.stderr.decode() == "error: 'nope'$'\\n''[bold]x[/] '$'\\033''[31m.wav': no such file\n"
    assert done.stdout == b""
