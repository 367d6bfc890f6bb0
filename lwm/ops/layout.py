"""Sequence layouts for context parallelism: natural order and the load-balanced zigzag order.

With the sequence split over P devices, the zigzag layout cuts it into 2P chunks and gives device i
the chunks i and 2P-1-i. Under a causal mask every device then does the same amount of work at every
ring step. The model permutes tokens, positions, segment ids and labels once, before layer 0.
"""
import jax
import jax.numpy as jnp
import numpy as np

LAYOUTS = ("natural", "zigzag")


def zigzag_chunk_order(num_shards: int) -> np.ndarray:
  """Chunk indices in zigzag order: [0, 2P-1, 1, 2P-2, ...] (device i holds positions 2i, 2i+1)."""
  order = []
  for i in range(num_shards):
    order += [i, 2 * num_shards - 1 - i]
  return np.asarray(order)


def _permute_chunks(x, order, axis):
  """Splits `axis` into len(order) equal chunks and puts them in `order` (NumPy or JAX arrays).

  Works on arrays sharded with explicit mesh axes: the gather keeps the input's sharding, so XLA
  moves only the chunks that change device.
  """
  length, num_chunks = x.shape[axis], len(order)
  if length % num_chunks:
    raise ValueError(f"sequence length {length} must be divisible by 2 * num_shards = {num_chunks} "
                     "for the zigzag layout")
  chunked = x.reshape(x.shape[:axis] + (num_chunks, length // num_chunks) + x.shape[axis + 1:])
  if isinstance(x, np.ndarray):
    return np.take(chunked, order, axis=axis).reshape(x.shape)
  index = (slice(None),) * axis + (jnp.asarray(order),)
  sharding = jax.typeof(chunked).sharding
  if any(sharding.spec):
    return chunked.at[index].get(out_sharding=sharding).reshape(x.shape)
  return chunked[index].reshape(x.shape)


def to_zigzag(x, num_shards: int, axis: int = 1):
  """Reorders `x` along `axis` from token order to zigzag order for `num_shards` devices."""
  return _permute_chunks(x, zigzag_chunk_order(num_shards), axis % x.ndim)


def from_zigzag(x, num_shards: int, axis: int = 1):
  """Inverse of `to_zigzag`: reorders `x` along `axis` from zigzag order back to token order."""
  return _permute_chunks(x, np.argsort(zigzag_chunk_order(num_shards)), axis % x.ndim)


def shard_positions(shard_index, num_shards: int, shard_len: int, layout: str):
  """Global token indices `[shard_len]` held by shard `shard_index` (may be traced) in `layout`."""
  local = jnp.arange(shard_len, dtype=jnp.int32)
  if layout == "natural":
    return shard_index * shard_len + local
  if layout == "zigzag":
    half = shard_len // 2
    first = shard_index * half + local
    second = (2 * num_shards - 1 - shard_index) * half + (local - half)
    return jnp.where(local < half, first, second)
  raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
