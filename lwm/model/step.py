"""The training step (forward, backward, AdamW update) as one compilable function, and the abstract
state that lets it be compiled ahead of time without allocating anything."""
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from lwm import sharding as shd
from lwm.model.config import ModelConfig
from lwm.model.loss import BATCH_KEYS, loss_fn
from lwm.model.transformer import Transformer


def adamw(learning_rate=3e-4, *, weight_decay: float = 0.1, b1: float = 0.9, b2: float = 0.95,
          clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  """LWM's optimizer: AdamW (b2=0.95) after global-norm clipping.

  learning_rate: a float or an optax schedule.
  """
  tx = optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
  return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


def make_train_step(graphdef, tx: optax.GradientTransformation):
  """Returns `train_step(params, opt_state, batch) -> (params, opt_state, metrics)`.

  params: the `nnx.Param` State of a Transformer (`graphdef, params = nnx.split(model, nnx.Param)`);
  batch: the loader's dict (see lwm.model.loss.BATCH_KEYS). Pure, to be wrapped in `jax.jit`.
  """
  def train_step(params, opt_state, batch):
    def objective(p):
      return loss_fn(nnx.merge(graphdef, p), batch)
    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return params, opt_state, metrics
  return train_step


def abstract_model(config: ModelConfig, mesh: Mesh | None = None) -> Transformer:
  """The model with ShapeDtypeStruct leaves (no memory allocated)."""
  return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), mesh=mesh))


def create_sharded(config: ModelConfig, mesh: Mesh, tx: optax.GradientTransformation, seed=0):
  """Initialises (graphdef, params, opt_state) directly on the mesh (each device makes its own
  shard)."""
  graphdef, abstract = nnx.split(abstract_model(config, mesh), nnx.Param)
  p_shard = shd.param_shardings(abstract, mesh)

  @jax.jit
  def init():
    _, params = nnx.split(Transformer(config, rngs=nnx.Rngs(seed), mesh=mesh), nnx.Param)
    return jax.lax.with_sharding_constraint(params, p_shard)
  params = init()
  return graphdef, params, init_optimizer(tx, params, mesh)


def opt_shardings(tx, abstract_params, params_shardings, mesh: Mesh):
  return shd.state_shardings_like(jax.eval_shape(tx.init, abstract_params), params_shardings, mesh)


def jit_train_step(graphdef, tx, abstract_params, mesh: Mesh, batch_size: int):
  """`jax.jit` of the train step with explicit shardings; params and opt_state are donated."""
  p_shard = shd.param_shardings(abstract_params, mesh)
  o_shard = opt_shardings(tx, abstract_params, p_shard, mesh)
  b_shard = shd.batch_shardings(mesh, batch_size, BATCH_KEYS)
  return jax.jit(make_train_step(graphdef, tx), in_shardings=(p_shard, o_shard, b_shard),
                 out_shardings=(p_shard, o_shard, None), donate_argnums=(0, 1))


def abstract_batch(batch_size: int, seq_len: int, mesh: Mesh) -> dict:
  """ShapeDtypeStructs of a training batch, sharded like the loader's."""
  shardings = shd.batch_shardings(mesh, batch_size, BATCH_KEYS)
  dtypes = {"tokens": jnp.int32, "vision_mask": jnp.bool_, "targets": jnp.int32,
            "target_vision_mask": jnp.bool_, "loss_mask": jnp.float32, "segment_ids": jnp.int32,
            "positions": jnp.int32}
  return {k: jax.ShapeDtypeStruct((batch_size, seq_len), dtypes[k], sharding=shardings[k])
          for k in BATCH_KEYS}


def random_batch(batch: int, seq_len: int, vocab: int, mesh: Mesh, seed: int = 0) -> dict:
  """One document per row of random tokens (benchmarks), in the mesh's zigzag order, placed like
  the loader's batch."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from lwm import ops  # pylint: disable=import-outside-toplevel
  tokens = np.random.default_rng(seed).integers(0, vocab, (batch, seq_len + 1)).astype(np.int32)
  ones = np.ones((batch, seq_len), np.int32)
  natural = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "vision_mask": ones == 0,
             "target_vision_mask": ones == 0, "loss_mask": ones.astype(np.float32),
             "segment_ids": ones, "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                                               (batch, seq_len))}
  shardings = shd.batch_shardings(mesh, batch, BATCH_KEYS)
  return {k: jax.device_put(np.asarray(ops.to_zigzag(natural[k], shd.ring_shards(mesh))),
                            shardings[k]) for k in BATCH_KEYS}


def abstract_train_state(config: ModelConfig, mesh: Mesh, tx: optax.GradientTransformation):
  """(graphdef, params, opt_state) with sharded ShapeDtypeStruct leaves: targets for restoring a
  checkpoint onto `mesh`, or inputs for ahead-of-time compilation."""
  graphdef, abstract = nnx.split(abstract_model(config, mesh), nnx.Param)
  p_shard = shd.param_shardings(abstract, mesh)
  o_shard = opt_shardings(tx, abstract, p_shard, mesh)
  with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  params = jax.tree.map(with_sharding, abstract, p_shard)
  opt_state = jax.tree.map(with_sharding, jax.eval_shape(tx.init, abstract), o_shard)
  return graphdef, params, opt_state


def init_optimizer(tx: optax.GradientTransformation, params, mesh: Mesh):
  """Optimizer state for (sharded) params, each moment sharded like its parameter."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  p_shard = shd.param_shardings(abstract, mesh)
  return jax.jit(tx.init, out_shardings=opt_shardings(tx, abstract, p_shard, mesh))(params)


def lower_train_step(config: ModelConfig, mesh: Mesh, batch_size: int, seq_len: int, tx=None):
  """Lowers one full training step from abstract values only (for memory planning)."""
  tx = tx or adamw()
  graphdef, params, opt_state = abstract_train_state(config, mesh, tx)
  step = jit_train_step(graphdef, tx, params, mesh, batch_size)
  return step.lower(params, opt_state, abstract_batch(batch_size, seq_len, mesh))
