"""One mesh with axes (dp, fsdp, tp, hp, sp) and one table mapping logical axis names to mesh axes.

Layers name each dimension logically (`embed`, `heads`, `mlp`, `seq`...). `LOGICAL_RULES` is the
only place that says which mesh axes shard it: every `with_sharding_constraint`, `shard_map` spec,
collective and zigzag size in the model is derived from it. Parameters are sharded over fsdp and sp
together, as LWM does, so a long-context mesh (large sp) does not replicate them; tp shards heads,
the FFN hidden dimension, the vocabularies and the residual stream's embed dimension; the sequence
is sharded over sp and hp together (sp major): sp is the ring of ring attention, hp the
head-parallel axis whose all-to-all trades the sequence shard for a slice of the heads inside
attention (`lwm.ops.head_parallel`), so each hp group holds one ring shard between them.

Any `jax.sharding.Mesh` is accepted where a mesh is taken, whatever its axis types (`jax.make_mesh`
makes Explicit axes by default): `model_mesh` gives the model its Auto view of the same devices.
A mesh may leave out axes it does not use (`jax.make_mesh((8,), ("sp",))`): they count as size 1.
"""
import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lwm.mesh_spec import DEVICE_ORDER, MESH_AXES, full_sizes, parse_mesh_sizes


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
    ("seq", ("sp", "hp")),  # The ring's axis first, then the head-parallel (all-to-all) axes.
    ("act_heads", "tp"),
    ("act_embed", "tp"),  # Residual stream: saved layer inputs are not replicated over tp.
)


def make_mesh(*sizes: int, devices=None, **named: int) -> Mesh:
  """A (dp, fsdp, tp, hp, sp) mesh over the first dp*fsdp*tp*hp*sp devices.

  Sizes positionally as five (dp, fsdp, tp, hp, sp) or the older four (dp, fsdp, tp, sp: hp=1),
  or by name (`make_mesh(hp=2, sp=4)`); unnamed axes are 1.

  Devices are numbered node-major by JAX (a process's devices are consecutive) and laid out with
  hp varying fastest, then sp, tp, fsdp, dp (`DEVICE_ORDER`): the all-to-all of an hp group stays
  inside a node where it fits, the ring's neighbours next.

  The axes are Auto (GSPMD propagation between our explicit constraints and shard_maps): the model
  places activations itself, and Explicit axes would make every einsum declare its output sharding.
  """
  unknown = sorted(set(named) - set(MESH_AXES))
  if unknown or (sizes and named):
    raise ValueError(f"make_mesh takes sizes positionally or by name {MESH_AXES}, got "
                     f"{sizes} and {named}")
  shape = full_sizes(sizes or (1,) * len(MESH_AXES))
  shape = tuple(named.get(a, s) for a, s in zip(MESH_AXES, shape))
  if any(s < 1 for s in shape):
    raise ValueError(f"mesh sizes {MESH_AXES} must all be >= 1, got {shape}")
  devices = jax.devices() if devices is None else list(devices)
  need = math.prod(shape)
  if need > len(devices):
    raise ValueError(f"mesh {MESH_AXES}={shape} needs {need} devices, "
                     f"only {len(devices)} are available")
  # Laid out in DEVICE_ORDER: consecutive devices (one node's) form hp groups, then the ring.
  order = [MESH_AXES.index(a) for a in DEVICE_ORDER]
  grid = np.asarray(devices[:need]).reshape([shape[i] for i in order])
  return Mesh(np.transpose(grid, np.argsort(order)), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def model_mesh(mesh: Mesh | None) -> Mesh | None:
  """The mesh as the model runs on it: the same devices, Auto axis types, and a size-1 axis for
  every mesh axis the rules name that `mesh` leaves out.

  `jax.make_mesh` defaults to Explicit axes, under which every einsum would have to state its
  output sharding; the model instead places activations with constraints and shard_maps.
  """
  if mesh is None:
    return None
  missing = tuple(a for a in rule_mesh_axes() if a not in mesh.axis_names)
  if not missing and all(t == AxisType.Auto for t in mesh.axis_types):
    return mesh
  names = tuple(mesh.axis_names) + missing
  devices = mesh.devices.reshape(mesh.devices.shape + (1,) * len(missing))
  return Mesh(devices, names, axis_types=(AxisType.Auto,) * len(names))


def parse_mesh(text: str, *, devices=None) -> Mesh:
  """Builds a mesh from "sp=8,fsdp=-1" or the positional "dp,fsdp,tp,hp,sp" ("1,2,1,1,4"); a -1
  takes the devices the other axes leave."""
  devices = jax.devices() if devices is None else list(devices)
  return make_mesh(*parse_mesh_sizes(text, len(devices)), devices=devices)


def mesh_axes(logical: str, rules=None) -> tuple[str, ...]:
  """The mesh axes that the rules map the logical axis `logical` to (maybe empty)."""
  table = dict(LOGICAL_RULES if rules is None else rules)
  if logical not in table:
    raise ValueError(f"logical axis {logical!r} has no rule; known: {sorted(table)}")
  axes = table[logical]
  return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))


