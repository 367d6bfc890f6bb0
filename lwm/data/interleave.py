"""Interleaving: one example's text and frame codes as one token sequence with its masks.

  text-only:   BOS text EOS                                                  loss: text, EOS
  video_text:  BOS <vision> f1 <eof> f2 <eof> ... fN <eov> </vision> text EOS  loss: text, EOS
  text_video:  BOS text <vision> f1 <eof> ... fN <eov> </vision> EOS  loss: video, </vision>, EOS
  both:        as video_text                                                 loss: all but BOS

An optional prompt (question, instruction) goes right before the text and is never a target: the
model learns to answer it, not to write it (`text_video` puts it before the text, with no loss
either way).

Text ids and vision ids live in separate vocabularies (LWM's layout): `vision_mask` says which table
an id indexes; the ids are those of `lwm.vocab.Vocab` (codes 0..K-1, `<eof>` = K, `<eov>` = K+1).
`loss_mask[i] = 1` means token i is a trained target (predicted from token i-1).
"""
import numpy as np

from lwm.vocab import Vocab  # noqa: F401  (the interleaver's ids; re-exported)

ORDERS = ("video_text", "text_video", "both")


def vision_tokens(codes: np.ndarray, vocab: Vocab) -> np.ndarray:
  """codes int `[frames, codes_per_frame]` -> `[frames * (codes_per_frame + 1)]`: each frame ends
  with `<eof>`, the last with `<eov>`."""
  frames, per_frame = codes.shape
  out = np.empty((frames, per_frame + 1), np.int32)
  out[:, :per_frame] = codes
  out[:, per_frame] = vocab.eof
  out[-1, per_frame] = vocab.eov
  return out.reshape(-1)


def _part(ids, is_vision: bool, loss: bool):
  ids = np.asarray(ids, np.int32).reshape(-1)
  return ids, np.full(ids.shape, is_vision), np.full(ids.shape, loss)


def interleave(text_ids, codes, order: str, vocab: Vocab, prompt_ids=()) -> dict:
  """One example -> {'tokens' int32 [n], 'vision_mask' bool [n], 'loss_mask' bool [n]}.

  text_ids: text token ids (no BOS/EOS). codes: int `[frames, codes_per_frame]` or None (text-only).
  prompt_ids: text token ids placed before `text_ids`, never trained on.
  """
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
  bos = [vocab.bos] if vocab.bos >= 0 else []
  eos = [vocab.eos] if vocab.eos >= 0 else []
  prompt = _part(prompt_ids, False, False)
  if codes is None:
    parts = [_part(bos, False, False), prompt, _part(text_ids, False, True),
             _part(eos, False, True)]
  else:
    if codes.ndim != 2 or codes.shape[0] == 0:
      raise ValueError(f"codes must be [frames >= 1, codes_per_frame], got shape {codes.shape}")
    text_loss = order != "text_video"
    video_loss = order != "video_text"
    video = [_part(vocab.vision_start, False, order == "both"),
             _part(vision_tokens(codes, vocab), True, video_loss),
             _part(vocab.vision_end, False, video_loss)]
    text = [prompt, _part(text_ids, False, text_loss)]
    middle = text + video if order == "text_video" else video + text
    parts = [_part(bos, False, False), *middle, _part(eos, False, True)]
  tokens, vision_mask, loss_mask = (np.concatenate(p) for p in zip(*parts))
  return {"tokens": tokens.astype(np.int32), "vision_mask": vision_mask.astype(bool),
          "loss_mask": loss_mask.astype(bool)}
