"""A short check of a block implementation on this device against a reference implementation.

  result = check(candidate, reference, ShapeClass(512, 512, "bfloat16", 128, True, True))
  result.ok, result.reason, result.errors  # errors: {"o"|"dq"|"dk"|"dv": relative max error}

Both implementations (`block_contract.BlockAttention`) run forward, then backward from their own
(o, lse), on one small random case of the shape class: queries 2 * block_q tokens, keys 2 * block_kv
(the lengths of a ring piece), two query heads sharing one key/value head, two documents when the
class has segment ids. The candidate is compiled ahead of time (a failure there is reported with
the compiler's text) and then run; its outputs must be finite and within `TOLERANCES[dtype]` of
the reference's, as max |got - want| / max |want| per output. The check runs in a thread of its
own, outside any trace or mesh context of the caller, so it may be called while the caller is
being traced (ring attention calls it from inside `jax.shard_map`, where
`jax.ensure_compile_time_eval()` alone would still see the manual mesh axes).
"""
import concurrent.futures
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lwm.ops import block_contract

# Relative max error allowed per dtype of q, k, v. Both sides accumulate in float32 but round the
# probabilities and ds to the input dtype before their matmuls, in different tile orders: for bf16
# (8 mantissa bits, eps 2^-8) a correct kernel stays a few eps from the reference; a wrong mask,
# scale or statistic is off by O(1).
TOLERANCES = {"bfloat16": 3e-2, "float16": 5e-3, "float32": 2e-3}


@dataclasses.dataclass(frozen=True)
class ShapeClass:
  """What a compiled block call depends on: tiles, input dtype, head dim, causal, segment ids."""
  block_q: int
  block_kv: int
  dtype: str
  head_dim: int
  causal: bool
  segments: bool = True


@dataclasses.dataclass(frozen=True)
class Result:
  """ok, the reason when not ok ("" when ok), and the relative max error of each output."""
  ok: bool
  reason: str = ""
  errors: dict = dataclasses.field(default_factory=dict)


def _case(shape: ShapeClass, seed: int):
  """(q, k, v, do, mask, tiling) of the shape class, random normal."""
  n, m = 2 * shape.block_q, 2 * shape.block_kv
  keys = jax.random.split(jax.random.key(seed), 4)
  dtype = jnp.dtype(shape.dtype)
  normal = lambda key, length, heads: jax.random.normal(
      key, (1, length, heads, shape.head_dim), jnp.float32).astype(dtype)
  q, k, v, do = normal(keys[0], n, 2), normal(keys[1], m, 1), normal(keys[2], m, 1), \
      normal(keys[3], n, 2)
  q_seg = kv_seg = None
  if shape.segments:  # two documents, the boundary inside both tiles' ranges
    q_seg = jnp.where(jnp.arange(n) < n // 3, 1, 2)[None].astype(jnp.int32)
    kv_seg = jnp.where(jnp.arange(m) < m // 3, 1, 2)[None].astype(jnp.int32)
  mask = block_contract.BlockMask(jnp.arange(n, dtype=jnp.int32), jnp.arange(m, dtype=jnp.int32),
                                  q_seg, kv_seg)
  return (q, k, v, do), mask, block_contract.Tiling(shape.block_q, shape.block_kv, shape.causal)


def _fwd_bwd(attention, mask, tiling):
  def run(q, k, v, do):
    o, lse = block_contract.finalize(attention.forward(q, k, v, mask, tiling), q.dtype)
    return (o, *attention.backward(q, k, v, o, lse, do, mask, tiling))
  return run


def _first_lines(error: Exception, lines: int = 3) -> str:
  text = " | ".join(line for line in str(error).splitlines() if line.strip())
  text = " | ".join(text.split(" | ")[:lines])
  return f"{type(error).__name__}: {text}"[:500]


def relative_error(got, want) -> float:
  """max |got - want| / max |want| in float64 (inf when got is not finite)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if not np.all(np.isfinite(got)):
    return float("inf")
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _run_both(candidate, reference, shape, seed):
  """{output: relative max error}, or a failed Result when the candidate does not compile or run."""
  args, mask, tiling = _case(shape, seed)
  try:
    compiled = jax.jit(_fwd_bwd(candidate, mask, tiling)).lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    return Result(False, f"{candidate.name} did not compile for {shape}: {_first_lines(e)}")
  try:
    got = jax.block_until_ready(compiled(*args))
  except Exception as e:  # pylint: disable=broad-except
    return Result(False, f"{candidate.name} failed to run for {shape}: {_first_lines(e)}")
  want = jax.jit(_fwd_bwd(reference, mask, tiling))(*args)
  return {name: relative_error(g, w) for name, g, w in zip(("o", "dq", "dk", "dv"), got, want)}


def check(candidate: block_contract.BlockAttention, reference: block_contract.BlockAttention,
          shape: ShapeClass, *, seed: int = 0) -> Result:
  """Compiles and runs `candidate` forward + backward on a small case of `shape` and compares it
  with `reference` (see the module docstring). Never raises for the candidate's failures."""
  if shape.dtype not in TOLERANCES:
    raise ValueError(f"self-check dtype must be one of {tuple(TOLERANCES)}, got {shape.dtype!r}")
  tolerance = TOLERANCES[shape.dtype]
  # JAX's trace and mesh contexts are per thread: in a thread of its own the check compiles and
  # runs concretely even when called while a caller is traced (ring attention inside shard_map).
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    outcome = pool.submit(_run_both, candidate, reference, shape, seed).result()
  if isinstance(outcome, Result):
    return outcome
  errors = outcome
  worst = max(errors, key=errors.get)
  if errors[worst] > tolerance:
    listed = ", ".join(f"{name} {error:.3g}" for name, error in errors.items())
    return Result(False, f"{candidate.name} differs from {reference.name} for {shape}: relative "
                         f"max errors {listed}; worst {worst} > tolerance {tolerance:g} "
                         f"({shape.dtype})", errors)
  return Result(True, "", errors)
