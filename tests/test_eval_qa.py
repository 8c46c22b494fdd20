"""Closed-QA scoring against the official rules.

The default ``qa_accuracy`` must give what the official scripts give on every input:
``evaluate/compute_qa_acc.py`` of xiaomi-research/dasheng-lm (the paper's script) and
``evaluation.py`` of Sakshi113/MMAU, which share one ``string_match``:

  words(t) = set of \\b\\w+\\b matches in t.lower()
  R1  no word in the output                                  -> wrong
  R2  every word of the answer must be in the output
  R3  no word of a wrong choice (word set != the answer's), minus the words it shares
      with the answer, may be in the output; no choices (empty/null) -> only R2
  value = correct / rows (MMAU's "Total Accuracy", compute_qa_acc.py's ACC)

Each expected value below is worked out by hand from these rules (column "official"),
beside our stricter reading (``qa_accuracy_strict``, a documented deviation) and
MuChoMusic's own rule (mulab-mir/muchomusic ``muchomusic_eval/scoring.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from midashenglm.evaluation.metrics import get_metric
from midashenglm.evaluation.metrics.qa import muchomusic_choice, strict_match, string_match
from midashenglm.evaluation.scoring import score_file, score_rows

MUCHO = ["Reggae", "Pop music", "Latin rock", "Ska"]  # MuChoMusic's first official row

# (answer, output, choices, official, strict, why the official rule says so)
CASES = [
    # answer stored as a letter (MuChoMusic): the user report's four rows, all right officially
    ("A", "The answer is A.", MUCHO, True, False, "R2 {a}; no choice word"),
    ("A", "**A**", MUCHO, True, False, "words {a}"),
    ("A", "Option A", MUCHO, True, False, "'option' is no choice's word"),
    ("A", "I think the answer is (A)", MUCHO, True, False, "R2 {a}; no choice word"),
    ("A", "A", MUCHO, True, True, "the official file's form"),
    ("A", "a", MUCHO, True, True, "lower-cased"),
    ("A", "A or B", MUCHO, True, False, "'b' is no choice's word"),
    ("A", "It sounds like Reggae.", MUCHO, False, True, "R2: no 'a'; R3: 'reggae' is a wrong word"),
    ("A", "(A) Reggae", MUCHO, False, True, "R3: 'reggae' belongs to a choice != {a}"),
    ("A", "A. Reggae", MUCHO, False, True, "R3 as above"),
    ("A", "A pop song", MUCHO, False, False, "R3: 'pop'"),
    ("A", "B", MUCHO, False, False, "R2"),
    ("A", "", MUCHO, False, False, "R1"),
    ("A", "...", MUCHO, False, False, "R1: punctuation has no word"),
    # answer stored as option text (MMAU)
    ("Latin rock", "C", MUCHO, False, True, "R2: a letter is not the answer's words"),
    ("Latin rock", "Latin rock", MUCHO, True, True, "R2"),
    ("Latin rock", "latin ROCK!", MUCHO, True, True, "case and punctuation do not matter"),
    ("Latin rock", "(C) Latin rock", MUCHO, True, True, "'c' is no choice's word"),
    ("Latin rock", "Latin rock or pop", MUCHO, False, False, "R3: 'pop'"),
    ("Latin rock", "rock", MUCHO, False, False, "R2: 'latin' missing"),
    # words shared with the answer are allowed; choices equal to the answer are not wrong
    ("Pop music", "pop music", ["Pop music", "Jazz music", "Rock"], True, True, "R2"),
    ("Pop music", "music", ["Pop music", "Jazz music", "Rock"], False, False, "R2: 'pop'"),
    ("Pop music", "Pop music, not jazz", ["Pop music", "Jazz music", "Rock"], False, False,
     "R3: 'jazz'"),
    ("rock", "ROCK", ["Rock", "rock", "Pop"], True, True, "both rock choices equal the answer"),
    # no choices: R2 only (compute_qa_acc.py's `if not choices`)
    ("dog", "a dog barks", [], True, True, "R2"),
    ("dog", "a dog barks", None, True, True, "R2"),
    # an empty answer has no word: R2 holds for any output with a word
    ("", "z", ["x", "y"], True, True, "R2 trivially; 'z' is no choice's word"),
    ("", "x", ["x", "y"], False, False, "R3: 'x'"),
    ("", "", ["x", "y"], False, False, "R1"),
    # \w is Unicode and includes '_'
    ("Café", "café au lait", ["Café", "Thé"], True, True, "Unicode lower-casing"),
    ("pop music", "pop_music", ["pop music", "rock"], False, False, "'pop_music' is one word"),
    ("A", "answer İ", MUCHO, False, False, "'İ' lower-cases to 'i' + a mark: no 'a'"),
    # a string of choices is iterated character by character, as Python does there
    ("a", "a", "ab", True, True, "choice 'b' is wrong, 'a' equals the answer"),
    ("a", "a b", "ab", False, False, "R3: 'b'"),
]


@pytest.mark.parametrize(("answer", "output", "choices", "official", "strict", "why"), CASES)
def test_official_rule_per_row(answer, output, choices, official, strict, why):
    assert string_match(answer, output, choices) is official, why
    assert strict_match(answer, output, choices) is strict


def _rows(cases):
    return [{"dataset_name": "X", "answer": a, "model_output": o, "choices": c}
            for a, o, c, *_ in cases]


def test_every_case_through_the_metrics():
    rows = _rows(CASES)
    official = score_rows(rows, "qa_accuracy")
    assert official.skipped == 0 and official.count == len(CASES)
    assert official.value == pytest.approx(sum(c[3] for c in CASES) / len(CASES))
    assert official.beside["qa_accuracy_strict"] == pytest.approx(
        sum(c[4] for c in CASES) / len(CASES))


def test_the_user_report_file_scores_as_the_official_script(tmp_path):
    """The four rows of the report: official 1.0 (1, 1, 1, 1); strict reading 0.0."""
    path = tmp_path / "MiDashengLM_MuChoMusic.jsonl"
    path.write_text("".join(json.dumps({
        "dataset_name": "MuChoMusic", "choices": MUCHO, "answer": "A", "model_output": output,
        "model_name": "m"}) + "\n" for output in
        ("The answer is A.", "**A**", "Option A", "I think the answer is (A)")))
    result = score_file(path)
    assert (result.metric, result.value, result.count) == ("qa_accuracy", 1.0, 4)
    assert result.beside == {"qa_accuracy_strict": 0.0}
    assert result.to_json()["beside"] == {"qa_accuracy_strict": 0.0}
    assert score_file(path, "qa_accuracy_strict").value == 0.0

    done = subprocess.run(
        [sys.executable, "-m", "midashenglm.cli", "evaluate", str(path), "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout)
    assert (line["value"], line["beside"]) == (1.0, {"qa_accuracy_strict": 0.0})


def test_option_text_output_against_a_letter_answer_is_wrong_officially():
    rows = [{"answer": "A", "choices": MUCHO, "model_output": "It sounds like Reggae."}]
    assert score_rows(rows, "qa_accuracy").value == 0.0  # official: 0
    assert score_rows(rows, "qa_accuracy_strict").value == 1.0  # our reading: 1


def test_mmau_total_accuracy_and_its_breakdowns():
    """MMAU's evaluation.py: Total Accuracy = correct / all; per task, difficulty, sub-category."""
    choices = ["Cat", "Dog"]
    rows = [  # sound 1 of 3 right, music 1 of 1 right
        {"answer": "Dog", "model_output": "Dog", "task": "sound", "difficulty": "easy",
         "sub-category": "animals"},
        {"answer": "Dog", "model_output": "Cat", "task": "sound", "difficulty": "hard",
         "sub-category": "animals"},
        {"answer": "Cat", "model_output": "B", "task": "sound", "difficulty": "hard"},
        {"answer": "Cat", "model_output": "a cat", "task": "music", "difficulty": "easy"},
    ]
    for row in rows:
        row["choices"] = choices
    out = get_metric("qa_accuracy")(rows)
    assert out.value == pytest.approx(2 / 4)  # not the mean of the tasks, (1/3 + 1) / 2
    assert out.details["per_task"] == pytest.approx({"music": 1.0, "sound": 1 / 3})
    assert out.details["task_mean"] == pytest.approx(2 / 3)
    assert out.details["per_difficulty"] == pytest.approx({"easy": 1.0, "hard": 0.0})
    assert out.details["per_subcategory"] == pytest.approx({"animals": 0.5})
    assert out.details["correct"] == 2


