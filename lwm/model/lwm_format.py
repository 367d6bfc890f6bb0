"""LWM's released JAX checkpoints (the `params` file of LWM-Chat-*-Jax / LWM-Text-*-Jax) in.

  model = from_lwm("LWM-Chat-1M-Jax/params", "lwm-chat-1m", mesh=mesh)
  model = from_lwm("tiny/params", "tiny/config.json")      # LWM's VideoLLaMAConfig.to_dict()

The file (tux's StreamingCheckpointer) is a stream of msgpack records `[key path, bytes]`, one per
tensor, where the bytes are `flax.serialization.to_bytes(array)`: an ext type 1 holding
`[shape, dtype name, raw bytes]`, or for arrays over 1 GiB a map `{"__msgpack_chunked_array__",
"shape", "chunks"}` of 1-D pieces. Records are converted one at a time (a 7B import never holds a
second copy of the model on the host). Layers are stacked under `transformer/h/scan_decoder/`
(layer axis `param_scan_axis`) or written per layer under `transformer/h/<i>/`.

LWM rotates (2i, 2i+1) feature pairs (GPT-J's interleaved RoPE); we rotate (i, i + head_dim/2)
(`rotate_half`). Permuting the output columns of wq and wk within each head to [0, 2, 4, ..., 1,
3, 5, ...] makes the two equal exactly (scores are dot products of q and k, so the same
permutation on both changes nothing else).
"""
import json
import logging
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lwm import sharding as shd
from lwm.model.config import ModelConfig
from lwm.model.transformer import Transformer
from lwm.vocab import LWM_CODEBOOK_SIZE, vision_vocab_size

log = logging.getLogger(__name__)

_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
           num_attention_heads=32, rms_norm_eps=1e-6)  # LWM's `7b` preset (lwm/llama.py)
_VISION = dict(vision_vocab_size=vision_vocab_size(LWM_CODEBOOK_SIZE))
_LENGTHS = {"32k": 32768, "128k": 131072, "256k": 262144, "512k": 524288, "1m": 1048576}
# θ per context length: LWM-Text's stages (paper Table 11; the README's inference commands give the
# same 1e7 / 1e7 / 2.5e7 / 5e7 for 128K..1M). Every LWM / LWM-Chat stage uses 5e7 (paper Table 13,
# and scripts/run_vision_chat.sh). The 32K text θ of 1e6 is from the paper table only.
_TEXT_THETA = {"32k": 1e6, "128k": 1e7, "256k": 1e7, "512k": 2.5e7, "1m": 5e7}
RELEASED = {
    **{f"lwm-text-{n}": dict(_7B, theta=_TEXT_THETA[n], max_sequence_length=_LENGTHS[n])
       for n in _TEXT_THETA},
    **{f"lwm-text-chat-{n}": dict(_7B, theta=_TEXT_THETA[n], max_sequence_length=_LENGTHS[n])
       for n in _TEXT_THETA},
    **{f"lwm-chat-{n}": dict(_7B, **_VISION, theta=5e7, max_sequence_length=_LENGTHS[n])
       for n in ("32k", "128k", "1m")},
}

# LWM config fields that change the math: refused unless they hold the value we implement.
_MUST_BE = {"tie_word_embeddings": False, "tie_vision_embeddings": False, "resid_pdrop": 0.0,
            "embd_pdrop": 0.0, "attn_pdrop": 0.0, "fcm_min_ratio": 0.0, "fcm_max_ratio": 0.0}
_WHY = {"tie_word_embeddings": "tied text embedding and head", "tie_vision_embeddings":
        "tied vision embedding and head", "resid_pdrop": "dropout", "embd_pdrop": "dropout",
        "attn_pdrop": "dropout", "fcm_min_ratio": "forgetful causal masking",
        "fcm_max_ratio": "forgetful causal masking"}

# Our stacked layer weight <- LWM's name under transformer/h/.../
_LAYER_NAMES = {"attention/wq/kernel": "wq", "attention/wk/kernel": "wk",
                "attention/wv/kernel": "wv", "attention/wo/kernel": "wo",
                "attention_norm/kernel": "attn_norm", "ffn_norm/kernel": "ffn_norm",
                "feed_forward/w1/kernel": "w_gate", "feed_forward/w3/kernel": "w_up",
                "feed_forward/w2/kernel": "w_down"}
_TOP_NAMES = {"transformer/wte/embedding": "embed_text",
              "transformer/vte/embedding": "embed_vision",
              "transformer/ln_f/kernel": "final_norm", "lm_head/kernel": "head_text",
              "vision_head/kernel": "head_vision"}


# ---------------------------------------------------------------------------- Config

