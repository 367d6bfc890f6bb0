"""Host memory of importing an LWM `params` file: peak RSS against the file and the model it builds.

  python scripts/bench_lwm_import.py --hidden 1024 --intermediate 2816 --layers 16 [--dir /tmp/b]

Writes a synthetic LWM checkpoint (bf16, stacked layers, records over --chunk-mib chunked) record
by record, then imports it with `lwm.model.from_lwm` (float32) in a fresh process that reports its
peak resident memory above what it held after importing JAX. Reading the whole file and then
converting would need about file + model bytes on top of that; streaming needs the model plus
about one record (the largest, a few times over while it is converted).
"""
import argparse
import json
import os
import subprocess
import sys
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--hidden", type=int, default=1024)
  p.add_argument("--intermediate", type=int, default=2816)
  p.add_argument("--layers", type=int, default=16)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--chunk-mib", type=int, default=64, help="records above this are chunked")
  p.add_argument("--dir", default="/tmp/bench_lwm_import")
  p.add_argument("--read", default=None, help=argparse.SUPPRESS)  # the child process
  return p.parse_args(argv)


def config(args) -> dict:
  return {"vocab_size": 32000, "vision_vocab_size": 8448, "hidden_size": args.hidden,
          "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
          "num_attention_heads": args.heads, "rms_norm_eps": 1e-6, "theta": 5e7,
          "scan_layers": True, "param_scan_axis": 0}


def records(c: dict):
  """(key, bf16 array) of a stacked LWM checkpoint of config `c`, drawn one at a time."""
  import ml_dtypes
  import numpy as np
  rng = np.random.default_rng(0)
  L, D, F = c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]
  shapes = {"lm_head/kernel": (D, c["vocab_size"]), "transformer/ln_f/kernel": (D,),
            "transformer/vte/embedding": (c["vision_vocab_size"], D),
            "transformer/wte/embedding": (c["vocab_size"], D),
            "vision_head/kernel": (D, c["vision_vocab_size"])}
  for name in ("wq", "wk", "wv", "wo"):
    shapes[f"transformer/h/scan_decoder/attention/{name}/kernel"] = (L, D, D)
  for name, shape in (("w1", (L, D, F)), ("w2", (L, F, D)), ("w3", (L, D, F))):
    shapes[f"transformer/h/scan_decoder/feed_forward/{name}/kernel"] = shape
  for name in ("attention_norm", "ffn_norm"):
    shapes[f"transformer/h/scan_decoder/{name}/kernel"] = (L, D)
  for key, shape in sorted(shapes.items()):
    yield key, (0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16)


def high_water_bytes() -> int:
  """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent
  that started it)."""
  with open("/proc/self/status") as f:
    line = next(line for line in f if line.startswith("VmHWM:"))
  return int(line.split()[1]) * 1024


def child(path: str, c: dict) -> None:
  import jax  # noqa: F401
  from lwm.model import from_lwm
  baseline = high_water_bytes()
  start = time.perf_counter()
  model = from_lwm(path, c)
  seconds = time.perf_counter() - start
  peak = high_water_bytes()
  import jax as jax_
  from flax import nnx
  model_bytes = sum(x.nbytes for x in jax_.tree.leaves(nnx.state(model, nnx.Param)))
  print(json.dumps({"baseline": baseline, "peak": peak, "model_bytes": model_bytes,
                    "seconds": seconds}))


def main(argv=None):
  args = parse_args(argv)
  if args.read:
    child(args.read, json.loads(os.environ["BENCH_LWM_CONFIG"]))
    return
  from lwm.model.lwm_format import write_records
  c = config(args)
  os.makedirs(args.dir, exist_ok=True)
  path = os.path.join(args.dir, "params")
  largest = []
  write_records(path, ((k, a) for k, a in records(c) if not largest.append(a.nbytes)),
                chunk_bytes=args.chunk_mib * 2**20)
  env = dict(os.environ, BENCH_LWM_CONFIG=json.dumps(c), JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, os.path.abspath(__file__), "--read", path], env=env,
                        capture_output=True, text=True, check=True)
  r = json.loads(done.stdout.strip().splitlines()[-1])
  gib = lambda n: n / 2**30
  file_bytes = os.path.getsize(path)
  extra = r["peak"] - r["baseline"]
  print(f"file {gib(file_bytes):.2f} GiB (bf16), model {gib(r['model_bytes']):.2f} GiB (float32), "
        f"largest record {gib(max(largest)):.2f} GiB (bf16)")
  print(f"peak RSS {gib(r['peak']):.2f} GiB = {gib(r['baseline']):.2f} GiB after importing JAX "
        f"+ {gib(extra):.2f} GiB for the import ({extra / r['model_bytes']:.2f} x the model; "
        f"file + model would be {(file_bytes + r['model_bytes']) / r['model_bytes']:.2f} x); "
        f"{r['seconds']:.1f} s")
  os.remove(path)


if __name__ == "__main__":
  main()
