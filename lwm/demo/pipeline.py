"""The quickstart pipeline: every step is the command a user runs, as a subprocess, in order.

  summary = run_pipeline("quickstart_out", FULL)   # or SMALL (the slow test)

Steps: corpus -> text tokenizer -> VQGAN -> preprocess (stage 1 and stage 2 data) -> train stage 1
-> train stage 2 (from stage 1, sp=8 ring attention) -> the untrained control -> text and video
needle evaluations of both -> OUT/summary.json and the heatmaps in OUT/. A step whose output exists
is skipped, so a rerun reuses finished work; `clean=True` starts over.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

from lwm import launch
from lwm.demo import corpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "quickstart.py")
DONE = "quickstart_done"  # written into a step's directory when its command succeeded


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the full command and the slow test change; the rest lives in configs/quickstart.py."""
  sizes: corpus.CorpusSizes = corpus.CorpusSizes()
  vocab_size: int = 550
  vqgan_steps: int = 600
  stage1: dict = dataclasses.field(default_factory=dict)   # --config.KEY=VALUE overrides
  stage2: dict = dataclasses.field(default_factory=dict)
  context_length: int = 2048  # evaluation length: stage 2's seq_len
  depths: str = "0,25,50,75,100"
  rounds: int = 8
  workers: int = 2


FULL = Settings()
SMALL = Settings(
    sizes=corpus.CorpusSizes(short_text=60, long_text=8, plain_text=2, short_video=12,
                             long_video=3, caption_video=4, digit_video=6,
                             long_sentences=(10, 30), long_frames=(8, 20)),
    vocab_size=400, vqgan_steps=10,
    stage1={"seq_len": 128, "train.steps": 4, "train.batch_size": 4, "train.warmup_steps": 1},
    stage2={"seq_len": 512, "train.steps": 2, "train.batch_size": 1, "train.warmup_steps": 1},
    context_length=512, depths="0,100", rounds=1, workers=1)


def run_step(name: str, command: list, done_dir: str, log) -> bool:
  """Runs `command` unless `done_dir` holds the marker of an earlier success; returns whether it
  ran. The child's output goes to the terminal; a failure raises naming the command."""
  marker = os.path.join(done_dir, DONE)
  if os.path.exists(marker):
    log(f"[quickstart] {name}: done before, skipped ({done_dir})")
    return False
  log(f"[quickstart] {name}: {' '.join(command)}")
  start = time.perf_counter()
  result = subprocess.run(command, cwd=ROOT, env=child_env())
  if result.returncode:
    raise RuntimeError(f"step {name!r} failed with exit code {result.returncode}: "
                       f"{' '.join(command)}")
  os.makedirs(done_dir, exist_ok=True)
  with open(marker, "w") as f:
    f.write(f"{time.perf_counter() - start:.1f}\n")
  log(f"[quickstart] {name}: {time.perf_counter() - start:.0f} s")
  return True


def child_env() -> dict:
  """This environment without a forced CPU device count (a test harness sets one): each script
  sizes the simulated devices from its own mesh."""
  env = dict(os.environ)
  launch.set_device_count(None, environ=env)
  return env


def script(name: str, *args) -> list:
  return [sys.executable, os.path.join(ROOT, "scripts", name), *map(str, args)]


def overrides(values: dict) -> list:
  return [f"--config.{k}={v}" for k, v in values.items()]


def eval_command(checkpoint: str, mode: str, output: str, values: str, s: Settings) -> list:
  """The needle evaluation at stage 2's length, on keys and values (the file `values`) training
  never saw."""
  return script("eval_needle.py", "--checkpoint", checkpoint, "--mode", mode, "--output", output,
                "--context-lengths", s.context_length, "--depths", s.depths, "--rounds", s.rounds,
                "--values", values, "--mesh", "1,1,1,1")


