"""The data stage: videos and text -> tokenized examples (TFDS, array_record) -> packed batches.

  examples = load_examples("out/")     # written by scripts/preprocess.py
"""
from lwm.data.dataset import load_examples

__all__ = ["load_examples"]
