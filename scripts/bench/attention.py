"""Benchmarks ring attention against one device and an all-gather baseline (forward + backward).

  python scripts/bench/attention.py --devices 2 --seq-lens 4096,8192
  python scripts/bench/attention.py --seq-lens "" --memory-seq-lens 1048576 --impl pallas_gpu
  python scripts/bench/attention.py --platform gpu            # on a GPU machine (under 8 minutes)
  python scripts/bench/attention.py --platform gpu --smoke    # the same rows on the CPU, tiny

CPU (default): for each sequence length, median wall time and per-device temp memory (XLA memory
analysis) of ring attention causal and non-causal on --devices simulated CPU devices (zigzag
layout), the same causal attention on one device, and the all-gather-keys/values variant; ratios
are measured in the same run. --memory-seq-lens adds compile-only memory rows (e.g. 1048576 on 8
devices) of the ring with block implementation --impl.

--platform gpu: forward + backward TFLOP/s, bfloat16, causal, of the fused block kernel on one
block, the xla block path, jax.nn.dot_product_attention(implementation="cudnn") and the whole ring
on every local device, for --gpu-seq-lens; then the kernel's and the ring's relative L2 difference
from the xla path on the device. --smoke runs it on the CPU (Pallas interpret mode, no cuDNN).
"""
import argparse
import os

from lwm import launch


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=2, help="simulated devices in the ring")
  parser.add_argument("--seq-lens", default="4096,8192", help="comma-separated total tokens")
  parser.add_argument("--memory-seq-lens", default="",
                      help="comma-separated total tokens for compile-only memory rows")
  parser.add_argument("--memory-devices", type=int, default=8)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--block", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--impl", default="xla", help="block implementation for the memory rows")
  parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--smoke", action="store_true",
                      help="with --platform gpu: tiny shapes on the CPU, to check the script")
  parser.add_argument("--gpu-seq-lens", default="8192,16384,32768,65536,131072")
  parser.add_argument("--gpu-heads", type=int, default=8)
  parser.add_argument("--gpu-head-dim", type=int, default=128)
  return parser.parse_args()


def device_main(args):
  """--platform gpu: TFLOP/s of each variant per sequence length, then the correctness lines."""
  import jax
  import jax.numpy as jnp
  from lwm.bench import attention_throughput as tp
  from lwm.ops import impls

  platform = jax.default_backend()
  impl, interpret = impls.resolve("pallas_gpu", platform)
  seq_lens = [int(s) for s in args.gpu_seq_lens.split(",") if s]
  heads, head_dim, repeats, block = args.gpu_heads, args.gpu_head_dim, args.repeats, 512
  if args.smoke:
    seq_lens, heads, head_dim, repeats, block = [256], 2, 64, 1, 64
  mesh = tp.sp_mesh(jax.devices())
  print(f"{jax.devices()[0].device_kind} x {len(jax.devices())} ({platform}), forward+backward, "
        f"bfloat16, causal, batch 1, {heads} heads x {head_dim}, median of {repeats}"
        f"{', Pallas in interpret mode' if interpret else ''}")
  ring_name = f"ring on {len(jax.devices())} dev (auto)"
  variants = {
      "fused kernel (one block)": tp.block_attention(impl, True, interpret, block),
      "xla block path": tp.block_attention("xla", True, block=block),
      "cuDNN flash attention": tp.cudnn_attention(True) if platform == "gpu" else None,
      ring_name: tp.ring(mesh, True, "auto", block),
  }
  fns = {name: attend and tp.grad_fn(attend) for name, attend in variants.items()}
  print(f"{'tokens':>8} {'variant':<28} {'ms':>10} {'TFLOP/s':>9}")
  for seq in seq_lens:
    args_ = tp.random_inputs(seq, heads, heads, head_dim, jnp.bfloat16)
    flops = tp.attention_flops(seq, heads, head_dim, causal=True)
    for name, fn in fns.items():
      if fn is None:
        print(f"{seq:>8} {name:<28} {'n/a (needs a GPU)':>20}")
        continue
      inputs = tp.zigzag_inputs(mesh, args_) if name == ring_name else args_
      seconds = tp.median_seconds(fn, inputs, repeats)
      print(f"{seq:>8} {name:<28} {seconds * 1e3:>10.2f} {flops / seconds / 1e12:>9.2f}")
  seq = seq_lens[0]
  args_ = tp.random_inputs(seq, heads, heads, head_dim, jnp.bfloat16, seed=1)
  reference = fns["xla block path"]
  kernel_error = tp.compare(fns["fused kernel (one block)"], reference, args_)
  (_, ring_grads), (_, want) = fns[ring_name](*tp.zigzag_inputs(mesh, args_)), reference(*args_)
  ring_error = max(tp.relative_l2(tp.layout_lib.from_zigzag(g, mesh.shape["sp"]), w)
                   for g, w in zip(ring_grads, want))
  verdict = "ok" if max(kernel_error, ring_error) <= 1e-2 else "MISMATCH"
  print(f"correctness at {seq} tokens vs the xla block path (relative L2 of loss/grads, bf16): "
        f"kernel {kernel_error:.2e}, ring grads {ring_error:.2e} -> {verdict} (bound 1e-2)")


def main():
  args = parse_args()
  if args.platform == "gpu":
    if args.smoke:
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 " --xla_force_host_platform_device_count=2")
      os.environ["JAX_PLATFORMS"] = "cpu"
    device_main(args)
    return
  count = max(args.devices, args.memory_devices if args.memory_seq_lens else 1)
  launch.set_device_count(count, replace=True)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from lwm.bench import attention_memory as measure  # after XLA_FLAGS: JAX reads them once

  mib = lambda b: b / 2**20
  shape = dict(heads=args.heads, head_dim=args.head_dim, block=args.block)
  print(f"forward+backward, batch 1, {args.heads} heads x {args.head_dim}, float32, zigzag, "
        f"block {args.block}, median of {args.repeats}")
  header = f"{'tokens':>8} {'variant':<26} {'ms':>9} {'temp MiB':>9} {'x ring causal':>14}"
  print(header)
  print("-" * len(header))
  for seq_len in [int(s) for s in args.seq_lens.split(",") if s]:
    rows = [("ring_causal", args.devices, f"ring causal ({args.devices} dev)"),
            ("ring_full", args.devices, f"ring non-causal ({args.devices} dev)"),
            ("ring_causal", 1, "one device causal"),
            ("all_gather_causal", args.devices, f"all-gather causal ({args.devices} dev)")]
    runners = [measure.runner(variant, seq_len, devices, **shape) for variant, devices, _ in rows]
    seconds = measure.median_times(runners, args.repeats)
    temps = [measure.compiled_memory(variant, seq_len, devices, **shape)["temp"]
             for variant, devices, _ in rows]
    base = seconds[0]
    for (_, _, label), seconds, temp in zip(rows, seconds, temps):
      print(f"{seq_len:>8} {label:<26} {seconds * 1e3:>9.1f} {mib(temp):>9.1f} "
            f"{seconds / base:>14.2f}")
  for seq_len in [int(s) for s in args.memory_seq_lens.split(",") if s]:
    for variant in ("ring_causal", "all_gather_causal"):
      impl = args.impl if variant.startswith("ring") else "xla"
      m = measure.compiled_memory(variant, seq_len, args.memory_devices, impl=impl, **shape)
      label = variant + f" ({args.memory_devices} dev{', ' + impl if impl != 'xla' else ''})"
      print(f"{seq_len:>8} {label:<26} {'(compile)':>9} "
            f"{mib(m['temp']):>9.1f}")


if __name__ == "__main__":
  main()
