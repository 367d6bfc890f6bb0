"""The training loop of one stage, top to bottom: devices -> mesh -> data -> model and optimizer ->
checkpoint (resume, or start from the previous stage) -> train step -> loop.

  python scripts/train.py --config configs/tiny.py:stage1 --workdir /tmp/stage1

Rerunning the same command in the same workdir resumes from the latest committed checkpoint with the
parameters, optimizer state, step and data position, bit for bit. While a step runs, a thread packs
the next batches (data.prefetch); metrics stay on the devices until a log or checkpoint step; a
SIGTERM to any process saves the same step on all of them (lwm.train_hooks.Preemption); held-out
evaluation (eval.every) and a profile (train.profile_steps) happen at the steps asked for.
"""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lwm import checkpoint, model_dir, sharding, stage_schema, train_hooks
from lwm.bench import mesh_plan, peaks
from lwm.data.dataset import read_vocab
from lwm.data.loader import Loader, Prefetcher
from lwm.metrics import MetricsWriter, Throughput, log_line, train_step_flops
from lwm.model import layers, step as step_lib
from lwm.workdir import write_stage_assets

logger = logging.getLogger(__name__)


class NonFiniteLoss(FloatingPointError):
  """The loss became NaN or infinite; the latest checkpoint is the last good one."""


def learning_rate(train_config) -> optax.Schedule:
  t = train_config
  if t.lr_schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, t.lr, max(t.warmup_steps, 1)),
                                 optax.constant_schedule(t.lr)], [max(t.warmup_steps, 1)])
  return optax.warmup_cosine_decay_schedule(0.0, t.lr, min(t.warmup_steps, t.steps - 1),
                                            max(t.steps, 2), t.lr * t.end_lr_ratio)


def optimizer(train_config):
  tx = step_lib.adamw(learning_rate(train_config), weight_decay=train_config.weight_decay,
                      b1=train_config.b1, b2=train_config.b2,
                      clip_norm=train_config.clip_norm or None)
  if train_config.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=train_config.grad_accum)
  return tx


def peak_flops(config, device_kind: str | None = None, log=None) -> float:
  """Peak FLOP/s of one device for MFU: config.train.peak_tflops_per_device, else the table of
  `lwm.bench.peaks` for `device_kind` (default: the first device's); 0.0 (no MFU) when unknown,
  after one `log` line that says so."""
  if config.train.peak_tflops_per_device:
    return config.train.peak_tflops_per_device * 1e12
  kind = jax.devices()[0].device_kind if device_kind is None else device_kind
  tflops = peaks.peak_tflops(kind)
  if tflops is None:
    if log:
      log("unknown peak (device kind %s): no MFU in the metrics; set "
          "train.peak_tflops_per_device to report it", kind)
    return 0.0
  return tflops * 1e12


