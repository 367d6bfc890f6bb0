"""TFDS builder `lwm_examples`: tokenized video-text examples, written once as array_record.

Loaded by file path (`lwm.data.dataset.builder_class`), not installed as a package. Its manual_dir
is the `work/` folder that `lwm.data.preprocess` fills with finished chunks; this builder only moves
those examples into TFDS files, so no TensorFlow is needed to write or read them.
"""
import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from lwm.data import chunks


class LwmExamples(tfds.core.GeneratorBasedBuilder):
  """Interleaved text and VQGAN-code examples (see lwm/data/interleave.py for the layout)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "tokens, vision_mask, loss_mask, line, num_frames."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Run scripts/preprocess.py; it fills manual_dir with chunk files."

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "vision_mask": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            "line": tfds.features.Scalar(dtype=np.int64),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
        }),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(os.fspath(dl_manager.manual_dir))}

  def _generate_examples(self, work_dir):
    for path in sorted(glob.glob(os.path.join(work_dir, chunks.PATTERN))):
      for example in chunks.read_chunk(path)["examples"]:
        yield int(example["line"]), example
