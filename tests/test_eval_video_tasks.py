"""The video tasks against their definitions: the needle frames' codes sit at the recorded token
positions (depths exact at frame granularity), the order and count are read back from the prompt's
tokens, and a multiple-choice sample asks every rotation with the right letter each time."""
import numpy as np
import pytest

import eval_testing
from lwm.eval import scoring, video_needle, video_tasks


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("video"))
  tokenizer, encoder, vocab = eval_testing.video_parts(root)
  hay = encoder(video_needle.haystack_frames(40, encoder.config.resolution, seed=1))
  return tokenizer, encoder, vocab, hay


def make(kit, task, depth=0.0, seed=0, **kw):
  tokenizer, encoder, vocab, hay = kit
  return video_tasks.make_video_sample(task, tokenizer, vocab, encoder, hay,
                                       np.random.default_rng(seed), depth, **kw)


def frames_of(kit, variant):
  """The prompt's frames `[frames, codes]`, cut at <eof>/<eov> (independent of the builder)."""
  _, encoder, vocab, _ = kit
  codes = variant.tokens[variant.vision_mask]
  per = encoder.config.codes_per_frame + 1
  assert np.all(codes[per - 1::per] >= vocab.eof)
  return codes.reshape(-1, per)[:, :-1]


def needle_codes(kit, value):
  _, encoder, _, _ = kit
  return encoder(video_needle.needle_frame(value, encoder.config.resolution)[None])[0]


@pytest.mark.parametrize("depth", [0.0, 50.0, 100.0])
def test_retrieve_needle_at_its_depth(kit, depth):
  s = make(kit, "video_retrieve", depth)
  [v] = s.variants
  frames = frames_of(kit, v)
  [value] = v.expected
  where = [i for i, f in enumerate(frames) if np.array_equal(f, needle_codes(kit, value))]
  assert where == s.info["needle_frames"] == [round(depth / 100 * 40)]
  position = s.info["needle_positions"][0]
  assert np.array_equal(v.tokens[position:position + len(frames[0])], needle_codes(kit, value))
  assert s.depth == pytest.approx(100.0 * where[0] / 40)


def test_order_is_read_back_from_the_frames(kit):
  s = make(kit, "video_order", 20.0, needles=3)
  [v] = s.variants
  frames = frames_of(kit, v)
  shown = [value for f in frames for value in v.expected
           if np.array_equal(f, needle_codes(kit, value))]
  assert shown == v.expected and len(set(v.expected)) == 3 and s.ordered
  assert v.answer == " " + ", ".join(v.expected)
  assert s.info["needle_depths"][0] == pytest.approx(20.0) and s.info["needle_depths"] == sorted(
      s.info["needle_depths"])


def test_count_is_read_back_from_the_frames(kit):
  counts = set()
  for seed in range(6):
    s = make(kit, "video_count", 10.0, seed=seed, max_count=4)
    [v] = s.variants
    value = s.info["shown"][0]
    seen = sum(np.array_equal(f, needle_codes(kit, value)) for f in frames_of(kit, v))
    assert [str(seen)] == v.expected and f"number {value} shown" in s.info["question"]
    counts.add(seen)
  assert len(counts) > 1 and counts <= {1, 2, 3, 4}


@pytest.mark.parametrize("task", video_tasks.VIDEO_TASKS)
def test_multiple_choice_asks_every_rotation(kit, task):
  tokenizer = kit[0]
  s = make(kit, task, 50.0, choices=4, needles=3)
  options = s.info["options"]
  right = ", ".join(s.info["shown"]) if task != "video_count" else str(len(s.info["shown"]))
  if task == "video_retrieve":
    right = s.info["shown"][0]
  assert len(s.variants) == 4 and len(set(options)) == 4 and options.count(right) == 1
  letters = set()
  for rotation, v in zip(scoring.rotations(options), s.variants):
    question = tokenizer.decode(v.tokens[~v.vision_mask][3:])  # after BOS, <vision>, </vision>
    assert scoring.choice_text(rotation) in question
    assert v.letter == scoring.LETTERS[rotation.index(right)] and v.answer == f" {v.letter}"
    assert np.array_equal(v.tokens[v.vision_mask], s.variants[0].tokens[s.variants[0].vision_mask])
    letters.add(v.letter)
  assert letters == set("ABCD")  # the right option takes every place once


def test_frame_budget_matches_the_context(kit):
  tokenizer, encoder, vocab, _ = kit
  count = video_tasks.haystack_frame_count(tokenizer, vocab, 600, encoder.config.codes_per_frame,
                                           "video_order", digits=3, choices=4, needles=3,
                                           max_count=4)
  hay = kit[3][:count]
  s = video_tasks.make_video_sample("video_order", tokenizer, vocab, encoder, hay,
                                    np.random.default_rng(0), 0.0, choices=4, needles=3)
  per = encoder.config.codes_per_frame + 1
  assert 600 - 2 * per < s.prompt_tokens <= 600
