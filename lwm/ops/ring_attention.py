"""Ring attention: exact attention over a sequence sharded on a mesh axis.

Each device keeps its queries; every device's key/value block (with its segment ids) travels once
around the ring via `lax.ppermute`, piece by piece: a device computes one piece while it passes on a
piece it has finished, and the next block's piece arriving takes the slot the finished one freed.
So a device holds one block and a few tiles on a ring of any size, and each transfer can hide
behind a piece's compute. The backward pass is a `custom_vjp` that sends the blocks around again
with their dk, dv accumulators: a device adds its share to a piece before passing it on, and the
last pass brings each block's gradients to its owner; dq stays local. Residuals are q, k, v, the
output and the float32 log-sum-exp, so memory is O(seq / devices) per device.

Two layers:
- `ring_attention_sharded`: the per-shard function, called inside `jax.shard_map` (the model does).
- `ring_attention`: global arrays in, global arrays out; wraps the former in `jax.shard_map`.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import NamedSharding, PartitionSpec as P

from lwm.ops import block_contract, impls
from lwm.ops import layout as layout_lib
from lwm.ops.block_contract import BlockMask


# checkpoint_name tags of the custom_vjp's residuals (the output and its float32 log-sum-exp).
ATTENTION_OUT, ATTENTION_LSE = "attention_out", "attention_lse"


@dataclasses.dataclass(frozen=True)
class RingConfig:
  """Static settings of one attention call (hashable: it is a nondiff argument of custom_vjp).

  impl: a resolved block implementation ("xla", "pallas_gpu", "pallas_tpu"); interpret: run a
  Pallas kernel in interpret mode (on a CPU).
  """
  axis_name: str
  layout: str
  tiling: block_contract.Tiling
  impl: str = "xla"
  interpret: bool = False

  @property
  def attention(self) -> block_contract.BlockAttention:
    return impls.get(self.impl, self.interpret)


def _ring_geometry(cfg, n):
  """(ring size, pieces per block, this shard's query positions, kv_positions, shift).

  `kv_positions(g)` gives the global positions of global piece g: piece g % T of the block that
  came from device index - g // T. `shift` sends a pytree to the next device on the ring.
  """
  num_shards = lax.axis_size(cfg.axis_name)
  index = lax.axis_index(cfg.axis_name)
  num_pieces = n // (2 * cfg.tiling.block_kv)
  positions = lambda shard: layout_lib.shard_positions(shard, num_shards, n, cfg.layout)
  kv_positions = lambda g: _piece_positions(positions((index - g // num_pieces) % num_shards),
                                            g % num_pieces, num_pieces)
  pairs = [(j, (j + 1) % num_shards) for j in range(num_shards)]
  shift = lambda tree: jax.tree.map(lambda x: lax.ppermute(x, cfg.axis_name, pairs), tree)
  if num_shards == 1:
    shift = lambda tree: tree
  return num_shards, num_pieces, positions(index), kv_positions, shift


# A block travels around the ring as `num_pieces` pieces, piece j being kv tile j of each half of
# the shard (for zigzag: of each of its two chunks, so that every piece costs every device the same
# causal work). A device computes one piece while it passes on a piece it has finished and takes
# in the next block's piece in the slot that the finished one freed: it holds one block and a few
# tiles, whatever the ring size. Block arrays are kept as [batch, 2, num_pieces, block_kv, ...] so
# that a piece is one index on axis 2; a piece is [batch, 2 * block_kv, ...], like a short shard.

def _to_pieces(x, num_pieces):
  return x.reshape(x.shape[:1] + (2, num_pieces, -1) + x.shape[2:])


def _from_pieces(x):
  return x.reshape(x.shape[:1] + (-1,) + x.shape[4:])


def _take(block, j):
  """Piece j of every array of `block` (a dict)."""
  take = lambda x: lax.dynamic_index_in_dim(x, j, axis=2, keepdims=True)
  return {name: _from_pieces(take(x)) for name, x in block.items()}


def _put(block, piece, j):
  """`block` with slot j of the arrays named in `piece` holding the piece's values."""
  put = lambda x, p: lax.dynamic_update_index_in_dim(x, _to_pieces(p, 1), j, axis=2)
  return {**block, **{name: put(block[name], p) for name, p in piece.items()}}


def _piece_positions(positions, j, num_pieces):
  """Global positions `[2 * block_kv]` of piece j of a shard with token positions `positions`."""
  halves = positions.reshape(2, num_pieces, -1)
  return lax.dynamic_index_in_dim(halves, j, axis=1, keepdims=False).reshape(-1)


def _forward(cfg, q, k, v, segment_ids):
  num_shards, num_pieces, q_pos, kv_positions, shift = _ring_geometry(cfg, q.shape[1])
  block = {"k": k, "v": v} | ({} if segment_ids is None else {"seg": segment_ids})
  block = {name: _to_pieces(x, num_pieces) for name, x in block.items()}

  def step(g, carry, send):  # piece g = piece g % T of block g // T (from device index - g // T)
    block, piece, acc = carry
    if send:  # piece g goes on while it is computed; its slot takes the previous device's piece g
      block = _put(block, shift(piece), g % num_pieces)
    after = _take(block, (g + 1) % num_pieces)  # read after the refill: it may be the arrival
    mask = BlockMask(q_pos, kv_positions(g), segment_ids, piece.get("seg"))
    return block, after, cfg.attention.forward(q, piece["k"], piece["v"], mask, cfg.tiling,
                                               acc=acc)

  carry = (block, _take(block, 0), block_contract.empty(q))
  last_block = (num_shards - 1) * num_pieces  # the next device needs all but our last block
  carry = lax.fori_loop(0, last_block, lambda g, c: step(g, c, True), carry)
  carry = lax.fori_loop(last_block, num_shards * num_pieces, lambda g, c: step(g, c, False), carry)
  return block_contract.finalize(carry[2], q.dtype)


def _backward(cfg, q, k, v, segment_ids, o, lse, do):
  num_shards, num_pieces, q_pos, kv_positions, shift = _ring_geometry(cfg, q.shape[1])
  delta = block_contract.delta(o, do)
  zeros = jnp.zeros(k.shape, jnp.float32)
  # dk, dv travel with their block: a device adds its share to a piece before passing it on.
  block = {"k": k, "v": v, "dk": zeros, "dv": zeros}
  block |= {} if segment_ids is None else {"seg": segment_ids}
  block = {name: _to_pieces(x, num_pieces) for name, x in block.items()}
  sends = {"all": tuple(block), "home": ("dk", "dv")}

  def step(g, carry, phase):
    block, done, piece, dq = carry
    if phase in sends:  # piece g-1, finished, goes on while piece g is computed
      block = _put(block, shift({n: done[n] for n in sends[phase]}), (g - 1) % num_pieces)
      if num_pieces == 1 and phase == "all":  # what arrives is piece g itself: no overlap
        piece = _take(block, 0)
    after = _take(block, (g + 1) % num_pieces)
    mask = BlockMask(q_pos, kv_positions(g), segment_ids, piece.get("seg"))
    dq, dk, dv = cfg.attention.backward(q, piece["k"], piece["v"], o, lse, do, mask, cfg.tiling,
                                        delta=delta, grads=(dq, piece["dk"], piece["dv"]))
    return block, piece | {"dk": dk, "dv": dv}, after, dq

  carry = step(0, (block, None, _take(block, 0), jnp.zeros(q.shape, jnp.float32)), "none")
  last_block = (num_shards - 1) * num_pieces
  carry = lax.fori_loop(1, last_block + 1, lambda g, c: step(g, c, "all"), carry)
  # During the last block the next device needs only the gradients: it owns that block.
  block, done, _, dq = lax.fori_loop(last_block + 1, num_shards * num_pieces,
                                     lambda g, c: step(g, c, "home"), carry)
  block = _put(block, shift({n: done[n] for n in sends["home"]}), num_pieces - 1)
  dk, dv = _from_pieces(block["dk"]), _from_pieces(block["dv"])
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg, q, k, v, segment_ids):
  return _forward(cfg, q, k, v, segment_ids)[0]


