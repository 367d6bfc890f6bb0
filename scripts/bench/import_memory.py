"""Host memory of importing a checkpoint: peak RSS against the file and the model it builds.

  python scripts/bench/import_memory.py --format hf --layers 9 --layouts safetensors,bin
  python scripts/bench/import_memory.py --format lwm --hidden 1024 --intermediate 2816 --layers 16

Writes a random bfloat16 checkpoint, then imports it in a fresh child process per case on the CPU
backend and prints the child's peak resident memory (VmHWM) above what it held with JAX and lwm
loaded, next to the file's size and the imported parameters' (on the CPU backend the parameters
themselves are host memory, so the import's own overhead is peak - before - parameters).
- hf: a Hugging Face LLaMA (hidden 2048, mlp 5504, vocab 32000; 9 layers is 1.17 GB), sharded one
  file per layer with an index json as HF shards, in each of --layouts; imported with
  `from_hf_llama(dtype=bfloat16)`.
- lwm: LWM's streaming `params` file (stacked layers; records over --chunk-mib chunked), imported
  with `from_lwm` (float32). Reading the whole file and then converting would need about file +
  model bytes; streaming needs the model plus about one record.
`--baseline-checkout DIR` adds a row importing with the lwm of another checkout (e.g. `git worktree
add /tmp/old <commit>`).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MB = 1e6


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--format", choices=["hf", "lwm"], default="hf")
  p.add_argument("--layers", type=int, default=None, help="default: hf 9, lwm 16")
  p.add_argument("--hidden", type=int, default=None, help="default: hf 2048, lwm 1024")
  p.add_argument("--intermediate", type=int, default=None, help="default: hf 5504, lwm 2816")
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--layouts", default="safetensors,bin", help="hf: file layouts to write")
  p.add_argument("--chunk-mib", type=int, default=64, help="lwm: records above this are chunked")
  p.add_argument("--stack-on-host-mb", type=float, default=-1,
                 help="hf: override lwm.model.hf.STACK_ON_HOST_BYTES (0: every stack per layer)")
  p.add_argument("--baseline-checkout", default="",
                 help="another lwm checkout to import with, for comparison")
  p.add_argument("--dir", default="", help="where to write (default: a temporary directory)")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  defaults = {"hf": (9, 2048, 5504), "lwm": (16, 1024, 2816)}[args.format]
  for name, value in zip(("layers", "hidden", "intermediate"), defaults):
    if getattr(args, name) is None:
      setattr(args, name, value)
  return args


def _bf16(rng, *shape):
  import ml_dtypes
  import numpy as np
  return (0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16)


def write_hf(path: str, args, layout: str) -> int:
  """A random bf16 LLaMA in HF's layout, one file per layer plus one for the rest. Returns bytes."""
  import numpy as np
  from lwm.model import weights
  rng = np.random.default_rng(0)
  d, f, v = args.hidden, args.intermediate, args.vocab
  groups = [{"model.embed_tokens.weight": (v, d), "lm_head.weight": (v, d),
             "model.norm.weight": (d,)}]
  for i in range(args.layers):
    p = f"model.layers.{i}."
    groups.append({p + n: s for n, s in [
        ("self_attn.q_proj.weight", (d, d)), ("self_attn.k_proj.weight", (d, d)),
        ("self_attn.v_proj.weight", (d, d)), ("self_attn.o_proj.weight", (d, d)),
        ("mlp.gate_proj.weight", (f, d)), ("mlp.up_proj.weight", (f, d)),
        ("mlp.down_proj.weight", (d, f)), ("input_layernorm.weight", (d,)),
        ("post_attention_layernorm.weight", (d,))]})
  os.makedirs(path, exist_ok=True)
  stem, ext, write = (("model", "safetensors", weights.write_safetensors) if layout == "safetensors"
                      else ("pytorch_model", "bin", weights.write_pytorch_bin))
  weight_map, total = {}, 0
  for k, shapes in enumerate(groups):
    group = {name: _bf16(rng, *shape) for name, shape in shapes.items()}  # one file in memory
    file = f"{stem}-{k + 1:05d}-of-{len(groups):05d}.{ext}"
    write(os.path.join(path, file), group)
    weight_map.update({name: file for name in group})
    total += sum(a.nbytes for a in group.values())
  with open(os.path.join(path, f"{stem}.{ext}.index.json"), "w") as fh:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh)
  config = {"model_type": "llama", "vocab_size": v, "hidden_size": d, "intermediate_size": f,
            "num_hidden_layers": args.layers, "num_attention_heads": d // 128,
            "num_key_value_heads": d // 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-5}
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config, fh)
  return total


