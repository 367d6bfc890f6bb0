"""Long-context inference: prefill over the mesh, then cached decoding.

  loaded = lwm.model_dir.load_model("workdirs/stage2")   # latest checkpoint; tokenizer, VQGAN
  generate = Generator(loaded.model)
  [answer] = generate([prompt_ids], max_new_tokens=16, eos_ids=loaded.tokenizer.eos_token_ids)

The prompt is prefilled with ring attention over the mesh's `sp` axis (`lwm.model.decode.prefill`),
then decoded one token at a time against the key/value cache; greedy by default, temperature and
top-p sampling on request. Prompts are padded to a few bucket lengths so that a grid of similar
prompts compiles once per bucket.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lwm import sharding as shd
from lwm.metrics import compiled_peak_bytes
from lwm.model import decode


# ------------------------------------------------------------------------------------ Shapes

def padded_length(n: int, sp: int, buckets_per_octave: int = 8) -> int:
  """`n` rounded up to a multiple of 2 * sp (sp: all the sequence shards, `shd.seq_shards`) and
  of a power of two 1/8 of n's octave (<= 12.5% waste), so prompts of similar length share one
  compilation."""
  if n < 1:
    raise ValueError(f"a prompt needs at least one token, got length {n}")
  step = 2 ** max(0, math.ceil(math.log2(n)) - int(math.log2(buckets_per_octave)))
  step = math.lcm(step, 2 * sp)
  return -(-n // step) * step


def cache_shardings(config, mesh, batch: int, seq: int, max_new_tokens: int) -> decode.KVCache:
  """Shardings of a KVCache: the prompt part like the activations (sequence over sp, kv heads over
  tp), the generated slots with the batch only."""
  kv = (config.num_layers, batch, seq, config.num_kv_heads, config.dim_per_head)
  new = kv[:2] + (max_new_tokens,) + kv[3:]
  prompt = shd.named_sharding(mesh, (None, "batch", "seq", "kv_heads", None), kv)
  slots = shd.named_sharding(mesh, (None, "batch", None, "kv_heads", None), new)
  return decode.KVCache(prompt, prompt, shd.named_sharding(mesh, ("batch", "seq"), (batch, seq)),
                        NamedSharding(mesh, P()), slots, slots)


def _input_sharding(mesh, batch: int, seq: int):
  return shd.named_sharding(mesh, ("batch", "seq"), (batch, seq))


def jit_prefill(graphdef, abstract_params, config, mesh, batch: int, seq: int,
                max_new_tokens: int):
  """`jax.jit` of `prefill(params, tokens, vision_mask, lengths) -> (logits, cache)`, sharded."""
  def run(params, tokens, vision_mask, lengths):
    return decode.prefill(nnx.merge(graphdef, params), tokens, vision_mask, lengths,
                          max_new_tokens=max_new_tokens)

  inputs = _input_sharding(mesh, batch, seq)
  return jax.jit(run, in_shardings=(shd.param_shardings(abstract_params, mesh), inputs, inputs,
                                    NamedSharding(mesh, P())),
                 out_shardings=(NamedSharding(mesh, P()),
                                cache_shardings(config, mesh, batch, seq, max_new_tokens)))


def chat_cache_shardings(config, mesh, batch: int, capacity: int) -> decode.ChatCache:
  """Shardings of a ChatCache: slots over the `seq` rule's axes, kv heads over tp, rows by batch."""
  kv = (config.num_layers, batch, capacity, config.num_kv_heads, config.dim_per_head)
  slots = shd.named_sharding(mesh, (None, "batch", "seq", "kv_heads", None), kv)
  return decode.ChatCache(slots, slots, shd.named_sharding(mesh, ("batch",), (batch,)))


def cache_capacity(tokens: int, sp: int) -> int:
  """`tokens` rounded up to a multiple of the sequence shards (each holds an equal piece)."""
  return -(-tokens // sp) * sp


def jit_extend(graphdef, abstract_params, config, mesh, batch: int, chunk: int, capacity: int):
  """`jax.jit` of `extend(params, cache, tokens, vision_mask, counts) -> (logits, cache)` for
  chunks of `chunk` tokens on a ChatCache of `capacity` slots; the cache is donated."""
  def run(params, cache, tokens, vision_mask, counts):
    return decode.extend(nnx.merge(graphdef, params), cache, tokens, vision_mask, counts)

  replicated = NamedSharding(mesh, P())
  rows = shd.named_sharding(mesh, ("batch", None), (batch, chunk))
  cache = chat_cache_shardings(config, mesh, batch, capacity)
  return jax.jit(run, in_shardings=(shd.param_shardings(abstract_params, mesh), cache, rows, rows,
                                    cache.lengths),
                 out_shardings=(replicated, cache), donate_argnums=(1,))


def _abstract_params(config, mesh):
  from lwm.model.step import abstract_model
  graphdef, abstract = nnx.split(abstract_model(config, mesh), nnx.Param)
  p_shard = shd.param_shardings(abstract, mesh)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, p_shard)
  return graphdef, abstract, params


