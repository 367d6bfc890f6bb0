"""Ring attention: exact attention over a sequence sharded on a mesh axis.

Each device keeps its queries; key/value blocks (with their segment ids) travel one step around the
ring per iteration via `lax.ppermute`, and each transfer is issued before the current block's compute
so that it can hide behind it. The backward pass is a `custom_vjp` that sends the key/value blocks
around again and accumulates their gradients as they travel; dq stays local. Residuals are q, k, v,
the output and the float32 log-sum-exp, so memory is O(seq / devices) per device.

Two layers:
- `ring_attention_sharded`: the per-shard function, called inside `jax.shard_map` (the model does).
- `ring_attention`: global arrays in, global arrays out; wraps the former in `jax.shard_map`.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from lwm.ops import blockwise
from lwm.ops import layout as layout_lib


@dataclasses.dataclass(frozen=True)
class RingConfig:
  """Static settings of one attention call (hashable: it is a nondiff argument of custom_vjp)."""
  axis_name: str
  layout: str
  tiling: blockwise.Tiling


def _ring_geometry(cfg, n):
  num_shards = lax.axis_size(cfg.axis_name)
  index = lax.axis_index(cfg.axis_name)
  positions = lambda shard: layout_lib.shard_positions(shard, num_shards, n, cfg.layout)
  shift = lambda tree: jax.tree.map(
      lambda x: lax.ppermute(x, cfg.axis_name, [(j, (j + 1) % num_shards) for j in range(num_shards)]),
      tree)
  return num_shards, index, positions, shift


def _precision(dtype):
  return lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _forward(cfg, q, k, v, segment_ids):
  num_shards, index, positions, shift = _ring_geometry(cfg, q.shape[1])
  q_pos, precision = positions(index), _precision(q.dtype)

  def step(carry, t, send):
    kv, state = carry
    incoming = shift(kv) if send else kv  # issued before the compute that it can hide behind
    k_blk, v_blk, seg_blk = kv
    state = blockwise.block_forward(q, k_blk, v_blk, q_pos, positions((index - t) % num_shards),
                                    segment_ids, seg_blk, state, cfg.tiling, precision)
    return incoming, state

  carry = ((k, v, segment_ids), blockwise.init_state(q))
  if num_shards > 1:
    carry, _ = lax.scan(lambda c, t: (step(c, t, True), None), carry, jnp.arange(num_shards - 1))
  _, state = step(carry, num_shards - 1, False)
  return blockwise.finalize(state, q.dtype)


def _backward(cfg, q, k, v, segment_ids, o, lse, do):
  num_shards, index, positions, shift = _ring_geometry(cfg, q.shape[1])
  q_pos, precision = positions(index), _precision(q.dtype)
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)

  def step(carry, t, send, receive):
    kv, dq, dk, dv = carry
    incoming = shift(kv) if send else kv
    if receive:  # the accumulated dk, dv of this step's block, from the device that had it last step
      dk, dv = shift((dk, dv))
    k_blk, v_blk, seg_blk = kv
    dq, dk_blk, dv_blk = blockwise.block_backward(
        q, k_blk, v_blk, do, lse, delta, q_pos, positions((index - t) % num_shards), segment_ids,
        seg_blk, dq, cfg.tiling, precision)
    return incoming, dq, dk + dk_blk, dv + dv_blk

  zeros_kv = jnp.zeros(k.shape, jnp.float32)
  carry = step(((k, v, segment_ids), jnp.zeros(q.shape, jnp.float32), zeros_kv, zeros_kv), 0,
               num_shards > 1, False)
  if num_shards > 1:
    # Every later step has the same body, so memory does not depend on the ring size; the key/value
    # block sent during the last step is not used (one extra transfer, hidden behind compute).
    carry, _ = lax.scan(lambda c, t: (step(c, t, True, True), None), carry,
                        jnp.arange(1, num_shards))
  _, dq, dk, dv = carry
  if num_shards > 1:
    dk, dv = shift((dk, dv))  # home: the device that owns the block
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg, q, k, v, segment_ids):
  return _forward(cfg, q, k, v, segment_ids)[0]


def _ring_fwd(cfg, q, k, v, segment_ids):
  o, lse = _forward(cfg, q, k, v, segment_ids)
  return o, (q, k, v, segment_ids, o, lse)


def _ring_bwd(cfg, residuals, do):
  q, k, v, segment_ids, o, lse = residuals
  dq, dk, dv = _backward(cfg, q, k, v, segment_ids, o, lse, do)
  return dq, dk, dv, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def _check_shapes(q, k, v, segment_ids, layout, block_q, block_kv):
  if layout not in layout_lib.LAYOUTS:
    raise ValueError(f"layout must be one of {layout_lib.LAYOUTS}, got {layout!r}")
  if q.ndim != 4 or k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
    raise ValueError(f"expected q [batch, seq, heads, head_dim] and k, v [batch, seq, kv_heads, "
                     f"head_dim] alike; got q {q.shape}, k {k.shape}, v {v.shape}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads {q.shape[2]} must be a multiple of key/value heads {k.shape[2]}")
  if segment_ids is not None and segment_ids.shape != q.shape[:2]:
    raise ValueError(f"segment_ids must be [batch, seq] = {q.shape[:2]}, got {segment_ids.shape}")
  span = q.shape[1] // 2 if layout == "zigzag" else q.shape[1]
  for name, block in (("block_q", block_q), ("block_kv", block_kv)):
    if span == 0 or span % block:
      what = "half the per-device sequence" if layout == "zigzag" else "the per-device sequence"
      raise ValueError(f"{name}={block} must divide {what} ({span} tokens); pick a divisor or "
                       f"change the sequence length")


def ring_attention_sharded(q, k, v, segment_ids=None, *, axis_name="sp", causal=True,
                           layout="zigzag", block_q=512, block_kv=512):
  """Per-shard ring attention; call inside `jax.shard_map` with the sequence sharded over `axis_name`.

  Args:
    q: `[batch, seq_shard, heads, head_dim]`, this device's queries.
    k, v: `[batch, seq_shard, kv_heads, head_dim]` (heads % kv_heads == 0: grouped-query attention).
    segment_ids: `[batch, seq_shard]` int32 document ids, 0 for padding (padding is never attended
      and attends nothing: its output is 0), or None for one document.
    axis_name: the mesh axis the sequence is sharded over (the ring).
    causal: mask keys after the query, by global token index.
    layout: "natural" (device i holds tokens [i*n, (i+1)*n)) or "zigzag" (device i holds sequence
      chunks i and 2P-1-i, see `lwm.ops.to_zigzag`), which balances causal work across devices.
    block_q, block_kv: tile sizes; clipped to the shard (half shard for zigzag) and must divide it.

  Returns:
    `[batch, seq_shard, heads, head_dim]` in q's dtype.
  """
  span = q.shape[1] // 2 if layout == "zigzag" else q.shape[1]
  block_q, block_kv = min(block_q, span) or 1, min(block_kv, span) or 1
  _check_shapes(q, k, v, segment_ids, layout, block_q, block_kv)
  if segment_ids is not None:
    segment_ids = segment_ids.astype(jnp.int32)
  cfg = RingConfig(axis_name, layout, blockwise.Tiling(block_q, block_kv, causal))
  return _ring(cfg, q, k, v, segment_ids)


def ring_attention(q, k, v, segment_ids=None, *, mesh, axis_name="sp", causal=True,
                   layout="natural", block_q=512, block_kv=512):
  """Ring attention on global arrays: `[batch, seq, heads, head_dim]` in, the same order out.

  The sequence is sharded over `mesh` axis `axis_name` (other mesh axes replicate). With
  `layout="zigzag"` the inputs are already in zigzag order (`lwm.ops.to_zigzag`) and so is the output.
  """
  num_shards = mesh.shape[axis_name]
  multiple = 2 * num_shards if layout == "zigzag" else num_shards
  if q.shape[1] % multiple:
    raise ValueError(f"sequence length {q.shape[1]} must be divisible by {multiple} "
                     f"({'2 x ' if layout == 'zigzag' else ''}{axis_name}={num_shards})")
  qkv_spec, seq_spec = P(None, axis_name, None, None), P(None, axis_name)
  place = lambda x, spec: jax.reshard(x, NamedSharding(mesh, spec))
  fn = functools.partial(ring_attention_sharded, axis_name=axis_name, causal=causal, layout=layout,
                         block_q=block_q, block_kv=block_kv)
  args, specs = [place(x, qkv_spec) for x in (q, k, v)], [qkv_spec] * 3
  if segment_ids is not None:
    args.append(place(segment_ids, seq_spec))
    specs.append(seq_spec)
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(specs), out_specs=qkv_spec,
                       check_vma=False)(*args)
