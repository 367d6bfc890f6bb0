"""A model directory that stands alone: what inference needs, inside it.

  DIR/assets/model.json       the ModelConfig (shapes, θ, dtypes)
  DIR/assets/vocab.json       the vocabulary layout (lwm.vocab.Vocab) and the frame sampling
  DIR/assets/tokenizer.model  the text tokenizer: a sentencepiece model, or
  DIR/assets/tokenizer/       a Hugging Face tokenizer (tokenizer.json and its side files)
  DIR/assets/vqgan/           the VQGAN (config.json + params.npz), when the model sees video
  DIR/checkpoints/<step>/     Orbax checkpoints (training's, or one params-only step of an import)

Training writes the assets at the start of every stage (from its dataset), so a workdir can be
evaluated after the dataset is moved or deleted; scripts/import_lwm.py writes the same layout.
Files are hard-linked when source and workdir share a file system (stored once), else copied.
"""
import dataclasses
import json
import logging
import os
import shutil

from lwm import checkpoint
from lwm.data import dataset
from lwm.files import write_json
from lwm.model.config import ModelConfig
from lwm.vocab import Vocab

log = logging.getLogger(__name__)

ASSETS = "assets"
MODEL_JSON, VOCAB_JSON, TOKENIZER, VQGAN = "model.json", "vocab.json", "tokenizer.model", "vqgan"
HF_TOKENIZER = "tokenizer"  # a directory: tokenizer.json, tokenizer_config.json, ...


@dataclasses.dataclass
class Assets:
  """What a model directory holds for inference. tokenizer / vqgan: paths, or None."""
  model_config: ModelConfig
  vocab: Vocab
  vocab_json: dict          # vocab.json as stored (the layout, codes_per_frame, sampling, paths)
  tokenizer: str | None
  vqgan: str | None
  sampling: dict | None


def assets_dir(directory: str) -> str:
  return os.path.join(directory, ASSETS)


def _store(source: str, target: str) -> None:
  """Hard-links (or copies) file `source` to `target`, unless target already has its bytes."""
  if os.path.isfile(target) and os.path.getsize(target) == os.path.getsize(source):
    if os.path.samefile(source, target) or _same_bytes(source, target):
      return
  tmp = target + ".tmp"
  if os.path.exists(tmp):
    os.remove(tmp)
  try:
    os.link(source, tmp)
  except OSError:  # another file system, or links not allowed
    shutil.copyfile(source, tmp)
  os.replace(tmp, target)


def _same_bytes(a: str, b: str, block: int = 1 << 24) -> bool:
  with open(a, "rb") as fa, open(b, "rb") as fb:
    while True:
      x, y = fa.read(block), fb.read(block)
      if x != y:
        return False
      if not x:
        return True


def write_assets(directory: str, *, model_config: ModelConfig, vocab: Vocab,
                 tokenizer: str | None = None, vqgan=None, sampling: dict | None = None,
                 extra: dict | None = None) -> str:
  """Writes DIR/assets. tokenizer: any path load_tokenizer reads (its files are linked/copied and
  vocab.json records its content hash). vqgan: a VQGAN directory (linked/copied) or a
  `lwm.vqgan.VQGAN` (saved). extra: more keys for vocab.json (e.g. where the assets came from).
  Returns the path."""
  from lwm import vqgan as vqgan_lib
  out = assets_dir(directory)
  os.makedirs(out, exist_ok=True)
  record = dict(vocab.to_json(), **(extra or {}))
  if sampling is not None:
    record["sampling"] = sampling
  if tokenizer is not None:
    record["tokenizer_hash"] = _store_tokenizer(tokenizer, out)
  if vqgan is not None:
    target = os.path.join(out, VQGAN)
    if isinstance(vqgan, str):
      source = vqgan_lib.resolve(vqgan)
      os.makedirs(target, exist_ok=True)
      for name in ("config.json", "params.npz"):
        _store(os.path.join(source, name), os.path.join(target, name))
    else:
      vqgan_lib.save(target, vqgan)
    config = vqgan_lib.load_config(target)
    if config.codebook_size != vocab.codebook_size:
      raise ValueError(f"the VQGAN has {config.codebook_size} codes but the vocabulary layout "
                       f"{vocab.codebook_size}")
    record["codes_per_frame"] = config.codes_per_frame
  write_json(os.path.join(out, VOCAB_JSON), record)
  write_json(os.path.join(out, MODEL_JSON), dataclasses.asdict(model_config))
  return out


