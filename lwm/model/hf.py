"""Hugging Face LLaMA checkpoints (config.json + safetensors or pytorch_model.bin) in and out.

`from_hf_llama` reads the text model and adds a fresh vision embedding and head; `to_hf_llama`
writes the text part back, bit for bit. HF stores matrices as [out, in]; we store [in, out],
stacked over layers. Import streams: each tensor is read, converted and placed on its device(s)
before the next is read (lwm.model.weights), so the host never holds the checkpoint twice.

config.json is read as transformers 4.x and 5.x read it; a field that would change the model and
that we do not implement is refused with an error naming it (see `config_from_hf`).
"""
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lwm import sharding as shd
from lwm.model import rope
from lwm.model.config import LWM_VISION_VOCAB_SIZE, ModelConfig
from lwm.model.transformer import Transformer
from lwm.model.weights import read_checkpoint, read_safetensors, write_safetensors  # noqa: F401

log = logging.getLogger(__name__)

# Our stacked layer weight -> (HF name inside model.layers.{i}., transpose?)
_LAYER_NAMES = {
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True),
    "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True),
    "wo": ("self_attn.o_proj.weight", True),
    "ffn_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True),
    "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
}

# LlamaConfig's fields that change the function and that we implement only at one value: field ->
# (value when absent, as LlamaConfig defaults it; the value we implement).
_FIXED_FIELDS = {"hidden_act": ("silu", "silu"), "attention_bias": (False, False),
                 "mlp_bias": (False, False), "attention_dropout": (0.0, 0.0),
                 "partial_rotary_factor": (1.0, 1.0)}
_ROPE_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")


# ------------------------------------------------------------------------------------ config

def _rope_from_hf(hf: dict) -> tuple[float, tuple]:
  """(rope_theta, rope_scaling) from a config.json, as both transformers majors read it.

  4.x reads top-level `rope_theta` and `rope_scaling`; 5.x reads `rope_parameters` (with
  `rope_theta` inside), where a non-null `rope_scaling` takes its place and a top-level
  `rope_theta` fills a missing one. Where the two readings would differ, the config is refused.
  """
  scaling, params = hf.get("rope_scaling"), hf.get("rope_parameters")
  strip = lambda d: {k: v for k, v in d.items() if k != "rope_theta"}
  if scaling and params and strip(scaling) != strip(params):
    raise ValueError(f"config.json: rope_scaling={scaling} and rope_parameters={params} disagree "
                     "(transformers 4.x reads the first, 5.x would too); make them equal")
  field = "rope_scaling" if scaling else "rope_parameters"
  source = dict(scaling or params or {})
  thetas = {float(t) for t in (hf.get("rope_theta"), source.get("rope_theta")) if t is not None}
  if len(thetas) > 1:
    raise ValueError(f"config.json: rope_theta={hf.get('rope_theta')} but "
                     f"{field}.rope_theta={source.get('rope_theta')}; they must agree")
  theta = thetas.pop() if thetas else 10000.0  # LlamaConfig's default.
  kind = source.get("rope_type", source.get("type", "default"))
  if "type" in source and source.get("rope_type", kind) != source["type"]:
    raise ValueError(f"config.json: {field} has rope_type={source['rope_type']!r} and "
                     f"type={source['type']!r}; they must agree")
  if float(source.get("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError(f"config.json: {field}.partial_rotary_factor="
                     f"{source['partial_rotary_factor']}; only full rotary embeddings (1.0) are "
                     "implemented")
  if kind == "default":
    extra = sorted(set(source) - set(_ROPE_KEYS))
    if extra:
      raise ValueError(f"config.json: {field} of rope_type 'default' has {extra}, which it does "
                       "not use; remove them or give the scaling's rope_type")
    return theta, ()
  if kind not in rope.SCALING_KEYS:
    raise ValueError(f"config.json: {field}.rope_type={kind!r} is not implemented; supported: "
                     f"'default', {', '.join(repr(k) for k in rope.SCALING_KEYS)}")
  scaled = {k: v for k, v in source.items() if k not in _ROPE_KEYS}
  if kind == "llama3":  # 5.x fills it from max_position_embeddings; 4.x requires it.
    scaled.setdefault("original_max_position_embeddings",
                      hf.get("max_position_embeddings", 2048))
  try:
    return theta, rope.normalize_scaling({"rope_type": kind, **scaled})
  except ValueError as e:
    raise ValueError(f"config.json: {field}: {e}") from None


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """ModelConfig from a HF LLaMA config.json dict; `overrides` replace any field.

  A missing field takes LlamaConfig's default, as transformers does; fields that LLaMA's modeling
  code does not read are ignored by both. Raises ValueError naming any field whose value we do not
  implement (model_type other than llama, biases, another activation, dropout, partial or
  unsupported RoPE scaling).
  """
  if hf.get("model_type", "llama") != "llama":
    raise ValueError(f"config.json: model_type={hf['model_type']!r}; only 'llama' is supported")
  for field, (default, supported) in _FIXED_FIELDS.items():
    if hf.get(field, default) != supported:
      raise ValueError(f"config.json: {field}={hf[field]!r} is not implemented (only "
                       f"{supported!r}); the logits would differ from transformers'")
  if hf.get("pretraining_tp", 1) != 1:  # Same function; only the order of HF's sums differs.
    log.info("config.json: pretraining_tp=%s only splits HF's matmuls; ignored",
             hf["pretraining_tp"])
  theta, scaling = _rope_from_hf(hf)
  fields = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      head_dim=hf.get("head_dim") or 0, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=theta, rope_scaling=scaling,
      max_sequence_length=hf.get("max_position_embeddings", 2048),
      initializer_range=hf.get("initializer_range", 0.02))
  fields.update(overrides)
  return ModelConfig(**fields)


