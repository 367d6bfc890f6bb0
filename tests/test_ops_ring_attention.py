"""Ring attention against plain full attention (float64 NumPy), on 1 to 8 simulated devices."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import attention_reference as ref
from lwm.ops import from_zigzag, ring_attention, to_zigzag


def sp_mesh(num_devices):
  return jax.make_mesh((num_devices,), ("sp",), axis_types=(AxisType.Explicit,),
                       devices=jax.devices()[:num_devices])


@functools.cache
def _compiled(num_devices, causal, layout, block, with_segments, impl="xla"):
  mesh = sp_mesh(num_devices)

  def forward_and_grads(q, k, v, segment_ids, d_out):
    attend = lambda q, k, v: ring_attention(q, k, v, segment_ids if with_segments else None,
                                            mesh=mesh, causal=causal, layout=layout,
                                            block_q=block[0], block_kv=block[1], impl=impl)
    out, vjp = jax.vjp(attend, q, k, v)
    return out, vjp(d_out)

  return mesh, jax.jit(forward_and_grads)


def run_ring(q, k, v, segment_ids=None, d_out=None, *, num_devices, causal=True, layout="natural",
             block=(8, 8), impl="xla"):
  """Output and (dq, dk, dv) of ring attention, all in natural token order; block = (q, kv) tile;
  impl = the block implementation (`lwm.ops.block_contract`)."""
  mesh, fn = _compiled(num_devices, causal, layout, block, segment_ids is not None, impl)
  seg = np.ones(q.shape[:2], np.int32) if segment_ids is None else segment_ids
  d_out = np.zeros(q.shape, q.dtype) if d_out is None else d_out
  args = [q, k, v, seg, d_out]
  if layout == "zigzag":
    args = [to_zigzag(np.asarray(a), num_devices) for a in args]
  with jax.set_mesh(mesh):
    out, grads = fn(*args)
  results = [out, *grads]
  if layout == "zigzag":
    results = [from_zigzag(np.asarray(r), num_devices) for r in results]
  return [np.asarray(r, np.float64) for r in results]


def random_qkv(rng, batch=1, seq=64, heads=4, kv_heads=4, head_dim=16, dtype=np.float32):
  shape_q, shape_kv = (batch, seq, heads, head_dim), (batch, seq, kv_heads, head_dim)
  return tuple(rng.standard_normal(s).astype(dtype) for s in (shape_q, shape_kv, shape_kv))


def check_against_reference(q, k, v, segment_ids, *, num_devices, causal, layout="natural",
                            block=(8, 8), impl="xla"):
  rng = np.random.default_rng(1)
  d_out = rng.standard_normal(q.shape).astype(np.float32)
  mask = ref.visibility(q.shape[1], segment_ids, causal, q.shape[0])
  out, dq, dk, dv = run_ring(q, k, v, segment_ids, d_out, num_devices=num_devices, causal=causal,
                             layout=layout, block=block, impl=impl)
  want_out, _ = ref.attention(q, k, v, mask)
  want_grads = ref.attention_grads(q, k, v, mask, d_out)
  forward_error = np.abs(out - want_out).max()
  assert forward_error <= 1e-5
  for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
  return forward_error


@pytest.mark.parametrize("layout", ["natural", "zigzag"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
def test_matches_full_attention(num_devices, causal, layout):
  q, k, v = random_qkv(np.random.default_rng(0))
  check_against_reference(q, k, v, None, num_devices=num_devices, causal=causal, layout=layout)


def test_error_does_not_grow_with_device_count():
  q, k, v = random_qkv(np.random.default_rng(2), seq=128)
  errors = [check_against_reference(q, k, v, None, num_devices=p, causal=True, layout="zigzag")
            for p in (1, 2, 4, 8)]
  assert max(errors) <= 2 * errors[0] + 1e-7, errors


@pytest.mark.parametrize("kv_heads", [1, 4])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_grouped_query_and_head_dims(kv_heads, head_dim):
  q, k, v = random_qkv(np.random.default_rng(3), seq=32, kv_heads=kv_heads, head_dim=head_dim)
  check_against_reference(q, k, v, None, num_devices=4, causal=True, layout="zigzag", block=(4, 4))


@pytest.mark.parametrize("block", [(1, 4), (8, 2), (4, 8)])
def test_unequal_tiles(block):
  # Tiles of different sizes put the causal diagonal at every offset inside a tile.
  q, k, v = random_qkv(np.random.default_rng(8), seq=64, kv_heads=2)
  check_against_reference(q, k, v, None, num_devices=2, causal=True, layout="zigzag", block=block)


def packed_segments(seq, lengths):
  """Segment ids 1, 2, ... for documents of `lengths`, then 0 (padding) to fill `seq`."""
  ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(seq)])
  return ids[:seq].astype(np.int32)


@pytest.mark.parametrize("layout", ["natural", "zigzag"])
@pytest.mark.parametrize("causal", [True, False])
def test_packed_documents(causal, layout):
  # 8 devices x 16 tokens, tiles of 4: documents cross device boundaries (37, 40), are shorter
  # than a tile (1, 3, 2), and the rows end in padding (segment 0).
  seq = 128
  segment_ids = np.stack([packed_segments(seq, [37, 1, 3, 40, 2, 30]),
                          packed_segments(seq, [5, 64, 20])])
  q, k, v = random_qkv(np.random.default_rng(4), batch=2, seq=seq, kv_heads=2)
  check_against_reference(q, k, v, segment_ids, num_devices=8, causal=causal, layout=layout,
                          block=(4, 2))


def test_rows_without_visible_keys_give_zero_and_finite_gradients():
  seq = 64
  segment_ids = packed_segments(seq, [20, 20])[None]  # the last 24 tokens are padding
  q, k, v = random_qkv(np.random.default_rng(5), seq=seq)
  d_out = np.ones(q.shape, np.float32)
  out, dq, dk, dv = run_ring(q, k, v, segment_ids, d_out, num_devices=4, layout="zigzag")
  assert np.all(out[:, 40:] == 0)
  assert all(np.all(np.isfinite(g)) for g in (out, dq, dk, dv))
  assert np.all(dq[:, 40:] == 0) and np.all(dk[:, 40:] == 0) and np.all(dv[:, 40:] == 0)


def test_bfloat16_inputs_accumulate_in_float32():
  q, k, v = random_qkv(np.random.default_rng(6), seq=128, kv_heads=2, head_dim=64)
  bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
  out, *_ = run_ring(*bf16, num_devices=8, layout="zigzag")
  # The reference sees the same bf16-rounded inputs, so only the attention arithmetic differs.
  want, _ = ref.attention(*(np.asarray(x, np.float64) for x in bf16), ref.visibility(128))
  assert np.linalg.norm(out - want) / np.linalg.norm(want) <= 1e-2


def test_zigzag_layout_round_trip_and_order():
  x = np.arange(2 * 16).reshape(2, 16)
  z = np.asarray(to_zigzag(x, 4))
  # 4 devices, 8 chunks of 2 tokens: device i holds chunks i and 7 - i.
  np.testing.assert_array_equal(z[0], [0, 1, 14, 15, 2, 3, 12, 13, 4, 5, 10, 11, 6, 7, 8, 9])
  np.testing.assert_array_equal(np.asarray(from_zigzag(z, 4)), x)
  mesh = sp_mesh(4)
  sharded = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P(None, "sp")))
  np.testing.assert_array_equal(np.asarray(to_zigzag(sharded, 4)), z)


def test_bad_shapes_are_named():
  q, k, v = random_qkv(np.random.default_rng(7), seq=60)
  with pytest.raises(ValueError, match="divisible by 16"):
    ring_attention(q, k, v, mesh=sp_mesh(8), layout="zigzag")
  q, k, v = random_qkv(np.random.default_rng(7), seq=64, heads=4, kv_heads=3)
  with pytest.raises(ValueError, match="multiple of key/value heads 3"):
    ring_attention(q, k, v, mesh=sp_mesh(2))
  q, k, v = random_qkv(np.random.default_rng(7), seq=64)
  with pytest.raises(ValueError, match="block_q=6 must divide"):
    ring_attention(q, k, v, mesh=sp_mesh(2), block_q=6)


def test_all_gather_baseline_matches_reference():
  # The benchmark's all-gather variant must compute the same attention, or its timings mean nothing.
  from lwm.bench import attention_memory as measure
  q, k, v = random_qkv(np.random.default_rng(9), seq=64)
  d_out = np.random.default_rng(10).standard_normal(q.shape).astype(np.float32)
  mesh, grad_fn = measure.attention_grad_fn("all_gather_causal", 4, block=8)
  sharding = NamedSharding(mesh, P(None, "sp", None, None))
  with jax.set_mesh(mesh):
    grads = grad_fn(*(jax.device_put(to_zigzag(x, 4), sharding) for x in (q, k, v, d_out)))
  want = ref.attention_grads(q, k, v, ref.visibility(64), d_out)
  for got, expected in zip(grads, want):
    np.testing.assert_allclose(from_zigzag(np.asarray(got), 4), expected, rtol=1e-4, atol=1e-5)