def lower_prefill(config, mesh, seq_len: int, batch: int = 1, max_new_tokens: int = 64,
                  chunk: int = 0):
  """Lowers a prefill of `batch` x `seq_len` tokens from abstract values only (memory planning):
  `lower_prefill(get_config("1b"), mesh, 1 << 20).compile().memory_analysis()`.

  chunk > 0: lowers one step of chunked prefill instead, `chunk` tokens into a cache with room for
  the prompt and `max_new_tokens` (the step every chunk runs: its peak is the prefill's).
  """
  graphdef, abstract, params = _abstract_params(config, mesh)
  if chunk:
    capacity = cache_capacity(seq_len + max_new_tokens, shd.seq_shards(mesh))
    shardings = chat_cache_shardings(config, mesh, batch, capacity)
    kv = (config.num_layers, batch, capacity, config.num_kv_heads, config.dim_per_head)
    dtype = jnp.dtype(config.compute_dtype)
    cache = decode.ChatCache(jax.ShapeDtypeStruct(kv, dtype, sharding=shardings.k),
                             jax.ShapeDtypeStruct(kv, dtype, sharding=shardings.v),
                             jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=shardings.lengths))
    rows = shd.named_sharding(mesh, ("batch", None), (batch, chunk))
    tokens = jax.ShapeDtypeStruct((batch, chunk), jnp.int32, sharding=rows)
    vision = jax.ShapeDtypeStruct((batch, chunk), jnp.bool_, sharding=rows)
    counts = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=shardings.lengths)
    step = jit_extend(graphdef, abstract, config, mesh, batch, chunk, capacity)
    return step.lower(params, cache, tokens, vision, counts)
  inputs = _input_sharding(mesh, batch, seq_len)
  tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=inputs)
  vision = jax.ShapeDtypeStruct((batch, seq_len), jnp.bool_, sharding=inputs)
  lengths = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=NamedSharding(mesh, P()))
  prefill = jit_prefill(graphdef, abstract, config, mesh, batch, seq_len, max_new_tokens)
  return prefill.lower(params, tokens, vision, lengths)


# ------------------------------------------------------------------------------------ Generation

