"""Needle in a haystack on long text or long video: a depth x context-length grid, resumable.

  python scripts/eval_needle.py --checkpoint workdirs/stage2 --mode text \
      --context-lengths 1024,4096 --depths 0,25,50,75,100 --output out/needle [--rounds 3] \
      [--needles 4 --retrieve 2] [--haystack essays.txt]
  python scripts/eval_needle.py --checkpoint workdirs/vision --mode video \
      --context-lengths 8k,32k --depth-intervals 5 --output out/video_needle \
      [--haystack long.mp4 | --haystack manifest.jsonl]

V-NIAH as LongVA defines it (needle images with a question and answer at depths 0, 0.2 ... 1 of
a haystack video sampled to a grid of frame counts; teacher-forced: every answer token argmax):

  python scripts/eval_needle.py --protocol vniah --checkpoint workdirs/vision --output out/vniah \
      [--needle-set needles.jsonl] [--haystack long.mp4] [--min-frames 20 --max-frames 300 \
      --frame-interval 20] [--depth-interval 0.2] [--chat-template none|lwm]

Without --needle-set / --haystack it uses the quickstart corpus's default set (5 frames showing
held-out numbers, asked in the quickstart's format) and a haystack of frames without digits.
Writes OUT/results.json, OUT/all_accuracies.json, OUT/avg_accuracy.txt, OUT/heatmap.png.

--checkpoint is a training workdir (its latest checkpoint; the tokenizer and VQGAN come from the
run's dataset vocab.json unless --tokenizer/--vqgan are given) or a Hugging Face LLaMA directory.
--chat-template auto (default) wraps the prompt in the model's own chat template when it has one;
answers get 128 new tokens (RULER's NIAH budget) unless --max-new-tokens says otherwise.
Writes OUT/results.json (one entry per cell, reruns skip finished cells), OUT/heatmap.png and prints
the depth x length table. Without accelerators, the CPU is split into as many devices as --mesh
needs.
"""
import argparse
import sys

from lwm import launch


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  launch.add_model_flags(p)
  p.add_argument("--protocol", choices=["niah", "vniah"], default="niah",
                 help="vniah: LongVA's V-NIAH (see above); niah: lwm's grid (--mode)")
  p.add_argument("--mode", choices=["text", "video"], default="text")
  p.add_argument("--output", required=True, help="directory for results.json and heatmap.png")
  p.add_argument("--context-lengths", default=None, help="tokens, e.g. 1024,4096 or 1k,32k,1m")
  p.add_argument("--context-lengths-min", type=int, default=1024)
  p.add_argument("--context-lengths-max", type=int, default=None)
  p.add_argument("--context-lengths-num-intervals", type=int, default=5)
  p.add_argument("--depths", default=None, help="depth percents, e.g. 0,25,50,75,100")
  p.add_argument("--depth-percent-min", type=float, default=0)
  p.add_argument("--depth-percent-max", type=float, default=100)
  p.add_argument("--depth-intervals", type=int, default=5, help="number of depths (with min/max)")
  p.add_argument("--rounds", type=int, default=1, help="needles drawn anew in each round")
  p.add_argument("--needles", type=int, default=1, help="text: needles inserted (N)")
  p.add_argument("--retrieve", type=int, default=1, help="text: needles asked for (R <= N)")
  p.add_argument("--haystack", default=None,
                 help="text: a .txt file or a .jsonl with 'text' fields; video: a video file or a "
                      "manifest .jsonl whose clips are concatenated; default: built-in filler")
  p.add_argument("--digits", type=int, default=None, help="digits of a value (text 7, video 3)")
  p.add_argument("--values", default=None,
                 help="file of needle values, one per line (e.g. values training never saw); "
                      "default: random --digits-digit numbers")
  p.add_argument("--split", default="eval", choices=["eval", "train", "all"],
                 help="text: which needle keys to draw (eval keys are never used for training)")
  p.add_argument("--needle-image", default=None, help="video: an image to hide instead of a number")
  p.add_argument("--needle-answer", default=None, help="video: what --needle-image shows")
  p.add_argument("--needle-frames", type=int, default=1, help="video: frames the needle lasts")
  launch.add_chat_template_argument(p)
  p.add_argument("--max-new-tokens", type=int, default=None,
                 help="default 128, RULER's NIAH budget (a chat model may restate the question)")
  p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  v = p.add_argument_group("--protocol vniah")
  v.add_argument("--needle-set", default=None,
                 help='JSONL of {"image", "question", "answer"} (default: the quickstart set)')
  v.add_argument("--min-frames", type=int, default=20)
  v.add_argument("--max-frames", type=int, default=300)
  v.add_argument("--frame-interval", type=int, default=20)
  v.add_argument("--depth-interval", type=float, default=0.2)
  return p.parse_args(argv)


