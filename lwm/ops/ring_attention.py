"""Ring attention (placeholder with the final signatures; the real ring lands next)."""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from lwm.ops import layout as layout_lib


def ring_attention_sharded(q, k, v, segment_ids=None, *, axis_name="sp", causal=True,
                           layout="zigzag", block_q=512, block_kv=512):
  """Per-shard attention; call inside `jax.shard_map` with the sequence sharded over `axis_name`.

  q: [batch, seq_shard, heads, head_dim]; k, v: [batch, seq_shard, kv_heads, head_dim];
  segment_ids: [batch, seq_shard] int32 (0 marks padding) or None. Returns [batch, seq_shard, heads, head_dim].
  """
  del block_q, block_kv
  num_shards = jax.lax.axis_size(axis_name)
  index = jax.lax.axis_index(axis_name)
  n = q.shape[1]
  q_pos = layout_lib.shard_positions(index, num_shards, n, layout)
  kg = jax.lax.all_gather(k, axis_name, axis=1, tiled=True)
  vg = jax.lax.all_gather(v, axis_name, axis=1, tiled=True)
  kv_pos = jax.lax.all_gather(q_pos, axis_name, tiled=True)
  if segment_ids is None:
    segment_ids = jnp.ones(q.shape[:2], jnp.int32)
  kv_seg = jax.lax.all_gather(segment_ids, axis_name, axis=1, tiled=True)
  groups = q.shape[2] // k.shape[2]
  kg, vg = jnp.repeat(kg, groups, axis=2), jnp.repeat(vg, groups, axis=2)
  s = jnp.einsum("bqhd,bkhd->bhqk", q, kg, preferred_element_type=jnp.float32) / jnp.sqrt(q.shape[-1])
  mask = (segment_ids[:, None, :, None] == kv_seg[:, None, None, :]) & (segment_ids[:, None, :, None] != 0)
  if causal:
    mask &= q_pos[:, None] >= kv_pos[None, :]
  s = jnp.where(mask, s, -1e30)
  p = jnp.where(mask, jnp.exp(s - s.max(-1, keepdims=True)), 0.0)
  p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30)
  return jnp.einsum("bhqk,bkhd->bqhd", p, vg.astype(jnp.float32)).astype(q.dtype)


def ring_attention(q, k, v, segment_ids=None, *, mesh, axis_name="sp", causal=True,
                   layout="natural", block_q=512, block_kv=512):
  """Global-array ring attention: `[batch, seq, heads, head_dim]` in, same shape and order out."""
  seq_spec = P(None, axis_name)
  qkv_spec = P(None, axis_name, None, None)
  fn = functools.partial(ring_attention_sharded, axis_name=axis_name, causal=causal,
                         layout=layout, block_q=block_q, block_kv=block_kv)
  place = lambda x, spec: jax.reshard(x, NamedSharding(mesh, spec))
  q, k, v = (place(x, qkv_spec) for x in (q, k, v))
  if segment_ids is None:
    return jax.shard_map(lambda a, b, c: fn(a, b, c), mesh=mesh, in_specs=(qkv_spec,) * 3,
                         out_specs=qkv_spec, check_vma=False)(q, k, v)
  segment_ids = place(segment_ids, seq_spec)
  return jax.shard_map(fn, mesh=mesh, in_specs=(qkv_spec,) * 3 + (seq_spec,),
                       out_specs=qkv_spec, check_vma=False)(q, k, v, segment_ids)
