"""The HLO byte counter (lwm.bench.collectives) against counts worked out by hand from the shapes.

Every function runs on a (2, 4) mesh of the 8 simulated devices with a float32 [16, 32] input
sharded over both axes: each device holds an [8, 8] block, 256 bytes.
"""
import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from lwm.bench import collectives
from lwm.ops.ring_attention import ring_attention

BLOCK = 8 * 8 * 4  # bytes of one device's [8, 8] float32 block
RING = [(i, (i + 1) % 4) for i in range(4)]


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Explicit,) * 2)


def compiled_text(mesh, fn):
  x = jax.ShapeDtypeStruct((16, 32), jnp.float32, sharding=NamedSharding(mesh, P("a", "b")))
  mapped = jax.shard_map(lambda x: fn(x).sum(keepdims=True), mesh=mesh, in_specs=P("a", "b"),
                         out_specs=P(("a", "b")), check_vma=False)
  return jax.jit(mapped).lower(x).compile().as_text()


def only(mesh, fn, kind):
  found = [t for t in collectives.transfers(compiled_text(mesh, fn), mesh) if t.kind == kind]
  assert found, f"no {kind} in the compiled module"
  return found


def test_psum_sends_twice_three_quarters_of_the_buffer(mesh):
  (t,) = only(mesh, lambda x: jax.lax.psum(x, "b"), "all-reduce")
  assert t.group_size == 4 and t.axes == "b" and t.count == 1
  assert t.bytes == pytest.approx(2 * 3 / 4 * BLOCK, rel=0.05)


def test_psum_over_both_axes_names_both(mesh):
  (t,) = only(mesh, lambda x: jax.lax.psum(x, ("a", "b")), "all-reduce")
  assert t.group_size == 8 and t.axes == "a+b"
  assert t.bytes == pytest.approx(2 * 7 / 8 * BLOCK, rel=0.05)


def test_all_gather_sends_half_of_the_gathered_buffer(mesh):
  (t,) = only(mesh, lambda x: jax.lax.all_gather(x, "a", tiled=True), "all-gather")
  assert t.group_size == 2 and t.axes == "a"
  assert t.bytes == pytest.approx(1 / 2 * (2 * BLOCK), rel=0.05)


def test_ppermute_sends_its_operand(mesh):
  (t,) = only(mesh, lambda x: jax.lax.ppermute(x, "b", RING), "collective-permute")
  assert t.axes == "b" and t.count == 1
  assert t.bytes == pytest.approx(BLOCK, rel=0.05)


def test_all_to_all_sends_three_quarters(mesh):
  found = only(mesh, lambda x: jax.lax.all_to_all(x, "b", 0, 0, tiled=True), "all-to-all")
  assert sum(t.total for t in found) == pytest.approx(3 / 4 * BLOCK, rel=0.05)
  assert {t.axes for t in found} == {"b"}


def scanned(x):
  def body(carry, _):
    return jax.lax.ppermute(carry, "b", RING) * 2.0, None
  return jax.lax.scan(body, x, None, length=5)[0]


def test_a_scan_runs_its_collective_trip_count_times(mesh):
  (t,) = only(mesh, scanned, "collective-permute")
  assert t.count == 5
  assert t.total == pytest.approx(5 * BLOCK, rel=0.05)


def test_fori_loop_inside_scan_multiplies_the_trip_counts(mesh):
  def fn(x):
    def layer(carry, _):
      inner = jax.lax.fori_loop(0, 3, lambda i, c: jax.lax.psum(c, "a") * 0.5, carry)
      return inner, None
    return jax.lax.scan(layer, x, None, length=4)[0]
  (t,) = only(mesh, fn, "all-reduce")
  assert t.count == 12
  assert t.total == pytest.approx(12 * 2 * 1 / 2 * BLOCK, rel=0.05)


def test_without_known_trip_count_the_loop_bound_is_read(mesh):
  text = re.sub(r',?\s*"known_trip_count":\{"n":"\d+"\}', "", compiled_text(mesh, scanned))
  assert '"known_trip_count"' not in text
  (t,) = [t for t in collectives.transfers(text, mesh) if t.kind == "collective-permute"]
  assert t.count == 5


def test_iota_replica_groups():
  line = "x = f32[8] all-reduce(y), replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%add"
  assert collectives.parse_groups(line, 8) == ((0, 4), (1, 5), (2, 6), (3, 7))
  assert collectives.parse_groups("replica_groups=[2,4]<=[8]", 8) == ((0, 1, 2, 3), (4, 5, 6, 7))
  assert collectives.parse_groups("replica_groups={}", 4) == ((0, 1, 2, 3),)


