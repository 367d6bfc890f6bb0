"""The rows of `scripts/device_check.py`: what a GPU or TPU host must show before lwm trusts it.

Every row is a dict {"section", "name", "figures": {...}} or, where a figure cannot be had here,
{"section", "name", "missing": reason}; nothing is left out silently. Sections:

- self_check: `lwm.ops.self_check` of each fused kernel on this device (bf16, the shape class the
  benchmarks use), and what attention impl "auto" chooses from it.
- attention: forward + backward TFLOP/s, bf16, causal, batch 1, of the fused kernel on one block,
  the ring over every local device (impl "auto") and `jax.nn.dot_product_attention(
  implementation="cudnn")`, per sequence length (`lwm.bench.attention_throughput`).
- train_step: one training step (forward, chunked loss, backward, AdamW) of a model on a batch of
  one sequence, sharded over every local device on sp: seconds and MFU (`lwm.bench.peaks`).
- memory: that step's peak memory per device: the planner's prediction (`lwm.bench.mesh_plan
  .measure`, XLA's memory analysis of the step compiled from abstract shapes) next to the
  compiled step's own analysis and the device's `memory_stats()` peak after the step ran.

`Settings` holds the sizes: `DEVICE` for an accelerator host (8K..128K tokens, the 1b model at
32K), `SMOKE` tiny for the CPU (the same rows, Pallas in interpret mode).
"""
import dataclasses
import math
import statistics
import time

import jax
import jax.numpy as jnp

from lwm.bench import attention_throughput as tp
from lwm.bench import mesh_plan, peaks
from lwm.metrics import compiled_peak_bytes

GIB = 1024 ** 3
_NATIVE = {"pallas_gpu": ("gpu", "cuda", "rocm"), "pallas_tpu": ("tpu",)}


@dataclasses.dataclass(frozen=True)
class Settings:
  seq_lens: tuple = (8192, 16384, 32768, 65536, 131072)
  heads: int = 8
  head_dim: int = 128
  block: int = 512
  repeats: int = 3
  model: str = "1b"
  model_overrides: tuple = ()  # (name, value) pairs for lwm.model.get_config
  train_seq_len: int = 32768
  train_steps: int = 3
  interpret: bool = False  # Pallas in interpret mode (the CPU smoke run)
  # On a CPU the planner's memory compile drops loop-invariant code motion as GPU/TPU plans do
  # (mesh_plan.CPU_MEMORY_OPTIONS): a second, slow compile the smoke run skips.
  plan_cpu_options: bool = True


DEVICE = Settings()
SMOKE = Settings(seq_lens=(128,), heads=2, head_dim=64, block=64, repeats=1, model="tiny",
                 model_overrides=(("dtype", "bfloat16"),), train_seq_len=256, train_steps=1,
                 interpret=True, plan_cpu_options=False)


def row(section, name, figures=None, missing=None):
  if missing is not None:
    return {"section": section, "name": name, "missing": missing}
  return {"section": section, "name": name, "figures": figures}


def _error_text(error: Exception) -> str:
  first = next((line for line in str(error).splitlines() if line.strip()), "")
  return f"{type(error).__name__}: {first}"[:300]


def fused_impl(settings: Settings, platform: str) -> tuple[str | None, bool]:
  """(fused kernel for this platform, interpret): pallas_gpu in interpret mode for the smoke run,
  (None, False) where there is none (a CPU outside the smoke run)."""
  if settings.interpret:
    return "pallas_gpu", True
  name = next((impl for impl, native in _NATIVE.items() if platform in native), None)
  return name, False


def self_check_rows(settings: Settings) -> list[dict]:
  from lwm.ops import block_contract, impls, self_check  # pylint: disable=import-outside-toplevel
  platform = jax.default_backend()
  shape = self_check.ShapeClass(settings.block, settings.block, "bfloat16", settings.head_dim,
                                True, True)
  rows = []
  for impl, native in _NATIVE.items():
    interpret = settings.interpret and impl == "pallas_gpu"
    if platform not in native and not interpret:
      rows.append(row("self_check", impl, missing=f"{impl} compiles only on {native[0]}; this host "
                                                  f"is {platform}"))
      continue
    start = time.perf_counter()
    result = self_check.check(impls.get(impl, interpret), impls.get("xla"), shape)
    figures = {"ok": result.ok, "max_error": max(result.errors.values(), default=math.nan),
               "errors": result.errors, "tolerance": self_check.TOLERANCES["bfloat16"],
               "seconds": time.perf_counter() - start, "interpret": interpret}
    if not result.ok:
      figures["reason"] = result.reason
    rows.append(row("self_check", impl, figures))
  tiling = block_contract.Tiling(settings.block, settings.block, True)
  try:
    chosen, interpret = impls.choose("auto", tiling, jnp.bfloat16, settings.head_dim)
    rows.append(row("self_check", "auto", {"uses": chosen, "interpret": interpret}))
  except Exception as e:  # pylint: disable=broad-except
    rows.append(row("self_check", "auto", missing=_error_text(e)))
  return rows


