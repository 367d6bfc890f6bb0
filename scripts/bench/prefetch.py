"""How much of the host's batch packing the prefetch thread hides behind the training step.

  python scripts/bench/prefetch.py --steps 5 --rounds 5 --docs 6000   # the figures in the docs
  python scripts/bench/prefetch.py --seq-len 2048 --rounds 6 --depth 2

The train loop's pieces (lwm.data.loader.Loader and Prefetcher, lwm.model.step's jitted step,
metrics left on the device until the end of a round) on one device, with a config chosen so that
packing is a visible share of the step: the tiny model, 8 x 1024 tokens packed from many short
documents (5-40 tokens) read from an array_record dataset, so that each row holds dozens;
attention tiles of 128 keep the model's step short.
Rounds of `--steps` steps alternate between three loops, so all see the same load on a shared
machine: before (no prefetch, the loss read at every step, as the loop was), metrics left on the
device (JAX's async dispatch lets the host pack while the step runs), and after (plus the prefetch
thread). Prints the host's packing time per batch alone, the step alone on a ready batch, the
median step time of each loop, the speed-ups and the share of the packing hidden:
(before - after) / packing.
"""
import argparse
import os
import shutil
import tempfile
import time


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seq-len", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--docs", type=int, default=20000, help="documents in the dataset")
  parser.add_argument("--doc-tokens", default="5,40", help="MIN,MAX tokens of a document")
  parser.add_argument("--steps", type=int, default=10, help="steps per round")
  parser.add_argument("--rounds", type=int, default=4, help="rounds of each mode, interleaved")
  parser.add_argument("--depth", type=int, default=2, help="prefetch depth of the 'with' mode")
  return parser.parse_args()


def write_documents(root: str, count: int, low: int, high: int, seed: int = 0) -> str:
  """A dataset on disk (array_record, as preprocess writes it) of short random-token documents."""
  import numpy as np
  from lwm.data import chunks, dataset, loader, packing
  rng = np.random.default_rng(seed)
  docs = []
  for line in range(count):
    n = int(rng.integers(low, high + 1))
    docs.append({"tokens": rng.integers(1, 250, n).astype(np.int32), "line": line,
                 "vision_mask": np.zeros(n, bool), "loss_mask": np.ones(n, bool), "num_frames": 0})
  work = os.path.join(root, "work")
  os.makedirs(work)
  chunks.write_chunk(chunks.chunk_path(work, 0), docs, [])
  dataset.build(root, work)
  loader.save_index(root, packing.build_index(dataset.load_examples(root)))
  return root


def median(values):
  values = sorted(values)
  return values[len(values) // 2]


def main():
  args = parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  from lwm import sharding
  from lwm.data.loader import Loader, Prefetcher
  from lwm.model import config as model_config, step as step_lib

  mesh = sharding.make_mesh(1, 1, 1, 1)
  cfg = model_config.get_config("tiny", max_sequence_length=args.seq_len, dtype="float32",
                                attention_block_q=128, attention_block_kv=128, ffn_chunk=512,
                                loss_chunk=512)
  tx = step_lib.adamw(1e-3)
  graphdef, params, opt_state = step_lib.create_sharded(cfg, mesh, tx)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          params)
  train_step = step_lib.jit_train_step(graphdef, tx, abstract, mesh, args.batch)
  low, high = (int(v) for v in args.doc_tokens.split(","))
  data = write_documents(tempfile.mkdtemp(prefix="bench_prefetch_"), args.docs, low, high)
  loader = Loader(data, args.seq_len, args.batch, seed=0, mesh=mesh)
  batch = next(loader)
  params, opt_state, metrics = train_step(params, opt_state, batch)  # compile
  jax.block_until_ready(metrics)

  def packing_alone():
    start = time.perf_counter()
    for _ in range(args.steps):
      jax.block_until_ready(next(loader))
    return (time.perf_counter() - start) / args.steps

  def step_alone():
    nonlocal params, opt_state
    start = time.perf_counter()
    for _ in range(args.steps):
      params, opt_state, metrics = train_step(params, opt_state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / args.steps

  def loop(depth, sync_every_step):
    nonlocal params, opt_state
    batches = Prefetcher(loader, depth)
    start = time.perf_counter()
    pending = []
    for _ in range(args.steps):
      params, opt_state, metrics = train_step(params, opt_state, next(batches))
      pending.append(metrics)
      if sync_every_step:  # the loop before: float(loss) and a NaN check at every step
        float(metrics["loss"])
    jax.device_get(pending)  # metrics fetched once, as at a log step
    seconds = (time.perf_counter() - start) / args.steps
    batches.close()
    loader.set_state(batches.get_state())  # the batches it packed ahead are packed again
    return seconds

  modes = {"before": (0, True), "async": (0, False), "after": (args.depth, False)}
  times = {k: [] for k in ("pack", "step", *modes)}
  for _ in range(args.rounds):
    times["pack"].append(packing_alone())
    times["step"].append(step_alone())
    for name, (depth, sync) in modes.items():
      times[name].append(loop(depth, sync))
  pack, step, before, async_, after = (median(times[k]) for k in times)
  shutil.rmtree(data)
  print(f"config: tiny model, {args.batch} x {args.seq_len} tokens of {low}-{high}-token docs, "
        f"1 device ({jax.devices()[0].device_kind}), {args.rounds} rounds x {args.steps} steps")
  print(f"packing alone          {pack * 1e3:8.1f} ms/batch")
  print(f"step alone             {step * 1e3:8.1f} ms/step")
  print(f"before: sync each step {before * 1e3:8.1f} ms/step   (packing {pack / before:.0%} of it)")
  print(f"metrics on device      {async_ * 1e3:8.1f} ms/step   x{before / async_:.2f}")
  print(f"after: + prefetch {args.depth}    {after * 1e3:8.1f} ms/step   x{before / after:.2f}, "
        f"packing hidden {min(max((before - after) / pack, 0), 9.99):.0%}")

if __name__ == "__main__":
  main()