def steps(out: str, s: Settings) -> list:
  """(name, command, directory that marks it done) of every step, in order."""
  c = os.path.join(out, "corpus")
  tok, vq = os.path.join(out, "tokenizer"), os.path.join(out, "vqgan")
  data = {k: os.path.join(out, f"data_{k}") for k in ("short", "long")}
  work = {k: os.path.join(out, k) for k in ("stage1", "stage2", "control")}
  result = [
      ("tokenizer", script("train_tokenizer.py", "--manifest", f"{c}/short.jsonl", "--output",
                           f"{tok}/tokenizer.model", "--vocab-size", s.vocab_size), tok),
      ("vqgan", script("train_vqgan.py", "--manifest", f"{c}/short.jsonl", "--output", vq,
                       "--config", "tiny", "--steps", s.vqgan_steps, "--batch-size", 32,
                       "--learning-rate", 3e-3), vq)]
  for k in ("short", "long"):
    result.append((f"preprocess {k}", script(
        "preprocess.py", "--manifest", f"{c}/{k}.jsonl", "--output", data[k], "--tokenizer",
        f"{tok}/tokenizer.model", "--vqgan", vq, "--max-frames", 120, "--min-frames", 2,
        "--workers", s.workers), data[k]))
  train = lambda stage, data_dir, extra: script(
      "train.py", f"--config={CONFIG}:{stage}", f"--workdir={work[stage]}",
      f"--config.data.path={data_dir}", *overrides(extra))
  result += [
      ("train stage 1", train("stage1", data["short"], s.stage1), work["stage1"]),
      ("train stage 2", train("stage2", data["long"], dict(s.stage2, init_from=work["stage1"])),
       work["stage2"]),
      ("control (untrained)", train("control", data["long"], {"seq_len": s.context_length}),
       work["control"])]
  for model in ("stage2", "control"):
    for mode in ("text", "video"):
      output = os.path.join(out, "eval", f"{model}_{mode}")
      values = os.path.join(c, f"held_out_{mode}.txt")
      result.append((f"eval {mode} needle ({model})",
                     eval_command(work[model], mode, output, values, s), output))
  return result


# ------------------------------------------------------------------------------------ Summary

def accuracy(results_dir: str) -> float:
  with open(os.path.join(results_dir, "results.json")) as f:
    cells = json.load(f)
  if not cells:
    raise ValueError(f"{results_dir}/results.json has no evaluated cells")
  return sum(float(c["score"]) for c in cells) / len(cells)


def summarize(out: str, s: Settings, seconds: float) -> dict:
  """Writes OUT/summary.json and copies the heatmaps next to it; returns the summary."""
  summary = {"stage2_context_length": s.context_length, "seconds": round(seconds, 1),
             "depths": [float(d) for d in s.depths.split(",")], "rounds": s.rounds,
             "text_digits": corpus.TEXT_DIGITS, "video_digits": corpus.VIDEO_DIGITS,
             "chance": {mode: 1.0 / len(corpus.value_pool(True, digits)) for mode, digits in
                        (("text", corpus.TEXT_DIGITS), ("video", corpus.VIDEO_DIGITS))}}
  for model, prefix in (("stage2", ""), ("control", "control_")):
    for mode in ("text", "video"):
      results = os.path.join(out, "eval", f"{model}_{mode}")
      summary[f"{prefix}{mode}_needle_accuracy"] = accuracy(results)
      heatmap = os.path.join(out, f"{prefix}{mode}_needle_heatmap.png")
      shutil.copyfile(os.path.join(results, "heatmap.png"), heatmap)
      summary[f"{prefix}{mode}_needle_heatmap"] = os.path.basename(heatmap)
      summary[f"{prefix}{mode}_needle_results"] = os.path.relpath(
          os.path.join(results, "results.json"), out)
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def side_by_side(summary: dict) -> str:
  rows = [f"needle accuracy at {summary['stage2_context_length']} tokens (mean over depths "
          f"{summary['depths']}, {summary['rounds']} rounds)",
          f"{'':8}{'trained':>10}{'control':>10}"]
  for mode in ("text", "video"):
    rows.append(f"{mode:8}{summary[f'{mode}_needle_accuracy']:>10.2f}"
                f"{summary[f'control_{mode}_needle_accuracy']:>10.2f}")
  return "\n".join(rows)


def run_pipeline(out: str, s: Settings = FULL, clean: bool = False, log=print) -> dict:
  """Runs (or resumes) every step into `out`; returns the summary."""
  if clean and os.path.isdir(out):
    shutil.rmtree(out)
  os.makedirs(out, exist_ok=True)
  out = os.path.abspath(out)
  start = time.perf_counter()
  corpus_dir = os.path.join(out, "corpus")
  if os.path.exists(os.path.join(corpus_dir, DONE)):
    log(f"[quickstart] corpus: done before, skipped ({corpus_dir})")
  else:
    log(f"[quickstart] corpus: writing {corpus_dir}")
    corpus.write_corpus(corpus_dir, s.sizes)
    open(os.path.join(corpus_dir, DONE), "w").close()
  for name, command, done_dir in steps(out, s):
    run_step(name, command, done_dir, log)
  summary = summarize(out, s, time.perf_counter() - start)
  log(side_by_side(summary))
  log(f"[quickstart] summary: {os.path.join(out, 'summary.json')}")
  return summary