def hf_config(config: ModelConfig, dtype) -> dict:
  """The config.json of a LLaMA with `config`'s text shapes and RoPE.

  RoPE is written both ways: top-level rope_theta + rope_scaling (read by transformers 4.x; 5.x
  takes a non-null rope_scaling as its rope_parameters) and rope_parameters (read by 5.x).
  """
  scaling = dict(config.rope_scaling) or None
  parameters = {"rope_type": "default", **(scaling or {}), "rope_theta": config.rope_theta}
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.dim_per_head, "rms_norm_eps": config.rms_norm_eps,
      "rope_theta": config.rope_theta, "rope_scaling": scaling, "rope_parameters": parameters,
      "max_position_embeddings": config.max_sequence_length,
      "initializer_range": config.initializer_range, "attention_bias": False, "mlp_bias": False,
      "attention_dropout": 0.0, "pretraining_tp": 1, "tie_word_embeddings": False,
      "torch_dtype": jnp.dtype(dtype).name, "dtype": jnp.dtype(dtype).name,
      "bos_token_id": 1, "eos_token_id": 2,
  }


# ------------------------------------------------------------------------------------ import

def _text_sources(tensors: dict, config: ModelConfig, tied: bool) -> dict:
  """Our parameter path -> (HF tensor or list of per-layer tensors, transpose?)."""
  def get(name):
    if name not in tensors:
      raise KeyError(f"checkpoint has no tensor {name!r}" + (
          " (config.json says tie_word_embeddings=false)" if name == "lm_head.weight" else ""))
    return tensors[name]
  sources = {("embed_text",): (get("model.embed_tokens.weight"), False),
             ("final_norm",): (get("model.norm.weight"), False),
             ("head_text",): (get("model.embed_tokens.weight" if tied else "lm_head.weight"), True)}
  for ours, (theirs, transpose) in _LAYER_NAMES.items():
    per_layer = [get(f"model.layers.{i}.{theirs}") for i in range(config.num_layers)]
    sources[("layers", ours)] = (per_layer, transpose)
  return sources


# A stacked weight up to this size is stacked on the host and transferred at once; a larger one
# is written into a device buffer layer by layer (no host copy of the whole stack, but a compile).
STACK_ON_HOST_BYTES = 256 * 1024**2


@functools.lru_cache(maxsize=64)
def _layer_writer(transpose: bool, dtype, sharding):
  """A jitted (stack, index, tensor) -> stack that casts/transposes one layer's host tensor on
  device and writes it in place (the stack is donated) at `index`."""
  def write(stack, i, w):  # Not .at[i].set: XLA:CPU copies the stack for that scatter.
    layer = (w.T if transpose else w).astype(dtype)[None]
    return jax.lax.dynamic_update_slice(stack, layer, (i,) + (0,) * (stack.ndim - 1))
  return jax.jit(write, donate_argnums=0, out_shardings=sharding)


