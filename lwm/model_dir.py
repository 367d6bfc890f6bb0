"""Model directories: what a path holds, which model it describes, and loading it.

  kind("workdirs/stage2")                  # "model", "hf", "legacy" or None
  loaded = load_model("workdirs/stage2")   # model on a mesh, tokenizer, VQGAN dir, frame sampling
  cfg = model_config(stage_config, vocab)  # the ModelConfig of a training stage

The kinds:
  "hf"      a Hugging Face checkpoint: config.json with *.safetensors or pytorch_model*.bin.
  "model"   a model directory (lwm.workdir): assets/model.json + checkpoints/, written by training
            (a workdir) or by scripts/import_lwm.py; it holds its tokenizer and VQGAN.
  "legacy"  a workdir written before workdirs held their assets: its stage config (config.json) +
            checkpoints/; the model and vocabulary come from the stage config and its dataset.
Training (`init_from`, `initial_params`), evaluation, ask and import all ask this module.
"""
import dataclasses
import json
import os

from lwm import mesh_spec, workdir
from lwm.data import dataset
from lwm.model import config as model_config_lib
from lwm.vocab import Vocab

HF, MODEL, LEGACY = "hf", "model", "legacy"

# Fields of a model directory's config that a named size must agree with to start from it and that
# parameter shapes cannot show (restoring checks the shapes, naming the parameter), or that name
# parameters the named size lacks (biases).
ARCHITECTURE = ("num_heads", "num_kv_heads", "dim_per_head", "rms_norm_eps", "qkv_bias",
                "out_bias", "mlp_bias", "sliding_window")


# ------------------------------------------------------------------------------------ Kinds

def kind(path: str) -> str | None:
  """HF, MODEL or LEGACY (see the module docstring), or None for anything else."""
  if not path or not os.path.isdir(path):
    return None
  if os.path.isfile(os.path.join(path, workdir.ASSETS, workdir.MODEL_JSON)):
    return MODEL
  has_config = os.path.isfile(os.path.join(path, "config.json"))
  if has_config and any(f.endswith(".safetensors") or
                        (f.startswith("pytorch_model") and f.endswith(".bin"))
                        for f in os.listdir(path)):
    return HF
  if has_config and os.path.isdir(os.path.join(path, "checkpoints")):
    return LEGACY
  return None


def describe(path: str) -> str:
  """What is at `path`, for error messages: "does not exist", "is a file", or the entries."""
  if not os.path.exists(path):
    return "does not exist"
  if not os.path.isdir(path):
    return "is a file, not a directory"
  names = sorted(os.listdir(path))
  shown = ", ".join(names[:8]) + (f", ... ({len(names)} entries)" if len(names) > 8 else "")
  return f"holds {shown or 'nothing'}"


def require(path: str, kinds: tuple, what: str) -> str:
  """kind(path) if it is one of `kinds`; else a ValueError that says what was asked for (`what`),
  what is at the path, and what is accepted."""
  found = kind(path)
  if found in kinds:
    return found
  accepted = {HF: "a Hugging Face directory (config.json + *.safetensors or pytorch_model*.bin)",
              MODEL: "a model directory (assets/model.json + checkpoints/: a training workdir or "
                     "scripts/import_lwm.py's output)",
              LEGACY: "a workdir of an older lwm (config.json + checkpoints/)"}
  raise ValueError(f"{what}: {path!r} {describe(path)}; expected "
                   + " or ".join(accepted[k] for k in kinds))


def stored_config(path: str):
  """The ModelConfig stored in a HF or model directory."""
  found = require(path, (HF, MODEL), "model directory")
  if found == HF:
    from lwm.model import hf
    with open(os.path.join(path, "config.json")) as f:
      return hf.config_from_hf(json.load(f))
  return workdir.read_model_config(path)


# ------------------------------------------------------------------------------- A stage's model

