"""Long-context evaluation beyond one needle: RULER's text tasks and video retrieval, ordering and
counting, over context lengths and depths, with RULER's effective length.

  python scripts/eval_long.py --checkpoint workdirs/stage2 \
      --tasks niah_single,niah_multikey,niah_multivalue,niah_multiquery,vt,cwe,fwe,\
video_retrieve,video_order,video_count \
      --context-lengths 4k,8k,16k --output out/long [--samples 4] [--depths 0,50,100] \
      [--scoring generate|teacher_forced] [--choices 4] [--haystack essays.txt]

--checkpoint is a training workdir or a Hugging Face LLaMA directory (video tasks need --vqgan
there). Writes OUT/results.json (one entry per sample; a rerun skips finished ones),
OUT/summary.json, OUT/tasks.png, OUT/heatmap_<task>.png, and prints the task x length table
and the effective length.
"""
import argparse

from lwm import launch


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="training workdir or Hugging Face directory")
  p.add_argument("--tasks", required=True, help="comma-separated, e.g. niah_single,vt,video_order")
  p.add_argument("--context-lengths", required=True, help="tokens, e.g. 1024,4096 or 4k,128k")
  p.add_argument("--output", required=True, help="directory for results.json and the plots")
  p.add_argument("--depths", default="0,50,100", help="depth percents of the first needle")
  p.add_argument("--samples", type=int, default=1, help="samples per task, length and depth")
  p.add_argument("--scoring", choices=["generate", "teacher_forced"], default="generate")
  p.add_argument("--choices", type=int, default=0,
                 help="video: ask multiple choice with this many options, scored circularly")
  p.add_argument("--haystack", default=None, help="NIAH essay haystack: .txt or .jsonl ('text')")
  p.add_argument("--video-haystack", default=None, help="a video file or a manifest .jsonl")
  p.add_argument("--values", default=None, help="file of needle values, one per line")
  p.add_argument("--text-digits", type=int, default=7, help="digits of a NIAH value")
  p.add_argument("--video-digits", type=int, default=3, help="digits shown on a needle frame")
  p.add_argument("--needles", type=int, default=3, help="video_order: needle frames")
  p.add_argument("--max-count", type=int, default=4, help="video_count: most repeats")
  p.add_argument("--threshold", type=float, default=0.856, help="effective-length threshold")
  p.add_argument("--tokenizer", default=None,
                 help=".model, tokenizer.json or a Hugging Face directory (default: the run's)")
  launch.add_chat_template_argument(p)
  p.add_argument("--vqgan", default=None, help="VQGAN directory (default: the run's)")
  p.add_argument("--mesh", default=None,
                 help="sp=8,fsdp=2 or dp,fsdp,tp,sp (default: all devices on sp)")
  p.add_argument("--dtype", default=None, help="activation dtype (default: the stage's)")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  launch.setup_devices_for_mesh(args.mesh)
  from lwm.eval import grid, long_eval, needle
  tasks = long_eval.parse_tasks(args.tasks)
  lengths = grid.parse_list(args.context_lengths)
  depths = [float(d) for d in args.depths.split(",")]
  loaded = launch.load_model_for_command(args)
  print(f"[eval_long] {len(tasks)} tasks, model {loaded.source}, lengths {lengths}, depths "
        f"{depths}, {args.samples} samples, scoring {args.scoring}", flush=True)
  haystack = args.video_haystack or ""
  summary = long_eval.run_long_eval(
      loaded, output=args.output, tasks=tasks, context_lengths=lengths, depths=depths,
      samples=args.samples, scoring_mode=args.scoring, haystack=args.haystack,
      video=None if haystack.endswith(".jsonl") else args.video_haystack,
      manifest=args.video_haystack if haystack.endswith(".jsonl") else None,
      values=needle.read_values(args.values) if args.values else None,
      text_digits=args.text_digits, video_digits=args.video_digits, needles=args.needles,
      max_count=args.max_count, choices=args.choices, seed=args.seed, threshold=args.threshold,
      chat_template=args.chat_template)
  print(summary["table"])
  print(f"results: {summary['results']}\nplot: {summary['plot']}")


if __name__ == "__main__":
  main()
