"""The tokenized dataset on disk: built by the TFDS builder in `data/lwm_examples.py`, read back
without TensorFlow as a random-access source.

  examples = load_examples("out/")   # len(examples), examples[i] -> dict of numpy arrays
"""
import importlib.util
import os
import sys

import numpy as np

BUILDER_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "lwm_examples.py")
NAME = "lwm_examples"
VERSION = "1.0.0"
_MODULE = "lwm_data_builders_lwm_examples"


def builder_class():
  """The `LwmExamples` TFDS builder class, loaded once from data/lwm_examples.py by file path."""
  if _MODULE not in sys.modules:  # TFDS registers builder names: define the class only once
    path = os.path.abspath(BUILDER_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"TFDS builder {path} not found; run from a checkout of lwm")
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module
    spec.loader.exec_module(module)
  return sys.modules[_MODULE].LwmExamples


def build(output_dir: str, work_dir: str) -> str:
  """Writes the chunk files of `work_dir` as array_record under output_dir; returns the dataset dir."""
  import tensorflow_datasets as tfds
  builder = builder_class()(data_dir=output_dir, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=work_dir))
  return os.path.join(output_dir, NAME, VERSION)


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
  raise FileNotFoundError(f"no {NAME} dataset in {path!r}: expected {NAME}/{VERSION}/dataset_info.json "
                          "there; run scripts/preprocess.py --output DIR first")


def load_examples(path: str) -> Examples:
  """The examples written by `scripts/preprocess.py --output path` (no TensorFlow needed)."""
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(dataset_dir(path))
  return Examples(builder.as_data_source(split="train"))
