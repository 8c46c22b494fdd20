"""The resumable JSONL file both batch jobs (run, benchmark) keep their state in."""

from __future__ import annotations

import json

import pytest

from midashenglm import jsonl
from midashenglm.errors import UserError


def test_torn_last_line_is_cut_and_a_lost_newline_restored(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1}\n{"id": 2')
    assert jsonl.repair_tail(path) == len('{"id": 2')
    assert path.read_text() == '{"id": 1}\n'
    path.write_text('{"id": 1}\n{"id": 2}')  # complete row, only its newline lost
    assert jsonl.repair_tail(path) == 0
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'


def test_rows_rewrite_and_append(tmp_path):
    path = tmp_path / "out.jsonl"
    with path.open("a", encoding="utf-8") as fh:
        jsonl.append_rows(fh, [{"id": 1}, {"id": 2, "error": "x"}, {"id": 3, "p": tmp_path}])
    assert [n for n, _ in jsonl.existing_rows(path, hint="h")] == [1, 2, 3]
    assert jsonl.rewrite(path, lambda row: "error" not in row) == 1
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1, 3]
    path.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(UserError, match="line 2: invalid JSON.*fix it"):
        list(jsonl.existing_rows(path, hint="fix it"))
