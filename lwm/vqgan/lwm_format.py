"""LWM's released VQGAN (the `vqgan` file of the LWM-Chat-*-Jax folders) into our VQGAN.

  model = from_lwm("LWM-Chat-1M-Jax/vqgan")                   # the released 256px, 8192-code model
  model = from_lwm("tiny/vqgan", "tiny/vqgan_config.json")   # another LWM VQGANConfig

The file is a pickle of flax params (nested dicts of float32 arrays, no 'params' root). It is read
with an unpickler that builds only dicts, numpy arrays (and flax FrozenDicts / jax arrays, as
numpy): any other global in the file is refused, so reading it runs no code from the file. Flax
named LWM's modules by creation order; `lwm_names` maps them onto ours (the decoder walks its
levels from the coarsest, so `decoder/UpsamplingBlock_k` is our decoder's k-th level too).
"""
import importlib
import io
import json
import pickle

import numpy as np

from lwm.vqgan import model as vqgan, store

# LWM's VQGANConfig.get_default_config(): the released model.
LWM_DEFAULT = {"resolution": 256, "num_channels": 3, "hidden_channels": 128,
               "channel_mult": (1, 2, 2, 4, 6), "num_res_blocks": 2, "attn_resolutions": (),
               "no_attn_mid_block": True, "z_channels": 64, "num_embeddings": 8192,
               "quantized_embed_dim": 64, "dropout": 0.0, "resample_with_conv": True,
               "commitment_cost": 0.25}
GROUPS = 32  # LWM's GroupNorm: 32 groups (eps 1e-6, in lwm.vqgan.model)


def config_from_lwm(fields: dict | str | None = None) -> vqgan.VQGANConfig:
  """Our VQGANConfig for LWM's VQGANConfig `fields` (a dict or a JSON file; None: the released).

  Fields that would change the network and that LWM's inference path can have but we do not
  build (attention blocks, resampling without convolutions, other than RGB) raise ValueError
  naming the field; so does a field LWM does not have.
  """
  if isinstance(fields, str):
    with open(fields) as f:
      fields = json.load(f)
  f = {**LWM_DEFAULT, **(fields or {})}
  unknown = sorted(set(f) - set(LWM_DEFAULT) - {"num_resolutions"})
  if unknown:
    raise ValueError(f"unknown LWM VQGANConfig field(s) {unknown}; expected {sorted(LWM_DEFAULT)}")
  mult = tuple(int(m) for m in f["channel_mult"])
  refusals = {
      "attn_resolutions": (tuple(f["attn_resolutions"]) == (),
                           "attention blocks in the encoder/decoder are not implemented"),
      "no_attn_mid_block": (bool(f["no_attn_mid_block"]),
                            "a mid block with attention is not implemented"),
      "resample_with_conv": (bool(f["resample_with_conv"]),
                             "resampling without convolutions is not implemented"),
      "num_channels": (int(f["num_channels"]) == 3, "frames are RGB (3 channels)"),
      "num_resolutions": (int(f.get("num_resolutions", len(mult))) == len(mult),
                          f"must equal len(channel_mult) = {len(mult)}"),
  }
  for name, (ok, why) in refusals.items():
    if not ok:
      raise ValueError(f"LWM VQGAN field {name}={f.get(name)!r} is not supported: {why}")
  return vqgan.VQGANConfig(
      resolution=int(f["resolution"]), channel_mult=mult,
      hidden_channels=int(f["hidden_channels"]), num_res_blocks=int(f["num_res_blocks"]),
      codebook_size=int(f["num_embeddings"]), embed_dim=int(f["quantized_embed_dim"]),
      num_groups=GROUPS, commitment_cost=float(f["commitment_cost"]),
      z_channels=int(f["z_channels"]), decoder_res_blocks=int(f["num_res_blocks"]) + 1)


# ---------------------------------------------------------------------------- The pickle

def _reconstruct_jax_array(fun, args, array_state, aval_state):
  """What `jax.Array.__reduce__` pickles, rebuilt as the numpy array it holds."""
  del aval_state
  array = fun(*args)
  array.__setstate__(array_state)
  return array


def _numpy_global(module: str, name: str):
  """numpy's own array rebuilders, from numpy._core (numpy 2) whichever numpy pickled them."""
  try:
    return getattr(importlib.import_module(f"numpy._core.{module}"), name)
  except ImportError:  # pragma: no cover  (numpy 1.x)
    return getattr(importlib.import_module(f"numpy.core.{module}"), name)


