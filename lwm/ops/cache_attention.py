"""Attention of a chunk of new tokens to a key/value cache sharded over the sequence axis.

The cache is in natural order with room for `capacity` tokens per row; row b holds `lengths[b]`
tokens in slots 0..lengths[b]-1 and slot s is the token at position s. A chunk's keys and values
are written at slots lengths[b] + j, then each of its queries attends to every slot at or before
its own position (causal within the chunk, all of the cache before it; slots past a row's tokens
are never seen). Sharded, each device holds a contiguous piece of the cache and the chunk's
queries; its partial softmax (o, lse) is merged with the other devices' by a log-sum-exp psum.
A device reads its piece in tiles with an online softmax, so a chunk's memory is set by the chunk
and one tile, never by the chunk times the cache.

  o, lse = attend_cache(q, k_cache, v_cache, q_positions, limits)          # one device
  o, k_cache, v_cache = sharded_write_and_attend(q, k, v, k_cache, v_cache, lengths, counts,
                                                 mesh=mesh, seq_axes=("sp",), head_axes=("tp",))
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

MASK_VALUE = -1e30  # finite: a row that sees no key weighs nothing in the merge
SCORES_PER_TILE = 1 << 24  # float32 scores held at once (64 MiB): sets the cache tile's length
MIN_TILE = 128  # ...but never fewer slots than this per tile (by default)


def write_chunk(cache, new, starts, counts, offset=0):
  """`cache` `[batch, slots, ...]` with row b's first counts[b] entries of `new` `[batch, chunk,
  ...]` at global slots starts[b] + j; `offset` is the global slot of local slot 0 (a shard's).
  Entries outside this piece of the cache are dropped.

  Each row rewrites one window of min(chunk, slots) slots (a dynamic-update-slice, in place in the
  cache's dtype), which holds every entry that lands in this piece; the rest of it keeps its values.
  """
  slots, chunk = cache.shape[1], new.shape[1]
  width = min(chunk, slots)
  new = new.astype(cache.dtype)
  pad = [(0, 0)] * (new.ndim - 2)
  for b in range(cache.shape[0]):
    here = starts[b] - offset  # the local slot of entry 0 (maybe outside this piece)
    window = jnp.clip(here, 0, slots - width)
    old = lax.dynamic_slice_in_dim(cache[b], window, width, 0)
    # Entry j sits at local slot here + j: the window's slot t holds entry t + window - here (a
    # clamped slice start only happens where no entry is kept).
    shifted = lax.dynamic_slice_in_dim(jnp.pad(new[b], [(width, width)] + pad),
                                       window - here + width, width, 0)
    j = jnp.arange(width) + window - here
    keep = ((j >= 0) & (j < counts[b])).reshape((width,) + (1,) * (new.ndim - 2))
    corner = (b, window) + (0,) * (cache.ndim - 2)
    cache = lax.dynamic_update_slice(cache, jnp.where(keep, shifted, old)[None], corner)
  return cache


def attend_cache(q, k_cache, v_cache, q_positions, limits, offset=0, block_kv=None):
  """Partial attention of queries to one piece of the cache, as (o, lse) in float32.

  q: `[batch, n, heads, hd]`; k_cache, v_cache: `[batch, slots, kv_heads, hd]`, local slot s
  being global slot offset + s; q_positions: `[batch, n]` int32, a query sees slots <= its
  position; limits: `[batch]` int32, slots >= limit hold no token. Returns o `[batch, n, heads,
  hd]` normalised over the visible slots (0 where none) and lse `[batch, n, heads]` (MASK_VALUE
  where none).

  The slots are read in tiles of `block_kv` (default: as many as keep `[batch, heads, n, tile]`
  within SCORES_PER_TILE, at least MIN_TILE) with an online softmax (running max and denominator
  in float32), so the `[n, slots]` score matrix never exists. Tiles past every row's limit and
  every query's position are not read at all.
  """
  batch, n, heads, hd = q.shape
  slots, kv_heads = k_cache.shape[1], k_cache.shape[2]
  group = heads // kv_heads
  if block_kv is None:  # at least MIN_TILE slots: a huge chunk is not read a few slots at a time
    block_kv = max(MIN_TILE, SCORES_PER_TILE // (batch * n * heads))
  tile = max(1, min(block_kv, slots))
  qg = q.reshape(batch, n, kv_heads, group, hd)
  # As the one-shot kernels (lwm.ops.block_xla): products in the inputs' dtype, sums in float32.
  precision = lax.Precision.HIGHEST if k_cache.dtype == jnp.float32 else None
  # Local slots [0, needed) may hold a token some query sees; the rest is never read.
  last = jnp.minimum(jnp.max(limits), jnp.max(q_positions) + 1)
  needed = jnp.clip(last - offset, 0, slots)
  tiles = (needed + tile - 1) // tile

  def one_tile(i, carry):
    m, total, acc = carry
    start = jnp.minimum(i * tile, slots - tile)  # a ragged last tile overlaps the one before
    k, v = (_slice_bits(c, start, tile) for c in (k_cache, v_cache))
    local = start + jnp.arange(tile)
    slot = offset + local
    visible = ((local >= i * tile)[None, None] &  # overlap: already counted by the tile before
               (slot[None, None] <= q_positions[:, :, None]) & (slot < limits[:, None])[:, None])
    visible = visible[:, None, None]  # [batch, 1, 1, n, tile]
    s = jnp.einsum("bnkgd,btkd->bkgnt", qg.astype(k.dtype), k, precision=precision,
                   preferred_element_type=jnp.float32) * hd ** -0.5
    s = jnp.where(visible, s, MASK_VALUE)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.where(visible, jnp.exp(s - m_new[..., None]), 0.0)
    rescale = jnp.exp(m - m_new)  # 0 once a real score replaces MASK_VALUE; 1 while none seen
    total = total * rescale + p.sum(-1)
    acc = acc * rescale[..., None] + jnp.einsum("bkgnt,btkd->bkgnd", p.astype(v.dtype), v,
                                                precision=precision,
                                                preferred_element_type=jnp.float32)
    return m_new, total, acc

  m = jnp.full((batch, kv_heads, group, n), MASK_VALUE, jnp.float32)
  init = (m, jnp.zeros_like(m), jnp.zeros((batch, kv_heads, group, n, hd), jnp.float32))
  m, total, acc = lax.fori_loop(0, tiles, one_tile, init)
  seen = total > 0
  safe = jnp.where(seen, total, 1.0)
  o = (acc / safe[..., None]).transpose(0, 3, 1, 2, 4).reshape(batch, n, heads, hd)
  lse = jnp.where(seen, m + jnp.log(safe), MASK_VALUE)
  return o, lse.transpose(0, 3, 1, 2).reshape(batch, n, heads)


def _slice_bits(cache, start, size):
  """cache[:, start:start + size] sliced as raw bits: the CPU compiler would otherwise convert a
  whole bfloat16 cache piece to float32 to slice it (memory a GPU or TPU never allocates; the
  16-bit view costs it one copy of the piece, half of that)."""
  if jnp.dtype(cache.dtype).itemsize != 2:
    return lax.dynamic_slice_in_dim(cache, start, size, 1)
  bits = lax.dynamic_slice_in_dim(lax.bitcast_convert_type(cache, jnp.uint16), start, size, 1)
  return lax.bitcast_convert_type(bits, cache.dtype)


def merge_over(o, lse, axes):
  """The softmax over the union of every device's keys along mesh `axes`, from each device's
  (o, lse): weights exp(lse - max lse), summed by psum."""
  if not axes:
    return o, lse
  top = lax.pmax(lse, axes)
  weight = jnp.where(lse > MASK_VALUE / 2, jnp.exp(lse - top), 0.0)
  total = lax.psum(weight, axes)
  o = lax.psum(o * weight[..., None], axes) / jnp.where(total > 0, total, 1.0)[..., None]
  return o, jnp.where(total > 0, top + jnp.log(jnp.where(total > 0, total, 1.0)), MASK_VALUE)


def write_and_attend(q, k, v, k_cache, v_cache, lengths, counts, *, seq_axes=(), block_kv=None):
  """Per-device body: writes the chunk's k, v `[batch, chunk, kv_heads, hd]` at slots lengths[b]..
  (counts[b] of them), then attends the chunk's queries to the whole cache along `seq_axes`
  (`attend_cache` with `block_kv`). Returns (o `[batch, chunk, heads, hd]` in q's dtype, k_cache,
  v_cache)."""
  slots = k_cache.shape[1]
  offset = lax.axis_index(seq_axes) * slots if seq_axes else 0
  k_cache = write_chunk(k_cache, k, lengths, counts, offset)
  v_cache = write_chunk(v_cache, v, lengths, counts, offset)
  positions = lengths[:, None] + jnp.arange(q.shape[1])[None]
  o, lse = attend_cache(q, k_cache, v_cache, positions, lengths + counts, offset, block_kv)
  o, _ = merge_over(o, lse, seq_axes)
  return o.astype(q.dtype), k_cache, v_cache


def sharded_write_and_attend(q, k, v, k_cache, v_cache, lengths, counts, *, mesh, seq_axes=(),
                             head_axes=(), batch_axes=(), block_kv=None):
  """`write_and_attend` on global arrays under `jax.shard_map`: the cache's slots sharded over
  mesh `seq_axes`, heads (of q, k, v and the cache alike) over `head_axes`, rows over
  `batch_axes`; the chunk is held whole along the sequence by every device; `block_kv`: cache
  slots per tile (`attend_cache`)."""
  seq_axes, head_axes, batch_axes = (tuple(a) for a in (seq_axes, head_axes, batch_axes))
  name = lambda axes: axes if len(axes) > 1 else (axes[0] if axes else None)
  b, s, h = name(batch_axes), name(seq_axes), name(head_axes)
  chunk_spec, cache_spec, row_spec = P(b, None, h, None), P(b, s, h, None), P(b)
  fn = functools.partial(write_and_attend, seq_axes=seq_axes, block_kv=block_kv)
  return jax.shard_map(fn, mesh=mesh,
                       in_specs=(chunk_spec,) * 3 + (cache_spec,) * 2 + (row_spec,) * 2,
                       out_specs=(chunk_spec, cache_spec, cache_spec), check_vma=False)(
                           q, k, v, k_cache, v_cache, lengths, counts)