def lwm_config(args) -> dict:
  return {"vocab_size": args.vocab, "vision_vocab_size": 8448, "hidden_size": args.hidden,
          "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
          "num_attention_heads": max(args.hidden // 128, 1), "rms_norm_eps": 1e-6, "theta": 5e7,
          "scan_layers": True, "param_scan_axis": 0}


def write_lwm(path: str, args) -> int:
  """A random bf16 LWM `params` file with stacked layers, written record by record."""
  import numpy as np
  from lwm.model.lwm_format import write_records
  c, rng = lwm_config(args), np.random.default_rng(0)
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
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_records(path, ((k, _bf16(rng, *s)) for k, s in sorted(shapes.items())),
                chunk_bytes=args.chunk_mib * 2**20)
  return os.path.getsize(path)


def high_water_bytes() -> int:
  """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent
  that started it)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def child(args) -> None:
  """Imports `args.child` and prints one JSON line: RSS before, peak RSS, parameter bytes."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  jax.devices()
  before = high_water_bytes()
  start = time.perf_counter()
  if args.format == "hf":
    from lwm.model import from_hf_llama, hf
    if args.stack_on_host_mb >= 0:
      hf.STACK_ON_HOST_BYTES = int(args.stack_on_host_mb * 2**20)
    model = from_hf_llama(args.child, dtype=jnp.bfloat16, vision_vocab_size=0)
  else:
    from lwm.model import from_lwm
    model = from_lwm(args.child, lwm_config(args))
  seconds = time.perf_counter() - start
  params = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(json.dumps({"before": before, "peak": high_water_bytes(), "params": params,
                    "seconds": seconds}))


def measure(path: str, argv: list, pythonpath: str) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": pythonpath}
  out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--child", path],
                       env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.child:
    return child(args)
  root = args.dir or tempfile.mkdtemp(prefix="bench_import_")
  print(f"{'case':<16} {'lwm':<9} {'file MB':>8} {'params MB':>9} {'RSS before':>10} "
        f"{'peak RSS':>9} {'peak-before':>11} {'overhead':>9} {'seconds':>8} "
        f"{'(peak-before)/file':>18}")
  layouts = args.layouts.split(",") if args.format == "hf" else ["params"]
  for layout in layouts:
    path = os.path.join(root, layout)
    if args.format == "hf":
      size = write_hf(path, args, layout)
    else:
      path = os.path.join(path, "params")
      size = write_lwm(path, args)
    checkouts = [("this", os.environ.get("PYTHONPATH", ""))]
    if args.baseline_checkout:
      checkouts.append(("baseline", args.baseline_checkout))
    for label, pythonpath in checkouts:
      r = measure(path, argv, pythonpath)
      grew = r["peak"] - r["before"]
      print(f"{args.format + '/' + layout:<16} {label:<9} {size / MB:8.0f} {r['params'] / MB:9.0f} "
            f"{r['before'] / MB:10.0f} {r['peak'] / MB:9.0f} {grew / MB:11.0f} "
            f"{(grew - r['params']) / MB:9.0f} {r['seconds']:8.1f} {grew / size:18.2f}")
  if not args.dir:
    import shutil
    shutil.rmtree(root)


if __name__ == "__main__":
  main()
