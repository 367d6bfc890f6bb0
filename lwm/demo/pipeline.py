"""The quickstart pipeline: every step is the command a user runs, as a subprocess, in order.

  summary = run_pipeline("quickstart_out", FULL)   # or SMALL (the slow test)

Steps: corpus -> text tokenizer -> VQGAN (on the number-heavy vqgan.jsonl) -> preprocess (stage 1
and stage 2 data) -> train stage 1 -> train stage 2 (from stage 1, sp=8 ring attention) -> the
untrained control -> text and video needle evaluations of both at several context lengths, and
eval_long's niah_multivalue and video_order -> the generate stage (stage 2 fine-tuned on text ->
video pairs of the training numbers) and eval_generation of it and the control on held-out numbers
-> OUT/summary.json, the heatmaps and the generated strips in OUT/. A step whose output exists is
skipped, so a rerun reuses finished work (an older run gains only the steps it lacks);
`clean=True` starts over.
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
GENERATION_CORPUS = "corpus_generate"  # generate.jsonl and its clips (a step of its own)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the full command and the slow test change; the rest lives in configs/quickstart.py."""
  sizes: corpus.CorpusSizes = corpus.CorpusSizes()
  vocab_size: int = 550
  vqgan_steps: int = 2000    # on vqgan.jsonl (number-only videos and shapes): digits read better
  stage1: dict = dataclasses.field(default_factory=dict)   # --config.KEY=VALUE overrides
  stage2: dict = dataclasses.field(default_factory=dict)
  generate: dict = dataclasses.field(default_factory=dict)
  context_length: int = 2048  # stage 2's seq_len: the longest evaluated length
  context_lengths: str = "512,1024,2048"  # the heatmaps' columns
  depths: str = "0,25,50,75,100"
  rounds: int = 8
  long_samples: int = 4  # eval_long samples per length and depth
  workers: int = 2
  seed: int = 0  # of the corpus, the VQGAN and both training stages (runs to see the spread)


FULL = Settings()
SMALL = Settings(
    sizes=corpus.CorpusSizes(short_text=60, long_text=8, plain_text=2, short_video=12,
                             long_video=3, caption_video=4, digit_video=6, short_multivalue=20,
                             long_multivalue=4, short_video_order=6, long_video_order=2,
                             vqgan_digit_video=4, long_sentences=corpus.Span(10, 30, uniform=True),
                             long_frames=corpus.Span(8, 20, uniform=True)),
    vocab_size=400, vqgan_steps=10,
    stage1={"seq_len": 128, "train.steps": 4, "train.batch_size": 4, "train.warmup_steps": 1},
    stage2={"seq_len": 512, "train.steps": 2, "train.batch_size": 1, "train.warmup_steps": 1},
    generate={"seq_len": 128, "train.steps": 2, "train.batch_size": 2, "train.warmup_steps": 1},
    context_length=512, context_lengths="384,512", depths="0,100", rounds=1, long_samples=1,
    workers=1)


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


def write_once(name: str, directory: str, write, log) -> None:
  """Calls `write()` (in this process) unless `directory` holds the marker of an earlier success."""
  if os.path.exists(os.path.join(directory, DONE)):
    log(f"[quickstart] {name}: done before, skipped ({directory})")
    return
  log(f"[quickstart] {name}: writing {directory}")
  write()
  open(os.path.join(directory, DONE), "w").close()


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
  """The needle evaluation up to stage 2's length, on keys and values (the file `values`) training
  never saw."""
  return script("eval_needle.py", "--checkpoint", checkpoint, "--mode", mode, "--output", output,
                "--context-lengths", s.context_lengths, "--depths", s.depths, "--rounds",
                s.rounds, "--values", values, "--mesh", "sp=1")


# The long-context tasks the corpus trains: (task, held-out pool, eval_long's format flags).
LONG_TASKS = {
    "niah_multivalue": ("text", ["--text-digits", corpus.TEXT_DIGITS]),
    "video_order": ("video", ["--video-digits", corpus.VIDEO_DIGITS, "--needles",
                              corpus.ORDER_NEEDLES]),
}


