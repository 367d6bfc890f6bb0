"""Chunked cross-entropy over the text and vision heads, weighted per modality, with a loss mask.

Each device computes its own sequence shard chunk by chunk (the `[chunk, vocab]` logits are
recomputed in the backward), so the `[seq, vocab]` logits never exist at once.
"""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lwm import sharding as shd
from lwm.model import layers

BATCH_KEYS = ("tokens", "vision_mask", "targets", "target_vision_mask", "loss_mask",
              "segment_ids", "positions")


def cross_entropy(logits, targets):
  """Per-token cross-entropy. logits: [..., vocab] float32; targets: [...] int -> [...] float32."""
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - target_logit


def loss_sums(hidden, head_text, head_vision, targets, target_vision_mask, loss_mask, *, chunk):
  """Summed cross-entropies and token counts of one shard, computed `chunk` tokens at a time.

  hidden: [batch, seq, embed]; heads: [embed, vocab] (head_vision may be None); targets,
  target_vision_mask, loss_mask: [batch, seq]. Returns float32 [4]: text CE sum, text token weight,
  vision CE sum, vision token weight.
  """
  batch, seq, _ = hidden.shape
  size = layers._divisor_at_most(seq, chunk)
  to_chunks = lambda a: jnp.moveaxis(a.reshape(batch, seq // size, size, *a.shape[2:]), 1, 0)
  xs = tuple(map(to_chunks, (hidden, targets, target_vision_mask, loss_mask)))

  @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable,
                     prevent_cse=False)
  def one_chunk(_, chunk_inputs):
    h, t, is_vision, mask = chunk_inputs
    logits = jnp.einsum("bsd,dv->bsv", h, head_text, preferred_element_type=jnp.float32)
    ce = cross_entropy(logits, jnp.where(is_vision, 0, t))
    if head_vision is not None:
      logits = jnp.einsum("bsd,dv->bsv", h, head_vision, preferred_element_type=jnp.float32)
      ce = jnp.where(is_vision, cross_entropy(logits, jnp.where(is_vision, t, 0)), ce)
    mask = mask.astype(jnp.float32)
    text_w, vision_w = jnp.where(is_vision, 0.0, mask), jnp.where(is_vision, mask, 0.0)
    return None, jnp.stack([(ce * text_w).sum(), text_w.sum(), (ce * vision_w).sum(),
                            vision_w.sum()])

  # Per-chunk sums as scan outputs, not a carry: a carry's varying-axes type depends on the mesh.
  _, sums = jax.lax.scan(one_chunk, None, xs)
  return sums.sum(axis=0)


def combine(sums, text_weight: float, vision_weight: float):
  """Loss and metrics from global sums: weighted mean of the modalities present in the batch.

  LWM weighs text and vision cross-entropies 0.5 / 0.5; a batch without vision targets (text
  stages) then reduces to the plain text mean rather than half of it.
  """
  text_sum, text_n, vision_sum, vision_n = sums[0], sums[1], sums[2], sums[3]
  text_loss = text_sum / jnp.maximum(text_n, 1e-8)
  vision_loss = vision_sum / jnp.maximum(vision_n, 1e-8)
  wt = jnp.where(text_n > 0, text_weight, 0.0)
  wv = jnp.where(vision_n > 0, vision_weight, 0.0)
  loss = (wt * text_loss + wv * vision_loss) / jnp.maximum(wt + wv, 1e-8)
  return loss, {"loss": loss, "text_loss": text_loss, "vision_loss": vision_loss,
                "text_tokens": text_n, "vision_tokens": vision_n}


def loss_fn(model, batch: dict):
  """Training loss of `model` on a batch dict in zigzag order (see BATCH_KEYS), sharded
  by the `batch` and `seq` rules of `lwm.sharding`. Returns (scalar loss, metrics dict)."""
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise KeyError(f"batch is missing {missing}; expected keys {BATCH_KEYS}")
  config, mesh = model.config, model.get_mesh()
  hidden = model.hidden_states(batch["tokens"], batch["vision_mask"], batch["positions"],
                               batch["segment_ids"])
  dt = config.compute_dtype
  head_text = model.head_text[...].astype(dt)
  head_vision = None if model.head_vision is None else model.head_vision[...].astype(dt)
  hidden_spec = shd.logical_to_spec(("batch", "seq", None), hidden.shape, mesh)
  reduce_axes = shd.spec_axes(hidden_spec)  # Exactly the axes that shard the inputs below.
  seq_spec = P(*hidden_spec[:2])

  def shard_sums(h, ht, hv, t, tv, m):
    sums = loss_sums(h, ht, hv, t, tv, m, chunk=config.loss_chunk)
    return jax.lax.psum(sums, reduce_axes)

  sums = jax.shard_map(
      shard_sums, mesh=mesh,
      in_specs=(hidden_spec, P(), P()) + (seq_spec,) * 3, out_specs=P(),
  )(hidden, head_text, head_vision, batch["targets"], batch["target_vision_mask"],
    batch["loss_mask"])
  return combine(sums, config.text_loss_weight, config.vision_loss_weight)
