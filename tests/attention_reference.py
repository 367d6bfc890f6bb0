"""Plain full attention in float64 NumPy, with hand-written gradients: the independent reference."""
import numpy as np


def visibility(seq_len, segment_ids=None, causal=True, batch=1):
  """[batch, seq, seq] bool: query i may attend key j."""
  mask = np.ones((batch, seq_len, seq_len), bool)
  if causal:
    mask &= np.tril(np.ones((seq_len, seq_len), bool))[None]
  if segment_ids is not None:
    seg = np.asarray(segment_ids)
    mask &= (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
  return mask


def attention(q, k, v, mask):
  """Returns (output, probabilities); q [b, n, h, d], k/v [b, n, hkv, d], mask [b, n, n]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  groups = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask[:, None], scores, -np.inf)
  row_max = scores.max(-1, keepdims=True)
  row_max = np.where(np.isfinite(row_max), row_max, 0.0)
  p = np.exp(scores - row_max)
  p = p / np.where(p.sum(-1, keepdims=True) > 0, p.sum(-1, keepdims=True), 1.0)
  return np.einsum("bhqk,bkhd->bqhd", p, v), p


def attention_grads(q, k, v, mask, d_out):
  """Gradients (dq, dk, dv) of sum(attention(q, k, v) * d_out)."""
  q, k, v, d_out = (np.asarray(x, np.float64) for x in (q, k, v, d_out))
  groups = q.shape[2] // k.shape[2]
  kr, vr = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  _, p = attention(q, k, v, mask)
  scale = 1 / np.sqrt(q.shape[-1])
  dv = np.einsum("bhqk,bqhd->bkhd", p, d_out)
  dp = np.einsum("bqhd,bkhd->bhqk", d_out, vr)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", ds, kr) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale
  fold = lambda x: x.reshape(x.shape[:2] + (k.shape[2], groups, x.shape[-1])).sum(3)
  return dq, fold(dk), fold(dv)
