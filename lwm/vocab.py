"""The vocabulary layout: which ids a model's two tables hold. The one place these numbers live.

Text and vision ids live in separate tables (LWM's layout; `vision_mask` says which one a position
indexes). Text ids are the tokenizer's, 0..len(tokenizer)-1 (added tokens included; the model's
text embedding may have more rows, padded, never fewer): `bos` is the id the tokenizer puts before a
text (-1 when it adds none, as ChatML tokenizers), `eos` its EOS, and `<vision>`/`</vision>` are
text ids too. Where the markers live:
- a tokenizer trained by scripts/train_tokenizer.py: one id each (sentencepiece: reserved pieces;
  tokenizer.json: added special tokens `<vision>` = 1, `</vision>` = 2, after `<|endoftext|>` = 0);
- any other tokenizer (LLaMA's tokenizer.model, Llama 3's or Qwen2's tokenizer.json): the ids of
  the text "<vision>", several each, as LWM spells them with LLaMA's tokenizer; nothing is added to
  the tokenizer, so its model's text table needs no new rows.
Vision ids are the VQGAN's codes 0..K-1, then `<eof>` = K and `<eov>` = K+1, in a table of
K + 256 rows (LWM: 8192 codes -> 8448 rows; its code hard-codes `<eof>` 8192 and `<eov>` 8193,
which is this rule for its 8192-code VQGAN).

  vocab = Vocab.for_tokenizer(tokenizer, codebook_size=8192)   # eof 8192, eov 8193, 8448 rows
  vocab.to_json()                                               # what vocab.json files hold
"""
import dataclasses

SPARE_VISION_IDS = 256      # rows after the codes and <eof>/<eov>: LWM's 8192 + 256 = 8448
LWM_CODEBOOK_SIZE = 8192    # LWM's VQGAN


def eof_id(codebook_size: int) -> int:
  """`<eof>`, which ends every frame but the last: the first id after the codes."""
  return codebook_size


def eov_id(codebook_size: int) -> int:
  """`<eov>`, which ends the last frame of a video."""
  return codebook_size + 1


def vision_vocab_size(codebook_size: int) -> int:
  """Rows of the vision embedding and head for a VQGAN of `codebook_size` codes (0: text only)."""
  return codebook_size + SPARE_VISION_IDS if codebook_size else 0


@dataclasses.dataclass(frozen=True)
class Vocab:
  """The ids a dataset, a model and a prompt agree on. bos/eos are -1 when the tokenizer has none.

  codebook_size 0 means text only (no vision ids). eof/eov/vision_vocab_size default to the rule
  above; text_vocab_size 0 means unknown (a caller that only interleaves does not need it).
  """
  bos: int
  eos: int
  vision_start: tuple    # text ids of `<vision>`
  vision_end: tuple      # text ids of `</vision>`
  codebook_size: int = 0
  eof: int = -1
  eov: int = -1
  vision_vocab_size: int = -1
  text_vocab_size: int = 0

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    set_("vision_start", tuple(int(i) for i in self.vision_start))
    set_("vision_end", tuple(int(i) for i in self.vision_end))
    if self.eof < 0:
      set_("eof", eof_id(self.codebook_size))
    if self.eov < 0:
      set_("eov", eov_id(self.codebook_size))
    if self.vision_vocab_size < 0:
      set_("vision_vocab_size", vision_vocab_size(self.codebook_size))
    if self.codebook_size and self.vision_vocab_size < self.vision_ids_used:
      raise ValueError(f"vision_vocab_size={self.vision_vocab_size} is too small for codes "
                       f"0..{self.codebook_size - 1}, eof={self.eof} and eov={self.eov}")
    if self.codebook_size and min(self.eof, self.eov) < self.codebook_size:
      raise ValueError(f"eof={self.eof} / eov={self.eov} collide with the codes "
                       f"0..{self.codebook_size - 1}")

  @property
  def vision_ids_used(self) -> int:
    """Vision ids the data can hold: 0 for text only, else max(codes, eof, eov) + 1."""
    return max(self.codebook_size, self.eof + 1, self.eov + 1) if self.codebook_size else 0

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["vision_start"], d["vision_end"] = list(self.vision_start), list(self.vision_end)
    if not self.codebook_size:  # text only: vocab.json files have no vision keys
      for key in ("codebook_size", "eof", "eov", "vision_vocab_size"):
        d.pop(key)
    return d

  @classmethod
  def from_json(cls, d: dict) -> "Vocab":
    """From a vocab.json dict (keys it does not know, such as paths, are ignored; missing text
    markers default to none)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in d.items() if k in fields}
    return cls(**{"bos": -1, "eos": -1, "vision_start": (), "vision_end": (), **known})

  @classmethod
  def for_tokenizer(cls, tokenizer, codebook_size: int = 0, **ids) -> "Vocab":
    """The layout of a `lwm.data.text_tokenizer.TextTokenizer` with a VQGAN of `codebook_size`
    codes (0: none); `ids` overrides eof/eov/vision_vocab_size."""
    prefix = tuple(tokenizer.prefix_ids)
    if len(prefix) > 1:
      raise ValueError(f"the tokenizer {tokenizer.path} puts {len(prefix)} ids {list(prefix)} "
                       "before a text; the vocabulary layout holds one BOS")
    eos = tokenizer.eos_token_id
    return cls(bos=prefix[0] if prefix else -1, eos=-1 if eos is None else eos,
               vision_start=tuple(tokenizer.vision_start), vision_end=tuple(tokenizer.vision_end),
               codebook_size=codebook_size, text_vocab_size=len(tokenizer), **ids)
