"""Text tokenizers: one interface (transformers' names), two backends.

  tok = load_tokenizer("tok.model")                 # sentencepiece (LLaMA-2's, or trained here)
  tok = load_tokenizer("Qwen2.5-7B-Instruct/")      # HF directory: tokenizer.json + side files
  tok = load_tokenizer("Meta-Llama-3.1-8B/tokenizer.json")   # its directory's side files too
  tok.encode("Hello", add_special_tokens=True); tok.decode(ids); len(tok); tok.eos_token_ids

The interface is `lwm.data.tokenizer_base.TextTokenizer`; the backends are
`lwm.data.sp_tokenizer` and `lwm.data.hf_tokenizer`; chat templates are `lwm.data.chat`.
`train_tokenizer` makes either kind with the vision markers reserved and digits split.

Where `<vision>`/`</vision>` live: one id each in a tokenizer trained here (sentencepiece: reserved
pieces; tokenizer.json: added special tokens 1 and 2), else the ids of their text. The frame
markers `<eof>`/`<eov>` never go through the text tokenizer: they are ids of the vision vocabulary
(see `lwm.vocab`).
"""
import os
from typing import Iterable

from lwm.data.hf_tokenizer import HFTokenizer, train_bpe
from lwm.data.sp_tokenizer import SentencePieceTokenizer, train_sentencepiece
from lwm.data.tokenizer_base import RESERVED, SIDE_FILES, TextTokenizer

__all__ = ["RESERVED", "TextTokenizer", "FORMATS", "load_tokenizer", "train_tokenizer",
           "tokenizer_files"]
FORMATS = ("sentencepiece", "hf")
ACCEPTED = ("a sentencepiece .model file, a tokenizer.json, or a directory holding tokenizer.json "
            "(a Hugging Face model or tokenizer directory) or tokenizer.model")


def train_tokenizer(texts: Iterable[str], output: str, vocab_size: int = 8000,
                    format: str = "sentencepiece") -> str:
  """Trains a tokenizer on `texts`; returns the path to give load_tokenizer. sentencepiece: a BPE
  `.model` file (output ends with .model); hf: a byte-level BPE tokenizer.json and its
  tokenizer_config.json in the directory `output`."""
  if format == "sentencepiece":
    return train_sentencepiece(texts, output, vocab_size)
  if format == "hf":
    return train_bpe(texts, output, vocab_size)
  raise ValueError(f"format={format!r}; expected one of {FORMATS}")


def load_tokenizer(path: str) -> TextTokenizer:
  """The tokenizer at `path`: a sentencepiece `.model`, a `tokenizer.json` (with the side files
  of its directory), or a directory holding either (tokenizer.json first, as transformers)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"tokenizer {path!r} does not exist; give {ACCEPTED} (train one with "
                            "scripts/train_tokenizer.py)")
  if os.path.isdir(path):
    for name in ("tokenizer.json", "tokenizer.model"):
      if os.path.isfile(os.path.join(path, name)):
        return load_tokenizer(os.path.join(path, name))
    found = sorted(os.listdir(path))
    listing = ", ".join(found[:12]) + (" ..." if len(found) > 12 else "") if found else "nothing"
    raise ValueError(f"tokenizer directory {path!r} holds no tokenizer.json or tokenizer.model "
                     f"(it holds {listing}); give {ACCEPTED}")
  kind = "json" if path.endswith(".json") else "model" if path.endswith(".model") else _sniff(path)
  try:
    return HFTokenizer(path) if kind == "json" else SentencePieceTokenizer(path)
  except Exception as e:  # the libraries' own messages ("could not parse ModelProto") name no file
    what = "a tokenizer.json" if kind == "json" else "a sentencepiece model"
    raise ValueError(f"{path!r} cannot be read as {what} ({type(e).__name__}: {e}); give "
                     f"{ACCEPTED}") from None


def _sniff(path: str) -> str:
  """'json' when the file starts like a JSON object, else 'model'."""
  with open(path, "rb") as f:
    return "json" if f.read(64).lstrip().startswith(b"{") else "model"


def tokenizer_files(path: str) -> list[str]:
  """The files that make up the tokenizer at `path` (what a copy needs): the .model, or the
  tokenizer.json with the side files beside it (config.json only where no generation_config.json
  gives the EOS ids)."""
  path = load_tokenizer(path).path if os.path.isdir(path) else path
  if not (path.endswith(".json") or _sniff(path) == "json"):
    return [path]
  folder = os.path.dirname(os.path.abspath(path))
  names = SIDE_FILES if os.path.isfile(os.path.join(folder, "generation_config.json")) else (
      SIDE_FILES + ("config.json",))
  return [path] + [os.path.join(folder, n) for n in names
                   if os.path.isfile(os.path.join(folder, n))]


def check_recorded(tokenizer: TextTokenizer, recorded: dict, what: str) -> None:
  """Refuses `tokenizer` when `recorded` (a vocab.json: a dataset's or a model directory's) was
  made with another tokenizer (its `tokenizer_hash`); `what` names the recording, e.g. "the
  dataset data/". A recording without a hash (written before hashes) is not checked."""
  expected = recorded.get("tokenizer_hash")
  if expected and tokenizer.content_hash != expected:
    raise ValueError(f"the tokenizer {tokenizer.path} is not the one {what} was made with "
                     f"({recorded.get('tokenizer')}): content hash {tokenizer.content_hash[:12]} "
                     f"!= {expected[:12]}; use the same tokenizer (or preprocess again with "
                     "this one)")
