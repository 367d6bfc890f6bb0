"""Bytes sent by head-parallel x ring attention, read from the compiled HLO, against the closed form
(`lwm.bench.head_parallel_comm.closed_form`, written from the algorithm, not from the HLO)."""
import jax.numpy as jnp
import pytest

from lwm.bench import collectives, head_parallel_comm as hpc


@pytest.mark.parametrize("hp, sp", [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_hlo_bytes_match_the_closed_form(hp, sp):
  found, _ = hpc.compiled(2048, 8, 2, 32, hp, sp, block=64, dtype=jnp.float32)
  got, want = collectives.bytes_by(found), hpc.closed_form(2048, 8, 2, 32, hp, sp, itemsize=4)
  assert set(want) <= set(got)
  for kind, expected in want.items():
    assert abs(got[kind] - expected) <= 0.05 * expected, (kind, got[kind], expected)
  # The only other collective is the loss's scalar all-reduce.
  assert sum(v for k, v in got.items() if k not in want) <= 16


def test_hp_trades_ring_bytes_for_all_to_all_bytes():
  """At 64K tokens, 32:8 heads: the ring's bytes fall as hp takes devices from sp (each device's
  kv heads shrink), the all-to-all's grow towards 2 (2H + 2K) n d b."""
  rows = [hpc.closed_form(65536, 32, 8, 128, hp, 8 // hp, itemsize=2) for hp in (1, 2, 4, 8)]
  ring = [r.get("collective-permute", 0) for r in rows]
  a2a = [r.get("all-to-all", 0) for r in rows]
  assert ring == sorted(ring, reverse=True) and a2a == sorted(a2a)
  assert ring[0] == 7 * 8192 * (2 * 8 * 128 * 2 + 4) * 2 + 8 * 8192 * 2 * 8 * 128 * 4