def test_topology_uses_the_slow_link_when_a_group_leaves_its_node():
  topology = collectives.parse_topology("4x900GBps,50GBps")
  assert (topology.group_size, topology.fast_bytes_per_s, topology.slow_bytes_per_s) == (
      4, 900e9, 50e9)
  inside = collectives.Transfer("all-reduce", "x", 1e9, 2, 4, "b", ((0, 1, 2, 3), (4, 5, 6, 7)))
  across = collectives.Transfer("all-gather", "y", 1e9, 1, 2, "a", ((0, 4), (1, 5)))
  assert topology.seconds(inside) == pytest.approx(2e9 / 900e9)
  assert topology.seconds(across) == pytest.approx(1e9 / 50e9)
  assert collectives.comm_seconds([inside, across], topology) == pytest.approx(
      2e9 / 900e9 + 1e9 / 50e9)
  with pytest.raises(ValueError, match="8x900GBps,50GBps"):
    collectives.parse_topology("900GBps")


@pytest.mark.parametrize("causal,layout", [(False, "natural"), (True, "zigzag")])
def test_ring_attention_forward_sends_seven_eighths_of_k_and_v(causal, layout):
  mesh = jax.make_mesh((8,), ("sp",), axis_types=(AxisType.Explicit,))
  batch, seq, heads, dim = 1, 1024, 4, 32
  qkv = jax.ShapeDtypeStruct((batch, seq, heads, dim), jnp.float32)
  fn = jax.jit(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, causal=causal, layout=layout,
                                              block_q=64, block_kv=64, impl="xla"))
  found = collectives.transfers(fn.lower(qkv, qkv, qkv).compile().as_text(), mesh)
  sent = collectives.bytes_by(found)
  full_kv = 2 * batch * seq * heads * dim * 4
  assert sent["collective-permute"] == pytest.approx((8 - 1) / 8 * full_kv, rel=0.05)
  assert set(sent) == {"collective-permute"}
  assert {t.axes for t in found} == {"sp"}


def test_bfloat16_is_counted_at_its_width_though_the_cpu_sends_float32():
  mesh = jax.make_mesh((8,), ("b",), axis_types=(AxisType.Explicit,))
  x = jax.ShapeDtypeStruct((64, 32), jnp.bfloat16, sharding=NamedSharding(mesh, P("b")))
  fn = jax.shard_map(lambda x: (jax.lax.ppermute(x, "b", [(i, (i + 1) % 8) for i in range(8)]),
                                jax.lax.all_gather(x, "b", tiled=True)),
                     mesh=mesh, in_specs=P("b"), out_specs=(P("b"), P()), check_vma=False)
  text = jax.jit(fn).lower(x).compile().as_text()
  assert re.search(r"f32\[8,32\]\S* collective-permute", text)  # what the CPU compiler sends
  sent = collectives.bytes_by(collectives.transfers(text, mesh))
  local = 8 * 32 * 2  # one device's [8, 32] bfloat16 rows
  assert sent["collective-permute"] == pytest.approx(local, rel=0.05)
  assert sent["all-gather"] == pytest.approx(7 / 8 * 8 * local, rel=0.05)


def test_replica_groups_over_named_device_axes():
  line = "replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}, use_global_device_ids=true"
  assert collectives.parse_groups(line, 8) == ((0, 4), (1, 5), (2, 6), (3, 7))
  line = ("replica_groups=mesh['axis_0'=1,'axis_1'=4,'axis_2'=2], device_ids=([2,4]T(1,0)) "
          "{'axis_2'}")
  # Devices in mesh order: 0 4 1 5 2 6 3 7; axis_2 pairs neighbours in that order.
  assert collectives.parse_groups(line, 8) == ((0, 4), (1, 5), (2, 6), (3, 7))
  with pytest.raises(ValueError, match="cannot read"):
    collectives.parse_groups("replica_groups=<weird>", 8)


def test_groups_are_the_devices_own_ids_on_a_mesh_laid_out_out_of_order():
  """make_mesh puts hp fastest: an hp group is consecutive device ids (one node of 2 here) though
  its mesh positions are 4 apart; the topology must see the ids."""
  from lwm import sharding as shd
  mesh = jax.sharding.Mesh(shd.make_mesh(hp=2, sp=4).devices.reshape(2, 4), ("hp", "sp"),
                           axis_types=(AxisType.Explicit,) * 2)
  assert [d.id for d in mesh.devices[:, 0]] == [0, 1]  # hp neighbours are consecutive devices
  (t,) = [t for t in collectives.transfers(
      compiled_text_on(mesh, lambda x: jax.lax.psum(x, "hp")), mesh) if t.kind == "all-reduce"]
  assert t.axes == "hp" and sorted(t.groups) == [(0, 1), (2, 3), (4, 5), (6, 7)]
  assert collectives.parse_topology("2x900GBps,50GBps").is_fast(t)


def compiled_text_on(mesh, fn):
  x = jax.ShapeDtypeStruct((16, 32), jnp.float32, sharding=NamedSharding(mesh, P("hp", "sp")))
  mapped = jax.shard_map(lambda x: fn(x).sum(keepdims=True), mesh=mesh, in_specs=P("hp", "sp"),
                         out_specs=P(("hp", "sp")), check_vma=False)
  return jax.jit(mapped).lower(x).compile().as_text()