def model_config(config, vocab: dict):
  """The ModelConfig of a training stage: the named size (`config.model`), a Hugging Face
  checkpoint's (`hf`), or that of the model directory in `config.init_from` (`init_from`); the stage
  sets the length, the dtypes and the loss weights, and θ where it gives one (`config.rope_theta`
  0 keeps the checkpoint's θ, or the named size's without one); the dataset's vocabulary layout
  sets the minimum table sizes.

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
  source = kind(config.init_from)
  if config.model in ("hf", "init_from") and source == HF:
    base = _hf_config(config.init_from, overrides)
  elif config.model == "init_from":
    base = stored_config(config.init_from).replace(**overrides)
  else:
    base = model_config_lib.get_config(config.model, **overrides)
    if source in (HF, MODEL):
      stored = stored_config(config.init_from)
      if source == HF and stored.rope_scaling != base.rope_scaling:
        # A named size must not drop the checkpoint's RoPE scaling.
        raise ValueError(f"config.init_from={config.init_from!r} uses rope_scaling="
                         f"{dict(stored.rope_scaling) or None}, config.model={config.model!r} has "
                         f"{dict(base.rope_scaling) or None}; use config.model='hf' or set "
                         "config.model_overrides.rope_scaling")
      _check_same_architecture(base, stored, config)  # e.g. rms_norm_eps, which no shape shows
      base = base if theta else base.replace(rope_theta=stored.rope_theta)
    if source != HF:  # our own models grow to fit the dataset
      base = base.replace(vocab_size=max(base.vocab_size, text_ids),
                          vision_vocab_size=max(base.vision_vocab_size, vision_ids))
  if base.vocab_size < text_ids or (vision_ids > 0 and base.vision_vocab_size < vision_ids):
    raise ValueError(f"the dataset uses {text_ids} text ids and {vision_ids} vision ids, "
                     f"but the model has vocab_size={base.vocab_size} and vision_vocab_size="
                     f"{base.vision_vocab_size}")
  _check_attention_blocks(base, config)
  return base


def _hf_config(path: str, overrides: dict):
  from lwm.model import hf
  with open(os.path.join(path, "config.json")) as f:
    return hf.config_from_hf(json.load(f), **overrides)


def _check_same_architecture(named, stored, config):
  for field in ARCHITECTURE:
    if getattr(named, field) != getattr(stored, field):
      raise ValueError(f"config.model={config.model!r} has {field}={getattr(named, field)} but the "
                       f"model in init_from={config.init_from!r} has {getattr(stored, field)}; "
                       "set config.model='init_from' to take the model from there")


def _check_attention_blocks(cfg, config):
  import jax
  sp = mesh_spec.parse_mesh_sizes(config.mesh, jax.device_count())[-1]
  span = config.seq_len // (2 * sp)  # tokens per zigzag chunk
  for name in ("attention_block_q", "attention_block_kv"):
    block = min(getattr(cfg, name), span)
    if span % block:
      raise ValueError(f"seq_len={config.seq_len} gives {span} tokens per zigzag chunk on sp={sp}, "
                       f"which {name}={getattr(cfg, name)} does not divide; choose a seq_len that "
                       f"is a multiple of 2*sp*{getattr(cfg, name)}")


def check_init_tokenizer(config) -> None:
  """Refuses a stage whose model (config.init_from: a model directory, or a Hugging Face directory
  with a tokenizer) was made with another tokenizer than its dataset, by content hash (a dataset
  or model directory written before hashes is not checked)."""
  recorded = dataset.read_vocab(config.data.path)
  expected, theirs, where = recorded.get("tokenizer_hash"), None, None
  source = kind(config.init_from)
  if not expected or source not in (MODEL, HF):
    return
  if source == MODEL:
    where = workdir.assets_dir(config.init_from)
    with open(os.path.join(where, workdir.VOCAB_JSON)) as f:
      theirs = json.load(f).get("tokenizer_hash")
  elif any(os.path.isfile(os.path.join(config.init_from, n))
           for n in ("tokenizer.json", "tokenizer.model")):
    from lwm.data import text_tokenizer
    tokenizer = text_tokenizer.load_tokenizer(config.init_from)
    theirs, where = tokenizer.content_hash, tokenizer.path
  if theirs and theirs != expected:
    raise ValueError(f"config.data.path={config.data.path!r} was tokenized with "
                     f"{recorded.get('tokenizer')} but config.init_from={config.init_from!r} "
                     f"was made with the tokenizer in {where} (content hash {theirs[:12]} != "
                     f"{expected[:12]}); preprocess the data with the model's tokenizer")


# ------------------------------------------------------------------------------------ Loading

@dataclasses.dataclass
class LoadedModel:
  """A model and what is needed to build its prompts.

  vocab: the vocab.json dict of the model's assets (lwm.vocab.Vocab's fields, codes_per_frame,
  tokenizer, vqgan) or {} for a Hugging Face directory. sampling: the data stage's
  frame sampling ({'fps', 'max_frames', 'min_frames'}) when recorded.
  """
  model: object
  tokenizer: object | None
  vocab: dict
  vqgan_dir: str | None
  sampling: dict | None
  source: str


def default_mesh():
  """All devices on `sp`: a prompt's sequence is spread over every device."""
  import jax
  from lwm import sharding
  return sharding.make_mesh(sp=jax.device_count())


def load_model(checkpoint: str, mesh=None, *, dtype: str | None = None,
               tokenizer: str | None = None, vqgan: str | None = None) -> LoadedModel:
  """Loads a model directory (its latest checkpoint), a legacy workdir or a Hugging Face
  directory onto `mesh` (default: all devices on `sp`).

  The tokenizer and VQGAN default to those in the directory's assets/ (a legacy workdir: those its
  dataset recorded; a HF directory: its tokenizer.json or tokenizer.model); `tokenizer`/`vqgan`
  override them, and a tokenizer other than the one the model was trained with (by content hash)
  is refused, as is one with more ids than the model's text embedding. An LWM import gets LWM's
  chat template. dtype: activation dtype (default: the stage's; float32 for HF directories).
  """
  found = require(checkpoint, (MODEL, HF, LEGACY), "--checkpoint")
  mesh = mesh or default_mesh()
  if found == HF:
    model, vocab, sampling, source = _load_hf(checkpoint, mesh, dtype, vqgan)
  elif found == MODEL:
    model, vocab, sampling, source = _load_model_dir(checkpoint, mesh, dtype)
  else:
    model, vocab, sampling, source = _load_legacy_workdir(checkpoint, mesh, dtype)
  tokenizer = tokenizer or vocab.get("tokenizer")
  if tokenizer is None and any(os.path.isfile(os.path.join(checkpoint, name))
                               for name in ("tokenizer.json", "tokenizer.model")):
    tokenizer = checkpoint
  vqgan = vqgan or vocab.get("vqgan")
  text = _checked_tokenizer(tokenizer, vocab, model.config, checkpoint) if tokenizer else None
  return LoadedModel(model, text, vocab, vqgan, sampling, source)


