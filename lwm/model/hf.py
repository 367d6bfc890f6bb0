"""Hugging Face LLaMA-family checkpoints (config.json + safetensors or .bin) in and out.

`from_hf_llama` reads the text model (model_type llama, qwen2 or mistral) and adds a fresh vision
embedding and head; `to_hf_llama` writes the text part back, bit for bit, with the tokenizer files
that transformers' AutoTokenizer reads. HF stores matrices as [out, in]; we store [in, out],
stacked over layers. Import streams: each tensor is read, converted and placed on its device(s)
before the next is read (lwm.model.weights), so the host never holds the checkpoint twice.

config.json is read family by family (lwm.model.hf_config); a field that would change the model
and that we do not implement is refused with an error naming it.
"""
import functools
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lwm import sharding as shd
from lwm.model.config import LWM_VISION_VOCAB_SIZE, ModelConfig
from lwm.model.hf_config import config_from_hf, export_family, hf_config  # noqa: F401
from lwm.model.transformer import Transformer, layer_shapes
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
    "bq": ("self_attn.q_proj.bias", False),
    "bk": ("self_attn.k_proj.bias", False),
    "bv": ("self_attn.v_proj.bias", False),
    "bo": ("self_attn.o_proj.bias", False),
    "b_gate": ("mlp.gate_proj.bias", False),
    "b_up": ("mlp.up_proj.bias", False),
    "b_down": ("mlp.down_proj.bias", False),
}

# ------------------------------------------------------------------------------------ import

def _text_sources(tensors: dict, config: ModelConfig, tied: bool) -> dict:
  """Our parameter path -> (HF tensor or list of per-layer tensors, transpose?).

  Bias tensors that the config does not declare are left out, as transformers leaves them (it
  warns of unused weights); so do we.
  """
  read = set()

  def get(name):
    read.add(name)
    if name not in tensors:
      raise KeyError(f"checkpoint has no tensor {name!r}" + (
          " (config.json says tie_word_embeddings=false)" if name == "lm_head.weight" else ""))
    return tensors[name]
  sources = {("embed_text",): (get("model.embed_tokens.weight"), False),
             ("final_norm",): (get("model.norm.weight"), False),
             ("head_text",): (get("model.embed_tokens.weight" if tied else "lm_head.weight"), True)}
  for ours in layer_shapes(config):
    theirs, transpose = _LAYER_NAMES[ours]
    per_layer = [get(f"model.layers.{i}.{theirs}") for i in range(config.num_layers)]
    sources[("layers", ours)] = (per_layer, transpose)
  unused = sorted(n for n in tensors if n.endswith(".bias") and n not in read)
  if unused:
    log.warning("checkpoint has %d bias tensors that config.json does not declare (ignored, as "
                "transformers ignores them), e.g. %s", len(unused), unused[0])
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
                max_shard_bytes: int = 5 * 1024**3, tokenizer_from: str | None = None,
                token_ids: dict | None = None) -> None:
  """Writes the text part of `model` as a HF checkpoint (config.json + safetensors) that
  transformers' AutoModelForCausalLM loads: model_type llama, qwen2 or mistral, as the biases and
  window say (lwm.model.hf_config.export_family); a head equal to the embedding is written tied.

  dtype: tensor dtype on disk (default: the parameter dtype). Checkpoints over max_shard_bytes are
  split into model-0000k-of-0000n.safetensors with model.safetensors.index.json, as HF does.
  tokenizer_from: a directory whose tokenizer files (TOKENIZER_FILES) are copied, and whose
  config.json / generation_config.json give the special token ids. token_ids: bos_token_id,
  eos_token_id (an id or a list), pad_token_id, replacing those. The ids go to config.json and to
  generation_config.json (every eos id: generation stops on any).
  """
  config = model.config
  dtype = np.dtype(jnp.dtype(dtype or config.weight_dtype))  # a name ("bfloat16") or a type
  host = lambda v: np.asarray(jax.device_get(v[...])).astype(dtype)
  _, _, zeros = export_family(config)
  embed, head = host(model.embed_text), np.ascontiguousarray(host(model.head_text).T)
  tied = np.array_equal(embed, head)
  tensors = {"model.embed_tokens.weight": embed, "model.norm.weight": host(model.final_norm)}
  if not tied:
    tensors["lm_head.weight"] = head
  stacks = {name: host(value) for name, value in model.layers.arrays().items()}
  full = layer_shapes(config.replace(qkv_bias=True, out_bias=True))
  stacks.update({name: np.zeros(full[name], dtype) for name in zeros})
  for ours, stacked in stacks.items():
    theirs, transpose = _LAYER_NAMES[ours]
    for i in range(config.num_layers):
      w = stacked[i].T if transpose else stacked[i]
      tensors[f"model.layers.{i}.{theirs}"] = np.ascontiguousarray(w)

  os.makedirs(path, exist_ok=True)
  ids = {**(read_token_ids(tokenizer_from) if tokenizer_from else {}), **(token_ids or {})}
  if not ids:
    log.warning("to_hf_llama: no tokenizer_from or token_ids; config.json gets no bos/eos ids")
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config(config, dtype, tied=tied, token_ids=ids), f, indent=2)
  if tokenizer_from:
    copy_tokenizer_files(tokenizer_from, path)
  if ids:
    write_generation_config(path, ids, tokenizer_from)
  _write_shards(path, tensors, max_shard_bytes)


