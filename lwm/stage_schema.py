"""The schema of a training-stage config, the stage tables of configs/, and the checks that run
before anything compiles.

A config file in configs/ is a table of stages, each a few dotted overrides of `base_config()`:

  COMMON = {"model": "7b", "train.lr": 4e-5}
  STAGES = {"32k": {"seq_len": 32768, "train.steps": 1200}, "128k": {"seq_len": 131072, ...}}
  def get_config(arg="32k"):
    return stage_config(STAGES, arg, COMMON, workdirs="workdirs/text_{stage}")

Reading a config starts no JAX backend, so a launcher can size the devices (XLA_FLAGS) first.
"""
import math
import os

import ml_collections
from ml_collections.config_flags import config_flags

from lwm import mesh_spec, model_dir
from lwm.data import dataset

LR_SCHEDULES = ("cosine", "constant")


def base_config() -> ml_collections.ConfigDict:
  """Every key a stage may set, with defaults; overriding an unknown key fails (locked dict)."""
  c = ml_collections.ConfigDict()
  c.model = "tiny"            # a named size of lwm.model.CONFIGS, or "hf" / "init_from" to take
                              # it from init_from (a HF directory / any model directory)
  c.model_overrides = ml_collections.ConfigDict()  # ModelConfig fields, e.g. {"num_layers": 4}
  c.seq_len = 1024            # tokens per packed sequence
  c.rope_theta = 0.0          # RoPE base; 0 keeps the model's own: init_from's (a Hugging Face
                              # checkpoint or a previous stage) or else the named size's
  c.mesh = "sp=1"             # "sp=8", "hp=2,sp=4" or dp,fsdp,tp,hp,sp; one -1 takes the rest;
  #                             "auto": the planner's choice at stage start (lwm.bench.mesh_plan)
  c.seed = 0
  c.init_from = ""            # "" (random), a previous stage's workdir, a Hugging Face LLaMA dir,
                              # or a model directory written by scripts/import_lwm.py

  c.data = ml_collections.ConfigDict()
  c.data.path = ""            # a directory written by scripts/preprocess.py
  c.data.prefetch = 2         # batches packed and placed ahead by a background thread (0: none)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100
  c.train.batch_size = 8      # sequences per optimizer step (global)
  c.train.grad_accum = 1      # micro-batches per step (the micro-batch goes over the dp, fsdp
                              # axes that divide it; the others compute the same rows)
  c.train.lr = 3e-4
  c.train.lr_schedule = "cosine"
  c.train.warmup_steps = 10
  c.train.end_lr_ratio = 0.1  # cosine decays to lr * end_lr_ratio
  c.train.weight_decay = 0.1
  c.train.b1 = 0.9
  c.train.b2 = 0.95           # LWM's
  c.train.clip_norm = 1.0
  c.train.text_loss_weight = 0.5
  c.train.vision_loss_weight = 0.5
  c.train.dtype = "bfloat16"  # activations; parameters and optimizer state stay float32
  c.train.log_every = 10
  c.train.peak_tflops_per_device = 0.0  # for the MFU estimate; 0 guesses from the device kind
  c.train.profile_steps = ""  # "START,END": a jax.profiler trace of those steps in workdir/profile
  c.train.profile_host_tracer_level = -1   # -1: 0 on CPU (its runtime records every op, GBs
                                           # per step), 1 on accelerators; 2, 3: more, larger
  c.train.profile_python_tracer_level = 0  # 1 records every Python call of every thread (large)
  c.train.profile_perfetto = False         # also write perfetto_trace.json.gz (ui.perfetto.dev)

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0            # steps between held-out evaluations (0: off)
  c.eval.data_path = ""       # a held-out dataset written by scripts/preprocess.py (same vocab)
  c.eval.batches = 4          # packed batches evaluated each time (the same ones every time)
  c.eval.batch_size = 0       # rows per eval batch; 0: the training micro-batch

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 100
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True
  return c


def stage_config(stages: dict, arg: str, common: dict | None = None, *,
                 workdirs: str | None = None) -> ml_collections.ConfigDict:
  """The config of stage `arg` of a config file's table: `base_config()` with the dotted overrides
  of `common`, then of `stages[arg]` ({"train.steps": 1200, "model_overrides.num_layers": 4}).

  workdirs: where the stages' workdirs go by default ("workdirs/text_{stage}"): each stage after
  the first then starts from the previous stage's (`init_from`), unless its row says otherwise.
  A key the schema does not have, or a value of the wrong type, raises naming it.
  """
  if arg not in stages:
    raise ValueError(f"unknown stage {arg!r}; this config file has {list(stages)}")
  c = base_config()
  c.lock()
  c.model_overrides.unlock()  # any ModelConfig field
  names = list(stages)
  previous = names[names.index(arg) - 1] if names.index(arg) else None
  derived = {"init_from": workdirs.format(stage=previous)} if workdirs and previous else {}
  c.update_from_flattened_dict({**(common or {}), **derived, **stages[arg]})
  return c


def mesh_sizes(config, num_devices: int | None = None) -> tuple[int, int, int, int, int]:
  """(dp, fsdp, tp, hp, sp) from `config.mesh` ("sp=4,fsdp=-1", "1,-1,1,1,4" or the older
  "1,-1,1,4"; see lwm.mesh_spec)."""
  if config.mesh == "auto":
    raise ValueError("config.mesh='auto' is the planner's choice, made at stage start by lwm.train "
                     "(lwm.bench.mesh_plan.resolve_auto_mesh); it has no sizes before that")
  try:
    return mesh_spec.parse_mesh_sizes(config.mesh, num_devices)
  except ValueError as e:
    raise ValueError(f"config.mesh={config.mesh!r}: {e}") from e