def _checked_tokenizer(path: str, vocab: dict, config, checkpoint: str):
  """The tokenizer at `path`, refused when the model was trained with another (content hash) or
  when it has more ids than the model's text embedding; an LWM import gets LWM's chat template."""
  from lwm.data import chat, text_tokenizer
  text = text_tokenizer.load_tokenizer(path)
  text_tokenizer.check_recorded(text, vocab, f"the model {checkpoint}")
  if len(text) > config.vocab_size:
    raise ValueError(f"the tokenizer {text.path} has {len(text)} ids but the model {checkpoint} "
                     f"has a text embedding of only {config.vocab_size} rows; give the tokenizer "
                     "the model was trained with")
  lwm_import = vocab.get("chat_template") == "lwm" or str(vocab.get("source")).startswith("LWM ")
  if lwm_import and text.chat_template is None:
    text = text.with_chat_template(chat.LWM_TEMPLATE)
  return text


def load_for_command(args) -> LoadedModel:
  """The model of a command declared with `lwm.launch.add_model_flags`: `args.checkpoint` on the
  mesh `args.mesh` with `args.dtype`, `args.tokenizer`, `args.vqgan`, Orbax's read-only warning
  silenced. Call `launch.setup_devices_for_mesh(args.mesh)` first, before JAX starts."""
  from absl import logging
  logging.set_verbosity(logging.ERROR)  # Orbax warns about reading a checkpoint read-only
  from lwm import sharding
  mesh = sharding.parse_mesh(args.mesh) if args.mesh else None
  return load_model(args.checkpoint, mesh, dtype=args.dtype, tokenizer=args.tokenizer,
                    vqgan=args.vqgan)


def initial_params(path: str, cfg, mesh, abstract_params, seed: int = 0):
  """(params, description) a training stage starts from: a HF checkpoint's weights, or those of a
  model directory's latest checkpoint, sharded like `abstract_params` (their θ and dtypes come from
  `cfg`)."""
  import jax
  from flax import nnx
  from lwm import checkpoint
  from lwm.model import hf
  if require(path, (HF, MODEL, LEGACY), "config.init_from") == HF:
    overrides = {k: getattr(cfg, k) for k in ("rope_theta", "max_sequence_length", "dtype")}
    model = hf.from_hf_llama(path, mesh=mesh, vision_vocab_size=cfg.vision_vocab_size, seed=seed,
                             **overrides)
    _, params = nnx.split(model, nnx.Param)
    params = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, abstract_params)
    return params, f"initialised from Hugging Face checkpoint {path}"
  params, step = checkpoint.restore_params(path, abstract_params)
  return params, f"initialised from {path} step {step} (parameters only)"


def _restore(directory: str, config, mesh, dtype):
  """The model of `config` with the latest checkpoint's parameters of `directory`, on `mesh`."""
  import jax
  from flax import nnx
  from lwm import checkpoint, sharding
  from lwm.model.step import abstract_model
  if dtype:
    config = config.replace(dtype=dtype)
  graphdef, abstract = nnx.split(abstract_model(config, mesh), nnx.Param)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, sharding.param_shardings(abstract, mesh))
  params, step = checkpoint.restore_params(directory, abstract)
  return nnx.merge(graphdef, params), f"{directory} step {step}"


def _load_model_dir(directory: str, mesh, dtype):
  assets = workdir.read_assets(directory)
  model, source = _restore(directory, assets.model_config, mesh, dtype)
  vocab = dict(assets.vocab_json, tokenizer=assets.tokenizer, vqgan=assets.vqgan)
  return model, vocab, assets.sampling, source


def _load_legacy_workdir(directory: str, mesh, dtype):
  """The model from the stage config, the rest from its dataset (which must still exist)."""
  import ml_collections
  with open(os.path.join(directory, "config.json")) as f:
    stage_config = ml_collections.ConfigDict(json.load(f))
  vocab = dataset.read_vocab(stage_config.data.path)
  model, source = _restore(directory, model_config(stage_config, vocab), mesh, dtype)
  return model, vocab, dataset.read_sampling(stage_config.data.path), source


def _load_hf(path: str, mesh, dtype, vqgan):
  from lwm import vqgan as vqgan_lib
  from lwm.model import hf
  from lwm.vocab import vision_vocab_size
  vision = vision_vocab_size(vqgan_lib.load_config(vqgan).codebook_size) if vqgan else 0
  model = hf.from_hf_llama(path, mesh=mesh, compute_dtype=dtype, vision_vocab_size=vision)
  return model, {}, None, path