def attention_rows(settings: Settings) -> list[dict]:
  platform = jax.default_backend()
  impl, interpret = fused_impl(settings, platform)
  mesh = tp.sp_mesh(jax.devices())
  variants = {
      "kernel": (tp.block_attention(impl, True, interpret, settings.block) if impl else
                 f"no fused kernel on {platform}"),
      f"ring x{len(jax.devices())} (auto)": tp.ring(mesh, True, "auto", settings.block),
      "cudnn": (tp.cudnn_attention(True) if platform in _NATIVE["pallas_gpu"] else
                f"cuDNN attention needs an NVIDIA GPU; this host is {platform}"),
  }
  rows = []
  for seq in settings.seq_lens:
    args = tp.random_inputs(seq, settings.heads, settings.heads, settings.head_dim, jnp.bfloat16)
    flops = tp.attention_flops(seq, settings.heads, settings.head_dim, causal=True)
    for name, attend in variants.items():
      label = f"{name} {seq}"
      if isinstance(attend, str):
        rows.append(row("attention", label, missing=attend))
        continue
      try:
        inputs = tp.zigzag_inputs(mesh, args) if name.startswith("ring") else args
        seconds = tp.median_seconds(tp.grad_fn(attend), inputs, settings.repeats)
      except Exception as e:  # pylint: disable=broad-except
        rows.append(row("attention", label, missing=_error_text(e)))
        continue
      rows.append(row("attention", label, {"seq_len": seq, "ms": seconds * 1e3,
                                           "tflops": flops / seconds / 1e12}))
  return rows


def train_rows(settings: Settings) -> list[dict]:
  """The train_step row and the memory row (the step's measured peak next to the planner's)."""
  # pylint: disable=import-outside-toplevel
  from lwm import mesh_spec, sharding as shd
  from lwm.metrics import train_step_flops
  from lwm.model import adamw, count_params, create_sharded, get_config, jit_train_step
  from lwm.model.step import random_batch
  config = get_config(settings.model, **dict(settings.model_overrides))
  n = jax.device_count()
  seq = settings.train_seq_len
  name = f"{settings.model} x{n} sp, {seq} tokens"
  try:
    mesh = shd.make_mesh(sp=n)
    tx = adamw()
    graphdef, params, opt_state = create_sharded(config, mesh, tx)
    num_params = count_params(params)
    batch = random_batch(1, seq, config.vocab_size, mesh)
    step = jit_train_step(graphdef, tx, params, mesh, 1)
    with jax.set_mesh(mesh):
      compiled = step.lower(params, opt_state, batch).compile()
      times = []
      for i in range(settings.train_steps + 1):  # the first is a warm-up
        start = time.perf_counter()
        params, opt_state, metrics = compiled(params, opt_state, batch)
        loss = float(jax.block_until_ready(metrics["loss"]))
        if i:
          times.append(time.perf_counter() - start)
  except Exception as e:  # pylint: disable=broad-except
    why = _error_text(e)
    return [row("train_step", name, missing=why), row("memory", name, missing=why)]
  seconds = statistics.median(times)
  flops = train_step_flops(config, 1, seq)
  kind = jax.devices()[0].device_kind
  figures = {"seconds": seconds, "tokens_per_second": seq / seconds, "loss": loss,
             "params": num_params, "model_tflops_per_step": flops / 1e12,
             "tflops_per_device": flops / seconds / n / 1e12}
  peak = peaks.peak_tflops(kind)
  if peak is None:
    figures["mfu_missing"] = f"unknown peak (device kind {kind})"
  else:
    figures["mfu"] = flops / seconds / (peak * 1e12 * n)
  rows = [row("train_step", name, figures)]

  memory = {"compiled_gib": compiled_peak_bytes(compiled.memory_analysis()) / GIB}
  sizes = tuple(n if axis == "sp" else 1 for axis in mesh_spec.MESH_AXES)
  on_cpu = jax.default_backend() == "cpu"
  options = mesh_plan.CPU_MEMORY_OPTIONS if on_cpu and settings.plan_cpu_options else None
  planned = mesh_plan.measure(config, sizes, 1, seq, budget_gib=mesh_plan.device_budget_gib(),
                              memory_options=options)
  if planned.error:
    memory["planned_missing"] = planned.error
  else:
    memory["planned_gib"] = planned.peak_gib
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    memory["measured_peak_gib"] = stats["peak_bytes_in_use"] / GIB  # the process's peak so far
  else:
    memory["measured_missing"] = f"memory_stats() gives no peak on {jax.default_backend()}"
  rows.append(row("memory", name, memory))
  return rows


def run_all(settings: Settings, log=print) -> dict:
  """Every row, in order self_check, train_step and memory (before the attention rows, so that
  the device's peak memory is the step's), attention; with the device and the seconds taken."""
  start = time.perf_counter()
  rows = []
  for section in (self_check_rows, train_rows, attention_rows):
    for r in section(settings):
      rows.append(r)
      if log:
        log(format_row(r))
  device = jax.devices()[0]
  return {"device": {"platform": jax.default_backend(), "device_kind": device.device_kind,
                     "count": jax.device_count(), "jax": jax.__version__},
          "settings": dataclasses.asdict(settings), "seconds": time.perf_counter() - start,
          "rows": rows}


def _figure(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, dict):
    return "{" + ", ".join(f"{k} {_figure(v)}" for k, v in value.items()) + "}"
  return str(value)


def format_row(r: dict) -> str:
  """'| section | name | figures or missing: reason |' (markdown)."""
  if "missing" in r:
    text = f"missing: {r['missing']}"
  else:
    text = ", ".join(f"{k} {_figure(v)}" for k, v in r["figures"].items())
  return f"| {r['section']} | {r['name']} | {text.replace('|', '/')} |"


def markdown(report: dict) -> str:
  d = report["device"]
  lines = [f"device_check: {d['device_kind']} x {d['count']} ({d['platform']}), JAX {d['jax']}, "
           f"{report['seconds']:.0f} s", "", "| section | row | figures |", "|---|---|---|"]
  return "\n".join(lines + [format_row(r) for r in report["rows"]]) + "\n"
