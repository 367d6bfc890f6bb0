"""Text needle: prompt length and needle depth in tokens, exact-match scoring, resumable grid."""
import json
import re

import numpy as np
import pytest

from lwm.data import text_tokenizer
from lwm.eval import grid, needle
from lwm.model_dir import LoadedModel


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  rng = np.random.default_rng(0)
  texts = [needle.synthetic_haystack(400, seed=1)]
  for n in needle.draw_needles(rng, 20, split="all"):
    texts.append(needle.format_prompt(needle.text_needle_sentence(n.key, n.value),
                                      needle.text_question(n.key)) + needle.text_answer(n.value))
  path = str(tmp_path_factory.mktemp("tok") / "tok.model")
  return text_tokenizer.load_tokenizer(text_tokenizer.train_tokenizer(texts, path, vocab_size=400))


def haystack(tokenizer, n):
  return needle.haystack_tokens(tokenizer, needle.synthetic_haystack(n // 4, seed=2), n)


@pytest.mark.parametrize("context_length", [300, 1024])
@pytest.mark.parametrize("depth", [0, 25, 50, 75, 100])
def test_prompt_has_the_length_and_the_needle_sits_at_the_depth(tokenizer, context_length, depth):
  hay = haystack(tokenizer, context_length)
  [n] = needle.draw_needles(np.random.default_rng(3), 1)
  prompt = needle.build_text_prompt(tokenizer, hay, [n], depth, context_length)
  assert len(prompt.tokens) == context_length
  ids = tokenizer.encode(needle.text_needle_sentence(n.key, n.value), add_special_tokens=False)
  [pos] = prompt.needle_positions
  np.testing.assert_array_equal(prompt.tokens[pos:pos + len(ids)], ids)
  # The needle starts the last sentence that starts at or before depth% of the haystack's tokens.
  cut = pos - 1  # haystack tokens before the needle (after BOS)
  target = round(depth / 100 * prompt.haystack_length)
  starts = needle.sentence_starts(tokenizer, hay[:prompt.haystack_length])
  assert cut in starts and cut <= target
  assert not np.any((starts > cut) & (starts <= target))
  longest_sentence = np.diff(starts).max()
  assert abs(prompt.needle_depths[0] - depth) <= 100 * longest_sentence / prompt.haystack_length
  # The rest: the haystack continues after the needle, and the prompt ends with the question.
  after = min(5, prompt.haystack_length - cut)
  np.testing.assert_array_equal(prompt.tokens[pos + len(ids):pos + len(ids) + after],
                                hay[cut:cut + after])
  suffix = tokenizer.encode(needle.question_suffix(needle.text_question(n.key)),
                            add_special_tokens=False)
  np.testing.assert_array_equal(prompt.tokens[-len(suffix):], suffix)
  assert prompt.tokens[0] == tokenizer.bos_token_id


def test_string_form_tokenizes_to_the_same_prompt(tokenizer):
  """Training documents are strings; evaluation builds tokens part by part: they must agree."""
  hay = haystack(tokenizer, 600)
  found = needle.draw_needles(np.random.default_rng(4), 3)
  prompt = needle.build_text_prompt(tokenizer, hay, found, 40, 600, retrieve=2)
  assert tokenizer.encode(prompt.text) == list(prompt.tokens)  # BOS added by the tokenizer
  assert prompt.text.endswith("Question: What are the special magic numbers for "
                              f"{found[0].key} and {found[1].key}? Answer:")
  document = needle.training_document(prompt)
  assert document.endswith(f"Answer: {found[0].value}, {found[1].value}")
  answer = tokenizer.encode(needle.text_answer(prompt.expected), add_special_tokens=False)
  assert tokenizer.encode(document, add_special_tokens=False) == list(prompt.tokens[1:]) + answer


def test_multi_needles_are_spread_after_the_first(tokenizer):
  hay = haystack(tokenizer, 2000)
  found = needle.draw_needles(np.random.default_rng(5), 4)
  prompt = needle.build_text_prompt(tokenizer, hay, found, 20, 2000, retrieve=2)
  assert len(prompt.tokens) == 2000
  assert prompt.needle_positions == sorted(prompt.needle_positions)
  for got, want in zip(prompt.needle_depths, [20, 40, 60, 80]):
    assert want - 3 <= got <= want
  assert prompt.expected == [found[0].value, found[1].value]


def test_needles_use_keys_of_their_split_and_configurable_digits():
  rng = np.random.default_rng(6)
  train, held_out = set(needle.needle_keys("train")), set(needle.needle_keys("eval"))
  assert train and held_out and not train & held_out
  drawn = needle.draw_needles(rng, 5, digits=2, split="train")
  assert {n.key for n in drawn} <= train
  assert all(re.fullmatch(r"[1-9]\d", n.value) for n in drawn)
  assert len({n.value for n in drawn}) == 5


@pytest.mark.parametrize("answer, expected, score", [
    (" 4825913", ["4825913"], 1.0),
    ("The special magic Paris number is: 4825913.", ["4825913"], 1.0),
    ("4825913 4825913", ["4825913"], 1.0),
    ("4825914", ["4825913"], 0.0),                      # one digit off
    ("482591", ["4825913"], 0.0),                       # a digit short
    ("48259130", ["4825913"], 0.0),                     # contains it, but is another number
    ("4825913, 1111111, 2222222", ["4825913"], 0.0),    # every number of the haystack
    ("Sure! The special magic number for Paris in the text is 4825913. Anything else?",
     ["4825913"], 1.0),                                 # a chat model's answer
    ("", ["4825913"], 0.0),
    (" 12, 34", ["12", "34"], 1.0),
    (" 34", ["12", "34"], 0.5),
    (" 12, 34, 56", ["12", "34"], 0.0),
])
def test_scoring_is_exact_match_of_numbers(answer, expected, score):
  assert grid.score_answer(answer, expected) == score


class OracleGenerator:
  """Reads the asked values out of the prompt (a perfect model), and counts its calls."""

  def __init__(self, tokenizer):
    self.tokenizer, self.calls = tokenizer, 0

  def __call__(self, prompts, max_new_tokens, eos_ids, **kwargs):
    self.calls += 1
    text = self.tokenizer.decode(prompts[0])
    question = text[text.rindex("Question:"):]
    keys = re.search(r"special magic (?:numbers for )?(.+?)(?: number)?\? Answer:",
                     question).group(1)
    values = [re.search(rf"magic {re.escape(k)} number is: (\d+)", text).group(1)
              for k in re.split(r", | and ", keys)]
    return [self.tokenizer.encode(needle.text_answer(values), add_special_tokens=False)]


def test_grid_writes_results_and_heatmap_and_resumes(tokenizer, tmp_path):
  loaded = LoadedModel(None, tokenizer, {}, None, None, "oracle")
  oracle = OracleGenerator(tokenizer)
  kwargs = dict(output=str(tmp_path / "out"), context_lengths=[256, 512], depths=[0, 50, 100],
                rounds=2, needles=3, retrieve=2, progress=False, generator=oracle)
  summary = needle.run_text_needle(loaded, **kwargs)
  assert oracle.calls == 12 and summary["accuracy"] == 1.0 and summary["skipped"] == 0
  cells = json.load(open(tmp_path / "out" / "results.json"))
  assert len(cells) == 12
  for key in ("context_length", "depth", "prompt_tokens", "expected", "answer", "score", "round"):
    assert all(key in c for c in cells)
  assert {c["prompt_tokens"] for c in cells} == {256, 512}
  assert (tmp_path / "out" / "heatmap.png").stat().st_size > 1000
  assert "overall accuracy 100.0%" in summary["table"]

  # A rerun after an interruption: only the missing cells are evaluated.
  json.dump(cells[:5], open(tmp_path / "out" / "results.json", "w"))
  again = OracleGenerator(tokenizer)
  summary = needle.run_text_needle(loaded, **{**kwargs, "generator": again})
  assert again.calls == 7 and summary["skipped"] == 5
  assert len(json.load(open(tmp_path / "out" / "results.json"))) == 12
  # Nothing left: no calls, same summary.
  third = OracleGenerator(tokenizer)
  assert needle.run_text_needle(loaded, **{**kwargs, "generator": third})["accuracy"] == 1.0
  assert third.calls == 0
  # Other settings into the same directory are refused.
  with pytest.raises(ValueError,
                     match=r"other settings \(needles=3 there, 1 now; retrieve=2 there, 1 now\)"):
    needle.run_text_needle(loaded, **{**kwargs, "needles": 1, "retrieve": 1})


def test_context_too_short_names_the_lengths(tokenizer):
  hay = haystack(tokenizer, 100)
  found = needle.draw_needles(np.random.default_rng(7), 1)
  with pytest.raises(ValueError, match=r"context_length=10 leaves no room for a haystack"):
    needle.build_text_prompt(tokenizer, hay, found, 50, 10)


def test_grids_from_min_max_intervals():
  assert grid.linear_grid(0, 100, 5) == [0, 25, 50, 75, 100]
  assert grid.linear_grid(1000, 4000, 4) == [1000, 2000, 3000, 4000]
  assert grid.parse_list("1k, 32k,1m,4096") == [1024, 32768, 1048576, 4096]
  with pytest.raises(ValueError, match=r"'ten' is not one"):
    grid.parse_list("10,ten")


def test_values_come_from_the_pool_when_one_is_given(tmp_path):
  pool = ["108", "216", "324", "432", "540"]
  path = tmp_path / "values.txt"
  path.write_text("\n".join(pool) + "\n\n")
  assert needle.read_values(str(path)) == pool
  for seed in range(20):
    drawn = needle.draw_needles(np.random.default_rng(seed), 3, values=pool)
    values = [n.value for n in drawn]
    assert set(values) <= set(pool) and len(set(values)) == 3
  # Without a pool: `digits`-digit numbers, as before.
  assert all(len(n.value) == 4 for n in needle.draw_needles(np.random.default_rng(0), 5, digits=4))
  with pytest.raises(ValueError, match="pool of 5"):
    needle.draw_values(np.random.default_rng(0), 6, values=pool)
