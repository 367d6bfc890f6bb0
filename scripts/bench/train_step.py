"""Times one full training step (forward, chunked loss, backward, AdamW) and reports its memory.

  python scripts/bench/train_step.py                        # the default policy, the shape below
  python scripts/bench/train_step.py --policies nothing_saveable,none,save_attention_ffn --steps 3
  python scripts/bench/train_step.py --seq-len 4096 --policies a,b --memory-seq-lens 32768

The default shape is the one compared with LWM's own code: 2 layers, hidden 256, 4 heads x 64,
intermediate 688, text vocabulary 32,000, float32, batch 1, 16,384 tokens on a 1,1,1,8 mesh of
simulated CPU devices, FFN chunks of 128 tokens per device, attention tiles of 1,024. Each policy
(`ModelConfig.remat_policy`) is built with `create_sharded` + `jit_train_step` and compiled once;
its steps are then run interleaved with the other policies' (so that load from other processes
hits all alike) and the script prints, per policy: compile seconds, median/min/max step seconds
after the warm-up, the median CPU seconds the process spent per step (steadier than wall time
when other processes share the cores), tokens/s, per-device temp memory from XLA's memory
analysis of the compiled step, XLA's cost-analysis FLOPs, and the model FLOPs per step (matmuls
and causal attention, forward + backward = 3x forward, no recompute) with the FLOP/s they imply.
--memory-seq-lens adds compile-only memory rows.
"""
import argparse
import os
import statistics
import time


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--policies", default="", help="comma-separated remat policies "
                      "(default: the config's); see lwm.model.config.REMAT_POLICIES")
  parser.add_argument("--seq-len", type=int, default=16384)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--mesh", default="1,1,1,8", help="dp,fsdp,tp,hp,sp or hp=2,sp=4")
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--kv-heads", type=int, default=0, help="0: as many as --heads")
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--intermediate", type=int, default=688)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--vision-vocab", type=int, default=0)
  parser.add_argument("--dtype", default="float32", help="activation dtype")
  parser.add_argument("--ffn-chunk", type=int, default=128, help="tokens per device per chunk")
  parser.add_argument("--loss-chunk", type=int, default=None, help="default: the config's")
  parser.add_argument("--attention-block", type=int, default=1024)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per policy")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per policy")
  parser.add_argument("--memory-seq-lens", default="",
                      help="comma-separated sequence lengths for compile-only memory rows")
  parser.add_argument("--profile", default="", help="write a jax.profiler trace of one step here")
  return parser.parse_args(argv)


def model_config(args, policy):
  from lwm.model import ModelConfig
  overrides = {} if args.loss_chunk is None else {"loss_chunk": args.loss_chunk}
  if policy:
    overrides["remat_policy"] = policy
  return ModelConfig(
      vocab_size=args.vocab, vision_vocab_size=args.vision_vocab, hidden_size=args.hidden,
      intermediate_size=args.intermediate, num_layers=args.layers, num_heads=args.heads,
      num_kv_heads=args.kv_heads or args.heads, head_dim=args.head_dim, dtype=args.dtype,
      param_dtype="float32", ffn_chunk=args.ffn_chunk, attention_block_q=args.attention_block,
      attention_block_kv=args.attention_block, **overrides)


def policy_label(config, mesh, batch, seq_len):
  """The policy's name, with what "auto" resolves to at this shape."""
  from lwm import sharding as shd
  per_device = batch * seq_len // (shd.axis_size(mesh, shd.batch_axes(mesh, batch))
                                   * shd.seq_shards(mesh))
  resolved = config.resolved_remat_policy(per_device, mesh.shape["tp"])
  name = config.remat_policy
  return name if resolved == name else f"{name}:{resolved}"


def figures(compiled):
  """(per-device temp bytes, XLA cost-analysis FLOPs) of a compiled step."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled.memory_analysis().temp_size_in_bytes, (cost or {}).get("flops", 0.0)


class Run:
  """One policy's training state and its step, compiled once (timed) on the mesh."""

  def __init__(self, config, mesh, batch):
    import jax
    from lwm.model import adamw, create_sharded, jit_train_step
    tx = adamw()
    self.mesh, self.batch = mesh, batch
    self.graphdef, self.params, self.opt_state = create_sharded(config, mesh, tx)
    step = jit_train_step(self.graphdef, tx, self.params, mesh, len(batch["tokens"]))
    start = time.perf_counter()
    with jax.set_mesh(mesh):
      self.compiled = step.lower(self.params, self.opt_state, batch).compile()
    self.compile_seconds = time.perf_counter() - start
    self.times, self.cpu_times = [], []

  def step(self):
    """(wall seconds, CPU seconds of this process, loss) of one step."""
    import jax
    start, cpu = time.perf_counter(), time.process_time()
    with jax.set_mesh(self.mesh):
      self.params, self.opt_state, metrics = self.compiled(self.params, self.opt_state, self.batch)
      loss = float(jax.block_until_ready(metrics["loss"]))
    return time.perf_counter() - start, time.process_time() - cpu, loss


