"""The same parameters give the same loss and gradients on one device and on 8-device meshes."""
import jax
import numpy as np
import pytest
from flax import nnx

import model_testing
from lwm import sharding as shd
from lwm.model import Transformer, get_config, loss_fn

MESHES = {"sp8": (1, 1, 1, 8), "fsdp2_sp4": (1, 2, 1, 4), "tp2_sp4": (1, 1, 2, 4),
          "dp2_fsdp2_tp2": (2, 2, 2, 1), "hp2_sp4": (1, 1, 1, 2, 4),
          "tp2_hp2_sp2": (1, 1, 2, 2, 2)}


def loss_and_grads(config, params_np, batch_np, mesh):
  graphdef, abstract = nnx.split(
      nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), mesh=mesh)), nnx.Param)
  sp = 1 if mesh is None else mesh.shape["sp"]
  batch = model_testing.to_layout(batch_np, sp)
  params = jax.tree.map(lambda a, p: p.replace(value=a), params_np, abstract,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
  if mesh is not None:
    params = jax.device_put(params, shd.param_shardings(abstract, mesh))
    batch = jax.device_put(batch, shd.batch_shardings(mesh, len(batch["tokens"]), batch.keys()))

  @jax.jit
  def run(params, batch):
    f = lambda p: loss_fn(nnx.merge(graphdef, p), batch)[0]
    return jax.value_and_grad(f)(params)
  loss, grads = run(params, batch)
  return float(loss), jax.tree.map(np.asarray, grads)


@pytest.fixture(scope="module")
def reference():
  config = get_config("tiny")
  _, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)), nnx.Param)
  params_np = jax.tree.map(lambda p: np.asarray(p[...]), params,
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
  batch = model_testing.packed_batch(config, batch=2, seq=32)
  return config, params_np, batch, loss_and_grads(config, params_np, batch, None)


@pytest.mark.parametrize("name", list(MESHES))
def test_loss_and_grads_match_one_device(reference, name):
  config, params_np, batch, (loss1, grads1) = reference
  loss8, grads8 = loss_and_grads(config, params_np, batch, shd.make_mesh(*MESHES[name]))
  assert abs(loss8 - loss1) <= 1e-5 * abs(loss1)
  flat1, flat8 = jax.tree.leaves_with_path(grads1), jax.tree.leaves(grads8)
  for (path, g1), g8 in zip(flat1, flat8):
    err = np.linalg.norm(g8 - g1) / np.linalg.norm(g1)
    assert err <= 1e-5, f"{jax.tree_util.keystr(path)}: relative error {err:.2e} on {name}"


@pytest.fixture(scope="module")
def eight_heads():
  """tiny with 8 query and 2 key/value heads, so that hp can be 1, 2, 4 or 8."""
  config = get_config("tiny").replace(num_heads=8, num_kv_heads=2, head_dim=8)
  _, params = nnx.split(Transformer(config, rngs=nnx.Rngs(4)), nnx.Param)
  params_np = jax.tree.map(lambda p: np.asarray(p[...]), params,
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
  batch = model_testing.packed_batch(config, batch=2, seq=64, seed=5)
  return config, params_np, batch, loss_and_grads(config, params_np, batch, None)


@pytest.mark.parametrize("hp, sp", [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_head_parallel_meshes_match_one_device(eight_heads, hp, sp):
  """A training step's loss and gradients on every (hp, sp) split of 8 devices, GQA 8:2 (hp 4
  and 8 repeat the key/value heads), packed documents: those of one device."""
  config, params_np, batch, (loss1, grads1) = eight_heads
  loss8, grads8 = loss_and_grads(config, params_np, batch, shd.make_mesh(hp=hp, sp=sp))
  assert abs(loss8 - loss1) <= 1e-5 * abs(loss1)
  for (path, g1), g8 in zip(jax.tree.leaves_with_path(grads1), jax.tree.leaves(grads8)):
    err = np.linalg.norm(g8 - g1) / np.linalg.norm(g1)
    assert err <= 1e-5, f"{jax.tree_util.keystr(path)}: relative error {err:.2e} on hp={hp}"


def test_loss_is_finite_and_uses_both_heads(reference):
  config, params_np, batch, (loss1, grads1) = reference
  assert np.isfinite(loss1) and loss1 > 0
  assert np.abs(grads1["head_vision"]).max() > 0 and np.abs(grads1["embed_vision"]).max() > 0


def test_whole_heads_when_the_embed_size_is_not_divisible():
  """hidden 36 on 8 sequence shards: the loss keeps whole heads per device (no embed-dim shards),
  with the same loss and gradients as one device."""
  config = get_config("tiny").replace(hidden_size=36, head_dim=16)
  _, params = nnx.split(Transformer(config, rngs=nnx.Rngs(1)), nnx.Param)
  params_np = jax.tree.map(lambda p: np.asarray(p[...]), params,
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
  batch = model_testing.packed_batch(config, batch=2, seq=32)
  loss1, grads1 = loss_and_grads(config, params_np, batch, None)
  loss8, grads8 = loss_and_grads(config, params_np, batch, shd.make_mesh(*MESHES["sp8"]))
  assert abs(loss8 - loss1) <= 1e-5 * abs(loss1)
  for (path, g1), g8 in zip(jax.tree.leaves_with_path(grads1), jax.tree.leaves(grads8)):
    err = np.linalg.norm(g8 - g1) / np.linalg.norm(g1)
    assert err <= 1e-5, f"{jax.tree_util.keystr(path)}: relative error {err:.2e}"


def test_batch_smaller_than_fsdp_trains_like_one_device():
  """LWM issue 39: batch 1 on fsdp=8 replicates the batch (no axis divides it) while fsdp still
  shards the parameters; the loss and gradients are one device's."""
  config = get_config("tiny")
  _, params = nnx.split(Transformer(config, rngs=nnx.Rngs(2)), nnx.Param)
  params_np = jax.tree.map(lambda p: np.asarray(p[...]), params,
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
  batch = model_testing.packed_batch(config, batch=1, seq=32, seed=3)
  mesh = shd.make_mesh(fsdp=8)
  assert shd.batch_axes(mesh, 1) == ()
  abstract = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), mesh=mesh)),
                       nnx.Param)[1]
  specs = [s.spec for s in jax.tree.leaves(shd.param_shardings(abstract, mesh))]
  assert any("fsdp" in shd.spec_axes(spec) for spec in specs)  # parameters still sharded
  loss1, grads1 = loss_and_grads(config, params_np, batch, None)
  loss8, grads8 = loss_and_grads(config, params_np, batch, mesh)
  assert abs(loss8 - loss1) <= 1e-5 * abs(loss1)
  for (path, g1), g8 in zip(jax.tree.leaves_with_path(grads1), jax.tree.leaves(grads8)):
    err = np.linalg.norm(g8 - g1) / np.linalg.norm(g1)
    assert err <= 1e-5, f"{jax.tree_util.keystr(path)}: relative error {err:.2e}"