def run_vniah(args):
  """V-NIAH: the needles and haystack (given, or the quickstart corpus's defaults), the grid."""
  from lwm import model_dir, vqgan
  from lwm.demo import corpus
  from lwm.eval import chat_format, video_needle, vniah
  counts = vniah.frame_counts(args.min_frames, args.max_frames, args.frame_interval)
  depths = vniah.depth_grid(args.depth_interval)
  loaded = model_dir.load_for_command(args)
  if not loaded.vqgan_dir:
    sys.exit("V-NIAH needs the VQGAN the model was trained with: pass --vqgan DIR")
  size = vqgan.load_config(loaded.vqgan_dir).resolution
  needles = args.needle_set or corpus.vniah_needles(f"{args.output}/default_needles", size=size)
  if args.haystack:
    video, manifest = (None, args.haystack) if args.haystack.endswith(".jsonl") else (
        args.haystack, None)
    frames = video_needle.haystack_frames(counts[-1], size, video=video, manifest=manifest)
  else:
    frames = corpus.vniah_haystack(counts[-1], size, seed=args.seed)
  print(f"[eval_needle] V-NIAH, model {loaded.source}, frames {counts}, depths {depths}, "
        f"needles {needles}", flush=True)
  format_prompt = chat_format.prompt_formatter(args.chat_template, loaded.tokenizer)
  summary = vniah.run_vniah(loaded, output=args.output, haystack=frames,
                            needles=vniah.read_needles(needles), frame_counts=counts,
                            depths=depths, format_prompt=format_prompt)
  print(summary["table"])
  print(f"average accuracy {summary['average']:.4f}\nresults: {summary['results']}\n"
        f"heatmap: {summary['heatmap']}")


def grids(args):
  from lwm.eval import grid
  if args.context_lengths:
    lengths = grid.parse_list(args.context_lengths)
  elif args.context_lengths_max:
    lengths = grid.linear_grid(args.context_lengths_min, args.context_lengths_max,
                               args.context_lengths_num_intervals)
  else:
    sys.exit("give --context-lengths 1024,4096 or --context-lengths-max (with -min and "
             "-num-intervals)")
  if args.depths:
    depths = [float(d) for d in args.depths.split(",")]
  else:
    depths = [float(d) for d in grid.linear_grid(args.depth_percent_min, args.depth_percent_max,
                                                  args.depth_intervals)]
  return lengths, depths


def main(argv=None):
  args = parse_args(argv)
  launch.setup_devices_for_mesh(args.mesh)
  if args.protocol == "vniah":
    return run_vniah(args)
  from lwm import model_dir
  from lwm.eval import needle, video_needle
  lengths, depths = grids(args)
  loaded = model_dir.load_for_command(args)
  print(f"[eval_needle] {args.mode} needle, model {loaded.source}, mesh "
        f"{dict(loaded.model.get_mesh().shape)}, lengths {lengths}, depths {depths}", flush=True)
  values = needle.read_values(args.values) if args.values else None
  common = dict(output=args.output, context_lengths=lengths, depths=depths, rounds=args.rounds,
                values=values, seed=args.seed, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_p=args.top_p,
                chat_template=args.chat_template)
  if args.mode == "text":
    summary = needle.run_text_needle(loaded, needles=args.needles, retrieve=args.retrieve,
                                     haystack=args.haystack, digits=args.digits or 7,
                                     split=args.split, **common)
  else:
    video, manifest = (None, args.haystack) if (args.haystack or "").endswith(".jsonl") else (
        args.haystack, None)
    summary = video_needle.run_video_needle(
        loaded, video=video, manifest=manifest, needle_image=args.needle_image,
        needle_answer=args.needle_answer, needle_frames=args.needle_frames,
        digits=args.digits or 3, **common)
  print(summary["table"])
  print(f"results: {summary['results']}\nheatmap: {summary['heatmap']}")


if __name__ == "__main__":
  main()