class Generator:
  """Prefill + cached decoding for one model; jitted functions are kept per shape.

  `generator(prompts, vision_masks=None, max_new_tokens=32, eos_ids=(), temperature=0.0,
  top_p=1.0, seed=0)` takes a list of token-id sequences (and optional bool masks of the same
  lengths: True for vision ids) and returns, per prompt, the generated ids up to (without) the
  first of `eos_ids` (an id or a collection: Llama 3.1 ends a turn on any of three).
  """

  def __init__(self, model):
    self.config, self.mesh = model.config, model.get_mesh()
    self.graphdef, self.params = nnx.split(model, nnx.Param)
    self.abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), self.params)
    self._prefill, self._decode, self._sample = {}, None, {}

  def prefill(self, tokens, vision_mask, lengths, max_new_tokens: int):
    """tokens, vision_mask: `[batch, seq]` (seq padded); lengths `[batch]` -> (logits, cache)."""
    batch, seq = tokens.shape
    key = (batch, seq, max_new_tokens)
    if key not in self._prefill:
      self._prefill[key] = jit_prefill(self.graphdef, self.abstract, self.config, self.mesh, *key)
    sharding = _input_sharding(self.mesh, batch, seq)
    put = lambda a, dtype: jax.device_put(np.asarray(a, dtype), sharding)
    return self._prefill[key](self.params, put(tokens, np.int32), put(vision_mask, bool),
                              jnp.asarray(lengths, jnp.int32))

  def extend(self, cache: decode.ChatCache, tokens, vision_mask, counts):
    """Feeds a chunk `[batch, chunk]` to a ChatCache (donated): `decode.extend`, jitted."""
    batch, chunk = np.shape(tokens)
    key = ("extend", batch, chunk, cache.k.shape[2])
    if key not in self._prefill:
      self._prefill[key] = jit_extend(self.graphdef, self.abstract, self.config, self.mesh,
                                      *key[1:])
    rows = shd.named_sharding(self.mesh, ("batch", None), (batch, chunk))
    put = lambda a, dtype: jax.device_put(np.asarray(a, dtype), rows)
    return self._prefill[key](self.params, cache, put(tokens, np.int32), put(vision_mask, bool),
                              jnp.asarray(counts, jnp.int32))

  def empty_cache(self, batch: int, tokens: int) -> decode.ChatCache:
    """A ChatCache with room for at least `tokens` per row, placed on the mesh."""
    capacity = cache_capacity(tokens, shd.seq_shards(self.mesh))
    return jax.device_put(decode.empty_cache(self.config, batch, capacity),
                          chat_cache_shardings(self.config, self.mesh, batch, capacity))

  def prefill_chunked(self, cache: decode.ChatCache, tokens, vision_mask, lengths, chunk: int):
    """Feeds prompts `[batch, seq]` (row b's first lengths[b] tokens) to `cache` in chunks of
    `chunk` tokens; returns (logits `[batch, vocab]` after each row's last token, cache)."""
    if chunk < 1:
      raise ValueError(f"prefill chunk must be >= 1 token, got {chunk}")
    tokens, vision_mask = np.asarray(tokens), np.asarray(vision_mask, bool)
    lengths = np.asarray(lengths, np.int32)
    held = int(np.max(np.asarray(cache.lengths)))
    decode.check_room(cache.k.shape[2], held, int(lengths.max()), "the prompt")
    logits = None
    for start in range(0, int(lengths.max()), chunk):
      piece = lambda a: _pad_to(a[:, start:start + chunk], chunk)
      counts = np.clip(lengths - start, 0, chunk)
      step_logits, cache = self.extend(cache, piece(tokens), piece(vision_mask), counts)
      ends_here = (counts > 0) & (lengths - start <= chunk)
      logits = step_logits if logits is None else jnp.where(ends_here[:, None], step_logits, logits)
    return logits, cache

  def decode(self, cache, tokens, step: int):
    """Feeds generated tokens `[batch]` as number `step`; the cache is donated."""
    if self._decode is None:
      graphdef = self.graphdef
      self._decode = jax.jit(
          lambda params, cache, tokens, step: decode.decode_step(nnx.merge(graphdef, params), cache,
                                                                 tokens, step),
          donate_argnums=(1,))
    return self._decode(self.params, cache, tokens, jnp.int32(step))

  def sample(self, logits, key, temperature: float, top_p: float):
    fn_key = (float(temperature), float(top_p))
    if fn_key not in self._sample:
      self._sample[fn_key] = jax.jit(
          lambda logits, key: decode.sample_token(logits, key, temperature, top_p))
    return self._sample[fn_key](logits, key)

  def __call__(self, prompts, vision_masks=None, *, max_new_tokens: int = 32, eos_ids=(),
               temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list:
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    lengths = [len(p) for p in prompts]
    seq = padded_length(max(lengths), shd.seq_shards(self.mesh))
    tokens = np.zeros((len(prompts), seq), np.int32)
    mask = np.zeros((len(prompts), seq), bool)
    for i, prompt in enumerate(prompts):
      tokens[i, :lengths[i]] = prompt
      if vision_masks is not None:
        if len(vision_masks[i]) != lengths[i]:
          raise ValueError(f"vision mask {i} has {len(vision_masks[i])} entries for a prompt of "
                           f"{lengths[i]} tokens")
        mask[i, :lengths[i]] = vision_masks[i]
    eos_ids = np.unique(np.asarray(eos_ids, np.int64).reshape(-1))
    logits, cache = self.prefill(tokens, mask, lengths, max_new_tokens)
    key = jax.random.key(seed)
    generated, done = [], np.zeros(len(prompts), bool)
    for step in range(max_new_tokens):
      key, subkey = jax.random.split(key)
      token = self.sample(logits, subkey, temperature, top_p)
      generated.append(np.asarray(token))
      done |= np.isin(generated[-1], eos_ids)
      if done.all() or step == max_new_tokens - 1:
        break
      logits, cache = self.decode(cache, token, step)
    out = np.stack(generated, axis=1)
    return [_until(row, eos_ids) for row in out]


def _pad_to(a, width: int):
  """`a` `[batch, n]` padded with zeros to `[batch, width]`."""
  return np.pad(a, ((0, 0), (0, width - a.shape[1])))


def _until(row, eos_ids) -> list:
  """The ids before the first EOS of `eos_ids`."""
  ends = np.flatnonzero(np.isin(row, eos_ids))
  return [int(t) for t in row[:ends[0] if len(ends) else len(row)]]


# ------------------------------------------------------------------------------------ Memory

def memory_figures(compiled) -> dict:
  """Per-device GiB from `compiled.memory_analysis()`: arguments, outputs, temp, peak."""
  stats = compiled.memory_analysis()
  gib = lambda n: n / 1024 ** 3
  peak = compiled_peak_bytes(stats)
  return {"arguments": gib(stats.argument_size_in_bytes),
          "outputs": gib(stats.output_size_in_bytes), "temp": gib(stats.temp_size_in_bytes),
          "peak": gib(peak)}