def train(config, workdir: str) -> dict:
  """Runs (or resumes) one stage; returns the last logged metrics."""
  # ---------------------------------------------------------------- Devices and config checks
  if config.mesh == mesh_plan.AUTO:  # the planner's choice on these devices, logged
    config = mesh_plan.resolve_auto_mesh(config, jax.device_count(), log=logger.info)
  stage_schema.validate(config, jax.device_count())
  model_dir.check_init_tokenizer(config)
  vocab = read_vocab(config.data.path)
  cfg = model_dir.model_config(config, vocab)
  mesh = sharding.make_mesh(*stage_schema.mesh_sizes(config, jax.device_count()))
  layers.check_attention_mesh(mesh, config.seq_len, cfg.num_heads, cfg.num_kv_heads)
  t = config.train
  micro_batch = t.batch_size // t.grad_accum
  if (copies := sharding.row_copies(mesh, micro_batch)) > 1:
    logger.warning("the micro-batch of %d rows is split over %s only (what divides it); "
                   "%d devices of dp*fsdp hold each row", micro_batch,
                   sharding.batch_axes(mesh, micro_batch) or "no axis", copies)
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=1))
    write_stage_assets(workdir, cfg, config.data.path)  # inference needs no dataset

  # ---------------------------------------------------------------- Input pipeline
  loader = Loader(config.data.path, config.seq_len, micro_batch, seed=config.seed, mesh=mesh)

  # ---------------------------------------------------------------- Model and optimizer
  tx = optimizer(t)
  graphdef, abstract_params, abstract_opt = step_lib.abstract_train_state(cfg, mesh, tx)
  num_params = sum(x.size for x in jax.tree.leaves(abstract_params))

  # ---------------------------------------------------------------- Checkpoint: resume or init
  mngr = checkpoint.manager(workdir, keep=config.checkpoint.keep,
                            async_save=config.checkpoint.async_save)
  start = mngr.latest_step()
  if start is not None:
    params, opt_state, data_state, _ = checkpoint.restore(mngr, start, abstract_params,
                                                          abstract_opt)
    loader.set_state(data_state)
    source = f"resumed from step {start}"
  else:
    start = 0
    if config.init_from:
      params, source = model_dir.initial_params(config.init_from, cfg, mesh, abstract_params,
                                                seed=config.seed)
    else:
      _, params, _ = step_lib.create_sharded(cfg, mesh, optax.identity(), seed=config.seed)
      source = "initialised at random"
    opt_state = step_lib.init_optimizer(tx, params, mesh)
  # From here on a background thread packs the next batches; the loader's state saved with a
  # checkpoint is that of the last batch trained on (batches.get_state()).
  batches = Prefetcher(loader, depth=config.data.prefetch)
  if is_main:
    logger.info("%d layers, %.1fM parameters, mesh %s, seq_len %d, rope_theta %g; %s",
                cfg.num_layers, num_params / 1e6, config.mesh, config.seq_len, cfg.rope_theta,
                source)

  # ---------------------------------------------------------------- Update step and evaluation
  train_step = step_lib.jit_train_step(graphdef, tx, abstract_params, mesh, micro_batch)
  schedule = learning_rate(t)
  tokens_per_step = t.batch_size * config.seq_len
  flops_per_step = train_step_flops(cfg, t.batch_size, config.seq_len)
  peak = peak_flops(config, log=logger.info if is_main else None)
  speed = Throughput(tokens_per_step, flops_per_step, peak * jax.device_count(),
                     first_step=start)
  evaluate = None
  if config.eval.every:
    evaluate = train_hooks.HeldOutEval(config.eval, config.seq_len,
                                       stage_schema.eval_batch_size(config), config.seed, graphdef,
                                       mesh, abstract_params)

  # ---------------------------------------------------------------- Train loop
  # Metrics stay on the devices until a log or checkpoint step, so the host runs ahead of them.
  preemption = train_hooks.Preemption(mngr)
  profile = train_hooks.Profile(t, workdir, enabled=is_main)
  writer = MetricsWriter(workdir, enabled=is_main, resume_step=start)
  meta = lambda step: {"step": step, "seed": config.seed, "stage_config": config.to_dict()}
  last, pending = {}, []
  try:
    for step in range(start + 1, t.steps + 1):
      profile.before(step)
      micro = []
      for _ in range(t.grad_accum):
        batch = speed.wait_for(batches)
        params, opt_state, metrics = train_step(params, opt_state, batch)
        micro.append(metrics)
      pending.append((step, micro))
      profile.after(step, params)
      stop = preemption.reached(step)  # every process, every step: they agree on the step
      save = step % config.checkpoint.every == 0 or step == t.steps or stop
      log = step % t.log_every == 0 or step == t.steps
      record = {}
      if log or save:
        metrics = _fetch_finite(pending, mngr)  # waits for the devices
        pending = []
      if log:
        record = dict(metrics, lr=float(schedule(step - 1)), **speed.window(step))
      if evaluate is not None and step % config.eval.every == 0:
        record.update(evaluate(params))
        speed.restart(step)  # the evaluation's time is not a training step's
      if record:
        last = dict(last, **record)
        writer.write(step, record)
      if log and is_main:
        logger.info(log_line(step, t.steps, record))
      if save:
        _check_parameters(params, step, mngr)
        checkpoint.save(mngr, step, params, opt_state, batches.get_state(), meta(step))
      if stop:
        logger.info("preempted (SIGTERM): saved step %d; rerun the same command to resume", step)
        break
  finally:
    profile.close()
    batches.close()
    preemption.close()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  return last


def _fetch_finite(pending: list, mngr) -> dict:
  """Host copies of the pending steps' metrics (each the mean over its micro-batches); returns the
  last step's. Raises NonFiniteLoss at the first step whose loss is NaN or infinite."""
  for step, micro in jax.device_get(pending):
    metrics = {k: np.mean([float(m[k]) for m in micro]) for k in micro[0]}
    if not np.isfinite(metrics["loss"]):
      mngr.wait_until_finished()
      raise NonFiniteLoss(f"loss is {metrics['loss']} at step {step}; stopping. The latest "
                          f"checkpoint (step {mngr.latest_step()}) is the last good one")
  return metrics


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_parameters(params, step: int, mngr) -> None:
  """A checkpoint never holds NaN: the update of a finite-loss step can still overflow."""
  if not bool(_all_finite(params)):
    mngr.wait_until_finished()
    raise NonFiniteLoss(f"parameters are not finite after step {step}; stopping. The latest "
                        f"checkpoint (step {mngr.latest_step()}) is the last good one")
