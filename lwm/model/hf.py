"""Hugging Face LLaMA checkpoints (config.json + *.safetensors) in and out.

`from_hf_llama` reads the text model (sharded files with an index json too) and adds a fresh vision
embedding and head; `to_hf_llama` writes the text part back in the same layout, bit for bit.
HF stores matrices as [out, in]; we store [in, out], stacked over layers.
"""
import json
import os
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lwm import sharding as shd
from lwm.model.config import ModelConfig
from lwm.model.transformer import Transformer

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}

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


def read_safetensors(path: str) -> dict:
  """name -> read-only np.ndarray (memory-mapped, so a 7B checkpoint is not read until used)."""
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}; "
                       f"supported: {sorted(_ST_DTYPES)}")
    start, end = info["data_offsets"]
    tensors[name] = data[start:end].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
  return tensors


def write_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
  """Writes name -> np.ndarray in the safetensors format (bfloat16 included)."""
  header, offset = {}, 0
  arrays = {k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}
  for name, arr in arrays.items():
    header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
  if metadata:
    header["__metadata__"] = metadata
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # The format aligns the data section to 8 bytes.
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for arr in arrays.values():
      f.write(arr.tobytes())


def read_checkpoint(path: str) -> dict:
  """All tensors of a checkpoint directory: the files of model.safetensors.index.json if present,
  else every *.safetensors file."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {path}")
  tensors = {}
  for name in files:
    tensors.update(read_safetensors(os.path.join(path, name)))
  return tensors


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """ModelConfig from a HF LLaMA config.json dict; `overrides` replace any field."""
  if hf.get("rope_scaling"):
    raise ValueError(f"rope_scaling={hf['rope_scaling']} is not supported; expected null "
                     "(context is extended by raising rope_theta instead)")
  if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
    raise ValueError("expected a LLaMA without biases and with silu activation, got "
                     f"hidden_act={hf.get('hidden_act')}, "
                     f"attention_bias={hf.get('attention_bias')}, mlp_bias={hf.get('mlp_bias')}")
  fields = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      head_dim=hf.get("head_dim") or 0, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=float(hf.get("rope_theta", 10000.0)),
      max_sequence_length=hf.get("max_position_embeddings", 4096),
      initializer_range=hf.get("initializer_range", 0.02))
  fields.update(overrides)
  return ModelConfig(**fields)


def _text_arrays(tensors: dict, config: ModelConfig, tied: bool) -> dict:
  """Our parameter paths -> host arrays (checkpoint dtype), from HF tensor names."""
  def get(name):
    if name not in tensors:
      raise KeyError(f"checkpoint has no tensor {name!r}")
    return tensors[name]
  arrays = {("embed_text",): get("model.embed_tokens.weight"),
            ("final_norm",): get("model.norm.weight")}
  head = get("model.embed_tokens.weight") if tied else get("lm_head.weight")
  arrays[("head_text",)] = head.T
  for ours, (theirs, transpose) in _LAYER_NAMES.items():
    per_layer = [get(f"model.layers.{i}.{theirs}") for i in range(config.num_layers)]
    arrays[("layers", ours)] = np.stack([w.T if transpose else w for w in per_layer])
  return arrays


def from_hf_llama(path: str, *, dtype=jnp.float32, mesh: Mesh | None = None,
                  compute_dtype=None, vision_vocab_size: int = 8448, seed: int = 0,
                  **config_overrides) -> Transformer:
  """Loads a HF LLaMA checkpoint directory into a Transformer.

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
  tied = hf.get("tie_word_embeddings", False) or "lm_head.weight" not in tensors
  arrays = _text_arrays(tensors, config, tied)

  graphdef, abstract = nnx.split(
      nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(seed), mesh=mesh)), nnx.Param)
  if vision_vocab_size:
    fresh = nnx.Rngs(seed)
    for name in ("embed_vision", "head_vision"):
      shape = abstract[name].shape
      arrays[(name,)] = config.initializer_range * jax.random.normal(fresh.params(), shape, dtype)
  shardings = shd.param_shardings(abstract, mesh) if mesh is not None else abstract

  def fill(path_, variable, sharding):
    key = tuple(str(getattr(p, "key", p)) for p in path_)
    value = arrays[key]
    if tuple(value.shape) != tuple(variable.shape):
      raise ValueError(f"{'.'.join(key)}: checkpoint shape {tuple(value.shape)}, config expects "
                       f"{tuple(variable.shape)}")
    value = value.astype(dtype) if isinstance(value, jax.Array) else np.asarray(value).astype(dtype)
    if mesh is None:
      return variable.replace(value=jnp.asarray(value))
    return variable.replace(value=jax.device_put(value, sharding.get_value()))

  state = jax.tree.map_with_path(fill, abstract, shardings,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def hf_config(config: ModelConfig, dtype) -> dict:
  """The config.json of a LLaMA with `config`'s text shapes."""
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.dim_per_head, "rms_norm_eps": config.rms_norm_eps,
      "rope_theta": config.rope_theta, "rope_scaling": None,
      "max_position_embeddings": config.max_sequence_length,
      "initializer_range": config.initializer_range, "attention_bias": False, "mlp_bias": False,
      "tie_word_embeddings": False, "torch_dtype": jnp.dtype(dtype).name,
      "bos_token_id": 1, "eos_token_id": 2,
  }


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
