"""Chunk-to-cache attention (lwm.ops.cache_attention) against a float64 NumPy reference."""
import numpy as np
import pytest
from jax.sharding import Mesh

import jax
import jax.numpy as jnp
from lwm.ops import cache_attention


def reference(q, k, v, k_cache, v_cache, lengths, counts):
  """Write the chunk into a float64 copy of the cache, then plain causal softmax per row."""
  k_cache, v_cache = k_cache.astype(np.float64).copy(), v_cache.astype(np.float64).copy()
  batch, chunk, heads, hd = q.shape
  group = heads // k.shape[2]
  out = np.zeros(q.shape, np.float64)
  for b in range(batch):
    n = counts[b]
    k_cache[b, lengths[b]:lengths[b] + n] = k[b, :n]
    v_cache[b, lengths[b]:lengths[b] + n] = v[b, :n]
    for j in range(n):
      keys = slice(0, lengths[b] + j + 1)
      for h in range(heads):
        s = k_cache[b, keys, h // group] @ q[b, j, h].astype(np.float64) / np.sqrt(hd)
        p = np.exp(s - s.max())
        out[b, j, h] = p @ v_cache[b, keys, h // group] / p.sum()
  return out, k_cache, v_cache


def case(seed=0, batch=3, chunk=5, slots=32, heads=4, kv_heads=2, hd=8):
  rng = np.random.default_rng(seed)
  f = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  lengths = np.asarray([0, 7, 20][:batch], np.int32)
  counts = np.asarray([5, 3, 5][:batch], np.int32)  # row 1 holds 3 tokens and 2 padding
  return (f(batch, chunk, heads, hd), f(batch, chunk, kv_heads, hd), f(batch, chunk, kv_heads, hd),
          f(batch, slots, kv_heads, hd), f(batch, slots, kv_heads, hd), lengths, counts)


def check(args, got):
  want_o, want_k, want_v = reference(*args)
  o, k_cache, v_cache = (np.asarray(x) for x in got)
  for b, n in enumerate(args[6]):
    np.testing.assert_allclose(o[b, :n], want_o[b, :n], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(k_cache, want_k.astype(np.float32))
  np.testing.assert_array_equal(v_cache, want_v.astype(np.float32))


def test_one_device_writes_the_chunk_and_attends_causally():
  args = case()
  check(args, jax.jit(cache_attention.write_and_attend)(*args))


@pytest.mark.parametrize("shape,names", [((8,), ("sp",)), ((2, 4), ("tp", "sp"))])
def test_sharded_cache_merges_every_devices_piece(shape, names):
  mesh = Mesh(np.asarray(jax.devices()[:int(np.prod(shape))]).reshape(shape), names)
  args = case(seed=1)
  heads = ("tp",) if "tp" in names else ()
  fn = jax.jit(lambda *a: cache_attention.sharded_write_and_attend(
      *a, mesh=mesh, seq_axes=("sp",), head_axes=heads))
  check(args, fn(*args))


def test_a_row_that_sees_nothing_gives_zero_not_nan():
  q = np.ones((1, 2, 2, 4), np.float32)
  cache = np.ones((1, 8, 2, 4), np.float32)
  o, lse = cache_attention.attend_cache(q, cache, cache, np.asarray([[3, 4]], np.int32),
                                        np.asarray([0], np.int32))
  assert np.all(np.asarray(o) == 0) and np.all(np.asarray(lse) == cache_attention.MASK_VALUE)


def attend_reference(q, k_cache, v_cache, q_positions, limits, offset):
  """float64 (o, lse) of each query over local slots s with offset + s <= its position and
  offset + s < its row's limit; o 0 and lse None where it sees none."""
  batch, n, heads, hd = q.shape
  group = heads // k_cache.shape[2]
  o, lse = np.zeros(q.shape), np.full((batch, n, heads), None)
  for b in range(batch):
    for j in range(n):
      slots = offset + np.arange(k_cache.shape[1])
      seen = (slots <= q_positions[b, j]) & (slots < limits[b])
      for h in range(heads):
        if not seen.any():
          continue
        s = k_cache[b, seen, h // group].astype(np.float64) @ q[b, j, h].astype(np.float64)
        s /= np.sqrt(hd)
        top = s.max()
        p = np.exp(s - top)
        o[b, j, h] = p @ v_cache[b, seen, h // group].astype(np.float64) / p.sum()
        lse[b, j, h] = top + np.log(p.sum())
  return o, lse


@pytest.mark.parametrize("block_kv", [4, 7, 32, 100])
def test_tiles_of_the_cache_give_the_whole_softmax(block_kv):
  # 30 slots in tiles of 4 or 7: the last tile is ragged (2 slots); 32 and 100: a single tile.
  rng = np.random.default_rng(3)
  f = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  q, k_cache, v_cache = f(2, 3, 4, 8), f(2, 30, 2, 8) * 3, f(2, 30, 2, 8)
  offset = 10  # a shard whose slot 0 is global slot 10
  q_positions = np.asarray([[9, 25, 38], [39, 40, 41]], np.int32)  # 9: before this shard
  limits = np.asarray([37, 42], np.int32)
  o, lse = jax.jit(cache_attention.attend_cache, static_argnums=(5, 6))(
      q, k_cache, v_cache, q_positions, limits, offset, block_kv)
  want_o, want_lse = attend_reference(q, k_cache, v_cache, q_positions, limits, offset)
  np.testing.assert_allclose(np.asarray(o), want_o, rtol=1e-5, atol=1e-5)
  seen = want_lse != None  # noqa: E711 (an object array)
  assert not seen[0, 0].any() and seen[0, 1:].all() and seen[1].all()
  np.testing.assert_allclose(np.asarray(lse)[seen], want_lse[seen].astype(np.float64), rtol=1e-5)
  assert np.all(np.asarray(lse)[~seen] == cache_attention.MASK_VALUE)


@pytest.mark.parametrize("block_kv", [1, 3])
def test_sharded_cache_in_ragged_tiles(block_kv):
  # Each of 8 devices holds 4 slots: tiles of 3 leave a ragged tile of 1 on every device.
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("sp",))
  args = case(seed=2)
  fn = jax.jit(lambda *a: cache_attention.sharded_write_and_attend(
      *a, mesh=mesh, seq_axes=("sp",), block_kv=block_kv))
  check(args, fn(*args))


def test_bfloat16_cache_in_tiles():
  # bfloat16 tiles are sliced as raw bits; the sums stay float32.
  rng = np.random.default_rng(5)
  q, k_cache, v_cache = (rng.standard_normal(s).astype(jnp.bfloat16)
                         for s in ((1, 4, 4, 8), (1, 30, 2, 8), (1, 30, 2, 8)))
  q_positions, limits = np.asarray([[3, 11, 20, 29]], np.int32), np.asarray([30], np.int32)
  o, _ = jax.jit(cache_attention.attend_cache, static_argnums=(5, 6))(
      q, k_cache, v_cache, q_positions, limits, 0, 7)
  want, _ = attend_reference(*(np.asarray(a, np.float64) for a in (q, k_cache, v_cache)),
                             q_positions, limits, 0)
  np.testing.assert_allclose(np.asarray(o, np.float64), want, rtol=2e-2, atol=2e-2)
