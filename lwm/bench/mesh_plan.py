"""The mesh planner: which (dp, fsdp, tp, hp, sp...) mesh to train on.

Every ordered factorisation of the device count over `lwm.mesh_spec.MESH_AXES` is checked by
arithmetic first (batch, heads, sequence; `prune`), the survivors' training steps are compiled from
abstract shapes, and each is measured: per-device peak memory (XLA's memory analysis) and the bytes
each device sends per step by collective (`lwm.bench.collectives`). `choose` takes, among the meshes
that fit the memory budget, the one with the least communication: the estimated seconds per step
when a topology is given, else the bytes per device per step; ties go to the smaller memory.
"""
import dataclasses
import math
import re
import time

from lwm import mesh_spec
from lwm.bench import collectives
from lwm.metrics import compiled_peak_bytes

AUTO = "auto"  # config.mesh that asks for the planner's choice at stage start
DEFAULT_BUDGET_GIB = 80.0
# Compiles a training stage with mesh "auto" may spend at its start.
AUTO_MAX_CANDIDATES = 8
GIB, MIB = 1024 ** 3, 1024 ** 2


@dataclasses.dataclass
class Row:
  """One compiled candidate. `bytes_by_kind`: bytes per device per step by collective kind."""
  sizes: tuple
  peak_gib: float = math.nan
  bytes_by_kind: dict = dataclasses.field(default_factory=dict)
  bytes_by_axes: dict = dataclasses.field(default_factory=dict)
  comm_seconds: float | None = None
  fits: bool = False
  error: str = ""
  compile_seconds: float = 0.0

  @property
  def mesh(self) -> str:
    return mesh_spec.format_mesh(self.sizes)

  @property
  def total_bytes(self) -> float:
    return sum(self.bytes_by_kind.values())


def head_axes() -> tuple[str, ...]:
  """The mesh axes that split attention heads (hp where the mesh has the head-parallel axis)."""
  return tuple(a for a in ("tp", "hp") if a in mesh_spec.MESH_AXES)


