"""Head-parallel sequence parallelism (DeepSpeed-Ulysses) around ring attention.

On a mesh whose sequence is sharded over the ring axis `sp` and a head-parallel axis `hp` (sp
major: the hp devices of one ring position hold consecutive pieces of one ring shard), attention
  1. all-to-alls q, k, v over hp from sequence-sharded to head-sharded: each device then holds its
     whole ring shard for 1/hp of the heads,
  2. runs ring attention over sp on that head slice (zigzag, segments, GQA as the ring does),
  3. all-to-alls the output back to sequence-sharded.
The backward pass is the same in reverse: JAX transposes each all-to-all into the opposite one, and
the ring has its own custom_vjp. Segment ids, which every head needs, are all-gathered over hp.

Grouped-query attention with fewer key/value heads than hp: k and v are repeated just enough for hp
to divide them (`kv_repeats`), not to the query head count, and query head h still meets its own
key/value head.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from lwm.ops.ring_attention import ring_attention_sharded


def kv_repeats(heads: int, kv_heads: int, hp: int) -> int:
  """The least r for which hp divides kv_heads * r: each kv head repeated r times, so that every
  device's slice of query heads comes with its own key/value heads (r divides the group
  heads // kv_heads whenever hp divides heads). ValueError when hp does not divide heads."""
  if heads % hp:
    raise ValueError(f"the head-parallel axis hp={hp} must divide the query heads on a device "
                     f"({heads}); pick hp among {divisors(heads)}")
  return hp // math.gcd(kv_heads, hp)


def divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def seq_to_heads(x, axis_name):
  """`[batch, seq_piece, heads, d]` sequence-sharded over `axis_name` -> `[batch, seq_piece * hp,
  heads / hp, d]`: the pieces of the axis' devices joined in device order, a slice of the heads."""
  return lax.all_to_all(x, axis_name, split_axis=2, concat_axis=1, tiled=True)


def heads_to_seq(x, axis_name):
  """The inverse of `seq_to_heads`."""
  return lax.all_to_all(x, axis_name, split_axis=1, concat_axis=2, tiled=True)


def head_parallel_attention_sharded(q, k, v, segment_ids=None, *, head_axis, ring_axis="sp",
                                    **ring_kwargs):
  """Per-shard attention over a sequence sharded over (`ring_axis`, `head_axis`), sp major; call
  inside `jax.shard_map`. `head_axis` None (or of size 1): ring attention alone.

  q: `[batch, piece, heads, d]`, k, v: `[batch, piece, kv_heads, d]`, segment_ids: `[batch, piece]`
  or None, where `piece` is this device's part of the sequence (1 / (sp * hp)). `ring_kwargs` go to
  `ring_attention_sharded` (causal, layout, block sizes, impl): its layout describes the ring
  shards, the joined pieces of one hp group. Returns `[batch, piece, heads, d]`.
  """
  hp = 1 if head_axis is None else lax.axis_size(head_axis)
  if hp == 1:
    return ring_attention_sharded(q, k, v, segment_ids, axis_name=ring_axis, **ring_kwargs)
  r = kv_repeats(q.shape[2], k.shape[2], hp)
  if r > 1:
    k, v = (jnp.repeat(t, r, axis=2) for t in (k, v))
  q, k, v = (seq_to_heads(t, head_axis) for t in (q, k, v))
  if segment_ids is not None:
    segment_ids = lax.all_gather(segment_ids, head_axis, axis=1, tiled=True)
  o = ring_attention_sharded(q, k, v, segment_ids, axis_name=ring_axis, **ring_kwargs)
  return heads_to_seq(o, head_axis)


def head_parallel_attention(q, k, v, segment_ids=None, *, mesh, ring_axis="sp", head_axis="hp",
                            layout="natural", **ring_kwargs):
  """`head_parallel_attention_sharded` on global arrays `[batch, seq, heads, d]`: the sequence
  sharded over (`ring_axis`, `head_axis`) of `mesh`, in `layout` order for the ring (zigzag:
  `lwm.ops.to_zigzag(x, sp)`)."""
  sp, hp = mesh.shape[ring_axis], mesh.shape[head_axis]
  if q.shape[1] % (2 * sp * hp):
    raise ValueError(f"sequence length {q.shape[1]} must be divisible by 2 * {ring_axis} * "
                     f"{head_axis} = {2 * sp * hp}")
  qkv_spec = seq_spec = P(None, (ring_axis, head_axis))
  fn = functools.partial(head_parallel_attention_sharded, head_axis=head_axis,
                         ring_axis=ring_axis, layout=layout, **ring_kwargs)
  args = [jax.reshard(x, NamedSharding(mesh, qkv_spec)) for x in (q, k, v)]
  specs = [qkv_spec] * 3
  if segment_ids is not None:
    args.append(jax.reshard(segment_ids, NamedSharding(mesh, seq_spec)))
    specs.append(seq_spec)
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(specs), out_specs=qkv_spec,
                       check_vma=False)(*args)
