"""The data stage: videos and text -> tokenized examples (TFDS, array_record) -> packed batches.

  examples = load_examples("out/")     # written by scripts/preprocess.py; len(), [i]
  loader = Loader("out/", seq_len=32768, global_batch_size=8, seed=0, mesh=mesh)
  batch = next(loader)     # global jax.Arrays [8, 32768], zigzag, P(('dp','fsdp'), 'sp')

See docs/data.md for the whole flow.
"""
from lwm.data.dataset import load_examples
from lwm.data.loader import Loader

__all__ = ["load_examples", "Loader"]
