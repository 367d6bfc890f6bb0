"""All-gather context parallelism (what Llama 3 does), as a baseline for ring attention.

Each device gathers every key/value block over the sequence axis, then attends its own queries to
all of them with the same blockwise kernel as the ring. Keys and values are O(seq) per device and
the gather is exposed, which is what ring attention avoids; with few key/value heads it is simple
and fast. Same arguments and layouts as `ring_attention_sharded`.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from lwm.ops import block_contract, block_xla
from lwm.ops import layout as layout_lib
from lwm.ops.ring_attention import RingConfig

def _positions(cfg, n):
  num_shards, index = lax.axis_size(cfg.axis_name), lax.axis_index(cfg.axis_name)
  q_pos = layout_lib.shard_positions(index, num_shards, n, cfg.layout)
  kv_pos = jnp.concatenate([layout_lib.shard_positions(s, num_shards, n, cfg.layout)
                            for s in range(num_shards)])
  return q_pos, kv_pos


def _forward(cfg, q, k_all, v_all, seg, seg_all):
  mask = block_contract.BlockMask(*_positions(cfg, q.shape[1]), seg, seg_all)
  return block_contract.finalize(block_xla.forward(q, k_all, v_all, mask, cfg.tiling), q.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _local(cfg, q, k_all, v_all, seg, seg_all):
  return _forward(cfg, q, k_all, v_all, seg, seg_all)[0]


def _local_fwd(cfg, q, k_all, v_all, seg, seg_all):
  o, lse = _forward(cfg, q, k_all, v_all, seg, seg_all)
  return o, (q, k_all, v_all, seg, seg_all, o, lse)


def _local_bwd(cfg, res, do):
  q, k_all, v_all, seg, seg_all, o, lse = res
  mask = block_contract.BlockMask(*_positions(cfg, q.shape[1]), seg, seg_all)
  dq, dk, dv = block_xla.backward(q, k_all, v_all, o, lse, do, mask, cfg.tiling)
  return dq.astype(q.dtype), dk.astype(k_all.dtype), dv.astype(v_all.dtype), None, None


_local.defvjp(_local_fwd, _local_bwd)


def all_gather_attention_sharded(q, k, v, segment_ids=None, *, axis_name="sp", causal=True,
                                 layout="zigzag", block_q=512, block_kv=512):
  """Per-shard attention that all-gathers keys/values over `axis_name` (shapes as the ring's)."""
  span = q.shape[1] // 2 if layout == "zigzag" else q.shape[1]
  tiling = block_contract.Tiling(min(block_q, span), min(block_kv, span), causal)
  cfg = RingConfig(axis_name, layout, tiling)
  gather = lambda x: lax.all_gather(x, axis_name, axis=1, tiled=True)
  seg_all = None if segment_ids is None else gather(segment_ids)
  return _local(cfg, q, gather(k), gather(v), segment_ids, seg_all)
