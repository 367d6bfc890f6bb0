"""Will it fit on my accelerators? Compiles a training step or a long prefill ahead of time and
reports per-device memory.

Everything is compiled from abstract shapes on simulated CPU devices, so nothing is allocated; XLA's
memory analysis then gives the per-device figures.

  python scripts/plan_memory.py --model 1b --seq-len 1048576 --batch 1 --mesh sp=8
  python scripts/plan_memory.py --model 7b --seq-len 1048576 --batch 1 --mesh sp=64
  python scripts/plan_memory.py --model 7b --seq-len 1048576 --mesh sp=64 --mode prefill
  python scripts/plan_memory.py --config configs/lwm_text.py:1m --devices 256
  python scripts/plan_memory.py --model 7b --seq-len 1048576 --devices 64 --mesh auto \
      --topology 8x900GBps,50GBps

--mesh auto (or a config whose mesh is "auto") plans every mesh over --devices that the model,
sequence and batch allow (lwm.bench.mesh_plan): a table of per-device peak memory and bytes each
device sends per step by collective, read from the compiled HLO, and the choice: the least
communication among the meshes that fit --budget-gib. --topology DEVICESxFAST,SLOW (e.g.
8x900GBps,50GBps: 8 devices per fast-link group at 900 GB/s, 50 GB/s between groups) adds an
estimated communication time per step, which then ranks the meshes.

--mode train: one full step (forward, backward, AdamW; --param-dtype parameters and optimizer state,
bfloat16 activations). --mode prefill: a prompt's prefill with ring attention, every layer's keys
and values kept as the decode cache (an output, sharded over sp and tp). --config takes the model,
the sequence length, the micro-batch, the mesh and the model config of a stage config as training
builds them (its mesh may use -1; give --devices then). The figures are the CPU compiler's buffer
assignment; a GPU or TPU compiler schedules differently, so keep some headroom.
"""
import argparse
import math
import os
import time

from lwm import launch, mesh_spec, stage_schema


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mode", default="train", choices=["train", "prefill"])
  parser.add_argument("--config", default=None, help="a stage config file[:arg]")
  parser.add_argument("--devices", type=int, default=None, help="resolves a -1 in --config's mesh")
  parser.add_argument("--model", default="1b", help="named size: tiny, small, 1b, 7b")
  parser.add_argument("--seq-len", type=int, default=1048576)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--mesh", default="sp=8",
                      help="e.g. sp=8 or fsdp=2,sp=4 (or positional sizes of every mesh axis), "
                           "or auto: plan the mesh over --devices")
  parser.add_argument("--remat-policy", default=None, help="override the config's remat policy")
  parser.add_argument("--dtype", default="bfloat16", help="activation (and KV cache) dtype")
  parser.add_argument("--param-dtype", default="float32",
                      help="parameter (and so AdamW moment) dtype, e.g. bfloat16")
  parser.add_argument("--budget-gib", type=float, default=None,
                      help="--mesh auto: per-device memory budget (default 80)")
  parser.add_argument("--topology", default=None,
                      help="--mesh auto: DEVICESxFAST,SLOW link bandwidths, e.g. 8x900GBps,50GBps")
  parser.add_argument("--max-candidates", type=int, default=32,
                      help="--mesh auto: compile at most this many meshes (longest ring first)")
  parser.add_argument("--ffn-chunk", type=int, default=None)
  parser.add_argument("--loss-chunk", type=int, default=None)
  parser.add_argument("--attention-block", type=int, default=None)
  parser.add_argument("--max-new-tokens", type=int, default=64, help="prefill: generated slots")
  parser.add_argument("--prefill-chunk", type=int, default=0,
                      help="prefill: plan one step of chunked prefill (this many tokens a chunk) "
                      "and, beside it, the one-shot prefill")
  parser.add_argument("--cpu-licm", action="store_true",
                      help="keep XLA's while-loop-invariant code motion (see CPU_FLAGS)")
  return parser.parse_args(argv)


# The CPU compiler has no bfloat16 dynamic-slice: it converts the whole stack of saved layer inputs
# to float32 and loop-invariant code motion then hoists that copy out of the backward loop, adding
# 2x the saved activations that a GPU or TPU compiler (which slices bfloat16 natively) never
# allocates. Disabling the pass on CPU plans closer to what the accelerators will do.
CPU_FLAGS = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"


def stage_config(args):
  """The stage config to plan: --config's, or the defaults with --model, --seq-len, --batch, --mesh
  and --dtype."""
  if args.config:
    c = stage_schema.load_config(args.config)
    if c.mesh != "auto" and mesh_spec.device_count(c.mesh) is None and not args.devices:
      raise SystemExit(f"{args.config} has mesh {c.mesh!r}: give --devices to resolve the -1")
    return c
  c = stage_schema.base_config()
  c.model, c.seq_len, c.mesh, c.train.dtype = args.model, args.seq_len, args.mesh, args.dtype
  c.train.batch_size, c.train.grad_accum = args.batch, 1
  return c


def planning_overrides(args) -> dict:
  """ModelConfig fields the flags change on top of the stage's."""
  overrides = {field: getattr(args, field) for field in ("remat_policy", "ffn_chunk", "loss_chunk")
               if getattr(args, field)}
  overrides["param_dtype"] = args.param_dtype
  if args.attention_block:
    overrides["attention_block_q"] = overrides["attention_block_kv"] = args.attention_block
  return overrides


