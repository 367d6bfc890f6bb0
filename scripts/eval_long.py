"""Long-context evaluation: RULER as RULER builds and scores it (--suite ruler), or lwm's own
tasks (RULER-style text tasks on a depth grid, video retrieval, ordering and counting).

  python scripts/eval_long.py --suite ruler --checkpoint workdirs/stage2 \
      --context-lengths 4k,8k --output out/ruler [--samples 500] [--seed 42] \
      [--essays paul_graham/] [--squad dev-v2.0.json] [--hotpotqa hotpot_dev_distractor_v1.json] \
      [--chat-template none|lwm] [--tasks niah_single_1,vt] [--batch-size 4]

RULER's 13 tasks with its prompts, metrics (0-100) and tokens_to_generate; writes
OUT/ruler/<length>/<task>.jsonl (RULER's prediction fields: its evaluate.py scores them),
OUT/ruler/<length>/summary.csv, OUT/ruler/summary.csv (tasks x lengths), summary.json,
tasks.png; prints the table, the 13-task average and effective length, or PARTIAL and why.

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
  launch.add_model_flags(p)
  p.add_argument("--suite", choices=["lwm", "ruler"], default="lwm",
                 help="ruler: RULER's 13 tasks as RULER builds and scores them; lwm: --tasks")
  p.add_argument("--tasks", default=None,
                 help="comma-separated, e.g. niah_single,vt,video_order (ruler: a subset of its "
                      "13, then the average is partial)")
  p.add_argument("--context-lengths", required=True, help="tokens, e.g. 1024,4096 or 4k,128k")
  p.add_argument("--output", required=True, help="directory for results.json and the plots")
  p.add_argument("--depths", default="0,50,100", help="depth percents of the first needle")
  p.add_argument("--samples", type=int, default=None,
                 help="samples per task and length (ruler: 500, RULER's) or per depth (lwm: 1)")
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
  launch.add_chat_template_argument(p)
  p.add_argument("--seed", type=int, default=None,
                 help="default: 42 (RULER's) for ruler, 0 for lwm")
  ruler = p.add_argument_group("--suite ruler")
  ruler.add_argument("--essays", default=None,
                     help="Paul Graham's essays: a folder of .txt files or RULER's "
                          "PaulGrahamEssays.json (without: a synthetic filler, not comparable)")
  ruler.add_argument("--squad", default=None, help="SQuAD v2.0 dev JSON (qa_1)")
  ruler.add_argument("--hotpotqa", default=None, help="HotpotQA distractor dev JSON (qa_2)")
  ruler.add_argument("--cwe-words", default=None,
                     help="cwe: words, one a line, for lengths that need more than wonderwords'")
  ruler.add_argument("--batch-size", type=int, default=1, help="prompts generated together")
  args = p.parse_args(argv)
  # A flag of the other suite would be ignored: refused instead, by name.
  other = RULER_ONLY if args.suite == "lwm" else LWM_ONLY
  for name in other:
    if getattr(args, name) != p.get_default(name):
      p.error(f"--{name.replace('_', '-')} is not used by --suite {args.suite}; it belongs to "
              f"--suite {'ruler' if args.suite == 'lwm' else 'lwm'}")
  return args


LWM_ONLY = ("depths", "scoring", "choices", "haystack", "video_haystack", "values", "text_digits",
            "video_digits", "needles", "max_count", "threshold")
RULER_ONLY = ("essays", "squad", "hotpotqa", "cwe_words", "batch_size")


def run_ruler(args, lengths):
  from lwm import model_dir
  from lwm.eval import ruler_suite
  tasks = ruler_suite.TASK_NAMES
  if args.tasks:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  loaded = model_dir.load_for_command(args)
  samples = 500 if args.samples is None else args.samples
  print(f"[eval_long] RULER, model {loaded.source}, lengths {lengths}, {samples} samples, "
        f"{len(tasks)} tasks, chat template {args.chat_template}", flush=True)
  summary = ruler_suite.run_ruler(
      loaded, output=args.output, lengths=lengths, samples=samples, tasks=tasks,
      seed=42 if args.seed is None else args.seed, chat_template=args.chat_template,
      essays=args.essays, squad=args.squad, hotpotqa=args.hotpotqa, cwe_words=args.cwe_words,
      batch_size=args.batch_size)
  print(summary["table"])
  print(f"predictions and summary.csv: {summary['output']}")


def main(argv=None):
  args = parse_args(argv)
  launch.setup_devices_for_mesh(args.mesh)
  from lwm import model_dir
  from lwm.eval import grid, long_eval, needle
  lengths = grid.parse_list(args.context_lengths)
  if args.suite == "ruler":
    return run_ruler(args, lengths)
  if not args.tasks:
    raise SystemExit("--suite lwm needs --tasks, e.g. niah_single,vt,video_order")
  tasks = long_eval.parse_tasks(args.tasks)
  args.samples = 1 if args.samples is None else args.samples
  args.seed = 0 if args.seed is None else args.seed
  depths = [float(d) for d in args.depths.split(",")]
  loaded = model_dir.load_for_command(args)
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
