"""Scoring the long-context tasks so that a guess cannot pass: RULER's string match, each task's
stricter exact rule, circular multiple choice, and RULER's effective length.

- `string_match_all(answer, references)`: RULER's metric, the fraction of the references that
  occur (case-insensitively, as substrings) in the answer.
- `item_match(answer, references, pattern)`: the stricter rule the tasks add. The answer's items
  (whole numbers, uuids, words: whatever `pattern` finds) are compared whole, so `1234568` does
  not match `1234567`, and an answer naming more distinct items than there are references (a list
  of guesses) scores 0.
- `sequence_match`: the items in the answer are exactly the references, in order (ordering tasks).
- `choice_letter` / `circular_score`: a multiple-choice answer names exactly one option letter;
  a question counts as right only if it is right under every rotation of its options (VNBench).
- `string_match_part`, `ruler_prediction`, `ruler_score`: RULER's QA metric, its reading of a
  prediction and its per-task score on 0-100 (the `--suite ruler` scores).
- `effective_length`: the longest context length whose task-average is at or above a threshold,
  RULER's 85.6 (0.856 on lwm's 0-1 scale; 85.6 for `--suite ruler`'s 0-100).
"""
import re

import numpy as np

NUMBER = r"\d+"
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
WORD = r"[A-Za-z][A-Za-z0-9_'-]*"
LETTERS = "ABCDEFGHIJ"
RULER_THRESHOLD = 0.856


def string_match_all(answer: str, references: list[str]) -> float:
  """RULER's `string_match_all`: mean over references of `reference.lower() in answer.lower()`."""
  if not references:
    raise ValueError("string_match_all needs at least one reference")
  answer = answer.lower()
  return float(np.mean([ref.lower() in answer for ref in references]))


def string_match_part(answer: str, references: list[str]) -> float:
  """RULER's `string_match_part` (its QA metric): 1 when any reference occurs in the answer."""
  if not references:
    raise ValueError("string_match_part needs at least one reference")
  answer = answer.lower()
  return float(any(ref.lower() in answer for ref in references))


RULER_METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def ruler_prediction(text: str) -> str:
  """A prediction as RULER's evaluate.py reads it: control characters become newlines, stripped."""
  return re.sub(r"[\x00-\x1f]", "\n", text.strip()).strip()


def ruler_score(predictions: list[str], references: list[list[str]], metric: str) -> float:
  """A task's score as RULER reports it: the metric's mean over samples x 100, rounded to 2
  decimals, on predictions read as `ruler_prediction` reads them."""
  if not predictions or len(predictions) != len(references):
    raise ValueError(f"ruler_score needs as many predictions as references, got "
                     f"{len(predictions)} and {len(references)}")
  fn = RULER_METRICS[metric]
  total = sum(fn(ruler_prediction(p), r) for p, r in zip(predictions, references))
  return round(total / len(predictions) * 100, 2)


def items(answer: str, pattern: str) -> list[str]:
  """The distinct whole items of `answer` that match `pattern` (case-sensitively), lower-cased, in
  order."""
  found = []
  for item in re.findall(rf"(?<![\w-])(?:{pattern})(?![\w-])", answer):
    item = item.lower()
    if item not in found:
      found.append(item)
  return found


def item_match(answer: str, references: list[str], pattern: str) -> float:
  """The fraction of references found as whole items of the answer; 0 when the answer holds more
  distinct items than there are references (a list of guesses is not an answer)."""
  if not references:
    raise ValueError("item_match needs at least one reference")
  found = items(answer, pattern)
  if len(found) > len(set(references)):
    return 0.0
  return float(np.mean([ref.lower() in found for ref in references]))


def sequence_match(answer: str, references: list[str], pattern: str) -> float:
  """1 when the answer's items are exactly `references` in that order, else 0."""
  return float(items(answer, pattern) == [r.lower() for r in references])


def task_score(answer: str, references: list[str], pattern: str, ordered: bool = False) -> dict:
  """{'string_match_all': RULER's score, 'score': the stricter of it and the exact rule}."""
  ruler = string_match_all(answer, references)
  exact = (sequence_match if ordered else item_match)(answer, references, pattern)
  return {"string_match_all": ruler, "score": min(ruler, exact)}


# ------------------------------------------------------------------------------------ Choices

def rotations(options: list[str]) -> list[list[str]]:
  """Every cyclic rotation of the options: [a, b, c], [b, c, a], [c, a, b]."""
  return [list(options[i:]) + list(options[:i]) for i in range(len(options))]


def choice_text(options: list[str]) -> str:
  """'(A) 12 (B) 47 (C) 80 (D) 31': the options as the question lists them."""
  if len(options) > len(LETTERS):
    raise ValueError(f"at most {len(LETTERS)} options, got {len(options)}")
  return " ".join(f"({LETTERS[i]}) {option}" for i, option in enumerate(options))


def choice_letter(answer: str, num_options: int) -> str | None:
  """The one option letter the answer names ('B', '(B)', 'B) 47'), or None when it names none or
  several."""
  letters = set(re.findall(rf"(?<![A-Za-z])([{LETTERS[:num_options]}])(?![A-Za-z])", answer))
  return letters.pop() if len(letters) == 1 else None


def circular_score(correct: list[bool]) -> float:
  """A multiple-choice question is right only if it is right under every rotation."""
  if not correct:
    raise ValueError("circular_score needs the result of at least one rotation")
  return float(all(correct))


# ------------------------------------------------------------------------------------ Summary

def effective_length(averages: dict, threshold: float = RULER_THRESHOLD) -> int | None:
  """RULER's effective length: the longest evaluated context length up to which every task-average
  is at or above `threshold` (a pass at 32K after a fail at 16K does not count: the claim is that
  the model holds up to that length); None when the shortest length fails.
  averages: {context_length: mean score over the tasks}."""
  effective = None
  for length in sorted(averages):
    if averages[length] < threshold:
      break
    effective = length
  return effective
