"""Peak resident memory of the tiny stage with and without a profile.

  python scripts/bench/profile_memory.py --steps 8 --profile-steps 3,5   # the figures in the docs

Runs `scripts/train.py --config configs/tiny.py:stage1` (8 simulated CPU devices) in a subprocess
per mode on a small generated dataset (or --data), samples the resident memory of the process tree
every 50 ms with psutil, and prints each mode's peak and wall time:
  none      no profile
  profiled  --config.train.profile_steps=START,END with the loop's default tracer settings
  verbose   the same window with the settings the loop used before (Python tracer level 1, host
            tracer level 2, perfetto conversion), through the config keys
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODES = {
    "none": [],
    "profiled": [],
    "verbose": ["--config.train.profile_python_tracer_level=1",
                "--config.train.profile_host_tracer_level=2",
                "--config.train.profile_perfetto=True"],
}


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--profile-steps", default="3,5")
  parser.add_argument("--modes", default="none,profiled,verbose")
  parser.add_argument("--data", default="", help="a dataset directory; default: generate one")
  parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
  parser.add_argument("--limit-gb", type=float, default=8.0,
                      help="kill a run whose resident memory passes this")
  return parser.parse_args()


def make_dataset(root: str, num_docs: int = 48, seed: int = 0) -> str:
  """A small text dataset written by the real data stage (random pseudo-words)."""
  from lwm.data import preprocess, synthetic, text_tokenizer
  rng = np.random.default_rng(seed)
  docs = [synthetic.random_text(rng, int(rng.integers(50, 400))) for _ in range(num_docs)]
  manifest = os.path.join(root, "manifest.jsonl")
  with open(manifest, "w") as f:
    f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
  tokenizer = text_tokenizer.train_tokenizer(docs, os.path.join(root, "tok.model"), vocab_size=320)
  output = os.path.join(root, "dataset")
  preprocess.preprocess(preprocess.PreprocessOptions(manifest, output, tokenizer, None),
                        progress=False)
  return output


def peak_rss(command: list[str], timeout: float, limit_bytes: float) -> tuple[float, float, int]:
  """(peak resident bytes of the process and its children, wall seconds, exit status)."""
  start = time.perf_counter()
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  parent, peak = psutil.Process(proc.pid), 0
  while proc.poll() is None:
    try:
      rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
    except psutil.Error:
      rss = 0
    peak = max(peak, rss)
    if rss > limit_bytes or time.perf_counter() - start > timeout:
      proc.kill()
    time.sleep(0.05)
  if proc.returncode:
    sys.stderr.write(proc.stderr.read().decode()[-3000:])
  return peak, time.perf_counter() - start, proc.returncode


def train_command(data: str, workdir: str, steps: int, extra: list[str]) -> list[str]:
  return [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
          "--config", os.path.join(ROOT, "configs", "tiny.py") + ":stage1", "--workdir", workdir,
          f"--config.data.path={data}", f"--config.train.steps={steps}",
          "--config.checkpoint.every=100000", *extra]


def main():
  args = parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    data = args.data or make_dataset(tmp)
    print(f"tiny stage1, {args.steps} steps, profile_steps={args.profile_steps}")
    print("| mode | peak RSS (GB) | wall (s) | exit |\n| --- | ---: | ---: | ---: |")
    for mode in args.modes.split(","):
      extra = list(MODES[mode])
      if mode != "none":
        extra.append(f"--config.train.profile_steps={args.profile_steps}")
      command = train_command(data, os.path.join(tmp, mode), args.steps, extra)
      peak, wall, status = peak_rss(command, args.timeout, args.limit_gb * 2**30)
      print(f"| {mode} | {peak / 2**30:.2f} | {wall:.1f} | {status} |", flush=True)


if __name__ == "__main__":
  main()
