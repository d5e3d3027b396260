"""Graders (t3s.graders), one table each: right, wrong and malformed answers; the config's checks; a user
function; `t3s eval --responses` with a grader."""

import json
import sys

import pytest
from conftest import write_jsonl

from t3s import T3SError
from t3s.cli import main as t3s
from t3s.config import GenConfig
from t3s.graders import extract_choice, grader

GSM8K = r"regex:####\s*(-?[\d,.]+)"


@pytest.mark.parametrize(
    "spec, response, gold, extracted, correct",
    [
        # math (the default): boxed, "the answer is", last number; math-verify equivalence
        ("math", "so \\boxed{\\frac{1}{2}}", "0.5", "\\frac{1}{2}", True),
        ("math", "The answer is 1,000.", "1000", "1,000", True),
        ("math", "I think 41", "42", "41", False),
        ("math", "no number here", "42", None, False),
        # exact: the same extraction, the same string (case, spaces, $ and \text aside)
        ("exact", "\\boxed{\\text{Paris}}", "paris", "\\text{Paris}", True),
        ("exact", "The answer is 0.50.", "0.5", "0.50", False),  # math would accept it, exact does not
        ("exact", "The answer is New   York.", "new york", "New   York", True),
        ("exact", "", "x", None, False),
        # regex: GSM8K's '#### 72', checked as math checks it
        (GSM8K, "She has 72 apples.\n#### 72", "72", "72", True),
        (GSM8K, "#### 1,200", "1200", "1,200", True),
        (GSM8K, "#### 7\nno wait\n#### 8", "8", "8", True),  # the last match
        (GSM8K, "The answer is 72.", "72", None, False),  # no '####': no answer, whatever the text says
        (GSM8K, "#### 71", "72", "71", False),
        ("regex:ANSWER: [A-Z]+", "ANSWER: YES", "answer: yes", "ANSWER: YES", True),  # no group: the whole match
        # choice: multiple-choice letters
        ("choice", "... so the answer is (B).", "B", "B", True),
        ("choice", "Answer: C", "(c)", "C", True),
        ("choice", "I pick option (c).", "C", "C", True),
        ("choice", "The answer is a bit unclear.", "A", None, False),  # a lowercase word is no choice
        ("choice", "\\boxed{D}", "D", "D", True),
        ("choice", "\\boxed{(A)}", "a", "A", True),
        ("choice", " E ", "E", "E", True),
        ("choice", "The answer is (B).", "C", "B", False),
        ("choice", "A cat sat on a mat.", "A", None, False),  # a stray letter is no answer
    ],
)
def test_grader_table(spec, response, gold, extracted, correct):
    assert grader(spec)(response, gold) == (extracted, correct)


def test_choice_extraction_prefers_the_boxed_letter_then_the_last_stated_one():
    assert extract_choice("Option A is wrong; the answer is B") == "B"
    assert extract_choice("the answer is A ... final answer: \\boxed{C}") == "C"
    assert extract_choice("\\boxed{42}") is None


def test_choice_with_a_gold_answer_that_is_not_a_letter():
    with pytest.raises(T3SError, match="grader choice: the gold answer '42' is not a letter"):
        grader("choice")("the answer is B", "42")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("regex:([", "grader regex:([: bad regular expression"),
        ("fuzzy", "grader must be one of math, exact, choice, regex:PATTERN, module:function, got 'fuzzy'"),
        ("my-module:fn", "grader must be one of"),
        ("mod:", "grader must be one of"),
    ],
)
def test_bad_grader_names_are_config_errors(spec, message):
    with pytest.raises(T3SError, match=message.replace("(", r"\(").replace("[", r"\[")):
        GenConfig(grader=spec)


def test_a_user_function(tmp_path, monkeypatch):
    (tmp_path / "mygrade.py").write_text(
        "def yes_no(response, answer):\n"
        "    said = 'yes' if 'yes' in response.lower() else 'no' if 'no' in response.lower() else None\n"
        "    return said, said == answer.lower()\n"
        "def strict(response, answer):\n"
        "    return response.strip() == answer\n"
        "def broken(response, answer):\n"
        "    return 'maybe'\n"
    )
    monkeypatch.chdir(tmp_path)  # imported from the current directory, as the `t3s` script would
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert grader("mygrade:yes_no")("Yes, it is.", "YES") == ("yes", True)
    assert grader("mygrade:yes_no")("It is not.", "yes") == ("no", False)
    assert grader("mygrade:yes_no")("Hmm.", "yes") == (None, False)
    assert grader("mygrade:strict")(" 4 ", "4") == (None, True)
    with pytest.raises(T3SError, match=r"grader mygrade:broken returned 'maybe'"):
        grader("mygrade:broken")("x", "y")
    with pytest.raises(T3SError, match="module 'mygrade' has no function 'missing'"):
        grader("mygrade:missing")
    with pytest.raises(T3SError, match="cannot import module 'nowhere_module'"):
        grader("nowhere_module:fn")


def test_eval_responses_with_a_grader(tmp_path, capsys):
    rows = [
        {"id": "a", "response": "so 3 + 4 = 7\n#### 7", "answer": "7"},
        {"id": "b", "response": "The answer is 7. #### 8", "answer": "7"},
        {"id": "c", "response": "I cannot tell.", "answer": "7"},
    ]
    path = write_jsonl(tmp_path / "responses.jsonl", rows)
    out = tmp_path / "graded"
    code = t3s(["eval", "--responses", str(path), "--out", str(out), f"grader={GSM8K}"])
    assert code == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["grader"] == GSM8K and m["metrics"]["accuracy"] == pytest.approx(1 / 3)
    got = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [(s["extracted"], s["correct"]) for s in got] == [("7", True), ("8", False), (None, False)]
    # with the default grader, row b counts as right ("The answer is 7") and row c has no answer either
    code = t3s(["eval", "--responses", str(path), "--out", str(tmp_path / "math")])
    assert json.loads((tmp_path / "math" / "metrics.json").read_text())["metrics"]["accuracy"] == pytest.approx(2 / 3)
