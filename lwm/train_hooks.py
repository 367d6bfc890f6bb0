"""What the train loop does besides stepping: agree on a preemption, take a profile, evaluate on
held-out data. Each is a small object the loop asks at every step."""
import logging
import os
import signal
import time

import jax
import numpy as np
from flax import nnx

from lwm import sharding as shd
from lwm import stage_schema
from lwm.data.loader import Loader
from lwm.model.loss import BATCH_KEYS, loss_fn

logger = logging.getLogger(__name__)
PROFILE_DIR = "profile"


class Preemption:
  """`reached(step)`: save this step and stop, the same answer on every process.

  Several processes (jax.distributed initialised): JAX's preemption sync manager catches SIGTERM on
  any process and tells the others through the coordination service; Orbax's
  `CheckpointManager.reached_preemption(step)`, which every process calls at every step, then turns
  true on all of them at one step (the largest step any process had reached, plus one). One
  process: a SIGTERM handler sets a flag, and the step in progress saves.
  """

  def __init__(self, mngr):
    self.mngr = mngr
    self.distributed = jax.process_count() > 1
    self._flag, self._previous = False, None
    if self.distributed:
      if not jax.config.jax_enable_preemption_service:
        logger.warning("jax_enable_preemption_service is off: SIGTERM on one process will not "
                       "make the others save; turn it on for a preemption every host agrees on")
    else:  # replacing JAX's own handler would break the agreement, so only here
      self._previous = signal.signal(signal.SIGTERM, self._notice)

  def _notice(self, *_):
    self._flag = True

  def reached(self, step: int) -> bool:
    if self.distributed:
      return self.mngr.reached_preemption(step)
    return self._flag

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Profile:
  """A `jax.profiler` trace of steps START..END (process 0) into `workdir/profile/`.

  The trace is bounded: Python function tracing is off and the host tracer is at level 1 on an
  accelerator, 0 on the CPU (levels from config.train.profile_*), and it stops after step END,
  or at `close()` when the run ends, is preempted or raises inside the window. A run resumed past
  START takes no trace. Python tracing at its default level recorded every call of every thread
  (the prefetch thread packs batches in Python); the CPU runtime's host events at level 1 (one per
  executed op: the tiny model's 8-token tiles make millions per step) grew 0.3 GB/s, to an OOM.
  """

  def __init__(self, train_config, workdir: str, enabled: bool = True):
    t = train_config
    self.steps = stage_schema.parse_profile_steps(t.profile_steps) if enabled else None
    self.path = os.path.join(workdir, PROFILE_DIR)
    self.perfetto = bool(t.profile_perfetto)
    self.options = jax.profiler.ProfileOptions()
    host_level = t.profile_host_tracer_level
    if host_level < 0:
      host_level = 0 if jax.default_backend() == "cpu" else 1
    self.options.host_tracer_level = host_level
    self.options.python_tracer_level = t.profile_python_tracer_level
    self.active = False

  def before(self, step: int) -> None:
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.path, create_perfetto_trace=self.perfetto,
                               profiler_options=self.options)
      self.active = True

  def after(self, step: int, outputs) -> None:
    if self.active and step >= self.steps[1]:
      jax.block_until_ready(outputs)  # the last step's device work belongs in the trace
      self.close()
      logger.info("profile of steps %d-%d written to %s", *self.steps, self.path)

  def close(self) -> None:
    if self.active:
      self.active = False  # never stopped twice, even if stopping raises
      jax.profiler.stop_trace()


class HeldOutEval:
  """The loss on the first `batches` packed batches of a held-out dataset (the same ones each time).

  Returns {'eval_loss', 'eval_text_loss', 'eval_vision_loss'}, each the mean over the batches of
  the training loss's own per-batch value (`lwm.model.loss_fn`).
  """

  def __init__(self, eval_config, seq_len: int, batch_size: int, seed: int, graphdef, mesh,
               abstract_params):
    self.batches = eval_config.batches
    self.loader = Loader(eval_config.data_path, seq_len, batch_size, seed=seed, mesh=mesh)
    self.start_state = self.loader.get_state()
    p_shard = shd.param_shardings(abstract_params, mesh)
    b_shard = shd.batch_shardings(mesh, batch_size, BATCH_KEYS)
    metrics = lambda params, batch: loss_fn(nnx.merge(graphdef, params), batch)[1]
    self.step = jax.jit(metrics, in_shardings=(p_shard, b_shard))
    self.tokens = batch_size * seq_len * self.batches

  def __call__(self, params) -> dict:
    start = time.perf_counter()
    self.loader.set_state(self.start_state)
    per_batch = jax.device_get([self.step(params, next(self.loader)) for _ in range(self.batches)])
    result = {f"eval_{k}": float(np.mean([float(m[k]) for m in per_batch]))
              for k in ("loss", "text_loss", "vision_loss")}
    logger.info("eval: loss %.4f on %d held-out batches (%d tokens) in %.2f s", result["eval_loss"],
                self.batches, self.tokens, time.perf_counter() - start)
    return result
