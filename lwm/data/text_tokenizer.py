"""Text tokenizer: a sentencepiece model, trained here or brought along (LLaMA-2's tokenizer.model).

A model trained by `train_tokenizer` reserves `<vision>`, `</vision>`, `<eof>`, `<eov>` as single
pieces. Any other model file is used as it is: there `<vision>` is encoded as ordinary text
(several pieces), as LWM does with the LLaMA tokenizer. The frame markers `<eof>`/`<eov>` never go
through the text tokenizer: they are ids of the vision vocabulary (see `interleave.py`).
"""
import dataclasses
import os
import tempfile
from typing import Iterable

import sentencepiece as spm

RESERVED = ("<vision>", "</vision>", "<eof>", "<eov>")


def train_tokenizer(texts: Iterable[str], output: str, vocab_size: int = 8000) -> str:
  """Trains a BPE sentencepiece model on `texts` with the vision markers reserved; returns its path.

  `output` is the `.model` path to write. Unknown characters fall back to bytes, so any UTF-8 text
  round-trips. Digits are always single pieces (as in LLaMA's tokenizer): a number tokenizes the
  same way whether or not it occurred in the training text.
  """
  if not output.endswith(".model"):
    raise ValueError(f"output must end with '.model', got {output!r}")
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w", encoding="utf-8", errors="replace") as f:  # lone surrogates
      for text in texts:
        for line in text.splitlines():
          if line.strip():
            f.write(line + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(tmp, "tok"), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, user_defined_symbols=list(RESERVED),
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, hard_vocab_limit=False,
        character_coverage=1.0, split_digits=True, minloglevel=2)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    os.replace(os.path.join(tmp, "tok.model"), output)
  return output


@dataclasses.dataclass(frozen=True)
class TextTokenizer:
  """A loaded sentencepiece model with the ids the interleaver needs."""
  path: str
  processor: spm.SentencePieceProcessor

  @property
  def vocab_size(self) -> int:
    return self.processor.vocab_size()

  @property
  def bos_id(self) -> int:
    return self.processor.bos_id()  # -1 when the model has none

  @property
  def eos_id(self) -> int:
    return self.processor.eos_id()

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`; BOS first only with `add_special_tokens` (the interleaver adds BOS
    once per example). Shim of transformers' name for the RULER suite (issue 25); the tokenizer
    work (issue 23) replaces this class."""
    ids = self.processor.encode(text, out_type=int)
    return [self.bos_id] + ids if add_special_tokens and self.bos_id >= 0 else ids

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    del skip_special_tokens  # sentencepiece's decode drops BOS/EOS already
    return self.processor.decode([int(i) for i in ids])

  @property
  def bos_token_id(self) -> int | None:
    return self.bos_id if self.bos_id >= 0 else None

  @property
  def eos_token_ids(self) -> tuple:
    return (self.eos_id,) if self.eos_id >= 0 else ()

  def __len__(self) -> int:
    return self.vocab_size

  def marker(self, piece: str) -> list[int]:
    """Ids of a marker such as `<vision>`: one reserved piece in our models, several in LLaMA's."""
    piece_id = self.processor.piece_to_id(piece)
    if piece_id != self.processor.unk_id():
      return [piece_id]
    return self.encode(piece)

  @property
  def vision_start(self) -> list[int]:
    return self.marker("<vision>")

  @property
  def vision_end(self) -> list[int]:
    return self.marker("</vision>")


def load_tokenizer(path: str) -> TextTokenizer:
  """Loads any sentencepiece `.model` file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer model {path!r} does not exist; train one with "
                            "scripts/train_tokenizer.py or pass LLaMA-2's tokenizer.model")
  return TextTokenizer(path=path, processor=spm.SentencePieceProcessor(model_file=path))
