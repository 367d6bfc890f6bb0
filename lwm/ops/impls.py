"""The block implementations of ring attention, by name, and which one "auto" means.

  impl, interpret = resolve("auto")        # ("xla", False) on a CPU, ("pallas_gpu", False) on a GPU
  attention = get(impl, interpret)         # a `block_contract.BlockAttention`

"xla" (`lwm.ops.block_xla`, tiled jnp: the reference and the CPU path), "pallas_gpu"
(`lwm.ops.block_pallas` lowered by Triton), "pallas_tpu" (the same Pallas kernel lowered by
Mosaic). On a CPU the Pallas ones run their kernels with `interpret=True`.
"""
import functools

import jax

from lwm.ops import block_pallas, block_xla
from lwm.ops.block_contract import BlockAttention

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