def main():
  args = parse_args()
  from lwm import mesh_spec
  devices = mesh_spec.device_count(args.mesh)
  if devices is None:
    raise SystemExit(f"--mesh {args.mesh!r}: give every size (no -1) for a benchmark")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  from lwm import sharding as shd
  from lwm.metrics import train_step_flops
  from lwm.model import lower_train_step
  from lwm.model.step import random_batch

  mesh = shd.parse_mesh(args.mesh, devices=jax.devices()[:devices])
  policies = [p for p in args.policies.split(",") if p] or [""]
  configs = [model_config(args, p) for p in policies]
  c0 = configs[0]
  print(f"train step: {c0.num_layers} layers, hidden {c0.hidden_size}, {c0.num_heads} heads x "
        f"{c0.dim_per_head} ({c0.num_kv_heads} kv), intermediate {c0.intermediate_size}, vocab "
        f"{c0.vocab_size}+{c0.vision_vocab_size}, {c0.dtype}, batch {args.batch} x {args.seq_len} "
        f"tokens, mesh {args.mesh}, ffn chunk {c0.ffn_chunk}, loss chunk "
        f"{c0.loss_chunk}, attention tiles {c0.attention_block_q}; {jax.device_count()} "
        f"{jax.devices()[0].platform} devices; median/min/max of {args.steps} steps after "
        f"{args.warmup} warm-up, policies interleaved", flush=True)
  flops = train_step_flops(c0, args.batch, args.seq_len)
  batch = random_batch(args.batch, args.seq_len, c0.vocab_size, mesh)
  runs = []
  for config in configs:
    runs.append(Run(config, mesh, batch))
    print(f"compiled {config.remat_policy} in {runs[-1].compile_seconds:.1f} s", flush=True)
  losses = [[] for _ in runs]
  for _ in range(args.warmup):
    for run, seen in zip(runs, losses):
      seen.append(run.step()[2])
  for i in range(args.steps):
    for config, run, seen in zip(configs, runs, losses):
      seconds, cpu, loss = run.step()
      run.times.append(seconds)
      run.cpu_times.append(cpu)
      seen.append(loss)
      print(f"  step {i + 1} {config.remat_policy}: {seconds:.2f} s, CPU {cpu:.1f} s", flush=True)
  if args.profile:
    with jax.profiler.trace(args.profile):
      runs[0].step()
  base = statistics.median(runs[0].times) if args.steps else 0.0
  header = (f"{'policy':<24} {'compile s':>9} {'median s':>9} {'min s':>7} {'max s':>7} "
            f"{'x first':>7} {'CPU s':>7} {'tok/s':>8} {'temp MiB':>9} {'XLA GFLOP*':>10} "
            f"{'model GFLOP/s':>13}")
  print(f"model FLOPs per step: {flops / 1e9:.1f} GFLOP (3x forward, no recompute)")
  print(header)
  print("-" * len(header))
  for config, run in zip(configs, runs):
    temp, xla_flops = figures(run.compiled)
    median = statistics.median(run.times) if run.times else float("nan")
    lo, hi = (min(run.times), max(run.times)) if run.times else (float("nan"),) * 2
    cpu = statistics.median(run.cpu_times) if run.cpu_times else float("nan")
    label = policy_label(config, mesh, args.batch, args.seq_len)
    print(f"{label:<24} {run.compile_seconds:>9.1f} {median:>9.2f} {lo:>7.2f} {hi:>7.2f} "
          f"{median / base if base else float('nan'):>7.2f} {cpu:>7.1f} "
          f"{args.batch * args.seq_len / median:>8.0f} {temp / 2**20:>9.1f} "
          f"{xla_flops / 1e9:>10.1f} {flops / median / 1e9:>13.2f}")
  print("* XLA's cost analysis counts each loop body (layer scan, ring, chunks) once: a floor")
  for config, seen in zip(configs, losses):
    print(f"losses {config.remat_policy}: " + " ".join(f"{x:.6f}" for x in seen))
  for seq_len in [int(s) for s in args.memory_seq_lens.split(",") if s]:
    for config in configs:
      with jax.set_mesh(mesh):
        temp, _ = figures(lower_train_step(config, mesh, args.batch, seq_len).compile())
      label = policy_label(config, mesh, args.batch, seq_len)
      print(f"compile-only {seq_len:>8} tokens  {label:<24} temp "
            f"{temp / 2**20:>9.1f} MiB per device")


if __name__ == "__main__":
  main()
