"""What every long-context task produces: a `Sample` (one question about one context) with one or
more `Variant`s (a multiple-choice question has one per rotation of its options), and `Pieces`, the
prompt assembled from text and token ids so that positions are known in tokens.

Parts are joined by single spaces and tokenized one by one, each as it reads after a space
(`encode_after_space`); a sentencepiece tokenizer gives the same ids for the joined string (so
`Sample.text + answer` is a training document in the same format).
"""
import dataclasses

import numpy as np


@dataclasses.dataclass
class Variant:
  """tokens, vision_mask: `[prompt_tokens]` (vision_mask None for text). expected: the references
  the answer must hold. answer: the text that follows the prompt when the answer is right (with
  its leading space; teacher-forced scoring appends its tokens). letter: the right option's letter
  for a multiple-choice variant, else None."""
  tokens: np.ndarray
  vision_mask: np.ndarray | None
  expected: list
  answer: str
  letter: str | None = None


@dataclasses.dataclass
class Sample:
  """One question: its variants (all must be right), how answers are matched (`pattern`: the
  regular expression of an answer item; `ordered`: whether order matters), the depth of its first
  needle in % of the context's tokens (None where it does not apply), details for results.json
  (`info`) and the prompt as text (text tasks; None for video)."""
  task: str
  variants: list
  pattern: str
  ordered: bool = False
  depth: float | None = None
  info: dict = dataclasses.field(default_factory=dict)
  text: str | None = None

  @property
  def prompt_tokens(self) -> int:
    return max(len(v.tokens) for v in self.variants)


class Pieces:
  """A prompt built part by part: `add` text or ids, get back where they start (in tokens)."""

  def __init__(self, tokenizer, bos: bool = True):
    self.tokenizer = tokenizer
    self.ids = [np.asarray(tokenizer.prefix_ids if bos else [], np.int32)]
    self.texts = []
    self.length = len(self.ids[0])

  def add(self, text: str | None = None, ids=None) -> int:
    """Appends `text` (tokenized here) or `ids` (whose text is `text`, decoded when None); returns
    the index of the part's first token."""
    start = self.length
    if ids is None:
      ids = (self.tokenizer.encode_after_space(text) if self.texts else
             self.tokenizer.encode(text, add_special_tokens=False))
    elif text is None:
      text = self.tokenizer.decode(ids)
    self.ids.append(np.asarray(ids, np.int32))
    self.texts.append(text)
    self.length += len(ids)
    return start

  def tokens(self) -> np.ndarray:
    return np.concatenate(self.ids)

  def text(self) -> str:
    return " ".join(t.strip() for t in self.texts if t.strip())
