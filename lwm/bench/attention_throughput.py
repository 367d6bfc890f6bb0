"""Forward + backward throughput of attention on an accelerator, for `scripts/bench/attention.py
--platform gpu`: the fused block kernel, the xla block path, cuDNN's flash attention as the
yardstick, and the whole ring; plus a correctness check of the kernel against the xla path.

Every variant computes the gradients of sum(attention(q, k, v) * w) for a random w, jitted, and is
timed as the median of several runs after a warm-up. FLOPs follow the FlashAttention convention:
forward 4 * batch * heads * seq^2 * head_dim (half of it when causal), backward 2.5x the forward.
"""
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from lwm.ops import block_contract, impls, layout as layout_lib
from lwm.ops.ring_attention import ring_attention


def attention_flops(seq, heads, head_dim, causal, batch=1):
  """FLOPs of one forward + backward (3.5x the forward's two matmuls)."""
  forward = 4 * batch * heads * seq * seq * head_dim * (0.5 if causal else 1.0)
  return 3.5 * forward


def block_attention(impl, causal, interpret=False, block=512):
  """fn(q, k, v) -> o: one block of the contract over the whole sequence (no ring), with the
  contract's backward as its VJP."""
  attention = impls.get(impl, interpret)

  def masks(q):
    positions = jnp.arange(q.shape[1], dtype=jnp.int32)
    return block_contract.BlockMask(positions, positions, None, None)

  tiling = lambda q: block_contract.Tiling(min(block, q.shape[1]), min(block, q.shape[1]), causal)

  @jax.custom_vjp
  def attend(q, k, v):
    return attention.forward(q, k, v, masks(q), tiling(q))[0].astype(q.dtype)

  def attend_fwd(q, k, v):
    o, lse = block_contract.finalize(attention.forward(q, k, v, masks(q), tiling(q)), q.dtype)
    return o, (q, k, v, o, lse)

  def attend_bwd(residuals, do):
    q, k, v, o, lse = residuals
    grads = attention.backward(q, k, v, o, lse, do, masks(q), tiling(q))
    return tuple(g.astype(x.dtype) for g, x in zip(grads, (q, k, v)))

  attend.defvjp(attend_fwd, attend_bwd)
  return attend


def cudnn_attention(causal):
  return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                      implementation="cudnn")


def ring(mesh, causal, impl, block=512):
  """The ring on every device of `mesh` (axis "sp"), zigzag layout (inputs already permuted)."""
  return functools.partial(ring_attention, mesh=mesh, causal=causal, layout="zigzag",
                           block_q=block, block_kv=block, impl=impl)


def grad_fn(attend):
  loss = lambda q, k, v, w: jnp.sum(attend(q, k, v).astype(jnp.float32) * w)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def random_inputs(seq, heads, kv_heads, head_dim, dtype, sharding=None, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  shapes = [(1, seq, heads, head_dim), (1, seq, kv_heads, head_dim), (1, seq, kv_heads, head_dim),
            (1, seq, heads, head_dim)]
  arrays = [jax.random.normal(key, shape, jnp.float32) for key, shape in zip(keys, shapes)]
  arrays = [a.astype(dtype) for a in arrays[:3]] + arrays[3:]
  return [a if sharding is None else jax.device_put(a, sharding) for a in arrays]


def median_seconds(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile and warm up
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    samples.append(time.perf_counter() - start)
  return statistics.median(samples)


def relative_l2(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def compare(fn_a, fn_b, args):
  """Max over (loss, dq, dk, dv) of the relative L2 difference between two grad functions."""
  (loss_a, grads_a), (loss_b, grads_b) = fn_a(*args), fn_b(*args)
  return max(relative_l2(a, b) for a, b in zip((loss_a, *grads_a), (loss_b, *grads_b)))


def sp_mesh(devices):
  return jax.make_mesh((len(devices),), ("sp",), axis_types=(AxisType.Explicit,), devices=devices)


def zigzag_inputs(mesh, args):
  """`args` permuted to the zigzag layout and sharded over the ring."""
  sharding = NamedSharding(mesh, P(None, "sp"))
  num = mesh.shape["sp"]
  return [jax.device_put(layout_lib.to_zigzag(a, num), sharding) for a in args]