def _write_shards(path: str, tensors: dict, max_shard_bytes: int) -> None:
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


# ------------------------------------------------------------------------------------ tokenizer

# What transformers' AutoTokenizer reads from a model directory (the tokenizers backend, the
# sentencepiece one, added tokens, the chat template in either file).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "tokenizer.model")
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def copy_tokenizer_files(source: str, destination: str) -> list[str]:
  """Copies those of TOKENIZER_FILES that the directory `source` holds; returns their names.

  A file `source` (a sentencepiece .model or a tokenizer.json) is copied under its standard name.
  """
  if os.path.isfile(source):
    name = "tokenizer.model" if source.endswith(".model") else "tokenizer.json"
    shutil.copyfile(source, os.path.join(destination, name))
    return [name]
  if not os.path.isdir(source):
    raise ValueError(f"tokenizer source {source!r} is neither a directory nor a file")
  copied = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(source, n))]
  if not copied:
    raise ValueError(f"{source!r} holds none of {TOKENIZER_FILES}")
  for name in copied:
    shutil.copyfile(os.path.join(source, name), os.path.join(destination, name))
  return copied


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def read_token_ids(source: str) -> dict:
  """bos/eos/pad ids of a HF model directory (or a tokenizer file's directory), as
  transformers' generate takes them: generation_config.json over config.json, with eos the
  union, in order, of both (Llama 3.1 lists several). Absent ids are left out."""
  directory = source if os.path.isdir(source) else os.path.dirname(source)
  model = _read_json(os.path.join(directory, "config.json"))
  generation = _read_json(os.path.join(directory, "generation_config.json"))
  first = lambda *values: next((v for v in values if v is not None), None)
  ids = {k: first(generation.get(k), model.get(k)) for k in TOKEN_ID_FIELDS}
  as_list = lambda v: [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]
  eos = list(dict.fromkeys(as_list(generation.get("eos_token_id")) +
                           as_list(model.get("eos_token_id"))))
  ids["eos_token_id"] = eos[0] if len(eos) == 1 else (eos or None)
  return {k: v for k, v in ids.items() if v is not None}


def write_generation_config(path: str, token_ids: dict, source: str | None = None) -> None:
  """generation_config.json: the source's (sampling defaults kept), with `token_ids`."""
  directory = source if source is None or os.path.isdir(source) else os.path.dirname(source)
  base = _read_json(os.path.join(directory, "generation_config.json")) if directory else {}
  base = {k: v for k, v in base.items() if k != "transformers_version"}
  with open(os.path.join(path, "generation_config.json"), "w") as f:
    json.dump({**base, **token_ids}, f, indent=2)
