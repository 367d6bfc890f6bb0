"""The math of one decoder layer, as pure functions of arrays: RMSNorm, RoPE, SwiGLU, attention.

Shapes: x `[batch, seq, embed]`; q `[batch, seq, heads, head_dim]`; k, v `[batch, seq, kv_heads,
head_dim]`. Sequences arrive in the ring's zigzag order; `positions` carry each token's true index.
"""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from lwm import ops
from lwm import sharding as shd
from lwm.model import rope


def rms_norm(x, weight, eps: float):
  """RMSNorm as LLaMA computes it: statistics in float32, scale in the input dtype.

  x: [..., embed]; weight: [embed]. Returns x's shape and dtype.
  """
  xf = x.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return y.astype(x.dtype) * weight.astype(x.dtype)


def rope_angles(positions, head_dim: int, theta: float, scaling=()):
  """cos, sin of the rotary angles for int positions `[batch, seq]`.

  scaling: ModelConfig.rope_scaling (see lwm.model.rope). Returns two float32 arrays
  `[batch, seq, head_dim // 2]`.
  """
  inv_freq = rope.inverse_frequencies(head_dim, theta, scaling)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
  """Rotates x `[batch, seq, heads, head_dim]` in the Hugging Face "rotate_half" convention.

  Pairs are (i, i + head_dim/2), not the interleaved (2i, 2i+1) of Meta's complex form: HF
  checkpoints permute q/k weights for this convention, so it is the one that reproduces their
  logits.
  """
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def swiglu(x, w_gate, w_up, w_down):
  """LLaMA's feed-forward: down(silu(gate(x)) * up(x)). x: [..., embed]."""
  return (jax.nn.silu(x @ w_gate) * (x @ w_up)) @ w_down


def _divisor_at_most(n: int, target: int) -> int:
  """The largest divisor of n that is <= target."""
  for d in range(min(n, target), 0, -1):
    if n % d == 0:
      return d
  return 1


def blockwise_ffn(x, w_gate, w_up, w_down, *, chunk: int, mesh: Mesh):
  """SwiGLU over sequence chunks of at most `chunk` tokens per device, recomputed in the backward.

  Only one chunk's `[chunk, mlp]` hidden exists at a time. The sequence is viewed as
  `[batch, sp, chunks, chunk, embed]` so the scan runs over a dimension that is not sharded.
  """
  batch, seq, embed = x.shape
  sp = mesh.shape["sp"]
  local = seq // sp
  size = _divisor_at_most(local, chunk)
  xs = x.reshape(batch, sp, local // size, size, embed)
  xs = shd.constrain(xs, mesh, ("batch", "seq", None, None, "act_embed"))
  xs = jnp.moveaxis(xs, 2, 0)

  @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable,
                     prevent_cse=False)
  def one_chunk(carry, xc):
    return carry, swiglu(xc, w_gate, w_up, w_down)

  _, ys = jax.lax.scan(one_chunk, None, xs)
  ys = shd.constrain(ys, mesh, (None, "batch", "seq", None, "act_embed"))
  return jnp.moveaxis(ys, 0, 2).reshape(batch, seq, embed)


def attention_specs(mesh: Mesh, batch: int):
  """shard_map specs for q/k/v `[batch, seq, heads, head_dim]` and segment ids `[batch, seq]`."""
  b = shd.batch_axes(mesh, batch) or None
  return P(b, "sp", "tp", None), P(b, "sp")


def ring_self_attention(q, k, v, segment_ids, *, mesh: Mesh, block_q: int, block_kv: int):
  """Causal attention with the sequence (zigzag order) sharded over `sp`, heads over `tp`.

  q: [batch, seq, heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim]; segment_ids:
  [batch, seq] int32 (0 = padding) or None. Returns [batch, seq, heads, head_dim].
  """
  tp, sp = mesh.shape["tp"], mesh.shape["sp"]
  if q.shape[2] % tp or k.shape[2] % tp:
    raise ValueError(f"tp={tp} must divide heads={q.shape[2]} and kv_heads={k.shape[2]}")
  half = q.shape[1] // sp // 2
  if half == 0 or q.shape[1] % (2 * sp):
    raise ValueError(f"sequence length {q.shape[1]} must be a multiple of 2 * sp = {2 * sp}")
  qkv_spec, seg_spec = attention_specs(mesh, q.shape[0])
  fn = functools.partial(ops.ring_attention_sharded, axis_name="sp", causal=True, layout="zigzag",
                         block_q=_divisor_at_most(half, block_q),
                         block_kv=_divisor_at_most(half, block_kv))
  if segment_ids is None:
    return jax.shard_map(lambda a, b, c: fn(a, b, c), mesh=mesh, in_specs=(qkv_spec,) * 3,
                         out_specs=qkv_spec, check_vma=False)(q, k, v)
  return jax.shard_map(fn, mesh=mesh, in_specs=(qkv_spec,) * 3 + (seg_spec,),
                       out_specs=qkv_spec, check_vma=False)(q, k, v, segment_ids)


def decoder_layer(params: dict, x, *, cos, sin, segment_ids, config, mesh: Mesh, layer_index=0):
  """One pre-norm LLaMA layer. params: this layer's weights (see `Transformer`), in compute dtype.

  x: [batch, seq, embed]; cos, sin: [batch, seq, head_dim // 2]; layer_index: int32 scalar, traced
  from the layer scan. Returns [batch, seq, embed].
  """
  batch, seq, _ = x.shape
  hd = config.dim_per_head
  h = rms_norm(x, params["attn_norm"], config.rms_norm_eps)
  q = (h @ params["wq"]).reshape(batch, seq, config.num_heads, hd)
  k = (h @ params["wk"]).reshape(batch, seq, config.num_kv_heads, hd)
  v = (h @ params["wv"]).reshape(batch, seq, config.num_kv_heads, hd)
  q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  q, k, v = (shd.constrain(t, mesh, ("batch", "seq", "act_heads", None)) for t in (q, k, v))
  attend = functools.partial(ring_self_attention, mesh=mesh, block_q=config.attention_block_q,
                             block_kv=config.attention_block_kv)
  # Why the always-true cond: when jax.grad linearizes the scan over layers, it hoists every
  # computation that does not depend on the loop out of it, recursing into the ring's own loops;
  # the ring's masks (functions of positions and segment ids only) then become residuals stacked
  # over ring steps x tiles x tiles (25 GiB per device at 32K tokens for `1b`). A branch index that
  # depends on the scanned layer index keeps the whole attention call inside the loop.
  o = jax.lax.cond(layer_index >= 0, lambda args: attend(*args),
                   lambda args: jnp.zeros_like(args[0]), (q, k, v, segment_ids))
  x = x + o.reshape(batch, seq, config.num_heads * hd) @ params["wo"]
  x = shd.constrain(x, mesh, ("batch", "seq", "act_embed"))
  h = rms_norm(x, params["ffn_norm"], config.rms_norm_eps)
  x = x + blockwise_ffn(h, params["w_gate"], params["w_up"], params["w_down"],
                        chunk=config.ffn_chunk, mesh=mesh)
  return shd.constrain(x, mesh, ("batch", "seq", "act_embed"))
