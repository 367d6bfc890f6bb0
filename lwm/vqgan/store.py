"""VQGAN directories: config.json + params.npz, on their own or under a model directory's assets/.

  save("vq/", model); model = load("vq/")          # also load("workdirs/stage2"): its assets/vqgan
  config = load_config("vq/")                       # without reading the parameters
"""
import dataclasses
import json
import os

import flax.nnx as nnx
import jax.numpy as jnp
import numpy as np

from lwm.vqgan.model import VQGAN, VQGANConfig


def save(directory: str, model: VQGAN) -> None:
  os.makedirs(directory, exist_ok=True)
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  arrays = {"/".join(str(k) for k in path): np.asarray(v[...]) for path, v in flat}
  tmp = os.path.join(directory, "params.tmp.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, os.path.join(directory, "params.npz"))
  config = dataclasses.asdict(model.config)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f, indent=1)


ASSETS_SUBDIR = os.path.join("assets", "vqgan")  # where a model directory keeps its VQGAN
ASSETS_VOCAB = os.path.join("assets", "vocab.json")  # and the vocabulary layout it was used with


def resolve(directory: str) -> str:
  """The VQGAN directory of `directory`: itself, or the one a model directory (a training workdir
  or the output of scripts/import_lwm.py) keeps under assets/vqgan/."""
  inside = os.path.join(directory, ASSETS_SUBDIR)
  if os.path.isfile(os.path.join(inside, "config.json")):
    return inside
  return directory


def load_config(directory: str) -> VQGANConfig:
  """The VQGANConfig of a directory `load` accepts."""
  config_path = os.path.join(resolve(directory), "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"no VQGAN at {directory!r}: {config_path} is missing; train one "
                            "with scripts/train_vqgan.py or import LWM's (scripts/import_lwm.py)")
  with open(config_path) as f:
    raw = json.load(f)
  if "codebook_size" not in raw:
    raise ValueError(f"{config_path} is not a VQGAN config (no codebook_size)")
  return VQGANConfig(**{**raw, "channel_mult": tuple(raw["channel_mult"])})


def load(directory: str) -> VQGAN:
  """Loads a VQGAN saved by `save` (config.json + params.npz), or a model directory's."""
  config = load_config(directory)
  directory = resolve(directory)
  return with_params(config, np.load(os.path.join(directory, "params.npz")),
                     f"params.npz in {directory!r}")


def with_params(config: VQGANConfig, arrays, source: str) -> VQGAN:
  """A VQGAN of `config` holding `arrays` ({'encoder/conv_in/kernel': array, ...}, every parameter
  with its exact shape; a missing or misshapen one raises ValueError naming it and `source`)."""
  model = nnx.eval_shape(lambda: VQGAN(config, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  flat = nnx.to_flat_state(state)
  for path, var in flat:
    key = "/".join(str(k) for k in path)
    if key not in arrays or arrays[key].shape != var.shape:
      raise ValueError(f"{source} lacks {key!r} with shape {var.shape}")
    var.set_value(jnp.asarray(arrays[key], jnp.float32))
  extra = sorted(set(arrays) - {"/".join(str(k) for k in path) for path, _ in flat})
  if extra:
    raise ValueError(f"{source} holds parameters this VQGAN config does not have: {extra[:5]}")
  nnx.update(model, state)
  return model


def recorded_vision_ids(directory: str, codebook_size: int) -> dict:
  """{eof, eov, vision_vocab_size} a model directory recorded for its VQGAN of `codebook_size`
  codes (an imported LWM model keeps LWM's 8192/8193), or {} (a plain VQGAN directory: the
  default layout of lwm.vocab)."""
  path = os.path.join(directory, ASSETS_VOCAB)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    recorded = json.load(f)
  if recorded.get("codebook_size") != codebook_size:
    return {}
  return {k: recorded[k] for k in ("eof", "eov", "vision_vocab_size") if k in recorded}
