"""Compile-time memory and wall-clock time of attention variants, for benchmarks and memory tests.

Every variant is measured the same way: forward + backward of the scalar loss sum(attention * w)
with a random cotangent w, as one jitted function over a 1-D `sp` mesh, inputs `[batch, seq, heads,
head_dim]` sharded over `sp` in zigzag order. Memory comes from XLA's compiled memory analysis (per
device, nothing is run); time is the median of several runs after a warm-up.
"""
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from lwm.ops.all_gather_attention import all_gather_attention_sharded
from lwm.ops.ring_attention import ring_attention_sharded

VARIANTS = {
    "ring_causal": (ring_attention_sharded, True),
    "ring_full": (ring_attention_sharded, False),
    "all_gather_causal": (all_gather_attention_sharded, True),
}


def attention_grad_fn(variant, num_devices, block=512, impl="xla"):
  """(mesh, jitted fn(q, k, v, w) -> (dq, dk, dv)) for a variant on the first num_devices devices.

  impl: the ring's block implementation (`lwm.ops.impls`); the all-gather uses "xla".
  """
  attend, causal = VARIANTS[variant]
  extra = {"impl": impl} if attend is ring_attention_sharded else {}
  mesh = jax.make_mesh((num_devices,), ("sp",), axis_types=(AxisType.Explicit,),
                       devices=jax.devices()[:num_devices])
  spec = P(None, "sp", None, None)
  per_shard = functools.partial(attend, axis_name="sp", causal=causal, layout="zigzag",
                                block_q=block, block_kv=block, **extra)
  sharded = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                          check_vma=False)
  loss = lambda q, k, v, w: jnp.sum(sharded(q, k, v).astype(jnp.float32) * w)
  return mesh, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _abstract_inputs(mesh, seq_len, heads, kv_heads, head_dim, dtype):
  sharding = NamedSharding(mesh, P(None, "sp", None, None))
  q = jax.ShapeDtypeStruct((1, seq_len, heads, head_dim), dtype, sharding=sharding)
  kv = jax.ShapeDtypeStruct((1, seq_len, kv_heads, head_dim), dtype, sharding=sharding)
  w = jax.ShapeDtypeStruct(q.shape, jnp.float32, sharding=sharding)
  return q, kv, kv, w


def compiled_memory(variant, seq_len, num_devices, *, heads=4, kv_heads=None, head_dim=64,
                    dtype=jnp.float32, block=512, impl="xla"):
  """Per-device bytes {'argument', 'output', 'temp'} and HLO collective counts, without running."""
  mesh, fn = attention_grad_fn(variant, num_devices, block, impl)
  args = _abstract_inputs(mesh, seq_len, heads, kv_heads or heads, head_dim, dtype)
  with jax.set_mesh(mesh):
    compiled = fn.lower(*args).compile()
  analysis, hlo = compiled.memory_analysis(), compiled.as_text()
  return {
      "argument": analysis.argument_size_in_bytes,
      "output": analysis.output_size_in_bytes,
      "temp": analysis.temp_size_in_bytes,
      "collective_permutes": hlo.count("collective-permute("),
      "all_gathers": hlo.count("all-gather("),
  }


def runner(variant, seq_len, num_devices, *, heads=4, head_dim=64, dtype=jnp.float32, block=512,
           impl="xla"):
  """A no-argument callable that runs one forward + backward of `variant` on random inputs."""
  mesh, fn = attention_grad_fn(variant, num_devices, block, impl)
  rng = np.random.default_rng(0)
  sharding = NamedSharding(mesh, P(None, "sp", None, None))
  shape = (1, seq_len, heads, head_dim)
  args = [jax.device_put(rng.standard_normal(shape).astype(np.float32), sharding)
          for _ in range(4)]
  args[:3] = [a.astype(dtype) for a in args[:3]]

  def run():
    with jax.set_mesh(mesh):
      jax.block_until_ready(fn(*args))

  return run


def median_times(runners, repeats=5):
  """Median seconds of each runner; runs are interleaved so that load changes hit all alike."""
  for run in runners:
    run()  # compile and warm up
  times = [[] for _ in runners]
  for _ in range(repeats):
    for run, samples in zip(runners, times):
      start = time.perf_counter()
      run()
      samples.append(time.perf_counter() - start)
  return [statistics.median(samples) for samples in times]
