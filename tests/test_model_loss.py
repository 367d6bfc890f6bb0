"""The chunked loss's sums and gradients (computed in its forward pass) against float64 NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lwm.model.loss import loss_sums


def numpy_sums_and_grads(h, w_text, w_vision, targets, is_vision, mask, g):
  """Sums [4] and the gradients of dot(g, sums) w.r.t. h, w_text, w_vision, in float64."""
  h, w_text, w_vision = (np.asarray(a, np.float64) for a in (h, w_text, w_vision))
  text_w, vision_w = np.where(is_vision, 0.0, mask), np.where(is_vision, mask, 0.0)
  sums, dh, dws = np.zeros(4), np.zeros_like(h), []
  for w, weight, tgt, i in ((w_text, text_w, np.where(is_vision, 0, targets), 0),
                            (w_vision, vision_w, np.where(is_vision, targets, 0), 2)):
    logits = h @ w
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, tgt[..., None], -1)[..., 0]
    sums[i], sums[i + 1] = (ce * weight).sum(), weight.sum()
    dlogits = np.exp(log_p)
    np.put_along_axis(dlogits, tgt[..., None], np.take_along_axis(dlogits, tgt[..., None], -1) - 1,
                      -1)
    dlogits *= (g[i] * weight)[..., None]
    dh += dlogits @ w.T
    dws.append(np.einsum("bsd,bsv->dv", h, dlogits))
  return sums, dh, dws[0], dws[1]


def random_case(rng, batch=2, seq=40, embed=16, vocab=50, vision_vocab=12):
  h = rng.standard_normal((batch, seq, embed)).astype(np.float32)
  w_text = rng.standard_normal((embed, vocab)).astype(np.float32)
  w_vision = rng.standard_normal((embed, vision_vocab)).astype(np.float32)
  is_vision = np.zeros((batch, seq), bool)
  is_vision[:, 10:25] = True
  targets = np.where(is_vision, rng.integers(0, vision_vocab, (batch, seq)),
                     rng.integers(0, vocab, (batch, seq))).astype(np.int32)
  mask = (rng.random((batch, seq)) > 0.2).astype(np.float32)
  return h, w_text, w_vision, targets, is_vision, mask


def assert_close_to_numpy(sums, grads, case, g):
  ref_sums, *ref_grads = numpy_sums_and_grads(*case, g)
  np.testing.assert_allclose(np.asarray(sums), ref_sums, rtol=1e-5)
  for name, got, want in zip(("hidden", "head_text", "head_vision"), grads, ref_grads):
    err = np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
    assert err <= 1e-5, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("chunk", [8, 5, 32])
def test_loss_sums_and_gradients_match_numpy(chunk):
  case = random_case(np.random.default_rng(0))
  h, w_text, w_vision, targets, is_vision, mask = case
  g = np.array([0.7, 0.0, -1.3, 0.0])

  def objective(h, w_text, w_vision):
    sums = loss_sums(h, w_text, w_vision, targets, is_vision, mask, chunk=chunk)
    return jnp.dot(sums, jnp.asarray(g, jnp.float32)), sums

  (_, sums), grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True))(
      h, w_text, w_vision)
  assert_close_to_numpy(sums, grads, case, g)


def test_sharded_heads_match_numpy():
  """Sequence over 8 devices (2 x 4 mesh axes), heads as embed-dim shards over both: each device
  keeps its shard of the summed head gradient, and the assembled gradients equal NumPy's."""
  case = random_case(np.random.default_rng(2), seq=64)
  h, w_text, w_vision, targets, is_vision, mask = case
  g = np.array([-0.4, 0.0, 1.1, 0.0])
  mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  axes, seq, head = ("a", "b"), P(None, ("a", "b")), P(("a", "b"), None)

  def shard(h, w_text, w_vision, targets, is_vision, mask):
    sums = loss_sums(h, w_text, w_vision, targets, is_vision, mask, chunk=4, head_axes=axes)
    return jax.lax.psum(sums, axes)

  def objective(h, w_text, w_vision):
    sums = jax.shard_map(shard, mesh=mesh, in_specs=(seq, head, head, seq, seq, seq),
                         out_specs=P())(h, w_text, w_vision, targets, is_vision, mask)
    return jnp.dot(sums, jnp.asarray(g, jnp.float32)), sums

  (_, sums), grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True))(
      h, w_text, w_vision)
  assert_close_to_numpy(sums, grads, case, g)


def test_loss_sums_without_vision_head_matches_numpy():
  rng = np.random.default_rng(1)
  h = rng.standard_normal((1, 16, 8)).astype(np.float32)
  w_text = rng.standard_normal((8, 30)).astype(np.float32)
  targets = rng.integers(0, 30, (1, 16)).astype(np.int32)
  no_vision, mask = np.zeros((1, 16), bool), np.ones((1, 16), np.float32)
  grad = jax.grad(lambda h, w: loss_sums(h, w, None, targets, no_vision, mask, chunk=4)[0],
                  argnums=(0, 1))(h, w_text)
  _, dh, dw, _ = numpy_sums_and_grads(h, w_text, np.zeros((8, 1), np.float32), targets, no_vision,
                                      mask, np.array([1.0, 0, 0, 0]))
  for got, want in zip(grad, (dh, dw)):
    assert np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want) <= 1e-5
