"""RULER's text tasks against their definitions (the answer is re-derived from the prompt's text
with regular expressions, not with the generators' code) and the scorers against near misses and
lists of guesses."""
import collections
import re

import numpy as np
import pytest

import eval_testing
from lwm.data import text_tokenizer
from lwm.eval import ruler, scoring


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return text_tokenizer.load_tokenizer(
      eval_testing.make_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def sample(task, tokenizer, length=768, depth=50.0, seed=0, **kw):
  return ruler.make_text_sample(task, tokenizer, np.random.default_rng(seed), length, depth, **kw)


def needles_in(text, kind="numbers"):
  return re.findall(rf"One of the special magic {kind} for (\S+) is: (\S+?)\.(?:\s|$)", text)


@pytest.mark.parametrize("task,inserted,asked_values", [
    ("niah_single", 1, 1), ("niah_single_1", 1, 1), ("niah_single_3", 1, 1),
    ("niah_multikey", 4, 1), ("niah_multivalue", 4, 4), ("niah_multiquery", 4, 4)])
def test_niah_needles_counts_and_answer_from_the_prompt(tokenizer, task, inserted, asked_values):
  s = sample(task, tokenizer)
  [v] = s.variants
  kind = "uuids" if task == "niah_single_3" else "numbers"
  found = needles_in(s.text, kind)
  assert len(found) == inserted and len(v.tokens) == 768  # exactly the context length
  asked = re.search(rf"What are all the special magic {kind} for (.+?) mentioned", s.text).group(1)
  asked_keys = re.split(r", | and ", asked)
  derived = [value for key, value in found if key in asked_keys]
  assert sorted(derived) == sorted(v.expected) and len(v.expected) == asked_values
  assert len({key for key, _ in found}) == (1 if task == "niah_multivalue" else inserted)


def test_niah_haystack_of_distractor_needles(tokenizer):
  for task, kind in (("niah_multikey_2", "numbers"), ("niah_multikey_3", "uuids")):
    s = sample(task, tokenizer, length=2048)
    found = needles_in(s.text, kind)
    asked = re.search(rf"magic {kind} for (\S+) mentioned", s.text).group(1)
    assert len(found) > 3 and [v for k, v in found if k == asked] == s.variants[0].expected


@pytest.mark.parametrize("depth", [0.0, 30.0, 75.0, 100.0])
def test_niah_needle_sits_at_the_depth_in_tokens(tokenizer, depth):
  s = sample("niah_single_1", tokenizer, length=1024, depth=depth)
  [v] = s.variants
  key, value = needles_in(s.text)[0]
  ids = tokenizer.encode(f"One of the special magic numbers for {key} is: {value}.",
                         add_special_tokens=False)
  position = s.info["needle_positions"][0]
  assert list(v.tokens[position:position + len(ids)]) == ids
  # The needle's depth in the haystack's tokens, measured from the prompt: the tokens before it
  # minus BOS and the instruction, over the haystack's tokens (all but the needle and the fixed
  # text).
  head = 1 + len(tokenizer.encode(ruler.NIAH_INSTRUCTION.format(kind="numbers"),
                                  add_special_tokens=False))
  question = tokenizer.encode("Question:", add_special_tokens=False)[0]
  suffix = len(v.tokens) - v.tokens.tolist().index(question, position)
  hay = len(v.tokens) - head - len(ids) - suffix
  measured = 100.0 * (position - head) / hay
  noise_sentence = 100.0 * 12 / hay  # no noise sentence is longer than 12 tokens
  assert measured == pytest.approx(s.depth) and depth - noise_sentence <= measured <= depth


def test_variable_tracking_chain_follows_from_the_text(tokenizer):
  s = ruler.variable_tracking(tokenizer, np.random.default_rng(3), 1024, 20.0, num_chains=2,
                              num_hops=3)
  assignments = dict(re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", s.text))
  value = re.search(r"assigned the value (\d+) in the text above", s.text).group(1)
  names, frontier = set(), {value}
  while frontier:
    frontier = {n for n, src in assignments.items() if src.split()[-1] in frontier} - names
    names |= frontier
  assert len(assignments) == 8 and names == set(s.variants[0].expected) and len(names) == 4
  assert s.variants[0].expected[0] in [n for n, src in assignments.items() if src == value]


def test_common_words_counts(tokenizer):
  for length in (768, 2048):
    s = sample("cwe", tokenizer, length=length)
    listed = re.findall(r"(\d+)\. ([a-z]+)", s.text.split("Question:")[0])
    assert [int(i) for i, _ in listed] == list(range(1, len(listed) + 1))
    counts = collections.Counter(w for _, w in listed)
    info = s.info
    common = {w for w, c in counts.items() if c == info["freq_common"]}
    assert common == set(s.variants[0].expected) and len(common) == info["num_common"]
    assert set(counts.values()) == {info["freq_common"], info["freq_uncommon"]}
    assert info["freq_common"] > info["freq_uncommon"]
    assert 0.8 * length <= len(s.variants[0].tokens) <= length
  assert sample("cwe", tokenizer, length=2048).info["num_common"] == 10


def test_frequent_words_counts(tokenizer):
  s = sample("fwe", tokenizer, length=2048)
  words = s.text.split("coded words.", 1)[1].split("Question:")[0].split()
  counts = collections.Counter(words).most_common()
  assert counts[0][0] == "...." and [w for w, _ in counts[1:4]] == s.variants[0].expected
  assert counts[3][1] > counts[4][1]  # the third answer is not tied with the next word
  assert len(s.variants[0].tokens) <= 2048


def test_prompt_is_too_short_error_names_the_length(tokenizer):
  with pytest.raises(ValueError, match="context_length=40"):
    sample("niah_single", tokenizer, length=40)


# ------------------------------------------------------------------------------------ Scorers

def test_string_match_all_is_rulers_fraction():
  assert scoring.string_match_all("it is 12 and 34", ["12", "34", "56", "78"]) == 0.5
  assert scoring.string_match_all("ABC", ["abc"]) == 1.0


@pytest.mark.parametrize("answer", ["1234568", "123456", "12345670", "1234567 7654321",
                                    "1, 1234567, 2"])
def test_near_misses_and_guesses_score_zero(answer):
  result = scoring.task_score(answer, ["1234567"], scoring.NUMBER)
  assert result["score"] == 0.0


def test_a_list_of_every_number_scores_zero_even_holding_the_answer():
  haystack_numbers = " ".join(str(n) for n in range(1000, 1100))
  assert scoring.string_match_all(haystack_numbers, ["1050"]) == 1.0  # RULER's alone is fooled
  assert scoring.task_score(haystack_numbers, ["1050"], scoring.NUMBER)["score"] == 0.0


def test_exact_answers_score_one_and_partial_answers_partly():
  assert scoring.task_score(" 1234567.", ["1234567"], scoring.NUMBER)["score"] == 1.0
  assert scoring.task_score(" 12, 34", ["12", "34", "56", "78"], scoring.NUMBER)["score"] == 0.5
  uuid = "8fef47d0-ab00-64db-8d08-c3bad82c16dc"
  assert scoring.task_score(uuid.upper(), [uuid], scoring.UUID)["score"] == 1.0
  assert scoring.task_score(uuid[:-1] + "d", [uuid], scoring.UUID)["score"] == 0.0
  assert scoring.task_score("bakot, tilu", ["bako", "tilu"], scoring.WORD)["score"] == 0.5
  assert scoring.task_score("ABCDE FGHIJ", ["ABCDE", "FGHIJ"], r"[A-Z]{5}")["score"] == 1.0
  assert scoring.task_score("ABCDE FGHIJ KLMNO", ["ABCDE", "FGHIJ"], r"[A-Z]{5}")["score"] == 0.0


def test_order_matters_only_for_ordered_tasks():
  assert scoring.task_score("12, 34", ["34", "12"], scoring.NUMBER)["score"] == 1.0
  assert scoring.task_score("12, 34", ["34", "12"], scoring.NUMBER, ordered=True)["score"] == 0.0
  assert scoring.task_score("34, 12", ["34", "12"], scoring.NUMBER, ordered=True)["score"] == 1.0


def test_choice_letters_and_circular_scoring():
  assert scoring.choice_letter(" B", 4) == "B" and scoring.choice_letter("(C) 47", 4) == "C"
  assert scoring.choice_letter("A or B", 4) is None and scoring.choice_letter("ABCD", 4) is None
  assert scoring.choice_letter("Because", 4) is None and scoring.choice_letter(" E", 4) is None
  assert scoring.rotations(["a", "b", "c"]) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
  assert scoring.circular_score([True] * 4) == 1.0
  assert scoring.circular_score([True, True, True, False]) == 0.0


def test_effective_length_is_the_longest_length_at_the_threshold():
  averages = {4096: 0.95, 8192: 0.856, 16384: 0.80, 32768: 0.5}
  assert scoring.effective_length(averages) == 8192
  assert scoring.effective_length(averages, threshold=0.9) == 4096
  assert scoring.effective_length({4096: 0.823, 131072: 0.65}) is None  # LWM-Text-Chat-1M on RULER
  # A pass after a fail does not extend the claim.
  assert scoring.effective_length({4096: 0.9, 16384: 0.5, 32768: 0.9}) == 4096


def test_training_examples_share_the_evaluation_format(tokenizer):
  values = ["123", "456", "789", "321"]
  sentences = ["The old farmer waits.", "A quiet river drifts past the harbour."] * 5
  example = ruler.niah_training_example(np.random.default_rng(0), sentences, ["quiet-river"],
                                        values, asked=1)
  assert [v for _, v in needles_in(example["prompt"])] == values
  assert example["text"] == " 123, 456, 789, 321."
  s = sample("niah_multivalue", tokenizer, length=1024)
  for text, asked in ((example["prompt"], ["quiet-river"]), (s.text, s.info["asked"])):
    assert text.startswith(ruler.NIAH_INSTRUCTION.format(kind="numbers"))
    assert text.endswith(ruler.niah_suffix("numbers", asked))
  # The prompt as one string tokenizes to the prompt's ids (after BOS): a training document.
  assert tokenizer.encode(s.text, add_special_tokens=False) == s.variants[0].tokens[1:].tolist()
