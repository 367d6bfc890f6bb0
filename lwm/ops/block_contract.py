"""The block contract: what one ring step asks of a per-block attention implementation.

Every implementation computes exact attention of a query shard against one key/value block, with
the mask given by global token positions and segment ids of both sides, and returns what the ring
needs to merge blocks and to run the backward against the global softmax:

  forward(q, k, v, mask, tiling, *, acc=None) -> (o, lse)
    o `[batch, n, heads, head_dim]` float32, normalised over this block's visible keys (0 for a
    row that sees none); lse `[batch, n, heads]` float32 natural-log log-sum-exp of the scaled
    scores (MASK_VALUE for a row that sees no key, so it weighs nothing in `merge`). `acc` is an
    earlier (o, lse) of the same queries: the result is then `merge(acc, block result)`, and an
    implementation may fold the block into it in place (the ring carries one such pair).
  backward(q, k, v, o, lse, do, mask, tiling, *, delta=None, grads=None) -> (dq, dk, dv)
    float32 gradients of this block's share, with probabilities exp(s - lse) from the *global*
    lse and o (per-block statistics would give wrong gradients). `delta = rowsum(do * o)` may be
    passed when the caller has it; `grads` are float32 accumulators (dq, dk, dv) the block's
    gradients are added to (an implementation may add in place).

Shapes: q, do `[batch, n, heads, head_dim]`; k, v `[batch, m, kv_heads, head_dim]` (heads %
kv_heads == 0); `mask` a `BlockMask`. The scores are scaled by head_dim ** -0.5.

The implementations (`lwm.ops.block_xla`, `lwm.ops.block_pallas`) are registered by name in
`lwm.ops.impls`.
"""
import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

MASK_VALUE = -1e30  # finite, so fully masked rows never produce inf - inf


class BlockMask(NamedTuple):
  """Who may attend whom: query i sees key j iff segments match (and are not 0, padding) and, if
  causal, q_positions[i] >= kv_positions[j]. Positions are global token indices."""
  q_positions: jax.Array  # [n] int32
  kv_positions: jax.Array  # [m] int32
  q_segment_ids: jax.Array | None  # [batch, n] int32, or None (one document)
  kv_segment_ids: jax.Array | None  # [batch, m] int32, or None


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Static settings of a block call: tile sizes (tokens) and the causal flag."""
  block_q: int
  block_kv: int
  causal: bool


@dataclasses.dataclass(frozen=True)
class BlockAttention:
  """One implementation of the contract (see the module docstring for the two functions)."""
  name: str
  forward: Callable
  backward: Callable


def empty(q):
  """The merge's identity for queries q: o zeros, lse MASK_VALUE (float32)."""
  return jnp.zeros(q.shape, jnp.float32), jnp.full(q.shape[:3], MASK_VALUE, jnp.float32)


def merge(acc, block):
  """Softmax over the union of two key sets from each one's (o, lse): weights exp(lse - lse_new)."""
  (o_a, lse_a), (o_b, lse_b) = acc, block
  lse = jnp.logaddexp(lse_a, lse_b)
  weight = lambda x: jnp.exp(x - lse)[..., None]
  return o_a * weight(lse_a) + o_b.astype(jnp.float32) * weight(lse_b), lse


def finalize(acc, dtype):
  """Output in `dtype` and the float32 lse; rows that saw no key get lse 0 (their output is 0)."""
  o, lse = acc
  return o.astype(dtype), jnp.where(lse > MASK_VALUE / 2, lse, 0.0)


def delta(o, do):
  """rowsum(do * o) `[batch, n, heads]` in float32: the softmax backward's correction term."""
  return jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
