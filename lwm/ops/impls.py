"""The block implementations of ring attention, by name, and which one "auto" means.

  impl, interpret = resolve("auto")        # ("xla", False) on a CPU, ("pallas_gpu", False) on a GPU
  attention = get(impl, interpret)         # a `block_contract.BlockAttention`
  impl, interpret = choose("auto", tiling, jnp.bfloat16, 128)  # resolve, then self-check the kernel

"xla" (`lwm.ops.block_xla`, tiled jnp: the reference and the CPU path), "pallas_gpu"
(`lwm.ops.block_pallas` lowered by Triton), "pallas_tpu" (the same Pallas kernel lowered by
Mosaic). On a CPU the Pallas ones run their kernels with `interpret=True`.

`choose` is what ring attention calls: on a GPU or TPU the first use of a fused kernel per process
and shape class (tiles, dtype, head dim, causal, segment ids) runs `lwm.ops.self_check` against
"xla" on the device. "auto" falls back to "xla" on failure with one logged warning; a kernel asked
for by name raises with the reason instead.
"""
import functools
import logging

import jax
import jax.numpy as jnp

from lwm.ops import block_pallas, block_xla, self_check
from lwm.ops.block_contract import BlockAttention, Tiling

logger = logging.getLogger(__name__)

IMPLS = ("auto", "xla", "pallas_gpu", "pallas_tpu")
_FUSED = {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu", "tpu": "pallas_tpu"}


def resolve(impl: str, platform: str | None = None) -> tuple[str, bool]:
  """(implementation name, interpret) for `impl` on `platform` (default: JAX's default backend).

  "auto" picks the fused kernel of the platform ("xla" on a CPU); a Pallas kernel asked for on a
  platform that cannot compile it runs in interpret mode (the same kernel code, slowly).
  """
  if impl not in IMPLS:
    raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
  platform = platform or jax.default_backend()
  if impl == "auto":
    impl = _FUSED.get(platform, "xla")
  native = {"pallas_gpu": ("gpu", "cuda", "rocm"), "pallas_tpu": ("tpu",)}
  return impl, impl != "xla" and platform not in native[impl]


@functools.cache
def get(impl: str, interpret: bool = False) -> BlockAttention:
  """The implementation named `impl` (a resolved name, not "auto")."""
  if impl == "xla":
    return BlockAttention("xla", block_xla.forward, block_xla.backward)
  if impl in ("pallas_gpu", "pallas_tpu"):
    backend = impl.removeprefix("pallas_")
    return BlockAttention(impl,
                          functools.partial(block_pallas.forward, backend=backend,
                                            interpret=interpret),
                          functools.partial(block_pallas.backward, backend=backend,
                                            interpret=interpret))
  raise ValueError(f"attention impl must be one of {IMPLS[1:]} here, got {impl!r}")


# (platform, implementation, ShapeClass) -> self_check.Result, for this process.
_CHECKED: dict = {}


def _platform() -> str:
  return jax.default_backend()


def choose(impl: str, tiling: Tiling, dtype, head_dim: int, *, segments: bool = True,
           platform: str | None = None) -> tuple[str, bool]:
  """(implementation name, interpret) to run: `resolve`, then, for a fused kernel compiled for
  this device, the self-check of its shape class (cached per process).

  On a failed check "auto" gives ("xla", False) and logs one warning with the reason; a kernel
  named explicitly raises RuntimeError with the reason. "xla" and interpret mode are not checked.
  """
  platform = platform or _platform()
  name, interpret = resolve(impl, platform)
  if name == "xla" or interpret:
    return name, interpret
  shape = self_check.ShapeClass(tiling.block_q, tiling.block_kv, jnp.dtype(dtype).name, head_dim,
                                tiling.causal, segments)
  key = (platform, name, shape)
  first = key not in _CHECKED
  if first:
    _CHECKED[key] = self_check.check(get(name, False), get("xla", False), shape)
  result = _CHECKED[key]
  if result.ok:
    return name, False
  if impl != "auto":
    raise RuntimeError(f"attention impl {impl!r} failed its self-check on {platform}: "
                       f"{result.reason}; use attention impl 'xla' (or 'auto', which falls back)")
  if first:
    logger.warning("attention impl 'auto' uses 'xla' instead of %r on %s: %s", name, platform,
                   result.reason)
  return "xla", False
