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

Chunked prefill and conversations use a second cache, `ChatCache`: natural order, room for a fixed
number of tokens, filled by `extend` one chunk at a time (each chunk attends to the cache so far,
the cache's pieces merged over the mesh by lwm.ops.cache_attention); a decode step is a chunk of
one token. Peak memory is then set by the chunk and the cache, not by the prompt.
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


def prefill(model, tokens, vision_mask, lengths, *, max_new_tokens: int):
  """Runs the prompt through the model with ring attention; returns (logits, cache).

  tokens: `[batch, seq]` int32 in natural order, each row's prompt first then padding (seq a
  multiple of 2 * sp * hp); vision_mask: `[batch, seq]` bool or None; lengths: `[batch]` int32, each
  >= 1.
  Returns the float32 text logits `[batch, vocab]` that follow each row's last prompt token and a
  KVCache with room for `max_new_tokens` generated tokens.
  """
  config, mesh = model.config, model.get_mesh()
  batch, seq = tokens.shape
  sp = shd.ring_shards(mesh)
  if seq % shd.seq_multiple(mesh):
    raise ValueError(f"prompt length {seq} must be padded to a multiple of 2 * the sequence shards "
                     f"{shd.mesh_axes('seq')} = {shd.seq_multiple(mesh)}")
  config.check_length(seq + max_new_tokens, "padded prompt + max_new_tokens")
  positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
  valid = positions < lengths[:, None]
  zig = lambda a: None if a is None else ops.to_zigzag(a, sp)
  positions_z, valid_z = zig(positions), zig(valid)
  x = shd.constrain(model.embed(zig(tokens), zig(vision_mask)), mesh, ("batch", "seq", "act_embed"))
  cos, sin = layers.rope_angles(positions_z, config.dim_per_head, config.rope_theta,
                                config.rope_scaling)

  def body(x, params):
    params = jax.tree.map(lambda w: w.astype(config.compute_dtype), params)
    return layers.decoder_layer(params, x, cos=cos, sin=sin, segment_ids=valid_z.astype(jnp.int32),
                                config=config, mesh=mesh, mode="prefill")

  x, (prompt_k, prompt_v) = jax.lax.scan(body, x, model.layers.arrays())
  last = jnp.argmax(positions_z == (lengths - 1)[:, None], axis=1)  # zigzag index of the last token
  hidden = jnp.take_along_axis(x, last[:, None, None], axis=1)
  hidden = layers.rms_norm(hidden, model.final_norm[...], config.rms_norm_eps)
  empty = jnp.zeros((config.num_layers, batch, max_new_tokens) + prompt_k.shape[3:], prompt_k.dtype)
  cache = KVCache(prompt_k, prompt_v, valid_z, lengths.astype(jnp.int32), empty, empty)
  return model.logits(hidden)[:, 0], cache


def decode_step(model, cache: KVCache, tokens, step, *, is_vision=None, head: str = "text"):
  """Feeds generated token number `step` (ids `[batch]`, text ids unless `is_vision` says which
  are vision ids); returns (the `head`'s logits `[batch, vocab]`, cache with its keys and values in
  slot `step`)."""
  config, mesh = model.config, model.get_mesh()
  positions = (cache.lengths + step)[:, None]
  mask = None if is_vision is None else jnp.broadcast_to(is_vision, tokens.shape)[:, None]
  x = model.embed(tokens[:, None].astype(jnp.int32), mask)
  cos, sin = layers.rope_angles(positions, config.dim_per_head, config.rope_theta,
                                config.rope_scaling)

  def body(x, inputs):
    params, prompt_k, prompt_v, k, v = inputs
    params = jax.tree.map(lambda w: w.astype(config.compute_dtype), params)
    layer_cache = layers.DecodeCache(prompt_k, prompt_v, cache.prompt_valid, k, v, step)
    return layers.decoder_layer(params, x, cos=cos, sin=sin, config=config, mesh=mesh,
                                mode="decode", cache=layer_cache)

  x, (k, v) = jax.lax.scan(body, x, (model.layers.arrays(), cache.prompt_k, cache.prompt_v,
                                     cache.k, cache.v))
  hidden = layers.rms_norm(x, model.final_norm[...], config.rms_norm_eps)
  return model.logits(hidden, head)[:, 0], cache._replace(k=k, v=v)


class ChatCache(NamedTuple):
  """A natural-order cache that grows chunk by chunk (chunked prefill, chat turns, decoding).

  k, v: `[layers, batch, capacity, kv_heads, head_dim]`, slot s = the token at position s, sharded
  over the `seq` rule's mesh axes (contiguous pieces); lengths: `[batch]` int32 tokens held.
  """
  k: jax.Array
  v: jax.Array
  lengths: jax.Array


def empty_cache(config, batch: int, capacity: int) -> ChatCache:
  """A ChatCache with room for `capacity` tokens per row, none held, in the compute dtype."""
  shape = (config.num_layers, batch, capacity, config.num_kv_heads, config.dim_per_head)
  zeros = lambda: jnp.zeros(shape, config.compute_dtype)  # two buffers: both are donated
  return ChatCache(zeros(), zeros(), jnp.zeros((batch,), jnp.int32))


def extend(model, cache: ChatCache, tokens, vision_mask, counts):
  """Feeds a chunk: row b's first counts[b] tokens of `tokens` `[batch, chunk]` (vision_mask alike,
  or None) enter the cache at positions lengths[b]..; each attends to the cache so far.

  Returns (float32 text logits `[batch, vocab]` after each row's last fed token, the cache). A row
  with counts 0 is left as it is (its logits are meaningless). The caller keeps lengths + chunk
  within the capacity (`check_room`).
  """
  config, mesh = model.config, model.get_mesh()
  counts = jnp.asarray(counts, jnp.int32)
  positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
  x = model.embed(tokens, vision_mask)
  cos, sin = layers.rope_angles(positions, config.dim_per_head, config.rope_theta,
                                config.rope_scaling)

  # The cache is carried and each layer's piece written back in place: as scanned inputs and
  # outputs it would be read from one buffer and stacked into a second, a copy of the whole cache.
  def body(carry, inputs):
    x, k_all, v_all = carry
    index, params = inputs
    params = jax.tree.map(lambda w: w.astype(config.compute_dtype), params)
    layer = lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False)
    layer_cache = layers.ChunkCache(layer(k_all), layer(v_all), cache.lengths, counts)
    x, (k, v) = layers.decoder_layer(params, x, cos=cos, sin=sin, config=config, mesh=mesh,
                                     mode="chunk", cache=layer_cache)
    put = lambda a, new: jax.lax.dynamic_update_index_in_dim(a, new, index, 0)
    return (x, put(k_all, k), put(v_all, v)), None

  (x, k, v), _ = jax.lax.scan(body, (x, cache.k, cache.v),
                              (jnp.arange(config.num_layers), model.layers.arrays()))
  last = jnp.maximum(counts - 1, 0)
  hidden = jnp.take_along_axis(x, last[:, None, None], axis=1)
  hidden = layers.rms_norm(hidden, model.final_norm[...], config.rms_norm_eps)
  return model.logits(hidden)[:, 0], ChatCache(k, v, cache.lengths + counts)


def check_room(capacity: int, held: int, adding: int, what: str = "the turn") -> None:
  """Refuses to feed `adding` tokens to a cache of `capacity` slots that holds `held`."""
  if held + adding > capacity:
    raise ValueError(f"{what} needs {adding} more tokens but the cache holds {held} of "
                     f"{capacity}: start with a larger cache (--max-cache) or a shorter prompt")


def chunk_counts(lengths, start: int, chunk: int):
  """Tokens of each row that fall in the chunk [start, start + chunk) of prompts of `lengths`."""
  return jnp.clip(jnp.asarray(lengths, jnp.int32) - start, 0, chunk)


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