_ALLOWED = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_global("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_global("multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_global("multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_global("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_global("numeric", "_frombuffer"),
    ("flax.core.frozen_dict", "FrozenDict"): lambda: dict,
    ("jax._src.array", "_reconstruct_array"): lambda: _reconstruct_jax_array,
}


class _ArraysOnly(pickle.Unpickler):
  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(
          f"the VQGAN pickle refers to {module}.{name}; only dicts, numpy arrays, flax FrozenDict "
          "and jax arrays are read (refusing to run other code from a file)")
    return _ALLOWED[(module, name)]()


def read_pickle(path: str) -> dict:
  """{'encoder/Conv_0/kernel': float32 array, ...}: the flat params of an LWM `vqgan` pickle."""
  with open(path, "rb") as f:
    tree = _ArraysOnly(io.BufferedReader(f)).load()
  if isinstance(tree, dict) and set(tree) == {"params"}:
    tree = tree["params"]
  flat = {}

  def walk(node, prefix):
    if isinstance(node, dict):
      for key, value in node.items():
        walk(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(node, np.ndarray):
      flat[prefix] = np.asarray(node, np.float32)
    else:
      raise ValueError(f"{path}: {prefix or 'the root'} is a {type(node).__name__}, expected a "
                       "dict of arrays")
  walk(tree, "")
  return flat


# ---------------------------------------------------------------------------- Names

_RESNET = {"GroupNorm_0": "norm1", "Conv_0": "conv1", "GroupNorm_1": "norm2", "Conv_1": "conv2",
           "Conv_2": "skip"}


def lwm_names(config: vqgan.VQGANConfig) -> dict:
  """{LWM module path: our module path} for every module with parameters."""
  names = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv",
           "encoder/Conv_0": "encoder/conv_in", "encoder/GroupNorm_0": "encoder/norm_out",
           "encoder/Conv_1": "encoder/conv_out", "decoder/Conv_0": "decoder/conv_in",
           "decoder/GroupNorm_0": "decoder/norm_out", "decoder/Conv_1": "decoder/conv_out"}

  def resnet(theirs, ours):
    for a, b in _RESNET.items():
      names[f"{theirs}/{a}"] = f"{ours}/{b}"

  levels = len(config.channel_mult)
  for part in ("encoder", "decoder"):
    for j in range(2):
      resnet(f"{part}/MidBlock_0/ResnetBlock_{j}", f"{part}/mid/{j}")
  per_level = config.num_res_blocks + 1  # res blocks, then the resampling conv
  for k in range(levels):
    for j in range(config.num_res_blocks):
      resnet(f"encoder/DownsamplingBlock_{k}/ResnetBlock_{j}",
             f"encoder/layers/{k * per_level + j}")
    names[f"encoder/DownsamplingBlock_{k}/Downsample_0/Conv_0"] = (
        f"encoder/layers/{k * per_level + config.num_res_blocks}")
  per_level = config.decoder_blocks + 1
  for k in range(levels):
    for j in range(config.decoder_blocks):
      resnet(f"decoder/UpsamplingBlock_{k}/ResnetBlock_{j}", f"decoder/layers/{k * per_level + j}")
    names[f"decoder/UpsamplingBlock_{k}/Upsample_0/Conv_0"] = (
        f"decoder/layers/{k * per_level + config.decoder_blocks}/conv")
  return names


def to_ours(flat: dict, config: vqgan.VQGANConfig, source: str) -> dict:
  """LWM's flat params -> ours (`quantize/embeddings` is our codebook); unknown names raise."""
  modules = lwm_names(config)
  arrays = {}
  for key, value in flat.items():
    if key == "quantize/embeddings":
      arrays["codebook"] = value
      continue
    module, _, leaf = key.rpartition("/")
    if module not in modules:
      raise ValueError(f"{source}: parameter {key!r} has no place in a VQGAN of {config}; is the "
                       "config the file's?")
    arrays[f"{modules[module]}/{leaf}"] = value
  return arrays


def from_lwm(path: str, config=None) -> vqgan.VQGAN:
  """LWM's VQGAN at `path` (its `vqgan` pickle). config: None for the released 256px 8192-code
  model, or LWM VQGANConfig fields (dict or JSON file). Shapes are checked against the config."""
  ours = config if isinstance(config, vqgan.VQGANConfig) else config_from_lwm(config)
  return store.with_params(ours, to_ours(read_pickle(path), ours, path), path)
