"""What head-parallel x ring attention sends per device: read from the compiled HLO, and by formula.

For one attention call, forward and backward, on a (sp, hp) mesh with N tokens, H query heads and K
key/value heads of size d (K repeated r = `kv_repeats` times so hp divides them), each device holds
n = N / (sp * hp) tokens and, after the all-to-all, a ring shard of s = N / sp tokens of H / hp
query and K r / hp key/value heads. With itemsize b:

  all-to-all       q, k, v there and o back; in the backward d_o there and dq, dk, dv back:
                   (hp - 1) / hp * n * d * b * 2 * (2 H + 2 K r)
  collective-permute  forward: each other ring shard's k, v (and int32 segment ids) pass once:
                   (sp - 1) * s * (2 K r / hp * d * b + 4);
                   backward: k, v, segment ids again for sp - 1 shards, and their float32
                   dk, dv accumulators for all sp (the last pass brings them home):
                   (sp - 1) * s * (2 K r / hp * d * b + 4) + sp * s * 2 K r / hp * d * 4
  all-gather       the segment ids over hp, once: (hp - 1) / hp * s * 4

`compiled` compiles the same call (`jax.jit` of value_and_grad) on simulated devices and reads
its collectives (`lwm.bench.collectives.transfers`); by kind the two agree (the loss's scalar
all-reduce aside). The mesh is laid out sp major, so an hp group is consecutive devices: on a
`collectives.Topology` of fast-link groups the all-to-all stays inside one when hp <= its size.
"""
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from lwm.bench import collectives
from lwm.ops.head_parallel import head_parallel_attention, kv_repeats


def closed_form(seq: int, heads: int, kv_heads: int, head_dim: int, hp: int, sp: int,
                itemsize: int = 4) -> dict:
  """Bytes one device sends per forward+backward, by collective kind (see the module doc)."""
  n, s = seq // (sp * hp), seq // sp
  kv = kv_heads * kv_repeats(heads, kv_heads, hp)
  kv_piece = 2 * kv // hp * head_dim  # k and v values per token of a ring shard's head slice
  out = {}
  if hp > 1:
    out["all-to-all"] = (hp - 1) / hp * n * head_dim * itemsize * 2 * (2 * heads + 2 * kv)
    out["all-gather"] = (hp - 1) / hp * s * 4
  if sp > 1:
    forward = (sp - 1) * s * (kv_piece * itemsize + 4)
    out["collective-permute"] = 2 * forward + sp * s * kv_piece * 4
  return out


def mesh_of(hp: int, sp: int, devices=None):
  devices = jax.devices()[:hp * sp] if devices is None else devices
  return jax.make_mesh((sp, hp), ("sp", "hp"), axis_types=(AxisType.Explicit,) * 2,
                       devices=devices)


def compiled(seq: int, heads: int, kv_heads: int, head_dim: int, hp: int, sp: int, *,
             block: int = 512, dtype=jnp.float32, impl: str = "xla"):
  """(the collectives `lwm.bench.collectives.Transfer`s, the compiled module's temp bytes) of
  attention's forward+backward on a (sp, hp) mesh, causal, zigzag, with segment ids; compile
  only. `collectives.bytes_by(transfers)` sums them by kind."""
  mesh = mesh_of(hp, sp)
  spec = NamedSharding(mesh, P(None, ("sp", "hp")))
  q_shape, kv_shape = (1, seq, heads, head_dim), (1, seq, kv_heads, head_dim)
  args = [jax.ShapeDtypeStruct(shape, dtype, sharding=spec)
          for shape in (q_shape, kv_shape, kv_shape)]
  args += [jax.ShapeDtypeStruct((1, seq), jnp.int32, sharding=spec),
           jax.ShapeDtypeStruct(q_shape, jnp.float32, sharding=spec)]

  def loss(q, k, v, segment_ids, weights):
    o = head_parallel_attention(q, k, v, segment_ids, mesh=mesh, layout="zigzag", causal=True,
                                block_q=block, block_kv=block, impl=impl)
    return jnp.sum(o.astype(jnp.float32) * weights)

  with jax.set_mesh(mesh):
    module = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
  found = collectives.transfers(module.as_text(), mesh)
  return found, module.memory_analysis().temp_size_in_bytes
