"""Shared helpers for the model tests: packed video-language batches in natural token order."""
import numpy as np

from lwm import ops


def packed_batch(config, batch: int, seq: int, seed: int = 0) -> dict:
  """A natural-order batch: two documents per row with restarting positions, a vision span in the
  first document, padding at the end of the last row, and a partial loss mask."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.vocab_size, (batch, seq + 1)).astype(np.int32)
  vision = np.zeros((batch, seq + 1), bool)
  vision[:, 3:3 + seq // 4] = True
  tokens[vision] = rng.integers(0, config.vision_vocab_size, vision.sum())
  segment_ids = np.ones((batch, seq), np.int32)
  split = seq // 2 + 1
  segment_ids[:, split:] = 2
  segment_ids[-1, seq - 3:] = 0
  positions = np.concatenate([np.arange(split), np.arange(seq - split)])[None].repeat(batch, 0)
  loss_mask = (segment_ids > 0).astype(np.float32)
  loss_mask[:, :2] = 0.0
  loss_mask[:, split - 1] = 0.0  # The last token of a document does not predict the next one.
  return {"tokens": tokens[:, :-1], "vision_mask": vision[:, :-1], "targets": tokens[:, 1:],
          "target_vision_mask": vision[:, 1:], "loss_mask": loss_mask,
          "segment_ids": segment_ids, "positions": positions.astype(np.int32)}


def to_layout(batch: dict, sp: int) -> dict:
  """The loader's job: permute every [batch, seq] array to the zigzag order for `sp` shards."""
  return {k: np.asarray(ops.to_zigzag(v, sp)) for k, v in batch.items()}
