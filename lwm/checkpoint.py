"""Orbax checkpoints of a training run: save, resume, and the params-only start of the next stage.

A checkpoint step holds `params`, `opt_state` (array trees), `data` (the loader's JSON state) and
`meta` (step and config). Orbax writes each step into a temporary directory and commits it with a
rename, so a step that was being written when the process died is never listed, never loaded.
Restoring takes abstract arrays that carry the *new* shardings, so a run may resume or continue
on another mesh.
"""
import os

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def manager(workdir: str, *, keep: int = 2, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                         create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                               options=options)


def save(mngr: ocp.CheckpointManager, step: int, params, opt_state, data_state: dict,
         meta: dict) -> None:
  """Starts saving `step` (asynchronously when the manager is async); returns at once."""
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
      data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)), force=True)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_params, abstract_opt_state):
  """(params, opt_state, data_state, meta) of `step`, placed as the abstract trees' shardings
  say."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params),
      opt_state=ocp.args.StandardRestore(abstract_opt_state),
      data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
  return restored.params, restored.opt_state, restored.data, restored.meta


def latest_step(workdir: str) -> int | None:
  """The newest committed step of a workdir, or None (no checkpoint directory or none committed)."""
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    return None
  mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  step = mngr.latest_step()
  mngr.close()
  return step


def restore_params(workdir: str, abstract_params):
  """Parameters only, from the latest checkpoint of another run (the previous stage).

  `abstract_params` gives the shapes, dtypes and shardings of this run; a shape that differs from
  the checkpoint's raises ValueError naming the parameter.
  """
  step = latest_step(workdir)
  if step is None:
    raise ValueError(f"init_from={workdir!r} has no committed checkpoint under {CHECKPOINT_DIR}/")
  path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR, str(step), "params")
  checkpointer = ocp.StandardCheckpointer()
  stored = checkpointer.metadata(path)
  stored = getattr(stored, "item_metadata", stored)
  _check_shapes(stored, abstract_params, workdir)
  params = checkpointer.restore(path, abstract_params)
  checkpointer.close()
  return params, step


def _flat_shapes(tree) -> dict:
  """{'layers.wq': shape}: paths as dotted names, whatever key types the tree's nodes use."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    flat[".".join(k for k in keys if k != "value")] = tuple(leaf.shape)
  return flat


def _check_shapes(stored, abstract, source):
  flat_stored = _flat_shapes(stored)
  for name, shape in _flat_shapes(abstract).items():
    if name not in flat_stored:
      raise ValueError(f"init_from={source!r} has no parameter {name}; the stage's model differs "
                       "from the previous stage's")
    if flat_stored[name] != shape:
      raise ValueError(f"init_from={source!r}: parameter {name} has shape {flat_stored[name]} "
                       f"there but {shape} in this stage's model; keep the model size between "
                       "stages")
