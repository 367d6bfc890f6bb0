"""The ModelConfig of a training stage, shared by training and inference.

The model is a named size (`config.model`), a Hugging Face checkpoint's (`hf`), or that of the
model directory in `config.init_from` (`init_from`: a training workdir or the output of
scripts/import_lwm.py); the stage sets the length, the dtypes and the loss weights, and θ where it
gives one (`config.rope_theta` 0 keeps the checkpoint's θ, or the named size's without one); the
dataset's vocabulary layout (`lwm.vocab`) sets the minimum table sizes.
"""
import json
import os

import jax

from lwm import stage
from lwm.model import config as model_config_lib
from lwm.model import hf
from lwm.vocab import Vocab

# Fields of a model directory's config that a named size must agree with to start from it and that
# parameter shapes cannot show (restoring checks the shapes, naming the parameter), or that name
# parameters the named size lacks (biases).
ARCHITECTURE = ("num_heads", "num_kv_heads", "dim_per_head", "rms_norm_eps", "qkv_bias",
                "out_bias", "mlp_bias", "sliding_window")


def model_config(config, vocab: dict):
  """The ModelConfig of a stage: the named size (or init_from's), its θ and dtype.

  vocab: the dataset's vocab.json dict (`lwm.vocab.Vocab.to_json()` plus paths).
  """
  theta = float(config.rope_theta)
  overrides = dict(max_sequence_length=config.seq_len,
                   dtype=config.train.dtype, param_dtype="float32",
                   text_loss_weight=config.train.text_loss_weight,
                   vision_loss_weight=config.train.vision_loss_weight,
                   **config.model_overrides.to_dict())
  if theta:
    overrides["rope_theta"] = theta
  layout = Vocab.from_json(vocab)
  text_ids, vision_ids = layout.text_vocab_size, layout.vision_ids_used
  if config.model in ("hf", "init_from") and stage.is_hf_dir(config.init_from):
    with open(os.path.join(config.init_from, "config.json")) as f:
      base = hf.config_from_hf(json.load(f), **overrides)
  elif config.model == "init_from":
    base = _stored(config.init_from).replace(**overrides)
  else:
    base = model_config_lib.get_config(config.model, **overrides)
    if stage.is_hf_dir(config.init_from):  # A named size must not drop the checkpoint's scaling.
      with open(os.path.join(config.init_from, "config.json")) as f:
        stored = hf.config_from_hf(json.load(f))
      scaling = stored.rope_scaling
      if scaling != base.rope_scaling:
        raise ValueError(f"config.init_from={config.init_from!r} uses rope_scaling="
                         f"{dict(scaling) or None}, config.model={config.model!r} has "
                         f"{dict(base.rope_scaling) or None}; use config.model='hf' or set "
                         "config.model_overrides.rope_scaling")
      _check_same_architecture(base, stored, config)  # e.g. rms_norm_eps, which no shape shows
      base = base if theta else base.replace(rope_theta=stored.rope_theta)
    if not stage.is_hf_dir(config.init_from):  # our own models grow to fit the dataset
      base = base.replace(vocab_size=max(base.vocab_size, text_ids),
                          vision_vocab_size=max(base.vision_vocab_size, vision_ids))
    if stage.is_model_dir(config.init_from):
      stored = _stored(config.init_from)
      _check_same_architecture(base, stored, config)
      base = base if theta else base.replace(rope_theta=stored.rope_theta)
  if base.vocab_size < text_ids or (vision_ids > 0 and base.vision_vocab_size < vision_ids):
    raise ValueError(f"the dataset uses {text_ids} text ids and {vision_ids} vision ids, "
                     f"but the model has vocab_size={base.vocab_size} and vision_vocab_size="
                     f"{base.vision_vocab_size}")
  _check_attention_blocks(base, config.seq_len, stage.mesh_sizes(config, jax.device_count())[3])
  return base


def _stored(directory: str):
  from lwm import workdir
  return workdir.read_model_config(directory)


def _check_same_architecture(named, stored, config):
  for field in ARCHITECTURE:
    if getattr(named, field) != getattr(stored, field):
      raise ValueError(f"config.model={config.model!r} has {field}={getattr(named, field)} but the "
                       f"model in init_from={config.init_from!r} has {getattr(stored, field)}; "
                       "set config.model='init_from' to take the model from there")


def _check_attention_blocks(cfg, seq_len, sp):
  span = seq_len // (2 * sp)  # tokens per zigzag chunk
  for name in ("attention_block_q", "attention_block_kv"):
    block = min(getattr(cfg, name), span)
    if span % block:
      raise ValueError(f"seq_len={seq_len} gives {span} tokens per zigzag chunk on sp={sp}, which "
                       f"{name}={getattr(cfg, name)} does not divide; choose a seq_len that is a "
                       f"multiple of 2*sp*{getattr(cfg, name)}")
