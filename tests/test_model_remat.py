"""Remat policies change what the backward keeps, never the loss or its gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm import sharding as shd
from lwm.model import Transformer, get_config, loss_fn
from lwm.model.config import NAMED_POLICIES
from tests.model_testing import packed_batch, to_layout


def loss_and_grad_fn(config, mesh):
  """(params, jitted f(params, batch) -> (loss, grads)) for `config` on `mesh`."""
  graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0), mesh=mesh), nnx.Param)
  params = jax.device_put(params, shd.param_shardings(params, mesh))

  @jax.jit
  def run(params, batch):
    return jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), batch)[0])(params)
  return params, run


@pytest.fixture(scope="module")
def setup():
  mesh = shd.make_mesh(1, 1, 1, 8)
  config = get_config("tiny")
  batch_np = to_layout(packed_batch(config, batch=2, seq=32), mesh.shape["sp"])
  batch = jax.device_put(batch_np, shd.batch_shardings(mesh, 2, batch_np.keys()))
  params, run = loss_and_grad_fn(config.replace(remat_policy="none"), mesh)
  with jax.set_mesh(mesh):
    loss, grads = run(params, batch)
  return mesh, config, batch, params, run, float(loss), grads


def test_auto_keeps_attention_while_it_fits():
  config = get_config("1b")
  assert config.resolved_remat_policy(4096) == "save_attention"  # 32K tokens on 8 devices: 352 MiB
  assert config.resolved_remat_policy(1048576 // 8) == "nothing_saveable"  # 11 GiB
  assert config.replace(remat_policy="none").resolved_remat_policy(1048576) == "none"


def test_no_remat_gradient_matches_finite_differences(setup):
  # The independent anchor: directional derivatives of the loss itself, central differences.
  mesh, _, batch, params, run, _, grads = setup
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(1)
  for _ in range(2):
    direction = [jnp.asarray(rng.standard_normal(x.shape), x.dtype) for x in leaves]
    norm = np.sqrt(sum(float(jnp.sum(d * d)) for d in direction))
    direction = jax.tree.unflatten(tree, [d / norm for d in direction])
    eps = 1e-2
    with jax.set_mesh(mesh):
      plus, _ = run(jax.tree.map(lambda p, d: p + eps * d, params, direction), batch)
      minus, _ = run(jax.tree.map(lambda p, d: p - eps * d, params, direction), batch)
    numeric = (float(plus) - float(minus)) / (2 * eps)
    analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grads),
                                                         jax.tree.leaves(direction)))
    assert abs(numeric - analytic) <= 2e-3 * abs(analytic) + 1e-5, (numeric, analytic)


@pytest.mark.parametrize("policy", ["auto"] + [pytest.param(p, marks=pytest.mark.slow) for p in
                                                ["nothing_saveable", *NAMED_POLICIES]])
def test_policy_gives_the_no_remat_loss_and_gradients(setup, policy):
  # Tight: a policy only changes what is kept or recomputed, and the recomputation is the same math.
  mesh, config, batch, _, _, loss_ref, grads_ref = setup
  params, run = loss_and_grad_fn(config.replace(remat_policy=policy), mesh)
  with jax.set_mesh(mesh):
    loss, grads = run(params, batch)
  assert abs(float(loss) - loss_ref) <= 1e-6 * abs(loss_ref)
  for (path, g_ref), g in zip(jax.tree.leaves_with_path(grads_ref), jax.tree.leaves(grads)):
    err = float(jnp.linalg.norm(g - g_ref) / jnp.linalg.norm(g_ref))
    assert err <= 1e-6, f"{policy} {jax.tree_util.keystr(path)}: relative error {err:.2e}"
