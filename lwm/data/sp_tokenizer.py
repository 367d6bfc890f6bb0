"""The sentencepiece backend: a `.model` file, trained here or brought along (LLaMA-2's
tokenizer.model), read as transformers' LlamaTokenizer reads it.

encode() adds BOS (and no EOS) with add_special_tokens, unless a tokenizer_config.json beside the
file says otherwise (add_bos_token / add_eos_token); the control pieces' texts (`<s>`, `</s>`) in
the text become their ids, so a chat template that writes `bos_token` gives one BOS. decode() writes
control pieces as their text unless skip_special_tokens.

A model trained by `train_sentencepiece` reserves `<vision>`, `</vision>`, `<eof>`, `<eov>` as
single pieces. Any other model file is used as it is: there `<vision>` is encoded as ordinary text
(several pieces), as LWM does with the LLaMA tokenizer.
"""
import os
import re
import tempfile
from typing import Iterable

import sentencepiece as spm

from lwm.data.tokenizer_base import RESERVED, TextTokenizer, file_sha256, read_side_files


def train_sentencepiece(texts: Iterable[str], output: str, vocab_size: int = 8000) -> str:
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


class SentencePieceTokenizer(TextTokenizer):
  """A loaded sentencepiece model (`processor`) with transformers' names."""

  def __init__(self, path: str):
    self.path = path
    self.processor = spm.SentencePieceProcessor(model_file=path)
    side = read_side_files(os.path.dirname(os.path.abspath(path)))
    self.chat_template = side.chat_template
    p = self.processor
    self._bos = p.bos_id() if p.bos_id() >= 0 else None
    self._eos = tuple(dict.fromkeys(
        ([p.eos_id()] if p.eos_id() >= 0 else []) +
        [i for i in side.generation_eos if 0 <= i < p.vocab_size()]))
    self._add_bos = self._bos is not None if side.add_bos is None else bool(side.add_bos)
    self._add_eos = bool(side.add_eos) and p.eos_id() >= 0
    # Control pieces (<s>, </s>, <pad>) and <unk>: written as text in a prompt, they are one id.
    self._special = {p.id_to_piece(i): i for i in range(p.vocab_size())
                     if p.is_control(i) or p.is_unknown(i)}
    self._split = re.compile("(" + "|".join(map(re.escape, sorted(self._special, key=len,
                                                                  reverse=True))) + ")")
    self._file_hash = file_sha256(path)

  def __len__(self) -> int:
    return self.processor.vocab_size()

  @property
  def special_tokens_map(self) -> dict:
    p, out = self.processor, {}
    for name, i in (("bos_token", p.bos_id()), ("eos_token", p.eos_id()),
                    ("unk_token", p.unk_id()), ("pad_token", p.pad_id())):
      if i >= 0:
        out[name] = p.id_to_piece(i)
    return out

  def token_to_id(self, token: str) -> int | None:
    token_id = self.processor.piece_to_id(token)
    return None if token_id == self.processor.unk_id() and token != "<unk>" else token_id

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    ids = []
    for part in self._split.split(text) if self._special else [text]:
      if part in self._special:
        ids.append(self._special[part])
      elif part:
        ids += self.processor.encode(part, out_type=int)
    if add_special_tokens:
      ids = [self._bos] * self._add_bos + ids + [self.processor.eos_id()] * self._add_eos
    return ids

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    p, out, run = self.processor, [], []
    for i in (int(i) for i in ids):
      if p.is_control(i) or p.is_unknown(i):
        if run:
          out.append(p.decode(run))
          run = []
        if not skip_special_tokens:
          out.append(p.id_to_piece(i))
      else:
        run.append(i)
    if run:
      out.append(p.decode(run))
    return "".join(out)
