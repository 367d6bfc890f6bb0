"""bfloat16 q, k, v (float32 statistics and accumulation inside) against the float64 reference:
the fused kernel alone (Pallas interpret mode, both backends) and the ring on 1, 2, 4 and 8
devices, forward and gradients.

The reference sees the same bf16-rounded inputs and cotangent, so only the attention arithmetic
differs. Tolerance, per output (o, dq, dk, dv): relative L2 error and max |error| / max |want| both
<= 1e-2, i.e. about 2.5 bf16 epsilons (2^-8). Measured on these cases: 1.4e-3 to 3.7e-3 (the
probabilities and ds are rounded to bf16 before their matmuls, as on a device); a wrong mask, scale
or statistic is off by O(1).
"""
import jax.numpy as jnp
import numpy as np
import pytest

import attention_reference as ref
from test_ops_attention_kernels import block_grads
from test_ops_ring_attention import packed_segments, random_qkv, run_ring

TOLERANCE = 1e-2
SEQ = 64


def bf16_case():
  """bf16 (q, k, v, d_out), their float64 copies, segment ids: grouped-query heads, packed
  documents crossing device boundaries, padding."""
  rng = np.random.default_rng(0)
  q, k, v = random_qkv(rng, batch=2, seq=SEQ, kv_heads=2, head_dim=32)
  d_out = rng.standard_normal(q.shape).astype(np.float32)
  bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v, d_out)]
  segments = np.stack([packed_segments(SEQ, [23, 1, 3, 20]), packed_segments(SEQ, [5, 40])])
  return bf16, [np.asarray(x, np.float64) for x in bf16], segments


def reference(as64, segments, causal=True):
  q, k, v, d_out = as64
  mask = ref.visibility(SEQ, segments, causal, batch=2)
  return [ref.attention(q, k, v, mask)[0], *ref.attention_grads(q, k, v, mask, d_out)]


def assert_bf16_close(got, want):
  for name, g, w in zip(("o", "dq", "dk", "dv"), got, want):
    assert np.all(np.isfinite(g)), name
    l2 = np.linalg.norm(g - w) / np.linalg.norm(w)
    worst = np.abs(g - w).max() / np.abs(w).max()
    assert l2 <= TOLERANCE and worst <= TOLERANCE, f"{name}: L2 {l2:.2e}, max {worst:.2e}"


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
def test_kernel_bf16_forward_and_gradients(impl):
  bf16, as64, segments = bf16_case()
  got = block_grads(impl, *bf16[:3], segments, bf16[3], True)
  assert_bf16_close(got, reference(as64, segments))


@pytest.mark.parametrize("impl", ["xla", "pallas_gpu"])
@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
def test_ring_bf16_forward_and_gradients(impl, num_devices):
  bf16, as64, segments = bf16_case()
  got = run_ring(*bf16[:3], segments, bf16[3], num_devices=num_devices, causal=True,
                 layout="zigzag", block=(4, 4), impl=impl)
  assert_bf16_close(got, reference(as64, segments))
