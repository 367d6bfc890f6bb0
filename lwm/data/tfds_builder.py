"""The TFDS dataset `lwm_examples`: its builder (features, name, version, file layout) and the two
writes that make it, done where the data is.

Preprocessing writes one array_record shard per chunk of manifest lines, on whichever Dask worker
finished the chunk (`write_shard`), then the driver writes the `dataset_info.json` and
`features.json` that TFDS reads (`write_info`) from the shard lengths alone: no process reads the
whole corpus. Shard i of n holds chunk i's examples in manifest order, so the dataset's record
order is the manifest's order. Readers need no TensorFlow: `lwm.data.load_examples(DIR)`.
"""
import functools
import os
import tempfile
import uuid

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

from lwm.data.dataset import NAME, VERSION

SPLIT = "train"
FILE_FORMAT = "array_record"


class LwmExamples(tfds.core.ShardBasedBuilder):
  """Interleaved text and VQGAN-code examples (see lwm/data/interleave.py for the layout).

  Shard-based: shard i is written by the preprocessing task of chunk i (`write_shard`), so
  `download_and_prepare` has nothing to do; run scripts/preprocess.py instead.
  """

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {"1.0.0": "tokens, vision_mask, loss_mask, line, num_frames."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="Tokenized video-text and text examples, one per manifest line that succeeded.",
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "vision_mask": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            "line": tfds.features.Scalar(dtype=np.int64),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
        }),
    )

  def _shard_iterators_per_split(self, dl_manager):
    raise NotImplementedError(
        "lwm_examples is written shard by shard by lwm.data.preprocess (scripts/preprocess.py), "
        "one shard per chunk of manifest lines on the Dask workers; there is nothing to download")


def builder(output_dir: str) -> LwmExamples:
  return LwmExamples(data_dir=output_dir, file_format=FILE_FORMAT)


def _template(output_dir: str) -> tfds.core.ShardedFileTemplate:
  return tfds.core.ShardedFileTemplate(
      data_dir=os.path.join(output_dir, NAME, VERSION),
      template=tfds.core.naming.DEFAULT_FILENAME_TEMPLATE, dataset_name=NAME, split=SPLIT,
      filetype_suffix=FILE_FORMAT)


def shard_path(output_dir: str, index: int, num_shards: int) -> str:
  """Where shard `index` of `num_shards` goes: out/lwm_examples/1.0.0/lwm_examples-train...-of-N."""
  return os.fspath(_template(output_dir).sharded_filepath(shard_index=index, num_shards=num_shards))


@functools.lru_cache(maxsize=1)
def features() -> tfds.features.FeaturesDict:
  """The builder's features (they do not depend on where the dataset is)."""
  nowhere = os.path.join(tempfile.gettempdir(), f"lwm-no-dataset-{uuid.uuid4().hex}")  # not made
  return builder(nowhere).info.features


def write_shard(path: str, examples: list[dict], tmp_dir: str) -> int:
  """Writes examples (dicts of the builder's features) to one array_record shard, atomically (a
  file in `tmp_dir`, on the same filesystem, then a rename: a shard is whole or absent, and what a
  killed writer leaves is outside the dataset); returns the shard's size in bytes."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  os.makedirs(tmp_dir, exist_ok=True)
  # Concurrent writers of one shard (a task re-run while the first run still goes) never share it.
  tmp = os.path.join(tmp_dir, f"{os.path.basename(path)}.{uuid.uuid4().hex}")
  file_adapters.ArrayRecordFileAdapter.write_examples(
      tmp, ((None, features().serialize_example(example)) for example in examples))
  os.replace(tmp, path)
  return os.path.getsize(path)


def write_info(output_dir: str, shard_lengths: list[int], num_bytes: int) -> str:
  """Writes the dataset_info.json and features.json of shards already written; returns the
  versioned dataset directory."""
  dataset = builder(output_dir)
  split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=list(shard_lengths), num_bytes=num_bytes,
                              filename_template=_template(output_dir))
  dataset.info.set_splits(tfds.core.SplitDict([split]))
  dataset.info.write_to_directory(dataset.data_dir)
  return os.fspath(dataset.data_dir)
