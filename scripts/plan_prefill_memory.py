"""Will a long prompt's prefill fit? Compiles the prefill ahead of time and reports its memory.

The prefill (ring attention over `sp`, every layer's keys and values kept as the decode cache) is
compiled from abstract shapes on simulated CPU devices, so nothing is allocated; XLA's memory
analysis gives the per-device figures. The output includes the KV cache, sharded over sp (and tp).

  python scripts/plan_prefill_memory.py --model 1b --seq-len 1048576 --mesh 1,1,1,8
  python scripts/plan_prefill_memory.py --model 7b --seq-len 1048576 --mesh 1,1,1,64

`lwm.eval.inference.lower_prefill(config, mesh, seq_len)` is the function behind it (for
plan_memory.py --mode prefill).
"""
import argparse
import math
import os
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="1b", help="named size: tiny, small, 1b, 7b")
  p.add_argument("--seq-len", type=int, default=1048576)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--mesh", default="1,1,1,8", help="dp,fsdp,tp,sp sizes")
  p.add_argument("--dtype", default="bfloat16", help="activation (and cache) dtype")
  p.add_argument("--param-dtype", default="float32", help="parameter dtype as loaded")
  p.add_argument("--max-new-tokens", type=int, default=64, help="generated-token cache slots")
  p.add_argument("--ffn-chunk", type=int, default=None)
  p.add_argument("--attention-block", type=int, default=None)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  sizes = [int(s) for s in args.mesh.split(",")]
  if len(sizes) != 4:
    raise SystemExit(f"--mesh {args.mesh!r} must give four sizes dp,fsdp,tp,sp (e.g. 1,1,1,8)")
  os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX initialises
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={math.prod(sizes)}")
  from lwm import sharding as shd
  from lwm.eval import inference
  from lwm.model import get_config
  overrides = {"dtype": args.dtype, "param_dtype": args.param_dtype}
  if args.ffn_chunk:
    overrides["ffn_chunk"] = args.ffn_chunk
  if args.attention_block:
    overrides["attention_block_q"] = overrides["attention_block_kv"] = args.attention_block
  config = get_config(args.model, **overrides)
  mesh = shd.make_mesh(*sizes)
  cache_bytes = (2 * config.num_layers * args.batch * args.seq_len * config.num_kv_heads *
                 config.dim_per_head * (2 if args.dtype == "bfloat16" else 4))
  print(f"model {args.model}, mesh dp,fsdp,tp,sp = {sizes}, prefill of {args.batch} x "
        f"{args.seq_len} tokens ({args.seq_len // mesh.shape['sp']} per sp shard); KV cache "
        f"{cache_bytes / 1024 ** 3:.1f} GiB in all")
  start = time.time()
  compiled = inference.lower_prefill(config, mesh, args.seq_len, args.batch,
                                     args.max_new_tokens).compile()
  print(f"compiled in {time.time() - start:.0f} s")
  figures = inference.memory_figures(compiled)
  print(f"arguments per device: {figures['arguments']:.2f} GiB (parameters, prompt)")
  print(f"outputs per device:   {figures['outputs']:.2f} GiB (KV cache, logits)")
  print(f"temp per device:      {figures['temp']:.2f} GiB (activations, ring buffers)")
  print(f"peak per device: {figures['peak']:.2f} GiB")


if __name__ == "__main__":
  main()
