"""User text on the terminal: file names quoted as GNU ``ls`` does, control characters escaped.

File names, manifest fields and model output reach the command line's human-readable
output (answers one per line, ``error:`` lines, rich messages). Printed raw, a name
holding a newline forges a line (``x\\nok.wav: FAKE``), an ESC sequence drives the
terminal, a bidi override reorders what is shown. Everything printed for humans goes
through this module; JSON output (``--json``, ``--out`` files) stays exact and never does.

* :func:`quote_name`: a file name as ``ls --quoting-style=shell-escape`` prints it
  (its default on a terminal), so it can be pasted back into a shell.
* :func:`printable_text`: free text (model output, messages) with control characters
  shown as ``\\n``, ``\\x1b``, ``\\u202e``; nothing else changes.
* :func:`markup_text`: :func:`printable_text` made literal inside rich markup.
"""

from __future__ import annotations

import os
import re
import unicodedata

# Bidi embedding/override/isolate controls (the "Trojan Source" set) and the bidi marks:
# printable to glibc (ls shows them raw) but they reorder what the terminal shows.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Besides C0 controls: DEL and C1, line/paragraph separators, surrogates, bidi controls.
_UNSAFE_OTHER = "\x7f-\x9f\u2028\u2029\ud800-\udfff" + "".join(sorted(_BIDI))
_UNSAFE_TEXT = re.compile(f"[\x00-\x1f{_UNSAFE_OTHER}]")
_UNSAFE_KEEP_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_UNSAFE_OTHER}]")  # \t and \n kept
_NAMED = {"\0": "0", "\a": "a", "\b": "b", "\t": "t", "\n": "n", "\v": "v", "\f": "f", "\r": "r"}

# quotearg.c (shell-escape): these make ls quote a name wherever they are ...
_SHELL_SPECIAL = frozenset(" !\"$&'()*;<=>?[\\^`|")
# ... and these characters may stand inside "..." when the name holds a single quote.
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789%+,-./:]_@")


def _unprintable(ch: str) -> bool:
    """Not shown as itself in a name: controls, separators, surrogates, bidi, unassigned."""
    return unicodedata.category(ch) in ("Cc", "Cs", "Cn", "Zl", "Zp") or ch in _BIDI


def _octal(ch: str) -> str:
    """``\\ooo`` per byte (UTF-8; a surrogate from os.fsdecode is the byte it stands for)."""
    try:
        data = ch.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no byte decoded to
        data = ch.encode("utf-8", "surrogatepass")
    return "".join(f"\\{b:03o}" for b in data)


def quote_name(name: str | bytes | os.PathLike) -> str:
    """A file name for the terminal, as ``ls --quoting-style=shell-escape`` prints it.

    A name of plain characters is unchanged (``speech.wav``, ``café.wav``). A name with a
    space or a shell special (``!"$&'()*;<=>?[\\^`|``, a leading ``#`` or ``~``, a lone
    ``{`` or ``}``) is put in single quotes (``'a b.wav'``), or in double quotes when it
    holds a single quote and nothing else special (``"it's.wav"``); other single quotes
    become ``'\\''``. Control characters and other unprintables are written as ANSI-C
    escapes outside the quotes: ``'a'$'\\n''b'``, ``$'\\033'``, ``$'\\0'``; a byte that is
    not UTF-8 (a surrogate from :func:`os.fsdecode`) as its octal value, ``$'\\377'``.
    Unlike ls, bidi controls (U+202A-U+202E, U+2066-U+2069, LRM/RLM/ALM) are escaped too.
    """
    name = os.fsdecode(name)
    if name and not any(ch in _SHELL_SPECIAL or _unprintable(ch) for ch in name) \
            and name[0] not in "#~" and name not in ("{", "}"):
        return name
    if "'" in name and all(ch in _PLAIN or ch in "' " or (ch in "#~" and i == 0)
                           or (ord(ch) > 127 and not _unprintable(ch)) for i, ch in enumerate(name)):
        return f'"{name}"'
    out, escaping = ["'"], False  # escaping: inside a $'...' part
    for ch in name:
        if ch in _NAMED or _unprintable(ch):
            out.append(("" if escaping else "'$'") + ("\\" + _NAMED[ch] if ch in _NAMED else _octal(ch)))
            escaping = True
        else:
            out.append("'\\''" if ch == "'" else ("''" if escaping else "") + ch)
            escaping = False
    out.append("'")
    return "".join(out)


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _NAMED:
        return "\\" + _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (os.fsdecode, surrogateescape)
        code -= 0xDC00
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable_text(text: str, *, keep_newlines: bool = False) -> str:
    """Free text for the terminal on one line: control characters made visible.

    C0 controls, DEL and C1 (U+0080-U+009F), U+2028/U+2029, surrogates and bidi controls
    become ``\\n``, ``\\r``, ``\\t``, ``\\0``, ``\\x1b``, ``\\x9b``, ``\\u202e``, ``\\ud800``
    (an undecodable byte from :func:`os.fsdecode`, U+DC80-U+DCFF, as the byte: ``\\xff``);
    everything else, backslashes too, is kept. ``keep_newlines`` keeps ``\\n`` and ``\\t``
    (an answer printed alone, where there is no line structure to forge).
    """
    return (_UNSAFE_KEEP_LINES if keep_newlines else _UNSAFE_TEXT).sub(_escape_char, text)


def markup_text(text: str) -> str:
    """:func:`printable_text` for a rich markup string: ``[bold]`` in it stays literal."""
    from rich.markup import escape

    return escape(printable_text(text))