def load_config(spec: str) -> ml_collections.ConfigDict:
  """A stage config from "configs/file.py[:arg]", loaded and locked as `scripts/train.py
  --config` loads it (ml_collections' config-file parser)."""
  return config_flags.ConfigFileFlagParser("config", lock_config=True).parse(spec)


def validate(config, num_devices: int | None = None) -> None:
  """Raises ValueError naming the first wrong value; call before building anything."""
  dp, fsdp, tp, hp, sp = mesh_sizes(config, num_devices)
  if num_devices is not None and dp * fsdp * tp * hp * sp != num_devices:
    raise ValueError(f"config.mesh={config.mesh!r} needs {dp * fsdp * tp * hp * sp} devices, but "
                     f"there are {num_devices}; make dp*fsdp*tp*hp*sp equal the device count")
  if config.seq_len <= 0 or config.seq_len % (2 * sp * hp):
    raise ValueError(f"config.seq_len={config.seq_len} must be a positive multiple of 2*sp*hp = "
                     f"{2 * sp * hp} (ring attention's zigzag layout gives each ring shard two "
                     f"chunks, cut into hp whole pieces; config.mesh={config.mesh!r})")
  t = config.train
  if t.batch_size <= 0 or t.grad_accum <= 0 or t.batch_size % t.grad_accum:
    raise ValueError(f"config.train.batch_size={t.batch_size} must be a positive multiple of "
                     f"config.train.grad_accum={t.grad_accum}")
  if t.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"config.train.lr_schedule={t.lr_schedule!r}; expected one of {LR_SCHEDULES}")
  if t.steps <= 0 or config.checkpoint.every <= 0:
    raise ValueError(f"config.train.steps={t.steps} and config.checkpoint.every="
                     f"{config.checkpoint.every} must be positive")
  if not config.data.path or not os.path.isdir(config.data.path):
    raise ValueError(f"config.data.path={config.data.path!r} is not a directory; point it at the "
                     "output of scripts/preprocess.py")
  if not os.path.isfile(os.path.join(config.data.path, "vocab.json")):
    raise ValueError(f"config.data.path={config.data.path!r} has no vocab.json; is it a dataset "
                     "written by scripts/preprocess.py?")
  if config.init_from:
    model_dir.require(config.init_from, (model_dir.MODEL, model_dir.HF, model_dir.LEGACY),
                      "config.init_from")
  if config.model == "init_from":
    model_dir.require(config.init_from, (model_dir.HF, model_dir.MODEL),
                      "config.model='init_from' takes the model from config.init_from")
  if config.model == "hf":
    model_dir.require(config.init_from, (model_dir.HF,),
                      "config.model='hf' takes the model from config.init_from")
  _validate_loop(config)


def _validate_loop(config) -> None:
  """The keys of prefetching, profiling and held-out evaluation."""
  if config.data.prefetch < 0:
    raise ValueError(f"config.data.prefetch={config.data.prefetch} must be >= 0 (0: no prefetch)")
  parse_profile_steps(config.train.profile_steps)
  for key, low, top in (("profile_host_tracer_level", -1, 3),
                        ("profile_python_tracer_level", 0, 1)):
    if not low <= config.train[key] <= top:
      raise ValueError(f"config.train.{key}={config.train[key]} must be in {low}..{top}")
  e = config.eval
  if e.every < 0:
    raise ValueError(f"config.eval.every={e.every} must be >= 0 (0: no evaluation)")
  if not e.every:
    return
  if not e.data_path or not os.path.isfile(os.path.join(e.data_path, "vocab.json")):
    raise ValueError(f"config.eval.every={e.every} needs config.eval.data_path, a held-out dataset "
                     f"written by scripts/preprocess.py; got {e.data_path!r}")
  train_vocab, eval_vocab = dataset.read_vocab(config.data.path), dataset.read_vocab(e.data_path)
  hashes = train_vocab.get("tokenizer_hash"), eval_vocab.get("tokenizer_hash")
  if all(hashes) and hashes[0] != hashes[1]:
    raise ValueError(f"config.eval.data_path={e.data_path!r} was tokenized with "
                     f"{eval_vocab.get('tokenizer')} and config.data.path={config.data.path!r} "
                     f"with {train_vocab.get('tokenizer')}, which differ (content hashes "
                     f"{hashes[1][:12]} and {hashes[0][:12]}); preprocess both with the same "
                     "tokenizer")
  ids, eval_ids = _vocab_ids(train_vocab), _vocab_ids(eval_vocab)
  if ids != eval_ids:
    raise ValueError(f"config.eval.data_path={e.data_path!r} was tokenized with other ids "
                     f"({eval_ids}) than config.data.path ({ids}); preprocess it with the same "
                     "tokenizer and VQGAN")
  if e.batches < 1:
    raise ValueError(f"config.eval.batches={e.batches} must be >= 1")


def _vocab_ids(vocab: dict) -> dict:
  return {k: v for k, v in vocab.items() if k not in ("tokenizer", "tokenizer_hash", "vqgan")}


def eval_batch_size(config) -> int:
  return config.eval.batch_size or config.train.batch_size // config.train.grad_accum


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
  """"START,END" -> (START, END), steps inclusive; "" -> None. ValueError names a wrong value."""
  if not spec:
    return None
  try:
    start, end = (int(s) for s in str(spec).split(","))
  except ValueError:
    start, end = 0, -1
  if not 1 <= start <= end:
    raise ValueError(f"config.train.profile_steps={spec!r} must be 'START,END' with "
                     "1 <= START <= END, e.g. '10,12'")
  return start, end


def device_count_needed(config) -> int:
  return math.prod(mesh_sizes(config))