def _store_tokenizer(source: str, out: str) -> str:
  """Stores the tokenizer at `source` in assets `out` (replacing one of the other kind); returns
  its content hash."""
  from lwm.data import text_tokenizer
  files = text_tokenizer.tokenizer_files(source)
  single, folder = os.path.join(out, TOKENIZER), os.path.join(out, HF_TOKENIZER)
  if len(files) == 1 and not files[0].endswith(".json"):
    if os.path.isdir(folder):
      shutil.rmtree(folder)
    _store(files[0], single)
    return text_tokenizer.load_tokenizer(single).content_hash
  if os.path.isfile(single):
    os.remove(single)
  targets = {"tokenizer.json": files[0], **{os.path.basename(f): f for f in files[1:]}}
  os.makedirs(folder, exist_ok=True)
  for name in set(os.listdir(folder)) - set(targets):
    os.remove(os.path.join(folder, name))  # a side file of an earlier tokenizer
  for name, path in targets.items():
    _store(path, os.path.join(folder, name))
  return text_tokenizer.load_tokenizer(folder).content_hash


def write_stage_assets(directory: str, model_config: ModelConfig, data_path: str) -> str:
  """The assets of a training stage, from its dataset (vocab.json, tokenizer, VQGAN, sampling)."""
  recorded = dataset.read_vocab(data_path)
  sampling = dataset.read_sampling(data_path)
  return write_assets(directory, model_config=model_config, vocab=Vocab.from_json(recorded),
                      tokenizer=recorded.get("tokenizer"), vqgan=recorded.get("vqgan"),
                      sampling=sampling, extra={"dataset": os.path.abspath(data_path)})


def read_model_config(directory: str) -> ModelConfig:
  path = os.path.join(assets_dir(directory), MODEL_JSON)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{directory!r} is not a model directory: {path} is missing")
  with open(path) as f:
    return ModelConfig(**json.load(f))


def read_assets(directory: str) -> Assets:
  """The assets of a model directory (see the module docstring)."""
  out = assets_dir(directory)
  with open(os.path.join(out, VOCAB_JSON)) as f:
    recorded = json.load(f)
  tokenizer = os.path.join(out, TOKENIZER)
  if not os.path.isfile(tokenizer):
    folder = os.path.join(out, HF_TOKENIZER)
    tokenizer = folder if os.path.isfile(os.path.join(folder, "tokenizer.json")) else None
  vqgan = os.path.join(out, VQGAN)
  return Assets(model_config=read_model_config(directory), vocab=Vocab.from_json(recorded),
                vocab_json=recorded, tokenizer=tokenizer,
                vqgan=vqgan if os.path.isfile(os.path.join(vqgan, "config.json")) else None,
                sampling=recorded.get("sampling"))


def save_params(directory: str, params, *, step: int = 0, meta: dict | None = None) -> None:
  """Writes `params` as checkpoint `step` of DIR, as training does (restore_params reads it)."""
  import orbax.checkpoint as ocp
  mngr = checkpoint.manager(directory, keep=1, async_save=False)
  mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                          meta=ocp.args.JsonSave(meta or {"step": step})),
            force=True)
  mngr.wait_until_finished()
  mngr.close()


def write_model_dir(directory: str, model, vocab: Vocab, *, tokenizer: str | None = None,
                    vqgan=None, meta: dict | None = None) -> None:
  """A standalone model directory from a Transformer (e.g. an imported checkpoint): its parameters
  as checkpoint 0 and its assets; evaluation, ask and `init_from` in training read it."""
  from flax import nnx
  if vocab.text_vocab_size > model.config.vocab_size:
    raise ValueError(f"the tokenizer has {vocab.text_vocab_size} ids but the model's text "
                     f"vocabulary only {model.config.vocab_size}")
  if vocab.codebook_size and vocab.vision_vocab_size != model.config.vision_vocab_size:
    raise ValueError(f"the vocabulary layout has {vocab.vision_vocab_size} vision ids but the "
                     f"model {model.config.vision_vocab_size}")
  _, params = nnx.split(model, nnx.Param)
  save_params(directory, params, meta=meta)
  write_assets(directory, model_config=model.config, vocab=vocab, tokenizer=tokenizer,
               vqgan=vqgan, extra={k: meta[k] for k in ("source", "chat_template") if k in meta}
               if meta else None)
