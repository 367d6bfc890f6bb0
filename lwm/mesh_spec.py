"""The mesh notation of configs and command lines, parsed without JAX (before devices exist).

Named: "sp=8", "fsdp=2,sp=4", "hp=2,sp=4", "sp=8,fsdp=-1" (axes not named are 1; one -1 takes the
devices the others leave). Positional: "dp,fsdp,tp,hp,sp" sizes, e.g. "1,2,1,1,4"; the older four
sizes "dp,fsdp,tp,sp" ("1,2,1,4") still parse, with hp=1. `hp` is the head-parallel sequence axis
(all-to-all to heads) beside the ring axis `sp`.
"""
import math

MESH_AXES = ("dp", "fsdp", "tp", "hp", "sp")
# How `lwm.sharding.make_mesh` lays devices out, slowest-varying first: hp groups are consecutive
# devices (inside a node), the ring's neighbours next.
DEVICE_ORDER = ("dp", "fsdp", "tp", "sp", "hp")
EXAMPLES = "e.g. 'sp=8', 'fsdp=2,sp=4', 'sp=4,fsdp=-1' or positional dp,fsdp,tp,hp,sp '1,2,1,1,4'"


def parse_mesh_sizes(text, num_devices: int | None = None) -> tuple[int, int, int, int, int]:
  """(dp, fsdp, tp, hp, sp) from a mesh string. A -1 becomes num_devices / the others (1 without
  num_devices or when they do not divide it: the device-count check then names the mismatch)."""
  sizes = list(_sizes(text))
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    rest = num_devices // known if num_devices and num_devices % known == 0 else 1
    sizes[sizes.index(-1)] = max(rest, 1)
  return tuple(sizes)


def device_count(text) -> int | None:
  """The devices a mesh string needs; None when a -1 leaves that to the devices there are."""
  sizes = _sizes(text)
  return None if -1 in sizes else math.prod(sizes)


def _sizes(text) -> tuple[int, ...]:
  """The five sizes as written (a -1 kept), checked."""
  parts = [p for p in str(text).replace(" ", "").strip("()").split(",") if p]
  try:
    if parts and all("=" in p for p in parts):
      named = [p.split("=", 1) for p in parts]
      unknown = [name for name, _ in named if name not in MESH_AXES]
      names = [name for name, _ in named]
      if unknown or len(set(names)) != len(names):
        raise ValueError(f"axes {unknown or names} are unknown or repeated")
      given = {name: int(size) for name, size in named}
      sizes = [given.get(axis, 1) for axis in MESH_AXES]
    elif len(parts) in (4, 5) and not any("=" in p for p in parts):
      sizes = list(full_sizes([int(p) for p in parts]))
    else:
      raise ValueError("neither five (or the older four) sizes nor axis=size pairs")
  except ValueError as e:
    raise ValueError(f"mesh {text!r} is not a mesh ({e}); axes are {MESH_AXES}, {EXAMPLES}") from e
  if sizes.count(-1) > 1 or any(s < 1 and s != -1 for s in sizes):
    raise ValueError(f"mesh {text!r}: sizes must be positive, with at most one -1 for 'the rest'; "
                     f"{EXAMPLES}")
  return tuple(sizes)


def full_sizes(sizes) -> tuple[int, ...]:
  """(dp, fsdp, tp, hp, sp) from five sizes, or from the older four (dp, fsdp, tp, sp): hp=1."""
  sizes = tuple(sizes)
  if len(sizes) == 4:
    return sizes[:3] + (1,) + sizes[3:]
  if len(sizes) != len(MESH_AXES):
    raise ValueError(f"a mesh has sizes for {MESH_AXES} (or the older dp,fsdp,tp,sp), got {sizes}")
  return sizes


def format_mesh(sizes) -> str:
  """The named form of (dp, fsdp, tp, hp, sp) (or the older four) without its size-1 axes:
  (1, 2, 1, 1, 4) -> 'fsdp=2,sp=4'."""
  named = [f"{axis}={size}" for axis, size in zip(MESH_AXES, full_sizes(sizes)) if size != 1]
  return ",".join(named) or "sp=1"
