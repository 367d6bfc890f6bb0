"""The tokenized dataset on disk (TFDS `lwm_examples`, array_record; written by
`lwm.data.preprocess` with the builder in `lwm/data/tfds_builder.py`), read back without TensorFlow
as a random-access source, and what the directory records beside it.

  examples = load_examples("out/")   # len(examples), examples[i] -> dict of numpy arrays
  read_vocab("out/")                 # vocab.json: the ids (lwm.vocab.Vocab), tokenizer, VQGAN
  read_sampling("out/")              # how frames were sampled ({'fps', 'max_frames', ...}) or None
"""
import json
import os

import numpy as np

NAME = "lwm_examples"
VERSION = "1.0.0"


class Examples:
  """Random access to the examples of a dataset: `len()`, `[i]` -> dict of numpy arrays.

  Each example: tokens int32 [n], vision_mask bool [n], loss_mask bool [n], line (the 1-based
  manifest line), num_frames.
  """

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[int(index)]
    return {"tokens": np.asarray(record["tokens"], np.int32),
            "vision_mask": np.asarray(record["vision_mask"], bool),
            "loss_mask": np.asarray(record["loss_mask"], bool),
            "line": int(record["line"]), "num_frames": int(record["num_frames"])}

  def __iter__(self):
    return (self[i] for i in range(len(self)))


def dataset_dir(path: str) -> str:
  """Accepts the preprocess output dir or the versioned dataset dir inside it."""
  for candidate in (path, os.path.join(path, NAME, VERSION)):
    if os.path.isfile(os.path.join(candidate, "dataset_info.json")):
      return candidate
  raise FileNotFoundError(f"no {NAME} dataset in {path!r}: expected "
                          f"{NAME}/{VERSION}/dataset_info.json "
                          "there; run scripts/preprocess.py --output DIR first")


def load_examples(path: str) -> Examples:
  """The examples written by `scripts/preprocess.py --output path` (no TensorFlow needed)."""
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(dataset_dir(path))
  return Examples(builder.as_data_source(split="train"))


def read_vocab(path: str) -> dict:
  """The vocab.json a preprocess run wrote into `path` (lwm.vocab.Vocab's fields and the paths of
  its tokenizer and VQGAN)."""
  with open(os.path.join(path, "vocab.json")) as f:
    return json.load(f)


def read_sampling(path: str) -> dict | None:
  """The frame sampling ({'fps', 'max_frames', 'min_frames'}) the preprocess run of `path` used,
  or None where it recorded none."""
  options = os.path.join(path, "work", "options.json")
  if not os.path.isfile(options):
    return None
  with open(options) as f:
    return json.load(f).get("sampling")
