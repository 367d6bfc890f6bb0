"""TFDS builder `lwm_examples`, where TFDS tooling looks for dataset definitions.

The builder lives in the installed package (`lwm/data/tfds_builder.py`) and nothing imports this
file at run time; it is here so that `data/` lists every dataset lwm defines next to its data card
(data/README.md). The dataset is written shard by shard by scripts/preprocess.py.
"""
from lwm.data.tfds_builder import LwmExamples

__all__ = ["LwmExamples"]
