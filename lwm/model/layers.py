"""The math of one decoder layer, as pure functions of arrays: RMSNorm, RoPE, SwiGLU, attention.

Shapes: x `[batch, seq, embed]`; q `[batch, seq, heads, head_dim]`; k, v `[batch, seq, kv_heads,
head_dim]`. Sequences arrive in the ring's zigzag order; `positions` carry each token's true index.
`decoder_layer` is the one layer of training, prefill and cached decode (its `mode`).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import Mesh, PartitionSpec as P

from lwm import ops
from lwm import sharding as shd
from lwm.model import rope
from lwm.ops import cache_attention, head_parallel


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


def dense(x, params: dict, weight: str, bias: str):
  """x @ params[weight], plus params[bias] where the layer has that bias (ModelConfig.*_bias)."""
  y = x @ params[weight]
  return y + params[bias] if bias in params else y


def swiglu(x, params: dict):
  """LLaMA's feed-forward: down(silu(gate(x)) * up(x)), each projection with its bias if any.

  x: [..., embed]; params: w_gate, w_up `[embed, mlp]`, w_down `[mlp, embed]` and optionally
  b_gate, b_up `[mlp]`, b_down `[embed]`.
  """
  gate, up = dense(x, params, "w_gate", "b_gate"), dense(x, params, "w_up", "b_up")
  return dense(jax.nn.silu(gate) * up, params, "w_down", "b_down")


FFN_PARAMS = ("w_gate", "w_up", "w_down", "b_gate", "b_up", "b_down")


def divisor_at_most(n: int, target: int) -> int:
  """The largest divisor of n that is <= target."""
  for d in range(min(n, target), 0, -1):
    if n % d == 0:
      return d
  return 1


def blockwise_ffn(x, params: dict, *, chunk: int, mesh: Mesh):
  """SwiGLU (`swiglu`'s params) over sequence chunks of at most `chunk` tokens per device,
  recomputed in the backward.

  Only one chunk's `[chunk, mlp]` hidden exists at a time. The sequence is viewed as
  `[batch, shards, chunks, chunk, embed]` (shards: the mesh's `seq` pieces) so the scan runs over
  a dimension that is not sharded.
  """
  batch, seq, embed = x.shape
  shards = shd.seq_shards(mesh)
  local = seq // shards
  size = divisor_at_most(local, chunk)
  xs = x.reshape(batch, shards, local // size, size, embed)
  xs = shd.constrain(xs, mesh, ("batch", "seq", None, None, "act_embed"))
  xs = jnp.moveaxis(xs, 2, 0)

  @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable,
                     prevent_cse=False)
  def one_chunk(carry, xc):
    return carry, swiglu(xc, params)

  _, ys = jax.lax.scan(one_chunk, None, xs)
  ys = shd.constrain(ys, mesh, (None, "batch", "seq", None, "act_embed"))
  return jnp.moveaxis(ys, 0, 2).reshape(batch, seq, embed)


def attention_specs(mesh: Mesh, shape):
  """shard_map specs, from the rules, for q/k/v `[batch, seq, heads, head_dim]` of `shape` and
  for segment ids `[batch, seq]`."""
  qkv = shd.logical_to_spec(("batch", "seq", "act_heads", None), shape, mesh)
  return qkv, P(*qkv[:2])


def ring_self_attention(q, k, v, segment_ids, *, mesh: Mesh, block_q: int, block_kv: int,
                        impl: str = "auto"):
  """Causal attention with the sequence (zigzag order over the ring) sharded over the `seq` rule's
  mesh axes and heads over the `act_heads` rule's: ring attention over the ring axis, after an
  all-to-all over the head-parallel axes if the mesh has them (`lwm.ops.head_parallel`).

  q: [batch, seq, heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim]; segment_ids:
  [batch, seq] int32 (0 = padding) or None. Returns [batch, seq, heads, head_dim].
  """
  check_attention_mesh(mesh, q.shape[1], q.shape[2], k.shape[2])
  qkv_spec, seg_spec = attention_specs(mesh, k.shape)
  head_axes = shd.head_parallel_axes()
  half = q.shape[1] // shd.ring_shards(mesh) // 2
  fn = functools.partial(ops.head_parallel_attention_sharded,
                         head_axis=head_axes[0] if head_axes else None, ring_axis=shd.ring_axis(),
                         causal=True, layout="zigzag", block_q=divisor_at_most(half, block_q),
                         block_kv=divisor_at_most(half, block_kv), impl=impl)
  if segment_ids is None:
    return jax.shard_map(lambda a, b, c: fn(a, b, c), mesh=mesh, in_specs=(qkv_spec,) * 3,
                         out_specs=qkv_spec, check_vma=False)(q, k, v)
  return jax.shard_map(fn, mesh=mesh, in_specs=(qkv_spec,) * 3 + (seg_spec,),
                       out_specs=qkv_spec, check_vma=False)(q, k, v, segment_ids)


def check_attention_mesh(mesh: Mesh | None, seq: int, heads: int, kv_heads: int) -> None:
  """Refuses, in a sentence naming the constraint and a mesh that works, a mesh on which
  attention cannot split `heads` or a sequence of `seq` tokens."""
  if mesh is None:
    return
  head_axes = shd.head_parallel_axes()
  if len(head_axes) > 1:
    raise ValueError(f"the 'seq' rule names {len(head_axes)} head-parallel axes {head_axes}; "
                     "attention all-to-alls over one")
  tp, hp = shd.axis_size(mesh, shd.mesh_axes("act_heads")), shd.axis_size(mesh, head_axes)
  sp, names = shd.ring_shards(mesh), dict(mesh.shape)
  if heads % tp or kv_heads % tp:
    works = [d for d in head_parallel.divisors(kv_heads) if heads % d == 0]
    raise ValueError(f"tp={tp} must divide heads={heads} and kv_heads={kv_heads}: tensor "
                     f"parallelism gives each device whole heads; use tp among {works}")
  if (heads // tp) % hp:
    fits = max(d for d in range(1, hp + 1) if (heads // tp) % d == 0 and hp % d == 0)
    raise ValueError(f"hp={hp} must divide the {heads // tp} query heads a device holds "
                     f"(heads={heads} / tp={tp}): the all-to-all gives each hp device a slice of "
                     f"them; use {_mesh_text(names, hp=fits, sp=sp * hp // fits)} instead")
  if seq % (2 * sp * hp):
    raise ValueError(f"sequence length {seq} must be a multiple of 2 * sp * hp = {2 * sp * hp} on "
                     f"mesh {_mesh_text(names)}: zigzag gives each of the sp={sp} ring shards two "
                     f"chunks, cut into hp={hp} whole pieces; pad the sequence to a multiple of "
                     f"{2 * sp * hp}")


def _mesh_text(sizes: dict, **changes) -> str:
  sizes = {**sizes, **changes}
  return ",".join(f"{a}={n}" for a, n in sizes.items() if n != 1) or "a single device"


def cached_attention(q, prompt_k, prompt_v, prompt_valid, k, v, step):
  """One query per row against the prompt cache and generated slots 0..step, one softmax over both.

  q: `[batch, 1, heads, hd]`; prompt_k/v: `[batch, seq, kv_heads, hd]`; prompt_valid:
  `[batch, seq]`; k, v: `[batch, max_new, kv_heads, hd]`. Returns `[batch, 1, heads, hd]` in q's
  dtype.
  """
  batch, _, heads, hd = q.shape
  kv_heads = k.shape[2]
  qg = q.reshape(batch, kv_heads, heads // kv_heads, hd).astype(jnp.float32) * hd ** -0.5
  generated = jnp.broadcast_to(jnp.arange(k.shape[1]) <= step, (batch, k.shape[1]))

  def scores(keys, visible):
    s = jnp.einsum("bkgd,bskd->bkgs", qg, keys.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
    return jnp.where(visible[:, None, None, :], s, -jnp.inf)

  s_prompt, s_new = scores(prompt_k, prompt_valid), scores(k, generated)
  # Slot `step` (the current token) is always visible, so the joint maximum is finite.
  m = jnp.maximum(s_prompt.max(-1), s_new.max(-1))[..., None]
  p_prompt, p_new = jnp.exp(s_prompt - m), jnp.exp(s_new - m)
  mix = lambda p, values: jnp.einsum("bkgs,bskd->bkgd", p, values.astype(jnp.float32),
                                     precision=jax.lax.Precision.HIGHEST)
  out = (mix(p_prompt, prompt_v) + mix(p_new, v)) / (p_prompt.sum(-1) + p_new.sum(-1))[..., None]
  return out.reshape(batch, 1, heads, hd).astype(q.dtype)


# How a layer runs (MaxText's model_mode): "train" is the forward of training (and the model's
# __call__); "prefill" is the same computation that also returns the layer's keys and values;
# "decode" feeds one token per row against a `DecodeCache` and returns its updated slots; "chunk"
# feeds a chunk of tokens per row into a `ChunkCache` (chunked prefill, chat turns, decoding).
MODES = ("train", "prefill", "decode", "chunk")


class DecodeCache(NamedTuple):
  """One layer's keys and values for a decode step (a slice of `lwm.model.decode.KVCache`).

  prompt_k, prompt_v: `[batch, seq, kv_heads, hd]` in zigzag order; prompt_valid: `[batch, seq]`;
  k, v: `[batch, max_new, kv_heads, hd]`, generated slots; step: int32 scalar, the slot this token
  fills.
  """
  prompt_k: jax.Array
  prompt_v: jax.Array
  prompt_valid: jax.Array
  k: jax.Array
  v: jax.Array
  step: jax.Array


class ChunkCache(NamedTuple):
  """One layer's natural-order cache for a chunk (a slice of `lwm.model.decode.ChatCache`).

  k, v: `[batch, capacity, kv_heads, hd]`, slot s = position s, sharded over the `seq` rule's
  axes; lengths: `[batch]` int32 tokens already held; counts: `[batch]` int32 tokens of the chunk
  that are real (the rest is padding and is neither written nor seen).
  """
  k: jax.Array
  v: jax.Array
  lengths: jax.Array
  counts: jax.Array


def chunk_attention(q, k, v, cache: ChunkCache, mesh: Mesh):
  """Writes the chunk's k, v into the cache and attends its queries to the cache so far (causal
  within the chunk), the cache's pieces merged over the sequence axes (lwm.ops.cache_attention).
  Returns (o `[batch, chunk, heads, hd]`, (k_cache, v_cache))."""
  spec = shd.logical_to_spec(("batch", "seq", "kv_heads", None), cache.k.shape, mesh)
  axes = lambda entry: shd.spec_axes(P(entry))
  o, k_cache, v_cache = cache_attention.sharded_write_and_attend(
      q, k, v, cache.k, cache.v, cache.lengths, cache.counts, mesh=mesh,
      batch_axes=axes(spec[0]), seq_axes=axes(spec[1]), head_axes=axes(spec[2]))
  return o, (k_cache, v_cache)


def qkv_projections(params: dict, h, cos, sin, config):
  """h `[batch, seq, embed]` -> q `[batch, seq, heads, hd]`, k, v `[batch, seq, kv_heads, hd]`,
  with RoPE applied to q and k after their biases (if any), as transformers does."""
  batch, seq, _ = h.shape
  hd = config.dim_per_head
  q = dense(h, params, "wq", "bq").reshape(batch, seq, config.num_heads, hd)
  k = dense(h, params, "wk", "bk").reshape(batch, seq, config.num_kv_heads, hd)
  v = dense(h, params, "wv", "bv").reshape(batch, seq, config.num_kv_heads, hd)
  return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def self_attention(params: dict, h, *, cos, sin, segment_ids, config, mesh: Mesh, layer_index,
                   mode: str, cache: DecodeCache | None):
  """The attention block on normalised input h `[batch, seq, embed]`: (output `[batch, seq,
  embed]` after the `wo` projection, kv). kv: None ("train"), this layer's (k, v) `[batch, seq,
  kv_heads, hd]` ("prefill"), or the cache's updated generated slots (k, v) ("decode")."""
  batch, seq, _ = h.shape
  q, k, v = qkv_projections(params, h, cos, sin, config)
  q, k, v = (checkpoint_name(t, "attention_qkv") for t in (q, k, v))  # names: see config.py
  if mode == "decode":
    k_slots = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), cache.step, 1)
    v_slots = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), cache.step, 1)
    o = cached_attention(q, cache.prompt_k, cache.prompt_v, cache.prompt_valid, k_slots, v_slots,
                         cache.step)
    return dense(o.reshape(batch, seq, -1), params, "wo", "bo"), (k_slots, v_slots)
  if mode == "chunk":
    o, kv = chunk_attention(q, k, v, cache, mesh)
    return dense(o.reshape(batch, seq, -1), params, "wo", "bo"), kv
  q, k, v = (shd.constrain(t, mesh, ("batch", "seq", "act_heads", None)) for t in (q, k, v))
  attend = functools.partial(ring_self_attention, mesh=mesh, block_q=config.attention_block_q,
                             block_kv=config.attention_block_kv, impl=config.attention_impl)
  if mode == "train":
    # Why the always-true cond: when jax.grad linearizes the scan over layers, it hoists every
    # computation that does not depend on the loop out of it, recursing into the ring's own loops;
    # the ring's masks (functions of positions and segment ids only) then become residuals stacked
    # over ring steps x tiles x tiles (25 GiB per device at 32K tokens for `1b`). A branch index
    # that depends on the scanned layer index keeps the whole attention call inside the loop.
    o = jax.lax.cond(layer_index >= 0, lambda args: attend(*args),
                     lambda args: jnp.zeros_like(args[0]), (q, k, v, segment_ids))
  else:
    o = attend(q, k, v, segment_ids)
  out = dense(o.reshape(batch, seq, -1), params, "wo", "bo")
  return out, (k, v) if mode == "prefill" else None


def feed_forward(params: dict, h, *, config, mesh: Mesh, mode: str):
  """SwiGLU on normalised input h `[batch, seq, embed]`: blockwise over the sharded sequence, or
  directly for a decode step's single token and a chunk (held whole by every device)."""
  ffn = {name: params[name] for name in FFN_PARAMS if name in params}
  if mode in ("decode", "chunk"):
    return swiglu(h, ffn)
  return blockwise_ffn(h, ffn, chunk=config.ffn_chunk, mesh=mesh)


def decoder_layer(params: dict, x, *, cos, sin, config, mesh: Mesh | None, segment_ids=None,
                  layer_index=0, mode: str = "train", cache: DecodeCache | None = None):
  """One pre-norm LLaMA layer, for training, prefill and cached decode (see MODES).

  params: this layer's weights (see `Transformer`), in compute dtype. x: [batch, seq, embed]
  (seq = 1 in "decode"); cos, sin: [batch, seq, head_dim // 2]; segment_ids: [batch, seq] int32
  or None; layer_index: int32 scalar, traced from the layer scan; cache: this layer's DecodeCache
  ("decode") or ChunkCache ("chunk"). Returns (x [batch, seq, embed], kv) with kv as
  `self_attention` says.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; expected one of {MODES}")
  cached = mode in ("decode", "chunk")
  if (cache is not None) != cached:
    kind = "ChunkCache" if mode == "chunk" else "DecodeCache"
    raise ValueError(f"mode={mode!r} takes {'a' if cached else 'no'} {kind}")
  # Decode steps and chunks are held whole by every device: nothing to place along the sequence.
  place = (lambda t: t) if cached else (
      lambda t: shd.constrain(t, mesh, ("batch", "seq", "act_embed")))
  h = rms_norm(x, params["attn_norm"], config.rms_norm_eps)
  attn_out, kv = self_attention(params, h, cos=cos, sin=sin, segment_ids=segment_ids,
                                config=config, mesh=mesh, layer_index=layer_index, mode=mode,
                                cache=cache)
  x = place(x + attn_out)
  ffn_in = checkpoint_name(rms_norm(x, params["ffn_norm"], config.rms_norm_eps), "ffn_input")
  ffn_out = feed_forward(params, ffn_in, config=config, mesh=mesh, mode=mode)
  return place(x + ffn_out), kv