@pytest.mark.parametrize(
    ("output", "index", "why"),
    [
        ("The answer is A.", 0, "exactly one of A-D occurs"),
        ("The correct answer is: (B) Pop music", 1, "text after the prefix: only 'B'"),
        ("Answer: B", -1, "'A' and 'B' both occur; no option text either"),
        ("reggae", 0, "no capital letter: the first option contained in the output"),
        ("I think it's pop music, not reggae", 0, "options are tried in order"),
        ("Definitely Reggae", 3, "the 'D' of 'Definitely' is the one letter"),
        ("no idea", -1, "nothing"),
    ],
)
def test_muchomusic_own_rule(output, index, why):
    assert muchomusic_choice(output, MUCHO) == index, why


def test_muchomusic_accuracy_metric():
    rows = [{"answer": "A", "choices": MUCHO, "model_output": "Definitely Reggae"},
            {"answer": "Reggae", "choices": MUCHO, "model_output": "reggae"},
            {"answer": "Blues", "choices": MUCHO, "model_output": "A"}]
    out = score_rows(rows, "muchomusic_accuracy")
    assert (out.value, out.count, out.skipped) == (0.5, 2, 1)
    assert "neither an option letter" in out.problems[0].reason


def test_rows_the_official_script_cannot_read_are_listed():
    rows = [{"answer": 1, "choices": MUCHO, "model_output": "A"},
            {"answer": "A", "model_output": "A"},
            {"answer": "A", "choices": [1, 2], "model_output": "A"}]
    out = score_rows(rows, "qa_accuracy")
    assert out.count == 0 and out.skipped == 3