def lwm_fields(config) -> dict:
  """LWM's config fields from a released-model name, a JSON file or a dict."""
  if isinstance(config, dict):
    return dict(config)
  if isinstance(config, str) and config.lower() in RELEASED:
    return dict(RELEASED[config.lower()])
  if isinstance(config, str) and config.endswith(".json"):
    with open(config) as f:
      return json.load(f)
  raise ValueError(f"config {config!r} is neither an LWM config (a dict or a .json file) nor a "
                   f"released model name {sorted(RELEASED)}")


def config_from_lwm(config, **overrides) -> ModelConfig:
  """Our ModelConfig for LWM's `LLaMAConfig` / `VideoLLaMAConfig` fields (see `lwm_fields`).

  No grouped-query attention in LWM: kv heads = heads. A field that changes the math and that we
  do not implement raises ValueError naming it. overrides: ModelConfig fields (dtype, ...).
  """
  f = lwm_fields(config)
  for name, value in _MUST_BE.items():
    if name in f and f[name] not in (value, None):
      raise ValueError(f"LWM config field {name}={f[name]!r} is not supported ({_WHY[name]}); "
                       f"only {value!r} is")
  heads = int(f["num_attention_heads"])
  kv = f.get("num_key_value_heads")
  if kv not in (None, heads):
    raise ValueError(f"LWM config field num_key_value_heads={kv} differs from "
                     f"num_attention_heads={heads}; LWM's attention has no grouped-query layout")
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
             if k not in f]
  if missing:
    raise ValueError(f"LWM config lacks {missing}")
  return ModelConfig(
      vocab_size=int(f["vocab_size"]), vision_vocab_size=int(f.get("vision_vocab_size", 0)),
      hidden_size=int(f["hidden_size"]), intermediate_size=int(f["intermediate_size"]),
      num_layers=int(f["num_hidden_layers"]), num_heads=heads, num_kv_heads=heads,
      rms_norm_eps=float(f.get("rms_norm_eps", 1e-6)), rope_theta=float(f.get("theta", 10000.0)),
      max_sequence_length=int(f.get("max_sequence_length", 4096)),
      initializer_range=float(f.get("initializer_range", 0.02)), **overrides)


# ---------------------------------------------------------------------------- The stream
# A small msgpack reader (the subset flax and tux write) that returns arrays as views of the
# record's bytes: msgpack's own Unpacker grows its buffer to a few times the largest record and
# copies every bin again, which for a 7B file's 2.9 GB MLP records is several GB of host memory.

_FIXED = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h", 0xd2: ">i",
          0xd3: ">q"}
_SIZED = {0xd9: ("str", ">B"), 0xda: ("str", ">H"), 0xdb: ("str", ">I"), 0xc4: ("bin", ">B"),
          0xc5: ("bin", ">H"), 0xc6: ("bin", ">I"), 0xdc: ("array", ">H"), 0xdd: ("array", ">I"),
          0xde: ("map", ">H"), 0xdf: ("map", ">I"), 0xc7: ("ext", ">B"), 0xc8: ("ext", ">H"),
          0xc9: ("ext", ">I")}


def _unpack(buf: memoryview, pos: int):
  """(object, next position) of the msgpack object at buf[pos]; bins stay memoryviews and ext
  type 1 (flax's ndarray) becomes an np.ndarray view of buf."""
  b = buf[pos]
  pos += 1
  if b <= 0x7f or b >= 0xe0:
    return (b if b <= 0x7f else b - 0x100), pos
  if 0xa0 <= b <= 0xbf:
    return bytes(buf[pos:pos + (b & 0x1f)]).decode(), pos + (b & 0x1f)
  if 0x90 <= b <= 0x9f or 0x80 <= b <= 0x8f:
    kind, n = ("array" if b >= 0x90 else "map"), b & 0x0f
  elif b in (0xc0, 0xc2, 0xc3):
    return {0xc0: None, 0xc2: False, 0xc3: True}[b], pos
  elif b in _FIXED:
    size = struct.calcsize(_FIXED[b])
    return struct.unpack_from(_FIXED[b], buf, pos)[0], pos + size
  elif 0xd4 <= b <= 0xd8:
    kind, n = "ext", 1 << (b - 0xd4)
  elif b in _SIZED:
    kind, fmt = _SIZED[b]
    n = struct.unpack_from(fmt, buf, pos)[0]
    pos += struct.calcsize(fmt)
  else:
    raise ValueError(f"msgpack type byte {b:#x} is not one flax's checkpoints use")
  if kind == "str":
    return bytes(buf[pos:pos + n]).decode(), pos + n
  if kind == "bin":
    return buf[pos:pos + n], pos + n
  if kind == "ext":
    code = struct.unpack_from(">b", buf, pos)[0]
    return _ext(code, buf[pos + 1:pos + 1 + n]), pos + 1 + n
  items = []
  for _ in range(n * (2 if kind == "map" else 1)):
    item, pos = _unpack(buf, pos)
    items.append(item)
  return (dict(zip(items[::2], items[1::2])) if kind == "map" else items), pos