def rule_mesh_axes(rules=None) -> tuple[str, ...]:
  """Every mesh axis some rule names, in first-use order."""
  names = []
  for logical, _ in (LOGICAL_RULES if rules is None else rules):
    names += [a for a in mesh_axes(logical, rules) if a not in names]
  return tuple(names)


def axis_size(mesh: Mesh, axes) -> int:
  """The product of the sizes of mesh axes `axes` (a name, a tuple or None); absent axes are 1."""
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape.get(a, 1) for a in axes)


def ring_axis() -> str:
  """The mesh axis of ring attention's ring: the first axis of the `seq` rule."""
  axes = mesh_axes("seq")
  if not axes:
    raise ValueError("the 'seq' rule must name at least one mesh axis (the ring's)")
  return axes[0]


def head_parallel_axes() -> tuple[str, ...]:
  """The `seq` rule's axes after the ring's: attention all-to-alls the sequence over them into a
  slice of the heads."""
  return mesh_axes("seq")[1:]


def ring_shards(mesh: Mesh | None) -> int:
  """The ring's size on `mesh`: the zigzag layout cuts the sequence into twice as many chunks."""
  return 1 if mesh is None else axis_size(mesh, ring_axis())


def seq_shards(mesh: Mesh | None) -> int:
  """How many pieces the sequence is cut into on `mesh` (ring x head-parallel; 1 without a mesh).
  A sequence is whole on the mesh when it is a multiple of twice this (`seq_multiple`)."""
  return 1 if mesh is None else axis_size(mesh, mesh_axes("seq"))


def seq_multiple(mesh: Mesh | None) -> int:
  """What a sequence length must be a multiple of on `mesh`: 2 chunks per ring shard (zigzag),
  each ring shard cut into whole pieces over the head-parallel axes."""
  return 2 * seq_shards(mesh)


def logical_to_spec(logical: Sequence, shape: Sequence[int | None] | None = None,
                    mesh: Mesh | None = None, rules=None) -> P:
  """PartitionSpec for logical axis names (None: replicated), by `rules` (LOGICAL_RULES).

  With `mesh`, mesh axes that it lacks or that have size 1 are left out; with `shape` too, mesh
  axes that do not divide a dimension are dropped from the end (so a tiny config or batch 1 on a
  wide mesh replicates that dimension instead of failing). A shape entry None is not checked.
  """
  spec, used = [], set()
  for i, name in enumerate(logical):
    axes = () if name is None else mesh_axes(name, rules)
    axes = tuple(a for a in axes if a not in used)
    if mesh is not None:
      axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
      if shape is not None and shape[i] is not None:
        while axes and shape[i] % axis_size(mesh, axes):
          axes = axes[:-1]
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


def spec_axes(spec: P) -> tuple[str, ...]:
  """Every mesh axis a PartitionSpec shards over (e.g. the axes a shard_map's psum must sum)."""
  axes = []
  for entry in spec:
    axes += [] if entry is None else ([entry] if isinstance(entry, str) else list(entry))
  return tuple(axes)


def named_sharding(mesh: Mesh, logical: Sequence, shape=None) -> NamedSharding:
  mesh = model_mesh(mesh)
  return NamedSharding(mesh, logical_to_spec(logical, shape, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(model_mesh(mesh), P())


def constrain(x, mesh: Mesh | None, logical: Sequence):
  """`with_sharding_constraint` by logical names; a no-op without a mesh."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, named_sharding(mesh, logical, x.shape))


def batch_axes(mesh: Mesh, batch: int) -> tuple[str, ...]:
  """The mesh axes sharding the batch dimension (the `batch` rule's, where they divide `batch`)."""
  return spec_axes(logical_to_spec(("batch",), (batch,), mesh))


def row_copies(mesh: Mesh, batch: int) -> int:
  """How many devices of the `batch` rule's axes hold each of `batch` rows: 1 when the axes
  divide the batch, more when some are left out (`logical_to_spec`) and replicate the rows."""
  return axis_size(mesh, mesh_axes("batch")) // axis_size(mesh, batch_axes(mesh, batch))


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
  """Shardings of a `[batch, seq]` batch dict: by the `batch` and `seq` rules."""
  sharding = named_sharding(mesh, ("batch", "seq"), (batch, None))
  return {k: sharding for k in keys}


def state_shardings_like(tree, params_shardings, mesh: Mesh):
  """Shardings for an optimizer state: sub-trees shaped like the params take the params' shardings,
  everything else (step counts) is replicated."""
  params_def = jax.tree.structure(params_shardings)
  return jax.tree.map(
      lambda x: params_shardings if jax.tree.structure(x) == params_def else replicated(mesh),
      tree, is_leaf=lambda x: jax.tree.structure(x) == params_def)
