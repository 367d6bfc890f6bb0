"""Bytes each device sends per step, by collective, read from a compiled module's HLO text.

`transfers(jax.jit(f).lower(...).compile().as_text(), mesh)` lists every collective the module
executes, with how often it runs (ops inside while loops run trip-count times: XLA's
`known_trip_count`, else the bound the loop's condition compares against) and the bytes one device
sends each time, by the usual formulas on the full buffer B of a group of g devices:

  all-gather, reduce-scatter, all-to-all: (g-1)/g * B     all-reduce: 2(g-1)/g * B
  collective-permute: the operand

A collective whose operand is only an upcast of narrower data (the CPU compiler's
float-normalization-bf16 sends bfloat16 as float32) is counted at the narrower width.

With a mesh, each collective is named by the mesh axes its replica groups (or source-target pairs)
span, e.g. "sp" or "fsdp+sp". Device ids in the HLO are positions in the mesh's flattened devices;
a Transfer's groups are translated to the devices' own ids (`lwm.sharding.make_mesh` does not list
devices in id order), which is what a topology groups.
A `Topology` ("8x900GBps,50GBps": devices per fast-link group x that bandwidth, the bandwidth
between groups) turns bytes into seconds, a collective at the slow rate as soon as one of its groups
leaves a fast-link group; no overlap with compute or between collectives is assumed.
"""
import dataclasses
import math
import re
from collections import defaultdict

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
# (g-1)/g times this factor of the full buffer; collective-permute sends its operand.
_FACTOR = {"all-gather": 1, "reduce-scatter": 1, "all-reduce": 2, "all-to-all": 1}
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_OP = re.compile(r"=\s*(?P<type>.*?)\s(?P<op>(?:all-gather|reduce-scatter|all-reduce|all-to-all|"
                 r"collective-permute)(?:-start)?)\(")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")


@dataclasses.dataclass(frozen=True)
class Transfer:
  """One collective op of the module: `bytes` sent by one device each time it runs, `count` runs
  per step."""
  kind: str
  name: str
  bytes: float
  count: int
  group_size: int
  axes: str            # mesh axes the groups span ("sp", "fsdp+sp"), "?" when unknown
  groups: tuple        # device-id groups (collective-permute: the (source, target) pairs): the
                       # devices' own ids where the mesh was given, else the HLO's positions

  @property
  def total(self) -> float:
    return self.bytes * self.count


