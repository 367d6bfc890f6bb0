"""Chunked cross-entropy over the text and vision heads, weighted per modality, with a loss mask.

Each device computes its own sequence shard chunk by chunk, the gradients in the same pass (see
`loss_sums`), so the `[seq, vocab]` logits never exist at once and are not recomputed.
"""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lwm import sharding as shd
from lwm.model import layers

BATCH_KEYS = ("tokens", "vision_mask", "targets", "target_vision_mask", "loss_mask",
              "segment_ids", "positions")


def _head_terms(h, head, targets, weight, with_grads):
  """One head on one chunk: the cross-entropy `[batch, chunk]` and (with_grads) the gradients of
  `sum(ce * weight)` with respect to h (`[batch, chunk, embed]`, h's dtype) and head (float32)."""
  logits = jnp.einsum("bsd,dv->bsv", h, head, preferred_element_type=jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_hot = jnp.arange(logits.shape[-1]) == targets[..., None]
  ce = lse - jnp.sum(jnp.where(target_hot, logits, 0.0), axis=-1)
  if not with_grads:
    return ce, None, None
  dlogits = ((jnp.exp(logits - lse[..., None]) - target_hot) * weight[..., None]).astype(h.dtype)
  dh = jnp.einsum("bsv,dv->bsd", dlogits, head, preferred_element_type=jnp.float32)
  dhead = jnp.einsum("bsd,bsv->dv", h, dlogits, preferred_element_type=jnp.float32)
  return ce, dh.astype(h.dtype), dhead


def _sums_and_grads(hidden, head_text, head_vision, targets, target_vision_mask, loss_mask, chunk,
                    with_grads=True):
  """Summed cross-entropies and token counts (float32 [4], see `loss_sums`) together with the
  gradients of the two weighted sums: dh `[batch, seq, embed]` (each token's own modality) and
  d head_text, d head_vision (float32; None without a vision head)."""
  batch, seq, _ = hidden.shape
  size = layers.divisor_at_most(seq, chunk)
  to_chunks = lambda a: jnp.moveaxis(a.reshape(batch, seq // size, size, *a.shape[2:]), 1, 0)
  xs = tuple(map(to_chunks, (hidden, targets, target_vision_mask, loss_mask)))

  def one_chunk(dheads, chunk_inputs):
    h, t, is_vision, mask = chunk_inputs
    mask = mask.astype(jnp.float32)
    text_w, vision_w = jnp.where(is_vision, 0.0, mask), jnp.where(is_vision, mask, 0.0)
    ce, dh, d_text = _head_terms(h, head_text, jnp.where(is_vision, 0, t), text_w, with_grads)
    if head_vision is not None:
      ce_vision, dh_vision, d_vision = _head_terms(h, head_vision, jnp.where(is_vision, t, 0),
                                                   vision_w, with_grads)
      ce = jnp.where(is_vision, ce_vision, ce)
    if with_grads:
      dheads = (dheads[0] + d_text, None if head_vision is None else dheads[1] + d_vision)
      dh = dh if head_vision is None else dh + dh_vision
    sums = jnp.stack([(ce * text_w).sum(), text_w.sum(), (ce * vision_w).sum(), vision_w.sum()])
    return dheads, (sums, dh)

  # zeros_like keeps the heads' varying-axes type inside shard_map (loss_fn makes them varying).
  zeros = lambda w: None if w is None or not with_grads else jnp.zeros_like(w, jnp.float32)
  dheads, (sums, dh) = jax.lax.scan(one_chunk, (zeros(head_text), zeros(head_vision)), xs)
  if with_grads:
    dh = jnp.moveaxis(dh, 0, 1).reshape(hidden.shape)
  return sums.sum(axis=0), dh, dheads


def _gather(w, axes):
  """The whole head from its embed-dim shards over `axes` (none: `w` is whole already)."""
  return w if w is None or not axes else jax.lax.all_gather(w, axes, axis=0, tiled=True)


def _scatter(d, axes):
  """This device's embed-dim shard of the sum over `axes` of each device's head gradient."""
  return d if d is None or not axes else jax.lax.psum_scatter(d, axes, scatter_dimension=0,
                                                              tiled=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _loss_sums(hidden, head_text, head_vision, targets, target_vision_mask, loss_mask, chunk,
               head_axes):
  return _sums_and_grads(hidden, _gather(head_text, head_axes), _gather(head_vision, head_axes),
                         targets, target_vision_mask, loss_mask, chunk, with_grads=False)[0]


def _loss_sums_fwd(hidden, head_text, head_vision, targets, target_vision_mask, loss_mask, chunk,
                   head_axes):
  sums, dh, (d_text, d_vision) = _sums_and_grads(
      hidden, _gather(head_text, head_axes), _gather(head_vision, head_axes), targets,
      target_vision_mask, loss_mask, chunk)
  # Kept until the backward: this device's shard of the heads' gradients, summed over head_axes.
  keep = lambda d, w: None if w is None else _scatter(d, head_axes).astype(w.dtype)
  return sums, (dh, keep(d_text, head_text), keep(d_vision, head_vision), target_vision_mask)


def _loss_sums_bwd(chunk, head_axes, residuals, g):
  # The token counts do not depend on the inputs: only the two CE sums' cotangents g[0], g[2] flow.
  dh, d_text, d_vision, target_vision_mask = residuals
  per_token = jnp.where(target_vision_mask, g[2], g[0])[..., None].astype(dh.dtype)
  scale = lambda d, gi: None if d is None else d * gi.astype(d.dtype)
  return dh * per_token, scale(d_text, g[0]), scale(d_vision, g[2]), None, None, None


_loss_sums.defvjp(_loss_sums_fwd, _loss_sums_bwd)


def loss_sums(hidden, head_text, head_vision, targets, target_vision_mask, loss_mask, *, chunk,
              head_axes=()):
  """Summed cross-entropies and token counts of one shard, computed `chunk` tokens at a time.

  hidden: [batch, seq, embed]; heads: [embed, vocab] (head_vision may be None); targets,
  target_vision_mask, loss_mask: [batch, seq]. Returns float32 [4]: text CE sum, text token weight,
  vision CE sum, vision token weight.

  The gradients are computed in the same pass, chunk by chunk (softmax minus one-hot, times the
  token's weight), and kept: dh like `hidden` and the heads' gradients, scaled by the sums'
  cotangents in the backward. So the `[chunk, vocab]` logits are computed once, not recomputed.
  Gradients flow to hidden and the heads only: targets and masks are data (their cotangent is 0).

  head_axes (inside shard_map): the heads come as shards of their embed dim over these mesh axes
  and are gathered for the logits; each device keeps only its shard of the summed head gradient, not
  a whole `[embed, vocab]` per device, and that shard is the cotangent returned.
  """
  return _loss_sums(hidden, head_text, head_vision, targets, target_vision_mask, loss_mask, chunk,
                    tuple(head_axes))


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
  # The heads enter as embed-dim shards over the same axes, so the gradient each device keeps until
  # the backward is 1/N of a head; an embed size they do not divide keeps whole (varying) heads.
  sharded = config.hidden_size % shd.axis_size(mesh, reduce_axes) == 0
  head_spec = P(reduce_axes or None, None) if sharded else P()

  def shard_sums(h, ht, hv, t, tv, m):
    if not sharded:
      # Varying heads: each device's head gradient is its own partial sum, which the transpose of
      # this cast adds up.
      ht, hv = (None if w is None else jax.lax.pcast(w, reduce_axes, to="varying")
                for w in (ht, hv))
    sums = loss_sums(h, ht, hv, t, tv, m, chunk=config.loss_chunk,
                     head_axes=reduce_axes if sharded else ())
    return jax.lax.psum(sums, reduce_axes)

  sums = jax.shard_map(
      shard_sums, mesh=mesh,
      in_specs=(hidden_spec, head_spec, head_spec) + (seq_spec,) * 3, out_specs=P(),
  )(hidden, head_text, head_vision, batch["targets"], batch["target_vision_mask"],
    batch["loss_mask"])
  return combine(sums, config.text_loss_weight, config.vision_loss_weight)