def long_eval_command(checkpoint: str, task: str, output: str, values: str, s: Settings) -> list:
  """eval_long.py on one task the corpus trains, with held-out values."""
  return script("eval_long.py", "--checkpoint", checkpoint, "--tasks", task, "--output", output,
                "--context-lengths", s.context_lengths, "--depths", s.depths, "--samples",
                s.long_samples, "--values", values, "--mesh", "sp=1", *LONG_TASKS[task][1])


def steps(out: str, s: Settings) -> list:
  """(name, command, directory that marks it done) of every step, in order."""
  c = os.path.join(out, "corpus")
  tok, vq = os.path.join(out, "tokenizer"), os.path.join(out, "vqgan")
  data = {k: os.path.join(out, f"data_{k}") for k in ("short", "long", "generate")}
  work = {k: os.path.join(out, k) for k in ("stage1", "stage2", "control", "generate")}
  result = [
      ("tokenizer", script("train_tokenizer.py", "--manifest", f"{c}/short.jsonl", "--output",
                           f"{tok}/tokenizer.model", "--vocab-size", s.vocab_size), tok),
      ("vqgan", script("train_vqgan.py", "--manifest", f"{c}/vqgan.jsonl", "--output", vq,
                       "--config", "tiny", "--steps", s.vqgan_steps, "--batch-size", 32,
                       "--learning-rate", 3e-3, "--seed", s.seed), vq)]
  # (manifest, fewest frames a video may have): generation's images are single frames
  manifests = {"short": (f"{c}/short.jsonl", 2), "long": (f"{c}/long.jsonl", 2),
               "generate": (os.path.join(out, GENERATION_CORPUS, "generate.jsonl"), 1)}
  for k, (manifest, min_frames) in manifests.items():
    result.append((f"preprocess {k}", script(
        "preprocess.py", "--manifest", manifest, "--output", data[k], "--tokenizer",
        f"{tok}/tokenizer.model", "--vqgan", vq, "--max-frames", 120, "--min-frames",
        min_frames, "--workers", s.workers), data[k]))
  train = lambda stage, data_dir, extra: script(
      "train.py", f"--config={CONFIG}:{stage}", f"--workdir={work[stage]}",
      f"--config.data.path={data_dir}", f"--config.seed={s.seed}", *overrides(extra))
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
    for task, (mode, _) in LONG_TASKS.items():
      output = os.path.join(out, "eval", f"{model}_{task}")
      values = os.path.join(c, f"held_out_{mode}.txt")
      result.append((f"eval {task} ({model})",
                     long_eval_command(work[model], task, output, values, s), output))
  result.append(("train generate", train("generate", data["generate"],
                                         dict(s.generate, init_from=work["stage2"])),
                 work["generate"]))
  for model in ("generate", "control"):
    output = os.path.join(out, "eval", f"{model}_generation")
    result.append((f"eval generation ({model})", script(
        "eval_generation.py", "--checkpoint", work[model], "--values",
        os.path.join(c, "held_out_video.txt"), "--output", output, "--frames",
        corpus.GENERATION_FRAMES, "--mesh", "sp=1"), output))
  return result


# ------------------------------------------------------------------------------------ Summary

def accuracy_by_length(results_dir: str) -> dict:
  """{context_length: mean score} of an evaluation's results.json."""
  with open(os.path.join(results_dir, "results.json")) as f:
    cells = json.load(f)
  if not cells:
    raise ValueError(f"{results_dir}/results.json has no evaluated cells")
  by = {}
  for c in cells:
    by.setdefault(int(c["context_length"]), []).append(float(c["score"]))
  return {n: sum(v) / len(v) for n, v in sorted(by.items())}


def _report(summary: dict, out: str, name: str, results: str, heatmap: str, length: int) -> None:
  """Adds NAME_accuracy (at `length`), NAME_accuracy_by_length, NAME_heatmap, NAME_results."""
  by_length = accuracy_by_length(results)
  summary[f"{name}_accuracy"] = by_length[length]
  summary[f"{name}_accuracy_by_length"] = by_length
  shutil.copyfile(heatmap, os.path.join(out, f"{name}_heatmap.png"))
  summary[f"{name}_heatmap"] = f"{name}_heatmap.png"
  summary[f"{name}_results"] = os.path.relpath(os.path.join(results, "results.json"), out)


