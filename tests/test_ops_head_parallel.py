"""Head-parallel (all-to-all over hp) x ring (sp) attention against float64 NumPy attention, on the
four ways to lay 8 simulated devices out as (hp, sp)."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

import attention_reference as ref
from lwm.ops import from_zigzag, to_zigzag
from lwm.ops.head_parallel import head_parallel_attention, kv_repeats
from test_ops_ring_attention import packed_segments, random_qkv

MESHES = [(1, 8), (2, 4), (4, 2), (8, 1)]


@functools.cache
def _compiled(hp, sp, causal, with_segments):
  mesh = jax.make_mesh((sp, hp), ("sp", "hp"), axis_types=(AxisType.Explicit,) * 2,
                       devices=jax.devices()[:hp * sp])

  def forward_and_grads(q, k, v, segment_ids, d_out):
    attend = lambda q, k, v: head_parallel_attention(
        q, k, v, segment_ids if with_segments else None, mesh=mesh, layout="zigzag",
        causal=causal, block_q=4, block_kv=4, impl="xla")
    out, vjp = jax.vjp(attend, q, k, v)
    return out, vjp(d_out)

  return mesh, jax.jit(forward_and_grads)


def check(q, k, v, segment_ids, *, hp, sp, causal):
  d_out = np.random.default_rng(1).standard_normal(q.shape).astype(np.float32)
  mesh, fn = _compiled(hp, sp, causal, segment_ids is not None)
  seg = np.ones(q.shape[:2], np.int32) if segment_ids is None else segment_ids
  args = [to_zigzag(np.asarray(a), sp) for a in (q, k, v, seg, d_out)]
  with jax.set_mesh(mesh):
    out, grads = fn(*args)
  got = [np.asarray(from_zigzag(np.asarray(r), sp), np.float64) for r in (out, *grads)]
  mask = ref.visibility(q.shape[1], segment_ids, causal, q.shape[0])
  want = [ref.attention(q, k, v, mask)[0], *ref.attention_grads(q, k, v, mask, d_out)]
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("hp, sp", MESHES)
@pytest.mark.parametrize("causal", [True, False])
def test_packed_padded_grouped_query_matches_full_attention(hp, sp, causal):
  # GQA 8:2 (hp=4 and 8 repeat the two kv heads 2x and 4x); documents cross every shard boundary,
  # one is shorter than a tile, the second row ends in padding (segment 0).
  seq = 128
  segment_ids = np.stack([packed_segments(seq, [37, 1, 3, 40, 2, 45]),
                          packed_segments(seq, [5, 64, 20])])
  q, k, v = random_qkv(np.random.default_rng(4), batch=2, seq=seq, heads=8, kv_heads=2)
  check(q, k, v, segment_ids, hp=hp, sp=sp, causal=causal)


@pytest.mark.parametrize("hp, sp", [(2, 4), (8, 1)])
def test_one_document_without_segments(hp, sp):
  q, k, v = random_qkv(np.random.default_rng(5), seq=64, heads=8, kv_heads=8)
  check(q, k, v, None, hp=hp, sp=sp, causal=True)


@pytest.mark.parametrize("heads, kv_heads, hp, repeats", [
    (8, 8, 4, 1), (8, 2, 2, 1), (8, 2, 4, 2), (8, 2, 8, 4), (8, 1, 8, 8), (12, 4, 6, 3),
    (32, 8, 4, 1), (28, 4, 2, 1), (12, 3, 4, 4)])
def test_key_value_heads_are_repeated_only_as_far_as_needed(heads, kv_heads, hp, repeats):
  assert kv_repeats(heads, kv_heads, hp) == repeats


def test_head_counts_that_do_not_split_are_named():
  with pytest.raises(ValueError, match=r"hp=4 must divide the query heads on a device \(6\); "
                                       r"pick hp among \[1, 2, 3, 6\]"):
    kv_repeats(6, 2, 4)