def factorizations(n: int, parts: int) -> list[tuple]:
  """Every ordered tuple of `parts` positive integers whose product is n."""
  if parts == 1:
    return [(n,)]
  return [(d,) + rest for d in range(1, n + 1) if n % d == 0
          for rest in factorizations(n // d, parts - 1)]


def prune(sizes: tuple, *, num_heads: int, num_kv_heads: int, seq_len: int, batch: int,
          blocks: tuple = ()) -> str:
  """Why the mesh cannot train this model ("" when arithmetic allows it). blocks: the attention
  block sizes, which must divide each device's zigzag chunks (or exceed them)."""
  size = dict(zip(mesh_spec.MESH_AXES, sizes))
  dp, fsdp, tp, sp = (size.get(a, 1) for a in ("dp", "fsdp", "tp", "sp"))
  heads = math.prod(size.get(a, 1) for a in head_axes())
  if batch % (dp * fsdp):
    return f"batch {batch} is not divisible by dp*fsdp = {dp * fsdp}"
  if num_heads % heads:
    return f"{num_heads} heads are not divisible by {'*'.join(head_axes())} = {heads}"
  if num_kv_heads % tp:
    return f"{num_kv_heads} kv heads are not divisible by tp = {tp} (tp would replicate them)"
  if seq_len % (2 * sp):
    return f"sequence {seq_len} is not divisible into 2*sp = {2 * sp} chunks"
  hp = size.get("hp", 1)  # the sequence is also cut over hp before the all-to-all
  if seq_len % (2 * sp * hp):
    return f"sequence {seq_len} is not divisible into 2*sp*hp = {2 * sp * hp} chunks"
  span = seq_len // (2 * sp)
  for block in blocks:
    if span % min(block, span):
      return f"attention block {block} does not divide the {span}-token zigzag chunks of sp = {sp}"
  return ""


def candidates(num_devices: int, **model) -> tuple[list[tuple], list[tuple[tuple, str]]]:
  """(valid meshes, [(mesh, why not)]) over MESH_AXES; valid ones longest-ring first (sp, then the
  head axes, descending), the order in which `--max-candidates` keeps them."""
  valid, pruned = [], []
  for sizes in factorizations(num_devices, len(mesh_spec.MESH_AXES)):
    why = prune(sizes, **model)
    (pruned.append((sizes, why)) if why else valid.append(sizes))
  order = [mesh_spec.MESH_AXES.index(a) for a in ("sp",) + head_axes()[::-1] + ("fsdp", "dp")
           if a in mesh_spec.MESH_AXES]
  valid.sort(key=lambda s: tuple(-s[i] for i in order))
  return valid, pruned


def group_pruned(pruned: list[tuple[tuple, str]]) -> list[tuple[str, list[str]]]:
  """[(reason with its numbers as N, [meshes])], in first-seen order: one line per constraint."""
  groups = {}
  for sizes, why in pruned:
    groups.setdefault(re.sub(r"\d+", "N", why), []).append(mesh_spec.format_mesh(sizes))
  return list(groups.items())


# The CPU compiler's memory plan without loop-invariant code motion (see scripts/plan_memory.py's
# CPU_FLAGS); the bytes come from a compile with it, as GPU and TPU compilers hoist loop-invariant
# all-gathers of weights out of loops.
CPU_MEMORY_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def measure(config, sizes: tuple, batch: int, seq_len: int, *, budget_gib: float,
            topology: collectives.Topology | None = None,
            memory_options: dict | None = None) -> Row:
  """Compiles the training step of ModelConfig `config` on mesh `sizes` and measures it.

  memory_options: XLA options of a second compile whose memory analysis is taken (None: one
  compile for both).
  """
  # pylint: disable=import-outside-toplevel
  from lwm import sharding as shd
  from lwm.model import lower_train_step
  row = Row(tuple(sizes))
  start = time.time()
  try:
    mesh = shd.make_mesh(**dict(zip(mesh_spec.MESH_AXES, sizes)))
    lowered = lower_train_step(config, mesh, batch, seq_len)
    compiled = lowered.compile()
    for_memory = lowered.compile(compiler_options=memory_options) if memory_options else compiled
  except Exception as e:  # pylint: disable=broad-except
    row.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    return row
  row.compile_seconds = time.time() - start
  stats = for_memory.memory_analysis()
  row.peak_gib = compiled_peak_bytes(stats) / GIB
  found = collectives.transfers(compiled.as_text(), mesh)
  row.bytes_by_kind = collectives.bytes_by(found, "kind")
  row.bytes_by_axes = collectives.bytes_by(found, "axes")
  if topology is not None:
    row.comm_seconds = collectives.comm_seconds(found, topology)
  row.fits = row.peak_gib <= budget_gib
  return row


def ranking_key(row: Row):
  """Less communication first (seconds when known, else bytes), then less memory, then the mesh."""
  comm = row.comm_seconds if row.comm_seconds is not None else row.total_bytes
  return (comm, row.peak_gib, row.mesh)


def choose(rows: list[Row], budget_gib: float) -> tuple[Row | None, str]:
  """The mesh to train on and a one-line reason; (None, why) when no compiled mesh fits."""
  compiled = [r for r in rows if not r.error]
  fitting = sorted((r for r in compiled if r.fits), key=ranking_key)
  if not fitting:
    if not compiled:
      return None, "no candidate mesh compiled"
    smallest = min(compiled, key=lambda r: r.peak_gib)
    return None, (f"no mesh fits {budget_gib:g} GiB per device; the smallest is {smallest.mesh} "
                  f"at {smallest.peak_gib:.2f} GiB (raise --budget-gib, shorten the sequence or "
                  "add devices)")
  best = fitting[0]
  by = "estimated communication time" if best.comm_seconds is not None else "bytes sent"
  reason = (f"{best.mesh}: the least {by} per step ({_comm(best)}) of the {len(fitting)} "
            f"meshes that fit {budget_gib:g} GiB (peak {best.peak_gib:.2f} GiB)")
  if len(fitting) > 1:
    reason += f"; next {fitting[1].mesh} at {_comm(fitting[1])}"
  return best, reason


def _comm(row: Row) -> str:
  text = f"{row.total_bytes / MIB:,.1f} MiB/device"
  return text + (f", {row.comm_seconds * 1e3:,.1f} ms" if row.comm_seconds is not None else "")


def plan(config, num_devices: int, batch: int, seq_len: int, *, budget_gib: float,
         topology=None, max_candidates: int = 32, memory_options: dict | None = None, log=None):
  """Enumerates, prunes, compiles at most `max_candidates` meshes and chooses one.

  config: the ModelConfig to train. Returns (rows, pruned [(sizes, why)], choice Row or None,
  reason).
  """
  valid, pruned = candidates(num_devices, num_heads=config.num_heads,
                             num_kv_heads=config.num_kv_heads, seq_len=seq_len, batch=batch,
                             blocks=(config.attention_block_q, config.attention_block_kv))
  pruned += [(s, f"not compiled: --max-candidates {max_candidates}")
             for s in valid[max_candidates:]]
  rows = []
  for sizes in valid[:max_candidates]:
    rows.append(measure(config, sizes, batch, seq_len, budget_gib=budget_gib, topology=topology,
                        memory_options=memory_options))
    if log:
      log(format_row(rows[-1]))
  choice, reason = choose(rows, budget_gib)
  return rows, pruned, choice, reason


def format_header(topology=None) -> str:
  kinds = " ".join(f"{k:>18}" for k in collectives.KINDS)
  return (f"{'mesh':<24} {'peak GiB':>9} {kinds} {'total MiB':>10}"
          f"{' est. comm ms' if topology else ''} fits")


def format_row(row: Row) -> str:
  if row.error:
    return f"{row.mesh:<24} compile failed: {row.error}"
  kinds = " ".join(f"{row.bytes_by_kind.get(k, 0) / MIB:>18,.1f}" for k in collectives.KINDS)
  comm = f" {row.comm_seconds * 1e3:>12,.1f}" if row.comm_seconds is not None else ""
  return (f"{row.mesh:<24} {row.peak_gib:>9.3f} {kinds} {row.total_bytes / MIB:>10,.1f}{comm} "
          f"{'yes' if row.fits else 'no'}")


def device_budget_gib() -> float:
  """The first device's memory limit in GiB, or DEFAULT_BUDGET_GIB where JAX does not say
  (CPU)."""
  import jax  # pylint: disable=import-outside-toplevel
  stats = jax.devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return limit / GIB if limit else DEFAULT_BUDGET_GIB


def model_config(config, vocab: dict | None = None):
  """The ModelConfig training would build for stage config `config` whose mesh is "auto" (the
  per-mesh checks are `prune`'s). vocab: the dataset's vocab.json dict (default: the named size's
  vocabularies)."""
  from lwm import model_dir  # pylint: disable=import-outside-toplevel
  placeholder = config.copy_and_resolve_references()
  placeholder.mesh = "sp=1"
  return model_dir.model_config(placeholder, vocab or {"text_vocab_size": 0})


def resolve_auto_mesh(config, num_devices: int, log=None):
  """A copy of stage config `config` whose mesh "auto" is the planner's choice on `num_devices`
  (budget: the device's memory; at most AUTO_MAX_CANDIDATES compiles); ValueError when no mesh
  fits."""
  import os  # pylint: disable=import-outside-toplevel
  from lwm.data.dataset import read_vocab  # pylint: disable=import-outside-toplevel
  has_vocab = config.data.path and os.path.isfile(os.path.join(config.data.path, "vocab.json"))
  cfg = model_config(config, read_vocab(config.data.path) if has_vocab else None)
  t = config.train
  budget = device_budget_gib()
  rows, _, choice, reason = plan(cfg, num_devices, t.batch_size // t.grad_accum, config.seq_len,
                                 budget_gib=budget, max_candidates=AUTO_MAX_CANDIDATES)
  if choice is None:
    raise ValueError(f"config.mesh='auto': {reason}")
  if log:
    log("mesh auto -> %s (%d meshes compiled): %s", choice.mesh, len(rows), reason)
  resolved = config.copy_and_resolve_references()
  resolved.mesh = choice.mesh
  return resolved
