"""A conversation on one key/value cache: the video or document is read once, each turn extends
the cache (chunked prefill) and decodes; the answer's tokens enter the cache as the chat goes on.

  session = ChatSession(Generator(loaded.model), capacity=70_000, prefill_chunk=4096,
                        eos_ids=loaded.tokenizer.eos_token_ids)
  answer = session.ask_ids(first_prompt_ids, vision_mask)     # the video + the first question
  answer = session.ask_ids(session.turn_ids(tokenizer, "And then?", "auto"))
  session.save("clip.cache.npz", fingerprint)                 # reloaded by ChatSession.load

The last token sampled in a turn (its EOS, or the last answer token) is fed at the start of the
next turn, so the cache holds exactly the concatenated conversation.
"""
import hashlib
import json

import jax
import numpy as np

from lwm.data import chat

_MARK = ("\x00q1\x00", "\x00a1\x00", "\x00q2\x00")


def fingerprint(config, tokenizer=None) -> str:
  """What a saved cache must agree with: the model's config and the tokenizer's content hash."""
  import dataclasses
  text = json.dumps({"model": dataclasses.asdict(config),
                     "tokenizer": getattr(tokenizer, "content_hash", None)}, sort_keys=True,
                    default=str)
  return hashlib.sha256(text.encode()).hexdigest()


class ChatSession:
  """One conversation (batch 1) on a `decode.ChatCache` of `capacity` tokens."""

  def __init__(self, generator, *, capacity: int, prefill_chunk: int = 4096, eos_ids=()):
    self.generator, self.prefill_chunk = generator, prefill_chunk
    self.eos_ids = np.unique(np.asarray(eos_ids, np.int64).reshape(-1))
    self.cache = generator.empty_cache(1, capacity)
    self.capacity = int(self.cache.k.shape[2])
    self.tokens: list[int] = []  # every token in the cache, in order
    self.pending: list[int] = []  # sampled but not yet fed (the last turn's final token)

  @property
  def length(self) -> int:
    return len(self.tokens)

  def _feed(self, ids, mask):
    ids = np.asarray(ids, np.int32)[None]
    mask = np.zeros(ids.shape, bool) if mask is None else np.asarray(mask, bool)[None]
    # A short turn runs in a chunk of its own size (a power of two: few shapes to compile).
    chunk = min(self.prefill_chunk, 1 << max(0, (ids.shape[1] - 1).bit_length()))
    logits, self.cache = self.generator.prefill_chunked(self.cache, ids, mask, [ids.shape[1]],
                                                        chunk)
    self.tokens += [int(t) for t in ids[0]]
    return logits

  def ask_ids(self, turn_ids, vision_mask=None, *, max_new_tokens: int = 64,
              temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[int]:
    """Feeds the turn's ids (after the previous turn's pending token) and decodes the answer:
    ids up to (without) the first EOS. Refuses a turn that would overflow the cache."""
    ids = self.pending + [int(t) for t in turn_ids]
    mask = None if vision_mask is None else [False] * len(self.pending) + list(vision_mask)
    if self.length + len(ids) + max_new_tokens > self.capacity:
      raise ValueError(f"this turn needs {len(ids)} prompt tokens + up to {max_new_tokens} new "
                       f"ones but the cache holds {self.length} of {self.capacity} tokens: start "
                       "with a larger --max-cache")
    logits = self._feed(ids, mask)
    key, answer = jax.random.key(seed), []
    for step in range(max_new_tokens):
      key, subkey = jax.random.split(key)
      token = int(np.asarray(self.generator.sample(logits, subkey, temperature, top_p))[0])
      answer.append(token)
      if token in self.eos_ids or step == max_new_tokens - 1:
        break
      logits, self.cache = self.generator.extend(self.cache, np.asarray([[token]]),
                                                 np.zeros((1, 1), bool), [1])
      self.tokens.append(token)
    self.pending = [answer[-1]]
    return answer[:-1] if answer[-1] in self.eos_ids else answer

  def turn_ids(self, tokenizer, question: str, chat_template: str = "auto") -> list[int]:
    """The ids of a later turn asking `question`, as the chat template writes a second user turn
    after an answer (without the EOS the answer ended with: that is the pending token); without a
    template, " Question: {question} Answer:" as the first turn's format."""
    template = chat.resolve(tokenizer, chat_template)
    if template is None:
      return tokenizer.encode(f" Question: {question} Answer:", add_special_tokens=False)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _MARK[0]}, {"role": "assistant", "content": _MARK[1]},
         {"role": "user", "content": _MARK[2]}], add_generation_prompt=True,
        chat_template=template)
    between = text.split(_MARK[1])[1].split(_MARK[2])[0]
    after = text.split(_MARK[2])[1]
    ended = self.pending and self.pending[0] in self.eos_ids
    eos_text = tokenizer.decode(self.pending) if ended else ""
    if eos_text and between.startswith(eos_text):
      between = between[len(eos_text):]
    return tokenizer.encode(between + question + after, add_special_tokens=False)

  # ---------------------------------------------------------------------------------- Saving

  def save(self, path: str, fingerprint: str) -> None:
    """Writes the cache's arrays, its tokens, the pending token and `fingerprint` to `path`."""
    with open(path, "wb") as f:
      np.savez(f, k=np.asarray(self.cache.k), v=np.asarray(self.cache.v),
               tokens=np.asarray(self.tokens, np.int64), pending=np.asarray(self.pending, np.int64),
               fingerprint=np.asarray(fingerprint))

  def load(self, path: str, fingerprint: str) -> None:
    """Reads a cache `save` wrote; refuses one made for another model or tokenizer, or larger
    than this session's cache."""
    from lwm.model import decode
    with np.load(path) as f:
      if str(f["fingerprint"]) != fingerprint:
        raise ValueError(f"the cache {path} was made with another model or tokenizer (fingerprint "
                         f"{str(f['fingerprint'])[:12]} != {fingerprint[:12]}); prefill again")
      k, v, tokens, pending = f["k"], f["v"], f["tokens"], f["pending"]
    if len(tokens) > self.capacity:
      raise ValueError(f"the cache {path} holds {len(tokens)} tokens, more than this session's "
                       f"{self.capacity}: give a larger --max-cache")
    n = min(k.shape[2], self.capacity)
    k_full = np.zeros(self.cache.k.shape, k.dtype)
    v_full = np.zeros(self.cache.v.shape, v.dtype)
    k_full[:, :, :n], v_full[:, :, :n] = k[:, :, :n], v[:, :, :n]
    shardings = jax.tree.map(lambda a: a.sharding, self.cache)
    self.cache = jax.device_put(decode.ChatCache(k_full, v_full, np.asarray([len(tokens)],
                                                                            np.int32)), shardings)
    self.tokens, self.pending = [int(t) for t in tokens], [int(t) for t in pending]
