"""The self-check behind attention impl "auto" (`lwm.ops.impls.choose`, `lwm.ops.self_check`).

The CPU stands in for a GPU: the platform is set to "gpu" and the fused kernel is replaced by a
substitute (the xla block functions, a kernel that raises while compiling, one that is off by a
factor), so that every branch runs without an accelerator.
"""
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_reference as ref
from lwm.ops import block_contract, block_xla, impls, ring_attention, self_check
from test_ops_ring_attention import random_qkv, sp_mesh

TILING = block_contract.Tiling(8, 8, True)


class Substitute:
  """A stand-in for the fused kernel: the xla block functions, optionally broken, counting calls."""

  def __init__(self, fault=None):
    self.fault, self.forward_calls = fault, 0

  def forward(self, q, k, v, mask, tiling, *, acc=None):
    self.forward_calls += 1
    if self.fault == "compile":
      raise ValueError("Triton lowering failed: out of shared memory (needs 232448 bytes)")
    o, lse = block_xla.forward(q, k, v, mask, tiling, acc=acc)
    return (o * 1.5, lse) if self.fault == "mismatch" else (o, lse)

  def attention(self):
    return block_contract.BlockAttention("pallas_gpu", self.forward, block_xla.backward)


@pytest.fixture
def on_gpu(monkeypatch):
  """Makes "auto" believe it runs on a GPU; returns install(substitute) for the fused kernel."""
  monkeypatch.setattr(impls, "_platform", lambda: "gpu")
  monkeypatch.setattr(impls, "_CHECKED", {})
  real_get = impls.get

  def install(substitute):
    fused = substitute.attention()
    monkeypatch.setattr(impls, "get", lambda impl, interpret=False:
                        fused if impl == "pallas_gpu" else real_get(impl, interpret))
    return substitute

  return install


def choose(impl="auto", dtype=jnp.bfloat16, tiling=TILING):
  return impls.choose(impl, tiling, dtype, 16, segments=False)


def warnings_of(caplog):
  return [r for r in caplog.records if r.name == impls.__name__ and r.levelno == logging.WARNING]


def test_a_passing_kernel_is_used_by_the_ring(on_gpu):
  fused = on_gpu(Substitute())
  q, k, v = random_qkv(np.random.default_rng(0), seq=32)
  mesh = sp_mesh(2)
  # The check runs while the ring is traced inside shard_map, at the first use of "auto".
  attend = jax.jit(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, block_q=8, block_kv=8,
                                                  impl="auto"))
  with jax.set_mesh(mesh):
    out = np.asarray(attend(q, k, v), np.float64)
  assert fused.forward_calls >= 2  # the check's compile, then the ring's steps
  assert np.abs(out - ref.attention(q, k, v, ref.visibility(32))[0]).max() <= 1e-5
  assert choose(dtype=jnp.float32) == ("pallas_gpu", False)


def test_a_kernel_that_does_not_compile_falls_back_with_one_warning(on_gpu, caplog):
  on_gpu(Substitute("compile"))
  with caplog.at_level(logging.WARNING):
    assert choose() == ("xla", False)
    assert choose() == ("xla", False)  # cached: no second check, no second warning
  [warning] = warnings_of(caplog)
  assert "out of shared memory" in warning.getMessage()
  assert "'pallas_gpu'" in warning.getMessage() and "did not compile" in warning.getMessage()


def test_a_kernel_with_wrong_numbers_falls_back_with_the_error(on_gpu, caplog):
  on_gpu(Substitute("mismatch"))
  with caplog.at_level(logging.WARNING):
    assert choose() == ("xla", False)
  [warning] = warnings_of(caplog)
  # o * 1.5 is off by half the output: far beyond the bf16 tolerance.
  error_o = float(re.search(r"relative max errors o ([0-9.]+),", warning.getMessage()).group(1))
  assert abs(error_o - 0.5) <= 0.01
  assert "> tolerance 0.03 (bfloat16)" in warning.getMessage()


@pytest.mark.parametrize("fault, reason", [("compile", "out of shared memory"),
                                           ("mismatch", "max errors o 0.4")])
def test_a_kernel_named_explicitly_raises_instead(on_gpu, fault, reason):
  on_gpu(Substitute(fault))
  with pytest.raises(RuntimeError, match=f"attention impl 'pallas_gpu' failed its self-check on "
                                         f"gpu: .*{reason}"):
    choose("pallas_gpu")


def test_the_check_runs_once_per_shape_class(on_gpu, monkeypatch):
  on_gpu(Substitute())
  calls = []
  monkeypatch.setattr(self_check, "check",
                      lambda candidate, reference, shape: calls.append(shape) or
                      self_check.Result(True))
  for _ in range(3):
    assert choose() == ("pallas_gpu", False)
    assert choose("pallas_gpu") == ("pallas_gpu", False)  # the same class, checked by "auto"
  assert choose(dtype=jnp.float32) == ("pallas_gpu", False)
  assert choose(tiling=block_contract.Tiling(8, 8, False)) == ("pallas_gpu", False)
  assert [(c.dtype, c.causal) for c in calls] == [("bfloat16", True), ("float32", True),
                                                  ("bfloat16", False)]


def test_on_a_cpu_auto_is_xla_without_a_check(monkeypatch):
  monkeypatch.setattr(impls, "_CHECKED", {})
  monkeypatch.setattr(self_check, "check", lambda *a, **kw: pytest.fail("no check on a CPU"))
  assert impls.choose("auto", TILING, jnp.bfloat16, 16, platform="cpu") == ("xla", False)
  # A kernel named on a CPU runs in interpret mode: the same code, tested against float64 elsewhere.
  named = impls.choose("pallas_gpu", TILING, jnp.bfloat16, 16, platform="cpu")
  assert named == ("pallas_gpu", True)


def test_the_real_kernel_compiled_for_a_gpu_on_a_cpu_falls_back(on_gpu, caplog):
  # No substitute: the Triton kernel itself, which a CPU cannot compile (a real compile failure).
  q, k, v = random_qkv(np.random.default_rng(1), seq=64)
  mesh = sp_mesh(2)
  attend = jax.jit(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, block_q=16, block_kv=16,
                                                  impl="auto"))
  with caplog.at_level(logging.WARNING), jax.set_mesh(mesh):
    out = np.asarray(attend(q, k, v), np.float64)
  [warning] = warnings_of(caplog)
  assert "did not compile" in warning.getMessage()
  assert "Only interpret mode is supported on CPU" in warning.getMessage()
  assert np.abs(out - ref.attention(q, k, v, ref.visibility(64))[0]).max() <= 1e-5


def test_the_check_passes_the_real_kernel_in_interpret_mode():
  # The fused kernel's code (interpret mode) against xla: errors far inside the tolerance.
  shape = self_check.ShapeClass(16, 8, "bfloat16", 64, True, True)
  result = self_check.check(impls.get("pallas_gpu", True), impls.get("xla"), shape)
  assert result.ok, result.reason
  assert set(result.errors) == {"o", "dq", "dk", "dv"}
  assert max(result.errors.values()) <= self_check.TOLERANCES["bfloat16"] / 10