def _ext(code: int, data: memoryview) -> np.ndarray:
  if code != 1:  # flax: 1 ndarray, 2 complex, 3 numpy scalar
    raise ValueError(f"msgpack ext type {code} is not an array; expected flax's ndarray (1)")
  (shape, dtype, buffer), _ = _unpack(data, 0)
  dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
  return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _array(value) -> np.ndarray:
  """`flax.serialization.to_bytes(array)` -> the array (chunked arrays put back together)."""
  obj, _ = _unpack(memoryview(value), 0)
  if isinstance(obj, dict) and obj.get("__msgpack_chunked_array__"):
    shape = [int(obj["shape"][str(i)]) for i in range(len(obj["shape"]))]
    chunks = [obj["chunks"][str(i)] for i in range(len(obj["chunks"]))]
    return np.concatenate([c.reshape(-1) for c in chunks]).reshape(shape)
  if not isinstance(obj, np.ndarray):
    raise ValueError(f"a record holds a {type(obj).__name__}, expected an array")
  return obj


def _read_size(f, tag: int) -> int:
  fmt = _SIZED[tag][1]
  return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _read_key_part(f, path: str) -> str:
  b = f.read(1)[0]
  if 0xa0 <= b <= 0xbf:
    return f.read(b & 0x1f).decode()
  if b in (0xd9, 0xda, 0xdb):
    return f.read(_read_size(f, b)).decode()
  if b <= 0x7f:
    return str(b)
  raise ValueError(f"{path}: a key part has msgpack type byte {b:#x}")


def _read_record(f, path: str):
  """(key, value bytes) of the next `[key, bin]` record of the stream, or None at its end."""
  first = f.read(1)
  if not first:
    return None
  if first[0] != 0x92:  # a two-element array
    raise ValueError(f"{path}: a record is not [key, value]; is this LWM's `params` file?")
  b = f.read(1)[0]
  if 0x90 <= b <= 0x9f:
    count = b & 0x0f
  elif b in (0xdc, 0xdd):
    count = _read_size(f, b)
  else:
    raise ValueError(f"{path}: a record's key is not a list")
  key = "/".join(_read_key_part(f, path) for _ in range(count))
  tag = f.read(1)[0]
  if tag not in (0xc4, 0xc5, 0xc6):
    raise ValueError(f"{path}: the value of record {key} is not bytes")
  size = _read_size(f, tag)
  value = f.read(size)
  if len(value) != size:
    raise ValueError(f"{path} ends inside record {key}")
  return key, value


def read_records(path: str):
  """Yields (key path as 'a/b/c', np.ndarray) for every record of an LWM `params` file."""
  with open(path, "rb") as f:
    while (record := _read_record(f, path)) is not None:
      key, value = record
      array = _array(value)  # a view of `value` (or, chunked, one new array)
      del record, value
      yield key, array


def _ext_bytes(array: np.ndarray) -> msgpack.ExtType:
  payload = [list(array.shape), array.dtype.name, np.ascontiguousarray(array).tobytes()]
  return msgpack.ExtType(1, msgpack.packb(payload, use_bin_type=True))


