"""Long-context inference: a ring-attention prefill that keeps every layer's keys and values, then
one-token decode steps against that cache.

The prompt's cache stays where the prefill left it: in the ring's zigzag order, sharded over `sp`
like the activations, so a million-token prompt's keys and values are spread over the devices that
computed them. Generated tokens go to a small second cache of `max_new_tokens` slots. A decode step
attends to both with one softmax (joined through their maxima), so the order of the prompt cache
does not matter: each slot's validity travels with it.

  logits, cache = prefill(model, tokens, vision_mask, lengths, max_new_tokens=16)
  for step in range(16):
    token = sample_token(logits, key, temperature, top_p)
    logits, cache = decode_step(model, cache, token, step)
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lwm import ops
from lwm import sharding as shd
from lwm.model import layers


class KVCache(NamedTuple):
  """Keys and values of a prompt and of the tokens generated after it.

  prompt_k, prompt_v: `[layers, batch, seq, kv_heads, head_dim]`, the prompt in zigzag order.
  prompt_valid: `[batch, seq]` bool in zigzag order: a prompt token, not padding.
  lengths: `[batch]` int32 prompt tokens per row; generated token t sits at position lengths + t.
  k, v: `[layers, batch, max_new_tokens, kv_heads, head_dim]`, slot t = generated token t.
  """
  prompt_k: jax.Array
  prompt_v: jax.Array
  prompt_valid: jax.Array
  lengths: jax.Array
  k: jax.Array
  v: jax.Array


def _qkv(params, h, cos, sin, config):
  """Projections with RoPE: h `[batch, seq, embed]` -> q `[b, s, heads, hd]`, k, v `[b, s, kv,
  hd]`."""
  batch, seq, _ = h.shape
  hd = config.dim_per_head
  q = (h @ params["wq"]).reshape(batch, seq, config.num_heads, hd)
  k = (h @ params["wk"]).reshape(batch, seq, config.num_kv_heads, hd)
  v = (h @ params["wv"]).reshape(batch, seq, config.num_kv_heads, hd)
  return layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin), v


def _prefill_layer(params, x, *, cos, sin, segment_ids, config, mesh):
  """`layers.decoder_layer` that also returns this layer's k, v `[batch, seq, kv_heads, hd]`."""
  batch, seq, _ = x.shape
  h = layers.rms_norm(x, params["attn_norm"], config.rms_norm_eps)
  q, k, v = _qkv(params, h, cos, sin, config)
  q, k, v = (shd.constrain(t, mesh, ("batch", "seq", "act_heads", None)) for t in (q, k, v))
  o = layers.ring_self_attention(q, k, v, segment_ids, mesh=mesh, block_q=config.attention_block_q,
                                 block_kv=config.attention_block_kv)
  x = x + o.reshape(batch, seq, -1) @ params["wo"]
  x = shd.constrain(x, mesh, ("batch", "seq", "act_embed"))
  h = layers.rms_norm(x, params["ffn_norm"], config.rms_norm_eps)
  x = x + layers.blockwise_ffn(h, params["w_gate"], params["w_up"], params["w_down"],
                               chunk=config.ffn_chunk, mesh=mesh)
  return shd.constrain(x, mesh, ("batch", "seq", "act_embed")), k, v


def prefill(model, tokens, vision_mask, lengths, *, max_new_tokens: int):
  """Runs the prompt through the model with ring attention; returns (logits, cache).

  tokens: `[batch, seq]` int32 in natural order, each row's prompt first then padding (seq a
  multiple of 2 * sp); vision_mask: `[batch, seq]` bool or None; lengths: `[batch]` int32, each
  >= 1.
  Returns the float32 text logits `[batch, vocab]` that follow each row's last prompt token and a
  KVCache with room for `max_new_tokens` generated tokens.
  """
  config, mesh = model.config, model.get_mesh()
  batch, seq = tokens.shape
  sp = mesh.shape["sp"]
  if seq % (2 * sp):
    raise ValueError(f"prompt length {seq} must be padded to a multiple of 2 * sp = {2 * sp}")
  positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
  valid = positions < lengths[:, None]
  zig = lambda a: None if a is None else ops.to_zigzag(a, sp)
  positions_z, valid_z = zig(positions), zig(valid)
  x = shd.constrain(model.embed(zig(tokens), zig(vision_mask)), mesh, ("batch", "seq", "act_embed"))
  cos, sin = layers.rope_angles(positions_z, config.dim_per_head, config.rope_theta,
                                config.rope_scaling)

  def body(x, params):
    params = jax.tree.map(lambda w: w.astype(config.compute_dtype), params)
    x, k, v = _prefill_layer(params, x, cos=cos, sin=sin, segment_ids=valid_z.astype(jnp.int32),
                             config=config, mesh=mesh)
    return x, (k, v)

  x, (prompt_k, prompt_v) = jax.lax.scan(body, x, model.layers.arrays())
  last = jnp.argmax(positions_z == (lengths - 1)[:, None], axis=1)  # zigzag index of the last token
  hidden = jnp.take_along_axis(x, last[:, None, None], axis=1)
  hidden = layers.rms_norm(hidden, model.final_norm[...], config.rms_norm_eps)
  empty = jnp.zeros((config.num_layers, batch, max_new_tokens) + prompt_k.shape[3:], prompt_k.dtype)
  cache = KVCache(prompt_k, prompt_v, valid_z, lengths.astype(jnp.int32), empty, empty)
  return model.logits(hidden)[:, 0], cache


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


def decode_step(model, cache: KVCache, tokens, step):
  """Feeds generated token number `step` (text ids `[batch]`); returns (logits `[batch, vocab]`,
  cache with its keys and values in slot `step`)."""
  config = model.config
  positions = (cache.lengths + step)[:, None]
  x = model.embed(tokens[:, None].astype(jnp.int32))
  cos, sin = layers.rope_angles(positions, config.dim_per_head, config.rope_theta,
                                config.rope_scaling)

  def body(x, inputs):
    params, prompt_k, prompt_v, k, v = inputs
    params = jax.tree.map(lambda w: w.astype(config.compute_dtype), params)
    h = layers.rms_norm(x, params["attn_norm"], config.rms_norm_eps)
    q, k_new, v_new = _qkv(params, h, cos, sin, config)
    k = jax.lax.dynamic_update_slice_in_dim(k, k_new.astype(k.dtype), step, axis=1)
    v = jax.lax.dynamic_update_slice_in_dim(v, v_new.astype(v.dtype), step, axis=1)
    o = cached_attention(q, prompt_k, prompt_v, cache.prompt_valid, k, v, step)
    x = x + o.reshape(x.shape[0], 1, -1) @ params["wo"]
    h = layers.rms_norm(x, params["ffn_norm"], config.rms_norm_eps)
    return x + layers.swiglu(h, params["w_gate"], params["w_up"], params["w_down"]), (k, v)

  x, (k, v) = jax.lax.scan(body, x, (model.layers.arrays(), cache.prompt_k, cache.prompt_v,
                                     cache.k, cache.v))
  hidden = layers.rms_norm(x, model.final_norm[...], config.rms_norm_eps)
  return model.logits(hidden)[:, 0], cache._replace(k=k, v=v)


def sample_token(logits, key, temperature: float = 0.0, top_p: float = 1.0):
  """Next tokens `[batch]` int32 from logits `[batch, vocab]`: greedy when temperature is 0, else
  sampled at `temperature` from the smallest set of tokens whose probability reaches `top_p`."""
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a token while the mass before it is below top_p (the most likely one always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