def _ring_fwd(cfg, q, k, v, segment_ids):
  o, lse = _forward(cfg, q, k, v, segment_ids)
  # Named so that a remat policy around the caller can keep them (lwm.model.config): otherwise a
  # checkpointed layer re-runs this whole ring forward in its backward to rebuild them.
  o, lse = checkpoint_name(o, ATTENTION_OUT), checkpoint_name(lse, ATTENTION_LSE)
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
  half = q.shape[1] // 2
  for name, block in (("block_q", block_q), ("block_kv", block_kv)):
    if half == 0 or q.shape[1] % 2 or half % block:
      raise ValueError(f"{name}={block} must divide half the per-device sequence ({q.shape[1]} / 2 "
                       f"tokens); pick a divisor or change the sequence length")


def ring_attention_sharded(q, k, v, segment_ids=None, *, axis_name="sp", causal=True,
                           layout="zigzag", block_q=512, block_kv=512, impl="auto"):
  """Per-shard ring attention; call inside `jax.shard_map`, the sequence sharded over `axis_name`.

  Args:
    q: `[batch, seq_shard, heads, head_dim]`, this device's queries.
    k, v: `[batch, seq_shard, kv_heads, head_dim]` (heads % kv_heads == 0: grouped-query attention).
    segment_ids: `[batch, seq_shard]` int32 document ids, 0 for padding (padding is never attended
      and attends nothing: its output is 0), or None for one document.
    axis_name: the mesh axis the sequence is sharded over (the ring).
    causal: mask keys after the query, by global token index.
    layout: "natural" (device i holds tokens [i*n, (i+1)*n)) or "zigzag" (device i holds sequence
      chunks i and 2P-1-i, see `lwm.ops.to_zigzag`), which balances causal work across devices.
    block_q, block_kv: tile sizes; clipped to half the shard and must divide it (keys and values
      travel as pieces of one tile from each half; for zigzag the halves are its two chunks).
    impl: the per-block implementation (`lwm.ops.impls`): "auto" (the platform's fused
      kernel; "xla" on a CPU), "xla", "pallas_gpu" or "pallas_tpu" (interpret mode on a CPU).

  Returns:
    `[batch, seq_shard, heads, head_dim]` in q's dtype.
  """
  half = q.shape[1] // 2
  block_q, block_kv = min(block_q, half) or 1, min(block_kv, half) or 1
  _check_shapes(q, k, v, segment_ids, layout, block_q, block_kv)
  if segment_ids is not None:
    segment_ids = segment_ids.astype(jnp.int32)
  tiling = block_contract.Tiling(block_q, block_kv, causal)
  chosen = impls.choose(impl, tiling, q.dtype, q.shape[3], segments=segment_ids is not None)
  cfg = RingConfig(axis_name, layout, tiling, *chosen)
  return _ring(cfg, q, k, v, segment_ids)


