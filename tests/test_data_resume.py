"""Resuming: preprocessing stopped midway and rerun (with worker processes) writes the same dataset
as one uninterrupted run; a loader stopped while its prefetch thread ran ahead goes on where the
consumer stopped."""
import dataclasses
import os
import time

import numpy as np
import pytest

from lwm import vqgan
from lwm.data import load_examples, synthetic, text_tokenizer
from lwm.data.loader import Loader, Prefetcher
from lwm.data.preprocess import PreprocessOptions, preprocess
from lwm.data.video import FrameSampling


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("resume"))
  manifest, expected = synthetic.build_corpus(root, seed=1)
  tok = text_tokenizer.train_tokenizer([e["text"] for e in expected if e["ok"]],
                                       os.path.join(root, "tok.model"), vocab_size=400)
  vqgan.save(os.path.join(root, "vq"), vqgan.create(vqgan.get_config("tiny"), 1))
  return PreprocessOptions(manifest=manifest, output="", tokenizer=tok,
                           vqgan=os.path.join(root, "vq"),
                           sampling=FrameSampling(fps=4, max_frames=3), chunk_size=3), root


def _records(path):
  return sorted((e["line"], e["tokens"].tolist(), e["vision_mask"].tolist(),
                 e["loss_mask"].tolist(), e["num_frames"]) for e in load_examples(path))


def _read(path, name):
  with open(os.path.join(path, name)) as f:
    return f.read()


def test_interrupted_then_resumed_equals_uninterrupted(setup):
  base, root = setup
  whole = dataclasses.replace(base, output=os.path.join(root, "whole"))
  summary = preprocess(whole, workers=0, progress=False)
  cut = dataclasses.replace(base, output=os.path.join(root, "cut"))
  assert preprocess(cut, workers=0, max_chunks=2, progress=False) is None  # "killed" after 2 chunks
  work = os.path.join(cut.output, "work")
  assert len([n for n in os.listdir(work) if n.startswith("chunk-")]) == 2
  for name in ("chunk-00000004.json.tmp-dead", "tmp/lwm_examples-train.array_record-00004.x"):
    with open(os.path.join(work, name), "wb") as f:
      f.write(b"half-written")  # what a kill during a write leaves behind: never read
  resumed = preprocess(cut, workers=2, progress=False)
  assert resumed.pop("run") == {"task_retries": 0, "decode_retries": 0, "chunks_run": 6,
                                "chunks_resumed": 2}
  assert summary.pop("run")["chunks_run"] == 8
  assert resumed == summary
  assert _records(cut.output) == _records(whole.output)
  assert _read(cut.output, "failures.jsonl") == _read(whole.output, "failures.jsonl")
  assert summary["examples"] + summary["failures"] == summary["lines"]


def test_rerun_with_other_options_is_refused(setup):
  base, root = setup
  first = dataclasses.replace(base, output=os.path.join(root, "other"))
  preprocess(first, max_chunks=1, progress=False)
  changed = dataclasses.replace(first, sampling=FrameSampling(max_frames=2))
  with pytest.raises(ValueError, match="started with options"):
    preprocess(changed, progress=False)


# ---------------------------------------------------------------- The loader's prefetch thread

def _doc(tokens):
  n = len(tokens)
  return {"tokens": tokens, "vision_mask": np.zeros(n, bool), "loss_mask": np.ones(n, bool),
          "num_frames": 0}


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_saves_the_position_of_the_batch_consumed(depth):
  """Stopped after 5 batches while up to `depth` more were packed, a loader restored from the
  prefetcher's state goes on with batch 6 of a loader that was never interrupted."""
  rng = np.random.default_rng(0)
  docs = [_doc(rng.integers(1, 300, int(rng.integers(20, 200))).astype(np.int32))
          for _ in range(40)]
  straight = Loader(None, seq_len=128, global_batch_size=2, seed=5, examples=docs)
  want = [next(straight) for _ in range(9)]

  batches = Prefetcher(Loader(None, seq_len=128, global_batch_size=2, seed=5, examples=docs), depth)
  got = [next(batches) for _ in range(5)]
  deadline = time.monotonic() + 60  # let the thread fill its queue: packed, never consumed
  while depth and batches._queue.qsize() < depth and time.monotonic() < deadline:
    time.sleep(0.01)
  assert not depth or batches._queue.full(), "the prefetch thread did not fill its queue in 60 s"
  state = batches.get_state()
  batches.close()
  resumed = Loader(None, seq_len=128, global_batch_size=2, seed=5, examples=docs)
  resumed.set_state(state)
  got += [next(resumed) for _ in range(4)]
  for a, b in zip(got, want, strict=True):
    for key in b:
      np.testing.assert_array_equal(a[key], b[key])


def test_prefetch_hands_on_the_loaders_error():
  class Broken:
    def get_state(self):
      return {}

    def __next__(self):
      raise OSError("disk gone")

  batches = Prefetcher(Broken(), depth=2)
  with pytest.raises(OSError, match="disk gone"):
    next(batches)
  with pytest.raises(OSError, match="disk gone"):  # again, not a wait on a thread that has ended
    next(batches)
  batches.close()
