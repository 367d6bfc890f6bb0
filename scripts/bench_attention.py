"""Benchmarks ring attention against one device and an all-gather baseline (forward + backward).

  python scripts/bench_attention.py --devices 2 --seq-lens 4096,8192

For each sequence length: median wall time and per-device temp memory (XLA memory analysis) of
ring attention causal and non-causal on --devices simulated CPU devices (zigzag layout), the same
causal attention on one device, and the all-gather-keys/values variant; ratios are measured in the
same run. --memory-seq-lens adds compile-only memory rows (e.g. 1048576 on 8 devices).
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
  return parser.parse_args()


def main():
  args = parse_args()
  count = max(args.devices, args.memory_devices if args.memory_seq_lens else 1)
  launch.set_device_count(count, replace=True)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from lwm.ops import measure  # after XLA_FLAGS: JAX reads them once

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
      m = measure.compiled_memory(variant, seq_len, args.memory_devices, **shape)
      print(f"{seq_len:>8} {variant + f' ({args.memory_devices} dev)':<26} {'(compile)':>9} "
            f"{mib(m['temp']):>9.1f}")


if __name__ == "__main__":
  main()
