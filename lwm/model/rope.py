"""RoPE inverse frequencies, with the context-extension scalings that Hugging Face LLaMAs use.

`scaling` is `ModelConfig.rope_scaling`: `()` for plain RoPE, else sorted `(key, value)` pairs of
one of SCALING_KEYS' types. The formulas are those of transformers' `modeling_rope_utils`, in
float32 as it computes them; both scalings only change the frequencies (no attention factor).
"""
import math

import jax.numpy as jnp

# rope_type -> the keys it needs (all required; no others are accepted).
SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "high_freq_factor", "low_freq_factor", "original_max_position_embeddings"),
}


def normalize_scaling(scaling) -> tuple:
  """`None`, `()`, a dict or (key, value) pairs -> the sorted tuple ModelConfig stores.

  Raises ValueError naming the rope_type or key that is not one of SCALING_KEYS'.
  """
  params = dict(scaling or ())
  if not params:
    return ()
  kind = params.get("rope_type")
  if kind not in SCALING_KEYS:
    raise ValueError(f"rope_scaling rope_type={kind!r} is not implemented; expected one of "
                     f"{sorted(SCALING_KEYS)} (or no scaling)")
  expected = set(SCALING_KEYS[kind]) | {"rope_type"}
  if set(params) != expected:
    raise ValueError(f"rope_scaling of rope_type {kind!r} needs exactly the keys {sorted(expected)}"
                     f"; got {sorted(params)}")
  if kind == "llama3" and params["high_freq_factor"] <= params["low_freq_factor"]:
    raise ValueError(f"rope_scaling: high_freq_factor={params['high_freq_factor']} must exceed "
                     f"low_freq_factor={params['low_freq_factor']}")
  return tuple(sorted(params.items()))


def inverse_frequencies(head_dim: int, theta: float, scaling=()):
  """`[head_dim // 2]` float32 rotary frequencies theta^(-2i / head_dim), then scaled.

  linear: every frequency divided by `factor` (positions interpolated). llama3: wavelengths longer
  than original_max_position_embeddings / low_freq_factor are divided by `factor`, those shorter
  than original_max_position_embeddings / high_freq_factor are kept, and the band between blends
  the two linearly in original_max_position_embeddings / wavelength.
  """
  exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv_freq = 1.0 / (theta ** exponent)
  params = dict(scaling)
  kind, factor = params.get("rope_type"), params.get("factor")
  if kind is None:
    return inv_freq
  if kind == "linear":
    return inv_freq / factor
  if kind != "llama3":
    raise ValueError(f"rope_scaling rope_type={kind!r} is not implemented")
  low, high = params["low_freq_factor"], params["high_freq_factor"]
  original = params["original_max_position_embeddings"]
  wavelength = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelength > original / low, inv_freq / factor, inv_freq)
  smooth = (original / wavelength - low) / (high - low)
  blended = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelength >= original / high) & (wavelength <= original / low)
  return jnp.where(medium, blended, scaled)
