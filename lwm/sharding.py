"""One mesh with axes (dp, fsdp, tp, sp) and one table mapping logical axis names to mesh axes.

Layers name each dimension logically (`embed`, `heads`, `mlp`, `seq`...). `LOGICAL_RULES` is the
only place that says which mesh axes shard it. Parameters are sharded over fsdp and sp together, as
LWM does, so a long-context mesh (large sp) does not replicate them; tp shards heads, the FFN
hidden dimension, the vocabularies and the residual stream's embed dimension; the sequence is
sharded over sp.
"""
import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("dp", "fsdp", "tp", "sp")

LOGICAL_RULES = (
    # Parameters.
    ("layers", None),
    ("embed", ("fsdp", "sp")),
    ("heads", "tp"),
    ("kv_heads", "tp"),
    ("mlp", "tp"),
    ("vocab", "tp"),
    ("norm", None),
    # Activations.
    ("batch", ("dp", "fsdp")),
    ("seq", "sp"),
    ("act_heads", "tp"),
    ("act_embed", "tp"),  # Residual stream: saved layer inputs are not replicated over tp.
)


def make_mesh(dp: int = 1, fsdp: int = 1, tp: int = 1, sp: int = 1, *, devices=None) -> Mesh:
  """A (dp, fsdp, tp, sp) mesh over the first dp*fsdp*tp*sp devices.

  The axes are Auto (GSPMD propagation between our explicit constraints and shard_maps): the model
  places activations itself, and Explicit axes would make every einsum declare its output sharding.
  """
  shape = (dp, fsdp, tp, sp)
  if any(s < 1 for s in shape):
    raise ValueError(f"mesh sizes (dp, fsdp, tp, sp) must all be >= 1, got {shape}")
  devices = jax.devices() if devices is None else list(devices)
  need = math.prod(shape)
  if need > len(devices):
    raise ValueError(f"mesh (dp, fsdp, tp, sp)={shape} needs {need} devices, "
                     f"only {len(devices)} are available")
  return Mesh(np.asarray(devices[:need]).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def parse_mesh(text: str, **kwargs) -> Mesh:
  """Builds a mesh from "dp,fsdp,tp,sp", e.g. "1,2,1,4"."""
  sizes = [int(s) for s in text.split(",")]
  if len(sizes) != 4:
    raise ValueError(f"mesh {text!r} must give four sizes dp,fsdp,tp,sp (e.g. 1,2,1,4)")
  return make_mesh(*sizes, **kwargs)


def axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(logical: Sequence, shape: Sequence[int] | None = None, mesh: Mesh | None = None,
                    rules=LOGICAL_RULES) -> P:
  """PartitionSpec for logical axis names.

  With `shape` and `mesh`, mesh axes that do not divide a dimension are dropped from the end (so
  a tiny config or batch 1 on a wide mesh replicates that dimension instead of failing), and mesh
  axes of size 1 are left out.
  """
  table = dict(rules)
  spec, used = [], set()
  for i, name in enumerate(logical):
    if name is not None and name not in table:
      raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    axes = table.get(name) if name is not None else None
    axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    axes = tuple(a for a in axes if a not in used)
    if mesh is not None:
      axes = tuple(a for a in axes if mesh.shape[a] > 1)
      if shape is not None:
        while axes and shape[i] % axis_size(mesh, axes):
          axes = axes[:-1]
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


def named_sharding(mesh: Mesh, logical: Sequence, shape=None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical, shape, mesh))


def constrain(x, mesh: Mesh | None, logical: Sequence):
  """`with_sharding_constraint` by logical names; a no-op without a mesh."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, named_sharding(mesh, logical, x.shape))


def batch_axes(mesh: Mesh, batch: int) -> tuple[str, ...]:
  """The mesh axes sharding the batch dimension: ('dp', 'fsdp') where they divide `batch`."""
  spec = logical_to_spec(("batch",), (batch,), mesh)[0]
  return () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))


def param_shardings(state: nnx.State, mesh: Mesh):
  """NamedShardings for a parameter State whose Variables carry `logical_axes` metadata.

  Returns a tree with the State's structure (a sharding in place of each array), usable as
  jit in/out_shardings or with jax.device_put.
  """
  def one(variable):
    axes = variable.get_metadata().get("logical_axes")
    if axes is None:
      raise ValueError(f"parameter of shape {variable.shape} has no logical_axes metadata")
    return variable.replace(value=named_sharding(mesh, axes, variable.shape))
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_shardings(mesh: Mesh, batch: int, keys: Sequence[str]) -> dict:
  """Shardings of a `[batch, seq]` batch dict: batch over (dp, fsdp), sequence over sp."""
  b = batch_axes(mesh, batch)
  sharding = NamedSharding(mesh, P(b or None, "sp" if mesh.shape["sp"] > 1 else None))
  return {k: sharding for k in keys}


def state_shardings_like(tree, params_shardings, mesh: Mesh):
  """Shardings for an optimizer state: sub-trees shaped like the params take the params' shardings,
  everything else (step counts) is replicated."""
  params_def = jax.tree.structure(params_shardings)
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: params_shardings if jax.tree.structure(x) == params_def else replicated,
      tree, is_leaf=lambda x: jax.tree.structure(x) == params_def)