def write_records(path: str, records, *, chunk_bytes: int = 2**30) -> None:
  """Writes (key path 'a/b/c', array) pairs as tux's StreamingCheckpointer does (arrays over
  `chunk_bytes` as chunked maps of 1-D pieces, as flax writes arrays over 1 GiB). For tests and
  benchmarks; LWM's files are bf16 (pass bf16 arrays)."""
  with open(path, "wb") as f:
    for key, array in records:
      array = np.asarray(array)
      if array.nbytes > chunk_bytes:
        flat, step = array.reshape(-1), max(chunk_bytes // array.itemsize, 1)
        pieces = [flat[i:i + step] for i in range(0, flat.size, step)]
        value = {"__msgpack_chunked_array__": True,
                 "shape": {str(i): d for i, d in enumerate(array.shape)},
                 "chunks": {str(i): _ext_bytes(p) for i, p in enumerate(pieces)}}
      else:
        value = _ext_bytes(array)
      f.write(msgpack.packb([key.split("/"), msgpack.packb(value, use_bin_type=True)],
                            use_bin_type=True))


# ---------------------------------------------------------------------------- Conversion

def rope_permutation(head_dim: int) -> np.ndarray:
  """Column order within a head that turns interleaved-pair RoPE into rotate_half RoPE."""
  return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def _to_rotate_half(w: np.ndarray, heads: int) -> np.ndarray:
  """wq/wk `[..., in, heads * head_dim]` with each head's columns reordered."""
  *lead, d_in, d_out = w.shape
  per_head = w.reshape(*lead, d_in, heads, d_out // heads)
  return per_head[..., rope_permutation(d_out // heads)].reshape(w.shape)


def _place(key: str, array: np.ndarray, config: ModelConfig, scan_axis: int):
  """(our parameter path, layer index or None for a whole parameter, array in our layout)."""
  if key in _TOP_NAMES:
    return _TOP_NAMES[key], None, array
  layer, _, weight = key.removeprefix("transformer/h/").partition("/")
  if not key.startswith("transformer/h/") or weight not in _LAYER_NAMES:
    raise ValueError(f"unexpected record {key!r} in an LWM params file")
  ours = _LAYER_NAMES[weight]
  if ours in ("wq", "wk"):
    array = _to_rotate_half(array, config.num_heads)
  if layer == "scan_decoder":
    return f"layers/{ours}", None, np.moveaxis(array, scan_axis, 0)
  return f"layers/{ours}", int(layer), array


def from_lwm(params_path: str, config, *, dtype=jnp.float32, mesh: Mesh | None = None,
             compute_dtype=None, scan_axis: int | None = None, **config_overrides) -> Transformer:
  """Loads LWM's `params` file into a Transformer.

  config: LWM's config (JSON file, dict of its fields) or a released model name (`RELEASED`).
  dtype: parameter dtype (also the compute dtype unless `compute_dtype` is given). mesh: places
  the parameters on it, sharded by lwm.sharding's rules. scan_axis: layer axis of stacked records
  (default: the config's `param_scan_axis`, else 0). config_overrides: ModelConfig fields.
  """
  fields = lwm_fields(config)
  dtype = jnp.dtype(dtype)
  cfg = config_from_lwm(fields, param_dtype=dtype.name,
                        dtype=jnp.dtype(compute_dtype or dtype).name, **config_overrides)
  scan_axis = int(fields.get("param_scan_axis", 0) if scan_axis is None else scan_axis)
  graphdef, abstract = nnx.split(
      nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh)), nnx.Param)
  shapes = {_path_name(p): tuple(v.shape) for p, v in nnx.to_flat_state(abstract)}
  shardings = {}
  if mesh is not None:
    shardings = {_path_name(p): v.get_value()
                 for p, v in nnx.to_flat_state(shd.param_shardings(abstract, mesh))}
  done, partial = {}, {}

  def put(name, value):
    if tuple(value.shape) != shapes[name]:
      raise ValueError(f"{params_path}: {name} has shape {tuple(value.shape)} in the file but "
                       f"{shapes[name]} for the config; is the config the checkpoint's?")
    # Cast on the device: the host never holds a float32 copy of the record.
    placed = jax.device_put(np.asarray(value), shardings[name] if mesh is not None else None)
    done[name] = placed.astype(dtype)

  for key, array in read_records(params_path):  # one record at a time: the host holds one tensor
    name, layer, value = _place(key, array, cfg, scan_axis)
    del array
    if name not in shapes:
      raise ValueError(f"{params_path}: record {key!r} has no place in a model with "
                       f"vision_vocab_size={cfg.vision_vocab_size}")
    if layer is None:
      put(name, value)
      continue
    shape = shapes[name]
    if layer >= shape[0] or value.shape != shape[1:]:
      raise ValueError(f"{params_path}: {key} has shape {value.shape}, config expects "
                       f"{shape[1:]} for layers 0..{shape[0] - 1}")
    stack, filled = partial.setdefault(name, (np.empty(shape, value.dtype), set()))
    stack[layer] = value
    filled.add(layer)
    if len(filled) == shape[0]:
      put(name, partial.pop(name)[0])
  _check_complete(shapes, done, partial, params_path)
  state = jax.tree.map_with_path(lambda p, v: v.replace(value=done[_path_name(p)]), abstract,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def _path_name(path) -> str:
  return "/".join(str(getattr(p, "key", p)) for p in path)


def _check_complete(shapes, done, partial, source):
  for name, (stack, filled) in partial.items():
    raise ValueError(f"{source}: layers {sorted(set(range(len(stack))) - filled)} of {name} are "
                     "missing")
  missing = sorted(set(shapes) - set(done))
  if missing:
    raise ValueError(f"{source} lacks {missing}")
