"""Host memory of importing a Hugging Face LLaMA: peak RSS against the checkpoint's size.

  python scripts/bench_import_memory.py --layers 9 --layouts safetensors,bin

Writes a random bfloat16 LLaMA (hidden 2048, mlp 5504, vocab 32000; 9 layers is 1.17 GB) in the
chosen layouts (sharded per layer, with an index json, as HF shards), then imports it with
`from_hf_llama(dtype=bfloat16)` in a child process per layout on the CPU backend and prints the
child's peak RSS (ru_maxrss), its RSS before the import (JAX and lwm loaded), and the size of
the parameters. On the CPU backend the imported parameters themselves live in host memory, so the
import's own overhead is peak - before - parameters. `--baseline-checkout DIR` adds a row (for
safetensors) importing with the lwm of another checkout, e.g. `git worktree add /tmp/old <commit>`.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

MB = 1e6


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", type=int, default=9)
  parser.add_argument("--hidden", type=int, default=2048)
  parser.add_argument("--mlp", type=int, default=5504)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--layouts", default="safetensors,bin")
  parser.add_argument("--baseline-checkout", default="",
                      help="another lwm checkout to import with, for comparison")
  parser.add_argument("--dir", default="", help="where to write (default: a temporary directory)")
  parser.add_argument("--stack-on-host-mb", type=float, default=-1,
                      help="override lwm.model.hf.STACK_ON_HOST_BYTES (0: every stack per layer)")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  return parser.parse_args()


def write_checkpoint(path: str, args, layout: str) -> int:
  """A random bf16 LLaMA in HF's layout, one file per layer plus one for the rest. Returns bytes."""
  import ml_dtypes
  import numpy as np
  from lwm.model import weights
  rng = np.random.default_rng(0)
  d, f, v = args.hidden, args.mlp, args.vocab
  w = lambda *shape: (0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16)
  groups = [{"model.embed_tokens.weight": w(v, d), "lm_head.weight": w(v, d),
             "model.norm.weight": w(d)}]
  for i in range(args.layers):
    p = f"model.layers.{i}."
    groups.append({p + n: w(*s) for n, s in [
        ("self_attn.q_proj.weight", (d, d)), ("self_attn.k_proj.weight", (d, d)),
        ("self_attn.v_proj.weight", (d, d)), ("self_attn.o_proj.weight", (d, d)),
        ("mlp.gate_proj.weight", (f, d)), ("mlp.up_proj.weight", (f, d)),
        ("mlp.down_proj.weight", (d, f)), ("input_layernorm.weight", (d,)),
        ("post_attention_layernorm.weight", (d,))]})
  os.makedirs(path, exist_ok=True)
  stem, ext, write = (("model", "safetensors", weights.write_safetensors) if layout == "safetensors"
                      else ("pytorch_model", "bin", weights.write_pytorch_bin))
  weight_map, total = {}, 0
  for k, group in enumerate(groups):
    file = f"{stem}-{k + 1:05d}-of-{len(groups):05d}.{ext}"
    write(os.path.join(path, file), group)
    weight_map.update({name: file for name in group})
    total += sum(a.nbytes for a in group.values())
    groups[k] = None  # Written: let it go.
  with open(os.path.join(path, f"{stem}.{ext}.index.json"), "w") as fh:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh)
  config = {"model_type": "llama", "vocab_size": v, "hidden_size": d, "intermediate_size": f,
            "num_hidden_layers": args.layers, "num_attention_heads": d // 128,
            "num_key_value_heads": d // 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-5}
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config, fh)
  return total


def child(path: str, stack_on_host_mb: float) -> None:
  """Imports `path` and prints one JSON line: RSS before, peak RSS, parameter bytes (bytes)."""
  import jax
  import jax.numpy as jnp
  from lwm.model import from_hf_llama, hf
  if stack_on_host_mb >= 0:
    hf.STACK_ON_HOST_BYTES = int(stack_on_host_mb * 2**20)
  jax.devices()
  with open("/proc/self/status") as f:
    before = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
  model = from_hf_llama(path, dtype=jnp.bfloat16, vision_vocab_size=0)
  params = sum(x.nbytes for x in jax.tree.leaves(model))
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(json.dumps({"before": before, "peak": peak, "params": params}))


def main():
  args = parse_args()
  if args.child:
    return child(args.child, args.stack_on_host_mb)
  root = args.dir or tempfile.mkdtemp(prefix="bench_import_")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  print(f"{'layout':<12} {'lwm':<9} {'file MB':>8} {'params MB':>9} {'RSS before':>10} "
        f"{'peak RSS':>9} {'peak-before':>11} {'overhead':>9} {'(peak-before)/file':>18}")
  for layout in args.layouts.split(","):
    path = os.path.join(root, layout)
    size = write_checkpoint(path, args, layout)
    checkouts = [("this", env.get("PYTHONPATH", ""))]
    if args.baseline_checkout and layout == "safetensors":
      checkouts.append(("baseline", args.baseline_checkout))
    for label, pythonpath in checkouts:
      out = subprocess.run([sys.executable, __file__, "--child", path,
                            "--stack-on-host-mb", str(args.stack_on_host_mb)],
                           env={**env, "PYTHONPATH": pythonpath}, check=True,
                           capture_output=True, text=True).stdout
      r = json.loads(out.strip().splitlines()[-1])
      grew = r["peak"] - r["before"]
      print(f"{layout:<12} {label:<9} {size / MB:8.0f} {r['params'] / MB:9.0f} "
            f"{r['before'] / MB:10.0f} {r['peak'] / MB:9.0f} {grew / MB:11.0f} "
            f"{(grew - r['params']) / MB:9.0f} {grew / size:18.2f}")
    if not args.dir:
      for name in os.listdir(path):
        os.remove(os.path.join(path, name))
      os.rmdir(path)


if __name__ == "__main__":
  main()