@dataclasses.dataclass(frozen=True)
class Topology:
  """Devices numbered group-major: device i sits in fast-link group i // group_size."""
  group_size: int
  fast_bytes_per_s: float
  slow_bytes_per_s: float

  def is_fast(self, transfer: Transfer) -> bool:
    return all(len({d // self.group_size for d in group}) == 1 for group in transfer.groups)

  def seconds(self, transfer: Transfer) -> float:
    rate = self.fast_bytes_per_s if self.is_fast(transfer) else self.slow_bytes_per_s
    return transfer.total / rate


_RATE_UNITS = {"gbps": 1e9, "gb/s": 1e9, "mbps": 1e6, "mb/s": 1e6, "tbps": 1e12, "tb/s": 1e12}


def parse_topology(text: str) -> Topology:
  """"8x900GBps,50GBps" -> 8 devices per fast-link group at 900 GB/s, 50 GB/s between groups
  (bytes per second; B, not bits)."""
  def rate(part):
    m = re.fullmatch(r"([0-9.]+)\s*([a-zA-Z/]+)", part.strip())
    if not m or m.group(2).lower() not in _RATE_UNITS:
      raise ValueError(f"{part!r} is not a bandwidth like '900GBps' or '50GB/s'")
    return float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]
  try:
    fast, slow = text.split(",")
    size, fast_rate = fast.split("x", 1)
    topology = Topology(int(size), rate(fast_rate), rate(slow))
  except ValueError as e:
    raise ValueError(f"--topology {text!r}: expected DEVICESxFAST,SLOW such as "
                     f"'8x900GBps,50GBps' ({e})") from e
  if topology.group_size < 1:
    raise ValueError(f"--topology {text!r}: devices per fast-link group must be >= 1")
  return topology


def array_bytes(type_text: str) -> list[int]:
  """Bytes of each array in an HLO type ("f32[8,8]{1,0}" or a tuple of them)."""
  sizes = []
  for dtype, dims in _ARRAY.findall(type_text):
    width = _DTYPE_BYTES.get(dtype)
    if width is None:
      bits = re.search(r"(\d+)", dtype)
      width = int(bits.group(1)) / 8 if bits else 0
    sizes.append(math.prod(int(d) for d in dims.split(",") if d) * width)
  return sizes


def parse_groups(line: str, num_devices: int) -> tuple:
  """Replica groups of an op line: explicit {{0,1},{2,3}}, iota [2,4]<=[8] / [4,2]<=[2,4]T(1,0),
  over named axes of the devices (mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, in order or as
  device_ids=([4,2]T(1,0)) gives them), or none (one group of every device). ValueError for a
  form it cannot read."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\[([0-9,]+)\]"
                r"(?:T\(([0-9,]+)\))?\))?\s*\{([^}]*)\}", line)
  if m:
    axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
    chosen = re.findall(r"'([^']+)'", m.group(4))
    names, shape = [a for a, _ in axes], [int(n) for _, n in axes]
    if not set(chosen) <= set(names) or re.search(r"[():]", m.group(4)):
      raise ValueError(f"cannot read replica groups {m.group(0)!r}")
    ids = np.arange(math.prod(shape))
    if m.group(2):  # the devices in mesh order: an iota reshaped and transposed
      ids = ids.reshape([int(x) for x in m.group(2).split(",")])
      ids = ids.transpose([int(x) for x in m.group(3).split(",")]) if m.group(3) else ids
    ids = ids.reshape(shape)
    inner = [names.index(a) for a in chosen]
    outer = [i for i in range(len(names)) if i not in inner]
    ids = ids.transpose(outer + inner).reshape(-1, math.prod(shape[i] for i in inner))
    return tuple(tuple(int(d) for d in row) for row in ids)
  if re.search(r"replica_groups=[^\[{]", line):
    raise ValueError(f"cannot read the replica groups of {line.strip()[:200]!r}")
  m = re.search(r"replica_groups=\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", line)
  if m:
    shape = [int(x) for x in m.group(1).split(",")]
    ids = np.arange(math.prod(int(x) for x in m.group(2).split(",")))
    ids = ids.reshape([int(x) for x in m.group(2).split(",")])
    if m.group(3):
      ids = ids.transpose([int(x) for x in m.group(3).split(",")])
    return tuple(tuple(int(d) for d in row) for row in ids.reshape(shape[0], -1))
  m = re.search(r"replica_groups=\{(.*?)\}\}", line)
  if m:
    return tuple(tuple(int(d) for d in g.split(",") if d)
                 for g in re.findall(r"\{([0-9,]*)", m.group(1) + "}"))
  return (tuple(range(num_devices)),)


def parse_pairs(line: str) -> tuple:
  m = re.search(r"source_target_pairs=\{(.*?)\}\}", line)
  if not m:
    return ()
  return tuple(tuple(int(d) for d in p.split(",")) for p in re.findall(r"\{([0-9,]+)", m.group(1) +
                                                                          "}"))


def group_axes(groups, mesh_shape: dict | None) -> str:
  """The mesh axes along which the devices of each group (or pair) differ, joined by "+"; "?" when
  the groups are not whole sub-meshes."""
  if not mesh_shape:
    return "?"
  names, shape = list(mesh_shape), tuple(mesh_shape.values())
  spanned = set()
  for group in groups:
    coords = np.array(np.unravel_index(np.asarray(group), shape)).T
    spanned |= {names[i] for i in range(len(names)) if len(set(coords[:, i])) > 1}
  return "+".join(a for a in names if a in spanned) or "none"


def _computations(text: str) -> dict:
  """{name: [lines]} of the module's computations, and the entry's name under None."""
  comps, current = {}, None
  for line in text.splitlines():
    if current is None:
      m = _HEADER.match(line)
      if m and not line.startswith("HloModule"):
        current = m.group("name")
        comps[current] = []
        if line.startswith("ENTRY"):
          comps[None] = current
    elif line.strip() == "}":
      current = None
    else:
      comps[current].append(line)
  return comps


def _trip_count(line: str, comps: dict) -> int:
  """A while op's trip count: XLA's known_trip_count, else the constant its condition compares
  the counter with (a loop from 0 by 1), else 1."""
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
  if m:
    return int(m.group(1))
  cond = re.search(r"condition=%?([\w.\-]+)", line)
  for body_line in comps.get(cond.group(1), []) if cond else []:
    c = re.search(r"constant\((\d+)\)", body_line)
    if c:
      return int(c.group(1))
  return 1


def _callees(line: str, comps: dict) -> list[tuple[str, int]]:
  """(computation, times per execution of `line`) for the computations an op runs."""
  op = re.search(r"\s([\w\-]+)\(", line.split("=", 1)[1]) if "=" in line else None
  opcode = op.group(1) if op else ""
  if opcode == "while":
    body = re.search(r"body=%?([\w.\-]+)", line)
    return [(body.group(1), _trip_count(line, comps))] if body else []
  if opcode.endswith(("-done", "-update")):
    return []
  found = [(name, 1) for name in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line)]
  branches = re.search(r"branch_computations=\{([^}]*)\}", line)
  if branches:
    found += [(name.strip().lstrip("%"), 1) for name in branches.group(1).split(",")]
  for key in ("true_computation", "false_computation"):
    found += [(name, 1) for name in re.findall(rf"{key}=%?([\w.\-]+)", line)]
  return found


# Ops that move or convert data without computing on it.
_MOVES = {"parameter", "constant", "convert", "copy", "bitcast", "transpose", "reshape", "slice",
          "dynamic-slice", "get-tuple-element"}
_FLOATS = {"f16", "bf16", "f32", "f64"}


def _opcode(line: str) -> str:
  m = re.search(r"\s([a-z][\w\-]*)\(", line.split("=", 1)[1]) if "=" in line else None
  return m.group(1) if m else ""


def _float_width(line: str) -> float | None:
  found = [d for d, _ in _ARRAY.findall(line.split("=", 1)[1].split("(", 1)[0]) if d in _FLOATS]
  return _DTYPE_BYTES[found[0]] if found else None


def _narrowest(name: str, instructions: dict, comps: dict, depth: int = 0) -> float | None:
  """The narrowest float width the value `name` passed through on its way from computed data,
  following only moves and converts (None: not a float)."""
  line = instructions.get(name)
  if line is None:
    return None
  width, op = _float_width(line), _opcode(line)
  if op in _MOVES - {"parameter", "constant", "get-tuple-element"} and depth < 8:
    operand = re.search(re.escape(op) + r"\(%?([\w.\-]+)", line)
    inner = _narrowest(operand.group(1), instructions, comps, depth + 1) if operand else None
    return min(w for w in (width, inner) if w) if width else None
  called = re.search(r"calls=%?([\w.\-]+)", line) if op == "fusion" else None
  body = comps.get(called.group(1), []) if called else []
  if body and all(_opcode(b) in _MOVES for b in body if b.strip()):
    widths = [w for b in body if b.strip() and (w := _float_width(b))]
    return min(widths + [width]) if width and widths else width
  return width


def _upcast_ratio(line: str, op: str, instructions: dict, comps: dict) -> float:
  """narrowest width / sent width when the collective's first operand is only moved or converted
  from narrower data, else 1.

  The CPU compiler (pass float-normalization-bf16) sends bfloat16 collectives as float32,
  converting before and after; GPU and TPU compilers send the bfloat16.
  """
  m = re.search(re.escape(op) + r"\(%?([\w.\-]+)", line)
  if not m or m.group(1) not in instructions:
    return 1.0
  sent = _float_width(instructions[m.group(1)])
  narrow = _narrowest(m.group(1), instructions, comps)
  return narrow / sent if narrow and sent and narrow < sent else 1.0


def transfers(hlo_text: str, mesh=None, num_devices: int | None = None) -> list[Transfer]:
  """Every collective of a compiled module, with its runs per step and bytes per device per run.

  mesh: the jax Mesh the module was compiled for (names the axes; gives the device count).
  """
  mesh_shape = dict(mesh.shape) if mesh is not None else None
  if num_devices is None:
    m = re.search(r"num_partitions=(\d+)", hlo_text)
    num_devices = math.prod(mesh_shape.values()) if mesh_shape else int(m.group(1)) if m else 1
  comps = _computations(hlo_text)
  instructions = {m.group("name"): line for name, lines in comps.items() if name is not None
                  for line in lines if (m := _INSTR.match(line))}
  counts = defaultdict(int)

  def visit(name, times, depth=0):
    if depth > 64:
      raise ValueError(f"computation {name} nests deeper than 64 calls")
    counts[name] += times
    for line in comps.get(name, []):
      for callee, n in _callees(line, comps):
        if callee in comps:
          visit(callee, times * n, depth + 1)

  # A conditional's branches are each counted once per run: an upper bound.
  visit(comps[None], 1)
  found = []
  for comp, times in counts.items():
    for line in comps[comp]:
      m = _OP.search(line)
      if not m:
        continue
      kind = m.group("op").removesuffix("-start")
      sizes = array_bytes(m.group("type"))
      if kind == "collective-permute":
        groups = parse_pairs(line)
        sent = sizes[0] if sizes else 0
        group_size = 2
      else:
        groups = parse_groups(line, num_devices)
        group_size = len(groups[0]) if groups else 1
        if m.group("op").endswith("-start") and kind in ("all-gather", "all-reduce"):
          # Async forms: all-gather-start gives (operand, result), all-reduce-start the result.
          sizes = [max(sizes)] if kind == "all-gather" else sizes
        buffer = sum(sizes) * (group_size if kind == "reduce-scatter" else 1)
        sent = _FACTOR[kind] * (group_size - 1) / group_size * buffer
      sent *= _upcast_ratio(line, m.group("op"), instructions, comps)
      found.append(Transfer(kind, _INSTR.match(line).group("name"), sent, times, group_size,
                            group_axes(groups, mesh_shape), physical(groups, mesh)))
  return found


def physical(groups: tuple, mesh=None) -> tuple:
  """Groups of mesh positions (what the HLO names) as the devices' own ids (what a topology's
  fast-link groups are made of): the same when the mesh lists devices in id order."""
  if mesh is None:
    return groups
  ids = [d.id for d in mesh.devices.flat]
  return tuple(tuple(ids[i] for i in group) for group in groups)


def bytes_by(transfers_: list[Transfer], key: str = "kind") -> dict:
  """Bytes per device per step summed by `key` ("kind" or "axes")."""
  out = defaultdict(float)
  for t in transfers_:
    out[getattr(t, key)] += t.total
  return dict(out)


def comm_seconds(transfers_: list[Transfer], topology: Topology) -> float:
  """Estimated seconds per step the collectives take, one after another, without overlap."""
  return sum(topology.seconds(t) for t in transfers_)
