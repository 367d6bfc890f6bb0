"""Will it fit on my accelerators? Compiles a training step or a long prefill ahead of time and
reports per-device memory.

Everything is compiled from abstract shapes on simulated CPU devices, so nothing is allocated; XLA's
memory analysis then gives the per-device figures.

  python scripts/plan_memory.py --model 1b --seq-len 1048576 --batch 1 --mesh 1,1,1,8
  python scripts/plan_memory.py --model 7b --seq-len 1048576 --batch 1 --mesh 1,1,1,64
  python scripts/plan_memory.py --model 7b --seq-len 1048576 --mesh 1,1,1,64 --mode prefill
  python scripts/plan_memory.py --config configs/lwm_text.py:1m --devices 256

--mode train: one full step (forward, backward, AdamW; float32 parameters and optimizer state,
bfloat16 activations). --mode prefill: a prompt's prefill with ring attention, every layer's keys and
values kept as the decode cache (an output, sharded over sp and tp). --config takes the model, the
sequence length, the micro-batch, the mesh and the model overrides of a stage config (its mesh may
use -1; give --devices then). The figures are the CPU compiler's buffer assignment; a GPU or TPU
compiler schedules differently, so keep some headroom.
"""
import argparse
import importlib.util
import math
import os
import time


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mode", default="train", choices=["train", "prefill"])
  parser.add_argument("--config", default=None, help="a stage config file[:arg]")
  parser.add_argument("--devices", type=int, default=None, help="resolves a -1 in --config's mesh")
  parser.add_argument("--model", default="1b", help="named size: tiny, small, 1b, 7b")
  parser.add_argument("--seq-len", type=int, default=1048576)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--mesh", default="1,1,1,8", help="dp,fsdp,tp,sp sizes")
  parser.add_argument("--remat-policy", default=None, help="override the config's remat policy")
  parser.add_argument("--dtype", default="bfloat16", help="activation (and KV cache) dtype")
  parser.add_argument("--ffn-chunk", type=int, default=None)
  parser.add_argument("--loss-chunk", type=int, default=None)
  parser.add_argument("--attention-block", type=int, default=None)
  parser.add_argument("--max-new-tokens", type=int, default=64, help="prefill: generated slots")
  parser.add_argument("--cpu-licm", action="store_true",
                      help="keep XLA's while-loop-invariant code motion (see CPU_FLAGS)")
  return parser.parse_args(argv)


# The CPU compiler has no bfloat16 dynamic-slice: it converts the whole stack of saved layer inputs
# to float32 and loop-invariant code motion then hoists that copy out of the backward loop, adding
# 2x the saved activations that a GPU or TPU compiler (which slices bfloat16 natively) never
# allocates. Disabling the pass on CPU plans closer to what the accelerators will do.
CPU_FLAGS = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"


def load_stage_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("stage_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def plan(args):
  """(model name, overrides, mesh sizes, batch, seq_len) from the flags or a stage config."""
  overrides = {"dtype": args.dtype, "param_dtype": "float32"}
  name, sizes, batch, seq_len = args.model, [int(s) for s in args.mesh.split(",")], args.batch, \
      args.seq_len
  if args.config:
    from lwm import stage
    c = load_stage_config(args.config)
    if "-1" in str(c.mesh).replace(" ", "").split(",") and not args.devices:
      raise SystemExit(f"{args.config} has mesh {c.mesh!r}: give --devices to resolve the -1")
    name, sizes = c.model, list(stage.mesh_sizes(c, args.devices))
    batch, seq_len = c.train.batch_size // c.train.grad_accum, c.seq_len
    overrides.update(c.model_overrides.to_dict(), rope_theta=float(c.rope_theta),
                     dtype=c.train.dtype)
  if len(sizes) != 4:
    raise SystemExit(f"--mesh {args.mesh!r} must give four sizes dp,fsdp,tp,sp (e.g. 1,2,1,4)")
  for flag, field in (("remat_policy", "remat_policy"), ("ffn_chunk", "ffn_chunk"),
                      ("loss_chunk", "loss_chunk")):
    if getattr(args, flag):
      overrides[field] = getattr(args, flag)
  if args.attention_block:
    overrides["attention_block_q"] = overrides["attention_block_kv"] = args.attention_block
  return name, overrides, sizes, batch, seq_len


def main(argv=None):
  args = parse_args(argv)
  name, overrides, sizes, batch, seq_len = plan(args)
  # Must happen before JAX initialises its CPU backend.
  os.environ["JAX_PLATFORMS"] = "cpu"
  flags = (os.environ.get("XLA_FLAGS", "") +
           f" --xla_force_host_platform_device_count={math.prod(sizes)}")
  train_mode = args.mode == "train"
  os.environ["XLA_FLAGS"] = flags if args.cpu_licm or not train_mode else f"{flags} {CPU_FLAGS}"
  # pylint: disable=import-outside-toplevel
  from lwm import sharding as shd
  from lwm.eval import inference
  from lwm.model import abstract_model, count_params, get_config, lower_train_step

  config = get_config(name, **overrides)
  mesh = shd.make_mesh(*sizes)
  data_axes = shd.batch_axes(mesh, batch)
  if shd.axis_size(mesh, data_axes) < mesh.shape["dp"] * mesh.shape["fsdp"]:
    print(f"note: batch {batch} is not divisible by dp*fsdp="
          f"{mesh.shape['dp'] * mesh.shape['fsdp']}; activations are replicated over the rest "
          "(parameters stay sharded). Prefer fsdp=1 and a larger sp for batch 1.")
  print(f"model {name}: {config}")
  print(f"XLA_FLAGS={os.environ['XLA_FLAGS'].strip()}")
  print(f"parameters: {count_params(abstract_model(config)) / 1e9:.3f} B (text and vision)")
  print(f"{args.mode}: mesh dp,fsdp,tp,sp = {sizes}; batch {batch} x {seq_len} tokens; "
        f"{seq_len // mesh.shape['sp']} tokens per sp shard")

  start = time.time()
  if train_mode:
    compiled = lower_train_step(config, mesh, batch, seq_len).compile()
    what = ("params, optimizer state, batch", "updated state, donated", "activations, gradients")
  else:
    compiled = inference.lower_prefill(config, mesh, seq_len, batch, args.max_new_tokens).compile()
    what = ("parameters, prompt", "KV cache, logits", "activations, ring buffers")
  print(f"compiled in {time.time() - start:.0f} s")
  figures = inference.memory_figures(compiled)
  print(f"arguments per device: {figures['arguments']:.2f} GiB ({what[0]})")
  print(f"outputs per device:   {figures['outputs']:.2f} GiB ({what[1]})")
  print(f"temp per device:      {figures['temp']:.2f} GiB ({what[2]})")
  print(f"peak per device: {figures['peak']:.2f} GiB")


if __name__ == "__main__":
  main()