def _place(source, transpose: bool, shape, dtype, sharding, name: str):
  """Reads `source` (one LazyTensor, or a list of one per layer) into a device array of `shape`."""
  per_layer = isinstance(source, list)
  tensors = source if per_layer else [source]
  want = tuple(shape[1:] if per_layer else shape)
  for t in tensors:
    got = tuple(reversed(t.shape)) if transpose else tuple(t.shape)
    if got != want:
      raise ValueError(f"{name}: checkpoint shape {got} (after transposing HF's [out, in]), "
                       f"config expects {want}")
  host = lambda t: (t.read().T if transpose else t.read()).astype(dtype, copy=False)
  put = lambda a: jax.device_put(a, sharding) if sharding is not None else jax.device_put(a)
  if not per_layer:
    return put(host(source))
  if np.prod(shape) * dtype.itemsize <= STACK_ON_HOST_BYTES:
    return put(np.stack([host(t) for t in tensors]))
  stack = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
  write = _layer_writer(transpose, dtype, sharding)
  for i, t in enumerate(tensors):
    stack = write(stack, jnp.int32(i), t.read())
  return stack


def from_hf_llama(path: str, *, dtype=jnp.float32, mesh: Mesh | None = None,
                  compute_dtype=None, vision_vocab_size: int = LWM_VISION_VOCAB_SIZE, seed: int = 0,
                  **config_overrides) -> Transformer:
  """Loads a HF LLaMA checkpoint directory (safetensors or pytorch_model.bin, sharded or not).

  dtype: parameter dtype (also the compute dtype unless `compute_dtype` is given). mesh: places the
  parameters on it (sharded by lwm.sharding's rules); the forward then runs sharded. The vision
  embedding and head (vision_vocab_size rows; 0 for none) are initialised fresh from `seed`.
  config_overrides: any ModelConfig field, e.g. rope_theta=1e6 for a longer-context stage.
  """
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  dtype = jnp.dtype(dtype)
  config = config_from_hf(hf, vision_vocab_size=vision_vocab_size, param_dtype=dtype.name,
                          dtype=jnp.dtype(compute_dtype or dtype).name, **config_overrides)
  tensors = read_checkpoint(path)
  sources = _text_sources(tensors, config, tied=bool(hf.get("tie_word_embeddings", False)))

  graphdef, abstract = nnx.split(
      nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(seed), mesh=mesh)), nnx.Param)
  shardings = shd.param_shardings(abstract, mesh) if mesh is not None else abstract
  fresh = nnx.Rngs(seed)
  noise = {(n,): fresh.params() for n in ("embed_vision", "head_vision") if vision_vocab_size}

  def fill(path_, variable, sharding):
    key = tuple(str(getattr(p, "key", p)) for p in path_)
    target = sharding.get_value() if mesh is not None else None
    if key in noise:
      value = config.initializer_range * jax.random.normal(noise[key], variable.shape, dtype)
      return variable.replace(value=value if target is None else jax.device_put(value, target))
    source, transpose = sources[key]
    value = _place(source, transpose, variable.shape, dtype, target, ".".join(key))
    return variable.replace(value=value)

  state = jax.tree.map_with_path(fill, abstract, shardings,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


# ------------------------------------------------------------------------------------ export

def to_hf_llama(model: Transformer, path: str, *, dtype=None,
                max_shard_bytes: int = 5 * 1024**3) -> None:
  """Writes the text part of `model` as a HF LLaMA checkpoint (config.json + safetensors).

  dtype: tensor dtype on disk (default: the parameter dtype). Checkpoints over max_shard_bytes are
  split into model-0000k-of-0000n.safetensors with model.safetensors.index.json, as HF does.
  """
  config = model.config
  dtype = np.dtype(dtype or config.weight_dtype)
  host = lambda v: np.asarray(jax.device_get(v[...])).astype(dtype)
  tensors = {"model.embed_tokens.weight": host(model.embed_text),
             "model.norm.weight": host(model.final_norm),
             "lm_head.weight": np.ascontiguousarray(host(model.head_text).T)}
  for ours, (theirs, transpose) in _LAYER_NAMES.items():
    stacked = host(getattr(model.layers, ours))
    for i in range(config.num_layers):
      w = stacked[i].T if transpose else stacked[i]
      tensors[f"model.layers.{i}.{theirs}"] = np.ascontiguousarray(w)

  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config(config, dtype), f, indent=2)
  shards, current, size = [], {}, 0
  for name, arr in tensors.items():
    if current and size + arr.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = arr
    size += arr.nbytes
  shards.append(current)
  if len(shards) == 1:
    write_safetensors(os.path.join(path, "model.safetensors"), shards[0], {"format": "pt"})
    return
  weight_map = {}
  for k, shard in enumerate(shards):
    file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    write_safetensors(os.path.join(path, file), shard, {"format": "pt"})
    weight_map.update({name: file for name in shard})
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
               "weight_map": weight_map}, f, indent=2)
