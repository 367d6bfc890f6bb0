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

--hp-meshes 1x8,2x4,4x2,8x1 (hp x sp): per-device bytes sent by collective for one attention
forward+backward at --comm-seq-len tokens, read from the compiled HLO next to the closed form
(`lwm.bench.head_parallel_comm`), the compiled temp memory, and the communication time the
--topology gives (no overlap); compile only, no run.

  python scripts/bench/attention.py --seq-lens "" --hp-meshes 1x8,2x4,4x2,8x1

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
  parser.add_argument("--hp-meshes", default="", help="hp x sp meshes, e.g. 1x8,2x4,4x2,8x1")
  parser.add_argument("--comm-seq-len", type=int, default=65536)
  parser.add_argument("--comm-heads", default="32:8", help="query:key/value heads")
  parser.add_argument("--comm-head-dim", type=int, default=128)
  parser.add_argument("--topology", default="4x900GBps,50GBps",
                      help="fast-link group size x bandwidth, bandwidth between groups")
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


def comm_main(args):
  """--hp-meshes: bytes by collective from the HLO and by formula, temp memory, estimated time."""
  import jax.numpy as jnp
  from lwm.bench import collectives, head_parallel_comm as hpc

  meshes = [tuple(int(x) for x in m.split("x")) for m in args.hp_meshes.split(",") if m]
  heads, kv_heads = (int(x) for x in args.comm_heads.split(":"))
  seq, d = args.comm_seq_len, args.comm_head_dim
  topology = collectives.parse_topology(args.topology)
  print(f"attention forward+backward, {seq} tokens, {heads}:{kv_heads} heads x {d}, bfloat16, "
        f"causal, zigzag, segment ids, block {args.block}; MiB sent per device (HLO / formula); "
        f"time: {args.topology}, no overlap")
  kinds = ("all-to-all", "collective-permute", "all-gather")
  header = (f"{'hp x sp':>8} " + " ".join(f"{k:>24}" for k in kinds) +
            f" {'temp MiB':>9} {'comm ms':>8}")
  print(header)
  print("-" * len(header))
  mib = lambda b: b / 2**20
  for hp, sp in meshes:
    found, temp = hpc.compiled(seq, heads, kv_heads, d, hp, sp, block=args.block,
                               dtype=jnp.bfloat16)
    got, want = collectives.bytes_by(found), hpc.closed_form(seq, heads, kv_heads, d, hp, sp, 2)
    cells = [f"{mib(got.get(k, 0)):>11.1f} / {mib(want.get(k, 0)):>10.1f}" for k in kinds]
    seconds = collectives.comm_seconds(found, topology)
    print(f"{hp:>3} x {sp:<2} " + " ".join(cells) + f" {mib(temp):>9.1f} {seconds * 1e3:>8.2f}")


def main():
  args = parse_args()
  if args.platform == "gpu":
    if args.smoke:
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 " --xla_force_host_platform_device_count=2")
      os.environ["JAX_PLATFORMS"] = "cpu"
    device_main(args)
    return
  hp_sp = [int(x) for m in args.hp_meshes.split(",") if m for x in m.split("x")]
  count = max(args.devices, args.memory_devices if args.memory_seq_lens else 1,
              *(a * b for a, b in zip(hp_sp[::2], hp_sp[1::2])))
  launch.set_device_count(count, replace=True)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if hp_sp:
    comm_main(args)
  from lwm.bench import attention_memory as measure  # after XLA_FLAGS: JAX reads them once

  mib = lambda b: b / 2**20
  shape = dict(heads=args.heads, head_dim=args.head_dim, block=args.block)
  seq_lens = [int(s) for s in args.seq_lens.split(",") if s]
  if seq_lens or args.memory_seq_lens:
    print(f"forward+backward, batch 1, {args.heads} heads x {args.head_dim}, float32, zigzag, "
          f"block {args.block}, median of {args.repeats}")
    header = f"{'tokens':>8} {'variant':<26} {'ms':>9} {'temp MiB':>9} {'x ring causal':>14}"
    print(header)
    print("-" * len(header))
  for seq_len in seq_lens:
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