def ring_attention(q, k, v, segment_ids=None, *, mesh, axis_name="sp", causal=True,
                   layout="natural", block_q=512, block_kv=512, impl="auto"):
  """Ring attention on global arrays: `[batch, seq, heads, head_dim]` in, the same order out.

  The sequence is sharded over `mesh` axis `axis_name` (other mesh axes replicate). With
  `layout="zigzag"` the inputs are already in zigzag order (`lwm.ops.to_zigzag`), and so is the
  output.
  """
  num_shards = mesh.shape[axis_name]
  multiple = 2 * num_shards if layout == "zigzag" else num_shards
  if q.shape[1] % multiple:
    raise ValueError(f"sequence length {q.shape[1]} must be divisible by {multiple} "
                     f"({'2 x ' if layout == 'zigzag' else ''}{axis_name}={num_shards})")
  qkv_spec, seq_spec = P(None, axis_name, None, None), P(None, axis_name)
  place = lambda x, spec: jax.reshard(x, NamedSharding(mesh, spec))
  fn = functools.partial(ring_attention_sharded, axis_name=axis_name, causal=causal, layout=layout,
                         block_q=block_q, block_kv=block_kv, impl=impl)
  args, specs = [place(x, qkv_spec) for x in (q, k, v)], [qkv_spec] * 3
  if segment_ids is not None:
    args.append(place(segment_ids, seq_spec))
    specs.append(seq_spec)
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(specs), out_specs=qkv_spec,
                       check_vma=False)(*args)