def summarize(out: str, s: Settings, seconds: float) -> dict:
  """Writes OUT/summary.json and copies the heatmaps next to it; returns the summary. Accuracies
  are at stage 2's length; *_by_length has every evaluated length."""
  summary = {"stage2_context_length": s.context_length, "seconds": round(seconds, 1),
             "seed": s.seed,
             "context_lengths": [int(n) for n in s.context_lengths.split(",")],
             "depths": [float(d) for d in s.depths.split(",")], "rounds": s.rounds,
             "long_samples": s.long_samples, "long_tasks": list(LONG_TASKS),
             "text_digits": corpus.TEXT_DIGITS, "video_digits": corpus.VIDEO_DIGITS,
             "chance": {mode: 1.0 / len(corpus.value_pool(True, digits)) for mode, digits in
                        (("text", corpus.TEXT_DIGITS), ("video", corpus.VIDEO_DIGITS))}}
  for model, prefix in (("stage2", ""), ("control", "control_")):
    for mode in ("text", "video"):
      results = os.path.join(out, "eval", f"{model}_{mode}")
      _report(summary, out, f"{prefix}{mode}_needle", results,
              os.path.join(results, "heatmap.png"), s.context_length)
    for task in LONG_TASKS:
      results = os.path.join(out, "eval", f"{model}_{task}")
      _report(summary, out, f"{prefix}{task}", results,
              os.path.join(results, f"heatmap_{task}.png"), s.context_length)
  for model, prefix in (("generate", ""), ("control", "control_")):
    results = os.path.join(out, "eval", f"{model}_generation")
    with open(os.path.join(results, "results.json")) as f:
      generated = json.load(f)
    summary[f"{prefix}generation_accuracy"] = generated["score"]
    shutil.copyfile(os.path.join(results, "strip.png"),
                    os.path.join(out, f"{prefix}generation_strip.png"))
    summary[f"{prefix}generation_strip"] = f"{prefix}generation_strip.png"
  summary["chance"]["generation"] = generated["chance"]  # the same labels for both models
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def side_by_side(summary: dict) -> str:
  rows = [f"accuracy at {summary['stage2_context_length']} tokens (mean over depths "
          f"{summary['depths']}; needles {summary['rounds']} rounds, long tasks "
          f"{summary['long_samples']} samples)",
          f"{'':16}{'trained':>10}{'control':>10}"]
  for name in ("text_needle", "video_needle", *summary["long_tasks"], "generation"):
    rows.append(f"{name:16}{summary[f'{name}_accuracy']:>10.2f}"
                f"{summary[f'control_{name}_accuracy']:>10.2f}")
  rows.append("generation: held-out numbers whose generated video is nearest their rendering "
              f"(chance {summary['chance']['generation']:.3f})")
  return "\n".join(rows)


def run_pipeline(out: str, s: Settings = FULL, clean: bool = False, log=print) -> dict:
  """Runs (or resumes) every step into `out`; returns the summary."""
  if clean and os.path.isdir(out):
    shutil.rmtree(out)
  os.makedirs(out, exist_ok=True)
  out = os.path.abspath(out)
  start = time.perf_counter()
  corpus_dir, generation_dir = os.path.join(out, "corpus"), os.path.join(out, GENERATION_CORPUS)
  write_once("corpus", corpus_dir, lambda: corpus.write_corpus(corpus_dir, s.sizes, seed=s.seed),
             log)
  write_once("generation corpus", generation_dir,
             lambda: corpus.write_generation_corpus(generation_dir), log)
  for name, command, done_dir in steps(out, s):
    run_step(name, command, done_dir, log)
  summary = summarize(out, s, time.perf_counter() - start)
  log(side_by_side(summary))
  log(f"[quickstart] summary: {os.path.join(out, 'summary.json')}")
  return summary
