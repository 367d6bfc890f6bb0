"""Will this training step fit on my accelerators? Compiles it ahead of time and reports memory.

One full step (forward, backward, AdamW update; float32 parameters and optimizer state, bfloat16
activations) is compiled from abstract shapes on simulated CPU devices, so nothing is allocated;
XLA's memory analysis then gives the per-device figures.

  python scripts/plan_memory.py --model 1b --seq-len 1048576 --batch 1 --mesh 1,1,1,8
  python scripts/plan_memory.py --model 7b --seq-len 1048576 --batch 1 --mesh 1,4,1,16

The figures are the CPU compiler's buffer assignment; a GPU or TPU compiler schedules differently,
so keep some headroom.
"""
import argparse
import math
import os
import sys
import time


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="1b", help="named size: tiny, small, 1b, 7b")
  parser.add_argument("--config", default=None,
                      help="a stage config file (not supported yet: use --model and flags)")
  parser.add_argument("--mode", default="train", choices=["train", "prefill"],
                      help="what to compile (prefill is not supported yet)")
  parser.add_argument("--seq-len", type=int, default=1048576)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--mesh", default="1,1,1,8", help="dp,fsdp,tp,sp sizes")
  parser.add_argument("--remat-policy", default=None, help="override the config's remat policy")
  parser.add_argument("--dtype", default="bfloat16", help="activation dtype")
  parser.add_argument("--ffn-chunk", type=int, default=None)
  parser.add_argument("--loss-chunk", type=int, default=None)
  parser.add_argument("--attention-block", type=int, default=None)
  parser.add_argument("--cpu-licm", action="store_true",
                      help="keep XLA's while-loop-invariant code motion (see CPU_FLAGS)")
  return parser.parse_args(argv)


# The CPU compiler has no bfloat16 dynamic-slice: it converts the whole stack of saved layer inputs
# to float32 and loop-invariant code motion then hoists that copy out of the backward loop, adding
# 2x the saved activations that a GPU or TPU compiler (which slices bfloat16 natively) never
# allocates. Disabling the pass on CPU plans closer to what the accelerators will do.
CPU_FLAGS = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"


def main(argv=None):
  args = parse_args(argv)
  if args.config is not None:
    sys.exit("--config is not supported yet; give --model and the size flags instead")
  if args.mode != "train":
    sys.exit(f"--mode {args.mode} is not supported yet; only --mode train")
  sizes = [int(s) for s in args.mesh.split(",")]
  if len(sizes) != 4:
    sys.exit(f"--mesh {args.mesh!r} must give four sizes dp,fsdp,tp,sp (e.g. 1,2,1,4)")
  # Must happen before JAX initialises its CPU backend.
  os.environ["JAX_PLATFORMS"] = "cpu"
  flags = (os.environ.get("XLA_FLAGS", "") +
           f" --xla_force_host_platform_device_count={math.prod(sizes)}")
  os.environ["XLA_FLAGS"] = flags if args.cpu_licm else f"{flags} {CPU_FLAGS}"
  # pylint: disable=import-outside-toplevel
  from lwm import sharding as shd
  from lwm.model import abstract_model, count_params, get_config, lower_train_step

  overrides = {"dtype": args.dtype, "param_dtype": "float32"}
  if args.remat_policy:
    overrides["remat_policy"] = args.remat_policy
  if args.ffn_chunk:
    overrides["ffn_chunk"] = args.ffn_chunk
  if args.loss_chunk:
    overrides["loss_chunk"] = args.loss_chunk
  if args.attention_block:
    overrides["attention_block_q"] = overrides["attention_block_kv"] = args.attention_block
  config = get_config(args.model, **overrides)
  mesh = shd.make_mesh(*sizes)
  data_axes = shd.batch_axes(mesh, args.batch)
  if shd.axis_size(mesh, data_axes) < mesh.shape["dp"] * mesh.shape["fsdp"]:
    print(f"note: batch {args.batch} is not divisible by dp*fsdp="
          f"{mesh.shape['dp'] * mesh.shape['fsdp']}; activations are replicated over the rest "
          "(parameters stay sharded). Prefer fsdp=1 and a larger sp for batch 1.")
  print(f"model {args.model}: {config}")
  print(f"XLA_FLAGS={os.environ['XLA_FLAGS'].strip()}")
  print(f"parameters: {count_params(abstract_model(config)) / 1e9:.3f} B (text and vision)")
  print(f"mesh dp,fsdp,tp,sp = {sizes}; batch {args.batch} x {args.seq_len} tokens; "
        f"{args.seq_len // mesh.shape['sp']} tokens per sp shard")

  start = time.time()
  lowered = lower_train_step(config, mesh, args.batch, args.seq_len)
  compiled = lowered.compile()
  print(f"compiled in {time.time() - start:.0f} s")
  stats = compiled.memory_analysis()
  gib = lambda n: n / 1024**3
  arguments, outputs = stats.argument_size_in_bytes, stats.output_size_in_bytes
  aliased, temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
  print(f"arguments per device: {gib(arguments):.2f} GiB (params, optimizer state, batch)")
  print(f"outputs per device:   {gib(outputs):.2f} GiB ({gib(aliased):.2f} GiB aliased to "
        "donated arguments)")
  print(f"temp per device:      {gib(temp):.2f} GiB (activations, gradients, workspace)")
  peak = arguments + outputs - aliased + temp
  print(f"peak per device: {gib(peak):.2f} GiB")


if __name__ == "__main__":
  main()