def plan_auto(args, c):
  """--mesh auto: the planner's table over --devices and its choice."""
  if not args.devices:
    raise SystemExit("--mesh auto needs --devices, the device count to plan for")
  if args.mode != "train":
    raise SystemExit("--mesh auto plans training steps; give --mode train")
  from lwm.bench import collectives  # pylint: disable=import-outside-toplevel
  try:
    topology = collectives.parse_topology(args.topology) if args.topology else None
  except ValueError as e:
    raise SystemExit(str(e)) from e
  os.environ["JAX_PLATFORMS"] = "cpu"
  launch.set_device_count(args.devices, replace=True)
  from lwm.bench import mesh_plan  # pylint: disable=import-outside-toplevel

  config = mesh_plan.model_config(c).replace(**planning_overrides(args))
  batch = c.train.batch_size // c.train.grad_accum
  budget = args.budget_gib or mesh_plan.DEFAULT_BUDGET_GIB
  print(f"model {c.model}: {config}")
  print(f"plan: {args.devices} devices, batch {batch} x {c.seq_len} tokens, params "
        f"{config.param_dtype}, activations {config.dtype}, budget {budget:g} GiB"
        + (f", topology {args.topology}" if topology else ""))
  print("MiB each device sends per step, by collective (compiled HLO, loops counted); peak memory "
        f"{'with' if args.cpu_licm else 'without'} loop-invariant code motion (see CPU_FLAGS)")
  print(mesh_plan.format_header(topology))
  start = time.time()
  rows, pruned, choice, reason = mesh_plan.plan(
      config, args.devices, batch, c.seq_len, budget_gib=budget, topology=topology,
      max_candidates=args.max_candidates, log=print,
      memory_options=None if args.cpu_licm else mesh_plan.CPU_MEMORY_OPTIONS)
  print(f"{len(rows)} meshes compiled in {time.time() - start:.0f} s; {len(pruned)} left out:")
  for why, meshes in mesh_plan.group_pruned(pruned):
    print(f"  {why}: {meshes[0]}" + (f" and {len(meshes) - 1} more" if len(meshes) > 1 else ""))
  if choice is None:
    raise SystemExit(f"no choice: {reason}")
  print(f"choice: {reason}")
  by_axes = sorted(choice.bytes_by_axes.items(), key=lambda kv: -kv[1])
  print("  its MiB per device per step by mesh axis: " +
        ", ".join(f"{axes} {sent / mesh_plan.MIB:,.1f}" for axes, sent in by_axes))


def main(argv=None):
  args = parse_args(argv)
  c = stage_config(args)
  if str(c.mesh).strip() == "auto":
    return plan_auto(args, c)
  try:
    sizes = stage_schema.mesh_sizes(c, args.devices)
  except ValueError as e:
    raise SystemExit(str(e)) from e
  batch, seq_len = c.train.batch_size // c.train.grad_accum, c.seq_len
  # Must happen before JAX initialises its CPU backend.
  os.environ["JAX_PLATFORMS"] = "cpu"
  launch.set_device_count(math.prod(sizes), replace=True)
  train_mode = args.mode == "train"
  if train_mode and not args.cpu_licm:
    os.environ["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} {CPU_FLAGS}"
  # pylint: disable=import-outside-toplevel
  from lwm import sharding as shd
  from lwm import model_dir
  from lwm.eval import inference
  from lwm.model import abstract_model, count_params, lower_train_step

  # The model config training would build (no dataset: vocabularies stay the named size's).
  config = model_dir.model_config(c, {"text_vocab_size": 0}).replace(**planning_overrides(args))
  mesh = shd.make_mesh(*sizes)
  if shd.row_copies(mesh, batch) > 1:
    batch_axes = shd.mesh_axes("batch")
    print(f"note: batch {batch} is not divisible by {'*'.join(batch_axes)}="
          f"{shd.axis_size(mesh, batch_axes)}; activations are replicated over the rest "
          "(parameters stay sharded). Prefer fsdp=1 and a larger sp for batch 1.")
  print(f"model {c.model}: {config}")
  print(f"XLA_FLAGS={os.environ['XLA_FLAGS'].strip()}")
  print(f"parameters: {count_params(abstract_model(config)) / 1e9:.3f} B (text and vision)")
  print(f"{args.mode}: mesh {mesh_spec.format_mesh(sizes)}; batch {batch} x {seq_len} tokens; "
        f"{seq_len // shd.seq_shards(mesh)} tokens per sequence shard")

  start = time.time()
  if train_mode:
    compiled = lower_train_step(config, mesh, batch, seq_len).compile()
    what = ("params, optimizer state, batch", "updated state, donated", "activations, gradients")
  else:
    compiled = inference.lower_prefill(config, mesh, seq_len, batch, args.max_new_tokens,
                                       chunk=args.prefill_chunk).compile()
    what = ("parameters, prompt", "KV cache, logits", "activations, ring buffers")
    if args.prefill_chunk:
      what = ("parameters, KV cache, chunk", "KV cache (donated), logits", "chunk activations")
  print(f"compiled in {time.time() - start:.0f} s")
  figures = inference.memory_figures(compiled)
  print(f"arguments per device: {figures['arguments']:.2f} GiB ({what[0]})")
  print(f"outputs per device:   {figures['outputs']:.2f} GiB ({what[1]})")
  print(f"temp per device:      {figures['temp']:.2f} GiB ({what[2]})")
  if args.prefill_chunk:
    whole = inference.memory_figures(
        inference.lower_prefill(config, mesh, seq_len, batch, args.max_new_tokens).compile())
    print(f"one-shot prefill of the same prompt, for comparison: peak {whole['peak']:.2f} GiB "
          f"(temp {whole['temp']:.2f} GiB)")
  print(f"peak per device: {figures['peak']:.2f} GiB")


if __name__ == "__main__":
  main()
