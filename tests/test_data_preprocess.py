"""Preprocessing a small corpus built on the spot: every manifest line becomes an example or a
failure, and each example's tokens match what was put in."""
import json
import os

import numpy as np
import pytest

from lwm import vqgan
from lwm.data import load_examples, synthetic, text_tokenizer
from lwm.data.preprocess import PreprocessOptions, preprocess
from lwm.data.video import FrameSampling

MAX_FRAMES = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("corpus"))
  manifest, expected = synthetic.build_corpus(root)
  texts = [e["text"] for e in expected if e.get("ok")]
  tok = text_tokenizer.train_tokenizer(texts, os.path.join(root, "tok.model"), vocab_size=400)
  vqgan.save(os.path.join(root, "vq"), vqgan.create(vqgan.get_config("tiny"), 0))
  options = PreprocessOptions(manifest=manifest, output=os.path.join(root, "out"), tokenizer=tok,
                              vqgan=os.path.join(root, "vq"),
                              sampling=FrameSampling(max_frames=MAX_FRAMES), chunk_size=5)
  summary = preprocess(options, progress=False)
  return {"root": root, "expected": expected, "options": options, "summary": summary,
          "tok": text_tokenizer.load_tokenizer(tok), "examples": load_examples(options.output)}


def _by_line(examples):
  return {e["line"]: e for e in examples}


def test_every_line_is_an_example_or_a_failure(corpus):
  expected, summary = corpus["expected"], corpus["summary"]
  good = [i + 1 for i, e in enumerate(expected) if e["ok"]]
  assert sorted(_by_line(corpus["examples"])) == good
  with open(os.path.join(corpus["options"].output, "failures.jsonl")) as f:
    failures = [json.loads(line) for line in f]
  assert [(f["line"], f["kind"]) for f in failures] == [
      (i + 1, e["kind"]) for i, e in enumerate(expected) if not e["ok"]]
  assert all(f["reason"] for f in failures)
  assert summary["examples"] == len(good) and summary["failures"] == len(failures)
  assert summary["lines"] == len(expected)


def test_failure_paths_name_the_video(corpus):
  with open(os.path.join(corpus["options"].output, "failures.jsonl")) as f:
    failures = {json.loads(line)["line"]: json.loads(line) for line in f}
  for i, e in enumerate(corpus["expected"]):
    if not e["ok"] and e["kind"] in ("video", "short", "missing"):
      assert failures[i + 1]["path"].startswith("clips/"), failures[i + 1]


def test_examples_match_their_input(corpus):
  tok, config = corpus["tok"], vqgan.get_config("tiny")
  per_frame = config.codes_per_frame + 1
  start, end = tok.vision_start, tok.vision_end
  examples = _by_line(corpus["examples"])
  for i, e in enumerate(corpus["expected"]):
    if not e["ok"]:
      continue
    ex = examples[i + 1]
    tokens, vision, loss = ex["tokens"], ex["vision_mask"], ex["loss_mask"]
    text_ids = tok.encode(e["text"], add_special_tokens=False)
    assert tokens[0] == tok.bos_token_id and tokens[-1] == tok.eos_token_id
    if e["video"] is None:
      assert ex["num_frames"] == 0 and not vision.any()
      np.testing.assert_array_equal(tokens[1:-1], text_ids)
      assert not loss[0] and loss[1:].all()
      continue
    frames = min(MAX_FRAMES, e["frames_in_file"])
    assert ex["num_frames"] == frames
    n_vision = frames * per_frame
    assert vision.sum() == n_vision
    assert len(tokens) == 2 + len(start) + n_vision + len(end) + len(text_ids)
    video_first = e["order"] != "text_video"
    v0 = 1 + len(start) + (0 if video_first else len(text_ids))
    np.testing.assert_array_equal(tokens[v0 - len(start):v0], start)
    np.testing.assert_array_equal(tokens[v0 + n_vision:v0 + n_vision + len(end)], end)
    assert vision[v0:v0 + n_vision].all()
    grid = tokens[v0:v0 + n_vision].reshape(frames, per_frame)
    assert (grid[:-1, -1] == config.codebook_size).all()        # <eof>
    assert grid[-1, -1] == config.codebook_size + 1             # <eov>
    assert (grid[:, :-1] < config.codebook_size).all()
    text_at = 1 + (len(start) + n_vision + len(end) if video_first else 0)
    np.testing.assert_array_equal(tokens[text_at:text_at + len(text_ids)], text_ids)
    assert tok.decode(tokens[text_at:text_at + len(text_ids)]) == e["text"]
    trained_text = loss[text_at:text_at + len(text_ids)]
    trained_video = loss[v0:v0 + n_vision]
    assert trained_text.all() == (e["order"] != "text_video") or not text_ids
    assert trained_video.all() == (e["order"] != "video_text")
    assert not trained_video.any() == (e["order"] == "video_text")
    assert not loss[0] and loss[-1]


def test_summary_counts_match_the_dataset(corpus):
  examples, summary = list(corpus["examples"]), corpus["summary"]
  assert summary["frames"] == sum(e["num_frames"] for e in examples)
  assert summary["tokens"] == sum(len(e["tokens"]) for e in examples)
  assert summary["vision_tokens"] == sum(int(e["vision_mask"].sum()) for e in examples)
  with open(os.path.join(corpus["options"].output, "summary.json")) as f:
    assert json.load(f) == summary


def test_same_frames_every_codec(corpus):
  """The same tiny VQGAN codes for a clip must not depend on which worker or run made them."""
  examples = _by_line(corpus["examples"])
  first_a = [i + 1 for i, e in enumerate(corpus["expected"]) if e.get("video") == "clips/a.mp4"]
  a, again = examples[first_a[0]], examples[first_a[1]]
  np.testing.assert_array_equal(a["tokens"][a["vision_mask"]],
                                again["tokens"][again["vision_mask"]])


def test_loader_reads_the_preprocessed_dataset(corpus):
  from lwm import sharding as shd
  from lwm.data.loader import Loader
  from lwm.ops import from_zigzag
  out = corpus["options"].output
  assert os.path.isfile(os.path.join(out, "index.npz"))
  with open(os.path.join(out, "vocab.json")) as f:
    assert json.load(f)["eov"] == vqgan.get_config("tiny").codebook_size + 1
  mesh = shd.make_mesh(1, 2, 1, 4)
  loader = Loader(out, seq_len=512, global_batch_size=2, seed=0, mesh=mesh)
  batch = next(loader)
  seg = np.asarray(from_zigzag(batch["segment_ids"], 4))
  tokens = np.asarray(from_zigzag(batch["tokens"], 4))
  originals = [e["tokens"] for e in corpus["examples"]]

  def is_slice_of_an_example(piece):  # a whole example, or a piece of a split one
    return any(np.array_equal(t[i:i + len(piece)], piece)
               for t in originals for i in range(len(t) - len(piece) + 1))

  for r in range(2):
    for s in np.unique(seg[r][seg[r] > 0]):
      assert is_slice_of_an_example(tokens[r][seg[r] == s])
  assert 0 < loader.stats()["efficiency"] <= 1
