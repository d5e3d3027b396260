"""Graders: is a response's final answer the gold one? Chosen per dataset by `eval.grader` (and `traces.grader`):

- `math` (default): the answer is the last `\\boxed{...}` (nested braces allowed), else the last "the answer is
  ...", else the `fallback` (`last_number` or `none`); it is checked with math-verify on both sides wrapped as LaTeX
  math, so `\\dfrac{1}{2}`, `0.5`, `1/2`, `50\\%`, `1,000` and intervals compare as mathematicians expect (text
  answers compare as normalised strings);
- `exact`: the same extraction, then the same string as the gold answer (case, whitespace, `$` and `\\text{}`
  aside);
- `regex:PATTERN`: the answer is the last match of PATTERN (its first group, if it has one), checked as `math`
  checks it, e.g. GSM8K's `regex:####\\s*(-?[\\d,.]+)`;
- `choice`: a multiple-choice letter (A-Z; GPQA, MMLU-Pro): from `\\boxed{B}`, "the answer is (B)", "Answer: B",
  or a response that is only the letter; the gold answer is a letter, with or without parentheses;
- `module:function`: your own, `function(response, answer)` returning whether it is correct, or a pair
  (extracted answer or None, correct). The module is imported from the current directory or the Python path.

`grader(spec, fallback)` checks the spec (a missing user function fails here, before any generation) and returns
`grade(response, gold) -> (extracted, correct)`.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import threading
from typing import Callable

from t3s import T3SError
from t3s.config import FALLBACKS, check_grader

Grade = Callable[[str, str], "tuple[str | None, bool]"]

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:|=)\s*:?\s*(.+?)\s*(?:\.\s|\.$|\n|$)", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces; None if there is none."""
    for m in reversed(list(_BOX.finditer(text))):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1 : j].strip()
                j += 1
            continue  # unbalanced: try an earlier one
        tail = re.match(r"([^\s$]+)", text[i:])  # "\boxed 5"
        if tail:
            return tail.group(1)
    return None


def _clean(ans: str) -> str:
    ans = ans.strip().strip("$").strip()
    ans = re.sub(r"^\\\(|\\\)$", "", ans).strip()
    return ans.rstrip(".").strip()


def extract_answer(text: str, fallback: str = "last_number") -> str | None:
    if fallback not in FALLBACKS:
        raise T3SError(f"answer fallback must be one of {FALLBACKS}, got '{fallback}'")
    boxed = last_boxed(text)
    if boxed:
        return boxed
    hits = _ANSWER_IS.findall(text)
    if hits and _clean(hits[-1]):
        inner = last_boxed(hits[-1])
        return inner or _clean(hits[-1])
    if fallback == "last_number":
        nums = _NUMBER.findall(text)
        if nums:
            return nums[-1]
    return None


def is_correct(pred: str | None, gold: str) -> bool:
    """math-verify equivalence of an extracted answer and the gold answer. In the main thread math-verify's
    signal-based timeouts protect against pathological inputs; elsewhere (threads) they are disabled, since
    `signal.alarm` only works in the main thread."""
    if pred is None:
        return False
    from math_verify import parse, verify

    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    if not main:
        logging.getLogger("math_verify").setLevel(logging.ERROR)

    def p(x: str):
        x = x.strip()
        return parse(x if x.startswith("$") else f"${x}$", parsing_timeout=timeout)

    try:
        g, a = p(gold), p(pred)
        if verify(g, a, timeout_seconds=timeout):
            return True
    except Exception:
        pass
    # Text answers (names, words): compare normalised strings.
    return _norm_text(pred) == _norm_text(gold)


def _norm_text(s: str) -> str:
    """A text answer without \\text{...}, math delimiters and case."""
    return re.sub(r"\\text\{([^}]*)\}", r"\1", s).strip().strip("$").strip().lower()


# ----------------------------------------------------------------------------------------------- the graders


def _exact(pred: str | None, gold: str) -> bool:
    def norm(s: str) -> str:
        return " ".join(_norm_text(s).rstrip(".").split())

    return pred is not None and norm(pred) == norm(gold)


# "the answer is (B)", "Answer: B", "option (c)": a capital letter, or any letter in parentheses (so that "the
# answer is a bit unclear" names no choice)
_CHOICE = re.compile(
    r"(?i:final answer|the answer|answer|choice|option)\s*(?i:is)?\s*:?\s*\**(?:\(([A-Za-z])\)|([A-Z]))\**(?![\w])"
)


def extract_choice(text: str) -> str | None:
    """The chosen letter: the last `\\boxed{X}` holding one letter, else the last "answer is (X)" / "Answer: X",
    else the whole response when it is one letter (a stray letter in the text is no answer)."""
    boxed = last_boxed(text)
    if boxed is not None:
        m = re.fullmatch(r"\s*(?:\\text\{)?\(?([A-Za-z])\)?\}?\s*", boxed)
        if m:
            return m.group(1).upper()
    hits = _CHOICE.findall(text)
    if hits:
        return "".join(hits[-1]).upper()
    m = re.fullmatch(r"\s*\(?([A-Za-z])\)?[.)]?\s*", text)
    return m.group(1).upper() if m else None


def _gold_choice(gold: str) -> str:
    m = re.fullmatch(r"\s*\(?([A-Za-z])\)?\s*", gold)
    if not m:
        raise T3SError(f"grader choice: the gold answer {gold!r} is not a letter")
    return m.group(1).upper()


def _user_function(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    if os.getcwd() not in sys.path:  # the `t3s` script does not put the current directory on the path
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise T3SError(f"grader {spec}: cannot import module '{module}' ({e})") from None
    except AttributeError:
        raise T3SError(f"grader {spec}: module '{module}' has no function '{name}'") from None
    if not callable(fn):
        raise T3SError(f"grader {spec}: '{name}' is not a function")
    return fn


def grader(spec: str = "math", fallback: str = "last_number") -> Grade:
    """The grading function of a spec (see the module docstring)."""
    check_grader(spec)
    if fallback not in FALLBACKS:
        raise T3SError(f"answer fallback must be one of {FALLBACKS}, got '{fallback}'")
    if spec in ("math", "exact"):
        check = is_correct if spec == "math" else _exact

        def grade(response: str, gold: str) -> tuple[str | None, bool]:
            pred = extract_answer(response, fallback)
            return pred, check(pred, gold)

        return grade
    if spec == "choice":

        def grade(response: str, gold: str) -> tuple[str | None, bool]:
            pred = extract_choice(response)
            return pred, pred is not None and pred == _gold_choice(gold)

        return grade
    if spec.startswith("regex:"):
        pattern = re.compile(spec[len("regex:") :])

        def grade(response: str, gold: str) -> tuple[str | None, bool]:
            hits = list(pattern.finditer(response))
            if not hits:
                return None, False
            m = hits[-1]
            pred = (m.group(1) if pattern.groups else m.group(0)).strip()
            return pred, is_correct(pred, gold)

        return grade
    fn = _user_function(spec)

    def grade(response: str, gold: str) -> tuple[str | None, bool]:
        got = fn(response, gold)
        if isinstance(got, tuple) and len(got) == 2:
            pred, ok = got
            return (None if pred is None else str(pred)), bool(ok)
        if isinstance(got, bool):
            return None, got
        raise T3SError(f"grader {spec} returned {got!r}: return True/False or (extracted answer, True/False)")

    return grade
