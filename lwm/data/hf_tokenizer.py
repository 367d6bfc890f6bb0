"""The Hugging Face `tokenizers` backend: a `tokenizer.json` (Llama 3, Qwen2, Mistral, SmolLM2, ...)
with the side files of its directory, read as transformers reads them (lwm/data/tokenizer_base.py).

Special tokens are added by the tokenizer's own post-processor (Llama 3 adds `<|begin_of_text|>`,
ChatML tokenizers add none, `▁`-space tokenizers add `<s>`), unless tokenizer_config.json sets
add_bos_token / add_eos_token, which are honoured. Special tokens that the side files name but
tokenizer.json lacks are added, as transformers adds them (len() grows). The EOS ids are the
tokenizer's eos_token, then generation_config.json's (Llama 3.1 lists three).

`<vision>`/`</vision>` are single ids when the tokenizer has them as added tokens (a tokenizer
trained by `train_bpe` reserves them, after the bytes and before the merges); otherwise they are
the text's ids, several each.
"""
import json
import os
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer

from lwm.data.tokenizer_base import (RESERVED, TextTokenizer, added_ids, clean_up_tokenization,
                                     file_sha256, read_side_files)

# Special tokens of a tokenizer trained here: ids 0..4, before the byte alphabet and merges.
TRAINED_SPECIAL = ("<|endoftext|>",) + RESERVED
# Pieces: contractions, letters, digits one at a time (as LLaMA splits them), other symbols, spaces.
SPLIT_PATTERN = (r"'(?i:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")


class HFTokenizer(TextTokenizer):
  """A loaded `tokenizer.json` (`backend`: a tokenizers.Tokenizer) with transformers' names."""

  def __init__(self, path: str):
    self.path = path
    self.backend = Tokenizer.from_file(path)
    side = read_side_files(os.path.dirname(os.path.abspath(path)))
    self.chat_template = side.chat_template
    self._clean_up = side.clean_up_spaces
    missing = [t for t in list(side.special.values()) + list(side.extra_special)
               if t is not None and self.backend.token_to_id(t) is None]
    if missing:  # as transformers does: tokens its config names become special added tokens
      self.backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                       for t in dict.fromkeys(missing)])
    self._special = side.special
    self._bos = self._id(side.special.get("bos_token"))
    eos = self._id(side.special.get("eos_token"))
    self._eos = tuple(dict.fromkeys(([eos] if eos is not None else []) +
                                    [i for i in side.generation_eos if 0 <= i < len(self)]))
    self._add_bos, self._add_eos = side.add_bos, side.add_eos
    self._file_hash = file_sha256(path)

  def _id(self, token: str | None) -> int | None:
    return None if token is None else self.backend.token_to_id(token)

  def __len__(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  @property
  def special_tokens_map(self) -> dict:
    return dict(self._special)

  def token_to_id(self, token: str) -> int | None:
    """The id of an added token (special or not); None for text that only the vocabulary holds
    (it would not be one id in a sentence)."""
    for token_id, added in self.backend.get_added_tokens_decoder().items():
      if added.content == token:
        return token_id
    return None

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    if not add_special_tokens or (self._add_bos is None and self._add_eos is None):
      return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
    # tokenizer_config.json decides BOS/EOS (transformers rebuilds the post-processor from them).
    head, tail = self._post_processor_ids()
    bos, eos = self._bos, self.eos_token_id
    if self._add_bos is not None:
      head = [bos] if self._add_bos and bos is not None else [i for i in head if i != bos]
    if self._add_eos is not None:
      tail = [eos] if self._add_eos and eos is not None else [i for i in tail if i != eos]
    return list(head) + self.backend.encode(text, add_special_tokens=False).ids + list(tail)

  def _post_processor_ids(self) -> tuple:
    """(ids before, ids after) the text that tokenizer.json's post-processor adds."""
    return added_ids(self.backend.encode("a", add_special_tokens=True).ids,
                     self.backend.encode("a", add_special_tokens=False).ids)

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
    return clean_up_tokenization(text) if self._clean_up else text


def train_bpe(texts: Iterable[str], output: str, vocab_size: int = 8000) -> str:
  """Trains a byte-level BPE `tokenizer.json` on `texts`; writes it with a tokenizer_config.json
  into the directory `output` and returns that directory (load_tokenizer reads it).

  Special tokens: `<|endoftext|>` (id 0: BOS-less EOS, as GPT-2/Qwen) and the vision markers
  `<vision>`, `</vision>`, `<eof>`, `<eov>` (ids 1-4), each one id wherever it occurs in text. Any
  UTF-8 text round-trips (bytes are the base alphabet); digits are single tokens.
  """
  from tokenizers import decoders, models, pre_tokenizers, trainers
  if output.endswith((".json", ".model")):
    raise ValueError(f"output is the directory to write tokenizer.json into, got {output!r}")
  backend = Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  backend.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(TRAINED_SPECIAL),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  backend.train_from_iterator((t for t in texts if t.strip()), trainer=trainer)
  os.makedirs(output, exist_ok=True)
  backend.save(os.path.join(output, "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
            "eos_token": TRAINED_SPECIAL[0], "pad_token": TRAINED_SPECIAL[0], "unk_token": None,
            "additional_special_tokens": list(RESERVED), "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 30}
  with open(os.path.join(output, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=1)
  return output

