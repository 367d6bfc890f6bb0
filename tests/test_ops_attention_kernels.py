"""The fused block kernels (Pallas, run with interpret=True on the CPU: the same kernel code that
Triton and Mosaic compile) against the float64 reference, alone and inside the ring.

Interpret mode is slow, so the shapes are small and each case covers several features at once.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_reference as ref
from lwm.model import config as model_config
from lwm.ops import block_contract, block_pallas, impls
from test_ops_ring_attention import check_against_reference, packed_segments, random_qkv, run_ring

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def block_mask(seq, segment_ids):
  positions = jnp.arange(seq, dtype=jnp.int32)
  seg = None if segment_ids is None else jnp.asarray(segment_ids)
  return block_contract.BlockMask(positions, positions, seg, seg)


def block_grads(impl, q, k, v, segment_ids, d_out, causal, tiling=(16, 8)):
  """o and (dq, dk, dv) of one block through the contract (forward, then backward with its lse)."""
  attention = impls.get(impl, interpret=True)
  mask, tiles = block_mask(q.shape[1], segment_ids), block_contract.Tiling(*tiling, causal)

  @jax.jit
  def run(q, k, v, d_out):
    o, lse = block_contract.finalize(attention.forward(q, k, v, mask, tiles), q.dtype)
    return o, attention.backward(q, k, v, o, lse, d_out.astype(q.dtype), mask, tiles)

  o, grads = run(q, k, v, d_out)
  return [np.asarray(x, np.float64) for x in (o, *grads)]


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
@pytest.mark.parametrize("causal, kv_heads, head_dim, with_segments", [
    (True, 2, 64, True),  # causal, grouped-query, packed documents and padding
    (False, 1, 128, False),  # no mask at all, one key/value head for four query heads
])
def test_block_kernel_matches_reference(impl, causal, kv_heads, head_dim, with_segments):
  rng = np.random.default_rng(0)
  q, k, v = random_qkv(rng, batch=2, seq=64, kv_heads=kv_heads, head_dim=head_dim)
  d_out = rng.standard_normal(q.shape).astype(np.float32)
  segments = None
  if with_segments:
    segments = np.stack([packed_segments(64, [20, 1, 30]), packed_segments(64, [64])])
  out, dq, dk, dv = block_grads(impl, q, k, v, segments, d_out, causal)
  mask = ref.visibility(64, segments, causal, batch=2)
  assert np.abs(out - ref.attention(q, k, v, mask)[0]).max() <= 1e-5
  for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv),
                             ref.attention_grads(q, k, v, mask, d_out)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
  if with_segments:  # padding rows: output 0, gradients 0
    assert np.all(out[0, 51:] == 0) and np.all(dq[0, 51:] == 0) and np.all(dk[0, 51:] == 0)


def test_block_kernel_bfloat16_accumulates_in_float32():
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(x, jnp.bfloat16)
             for x in random_qkv(rng, seq=128, kv_heads=2, head_dim=128))
  d_out = rng.standard_normal(q.shape).astype(np.float32)
  got = block_grads("pallas_gpu", q, k, v, None, d_out, True, tiling=(32, 32))
  q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
  mask = ref.visibility(128)
  d_out64 = np.asarray(jnp.asarray(d_out, jnp.bfloat16), np.float64)
  want = [ref.attention(q64, k64, v64, mask)[0], *ref.attention_grads(q64, k64, v64, mask, d_out64)]
  for name, g, w in zip(("o", "dq", "dk", "dv"), got, want):
    assert np.linalg.norm(g - w) / np.linalg.norm(w) <= 1e-2, name


def test_forward_folds_into_an_earlier_result():
  # The ring's merge: keys in two blocks, the second folded into the first's (o, lse).
  rng = np.random.default_rng(2)
  q, k, v = random_qkv(rng, seq=32, kv_heads=2)
  positions = jnp.arange(32, dtype=jnp.int32)
  tiles = block_contract.Tiling(8, 8, True)
  half = lambda p: block_contract.BlockMask(positions, p, None, None)
  first = block_pallas.forward(q, k[:, :16], v[:, :16], half(positions[:16]), tiles,
                                   interpret=True)
  both = block_pallas.forward(q, k[:, 16:], v[:, 16:], half(positions[16:]), tiles, acc=first,
                                  interpret=True)
  want, _ = ref.attention(q, k, v, ref.visibility(32))
  assert np.abs(np.asarray(both[0]) - want).max() <= 1e-5


@pytest.mark.parametrize("impl, num_devices, layout, causal", [
    ("pallas_gpu", 1, "natural", False),
    ("pallas_gpu", 2, "zigzag", True),
    ("pallas_tpu", 2, "natural", True),
    ("pallas_gpu", 4, "zigzag", False),
    ("pallas_gpu", 8, "zigzag", True),
])
def test_ring_with_kernel_matches_reference(impl, num_devices, layout, causal):
  # Packed documents cross device boundaries and end in padding; grouped-query heads.
  seq = 64
  segments = np.stack([packed_segments(seq, [23, 1, 3, 20]), packed_segments(seq, [5, 40])])
  q, k, v = random_qkv(np.random.default_rng(3), batch=2, seq=seq, kv_heads=2)
  check_against_reference(q, k, v, segments, num_devices=num_devices, causal=causal,
                          layout=layout, block=(8, 4), impl=impl)


def test_ring_kernel_bfloat16():
  q, k, v = random_qkv(np.random.default_rng(6), seq=128, kv_heads=2, head_dim=64)
  bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
  out, *_ = run_ring(*bf16, num_devices=2, layout="zigzag", block=(16, 16), impl="pallas_gpu")
  want, _ = ref.attention(*(np.asarray(x, np.float64) for x in bf16), ref.visibility(128))
  assert np.linalg.norm(out - want) / np.linalg.norm(want) <= 1e-2


def test_impl_is_one_setting():
  assert impls.resolve("auto", "cpu") == ("xla", False)
  assert impls.resolve("auto", "gpu") == ("pallas_gpu", False)
  assert impls.resolve("auto", "tpu") == ("pallas_tpu", False)
  assert impls.resolve("pallas_gpu", "cpu") == ("pallas_gpu", True)
  assert impls.resolve("pallas_tpu", "gpu") == ("pallas_tpu", True)
  with pytest.raises(ValueError, match="attention impl must be one of"):
    impls.resolve("cudnn", "gpu")
  assert model_config.get_config("tiny").attention_impl == "auto"
  assert model_config.get_config("tiny", attention_impl="pallas_gpu").attention_impl == "pallas_gpu"
  with pytest.raises(ValueError, match="attention_impl='triton'"):
    model_config.get_config("tiny", attention_impl="triton")


def _lower(platform, backend, causal=True, with_segments=True):
  """Lowers fwd + bwd of the kernel for `platform` (Triton or Mosaic IR; nothing is compiled for
  the device): bfloat16, head dim 128, grouped-query heads, separate q/kv segment ids."""
  sd = jax.ShapeDtypeStruct
  q, kv = sd((1, 512, 4, 128), jnp.bfloat16), sd((1, 256, 2, 128), jnp.bfloat16)
  ints = lambda *shape: sd(shape, jnp.int32)

  def fwd_bwd(q, k, v, do, q_pos, kv_pos, q_seg, kv_seg):
    if not with_segments:
      q_seg = kv_seg = None
    mask = block_contract.BlockMask(q_pos, kv_pos, q_seg, kv_seg)
    tiles = block_contract.Tiling(512, 512, causal)
    o, lse = block_pallas.forward(q, k, v, mask, tiles, backend=backend)
    return block_pallas.backward(q, k, v, o.astype(q.dtype), lse, do, mask, tiles,
                                     backend=backend)

  checks = [jax.export.DisabledSafetyCheck.custom_call(name)
            for name in ("__gpu$xla.gpu.triton", "tpu_custom_call")]
  exported = jax.export.export(jax.jit(fwd_bwd), platforms=[platform], disabled_checks=checks)(
      q, kv, kv, q, ints(512), ints(256), ints(1, 512), ints(1, 256))
  return exported.mlir_module()


def test_kernels_lower_for_gpu_and_tpu():
  assert _lower("cuda", "gpu").count("__gpu$xla.gpu.triton") == 3
  # Without any mask the kernels take no branch (Triton does not lower a constant predicate).
  assert _lower("cuda", "gpu", causal=False, with_segments=False).count("gpu.triton") == 3
  # Mosaic asks which TPU it lowers for; an abstract mesh names one (no TPU is needed to lower).
  tpu = jax.sharding.AbstractDevice(device_kind="TPU v5p", num_cores=1, platform="tpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), (jax.sharding.AxisType.Explicit,),
                                   abstract_device=tpu)
  with jax.sharding.use_abstract_mesh(mesh):
    assert _lower("tpu", "tpu").count("tpu_custom_call") == 3
    assert _lower("tpu", "tpu", causal=False, with_segments=False).count("tpu_custom_call") == 3


def test_device_benchmark_smoke_runs_on_cpu():
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench", "attention.py"),
                           "--platform", "gpu", "--smoke"], capture_output=True, text=True,
                          env=env, timeout=300, check=True)
  assert "fused kernel (one block)" in result.stdout and "ring on 2 dev" in result.stdout
  assert "-> ok" in result.stdout, result.stdout


def test_triton_shapes_it_cannot_tile_are_refused():
  q, k, v = random_qkv(np.random.default_rng(7), seq=48, head_dim=16)
  with pytest.raises(ValueError, match="powers of two >= 16 for {'queries': 48"):
    block_pallas.forward(q, k, v, block_mask(48, None), block_contract.Tiling(16, 16, True))
