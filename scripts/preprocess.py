"""Tokenizes a JSONL manifest of videos and text into the `lwm_examples` TFDS dataset, on Dask.

  python scripts/preprocess.py --manifest corpus/manifest.jsonl --output out/ \
      --tokenizer tok.model --vqgan vq/ --max-frames 8 --workers 4
  python scripts/preprocess.py ... --scheduler-file /shared/scheduler.json --encoder-resources GPU=1

Without --scheduler/--scheduler-file it starts a local Dask cluster of --workers processes (on
127.0.0.1, no dashboard) and shows a progress bar. Writes out/lwm_examples/1.0.0/ (array_record, one
shard per chunk), out/summary.json, out/failures.jsonl, out/index.npz and out/vocab.json. Rerun the
same command after an interruption to finish the work. Exits 0 unless no line became an example.
"""
import argparse
import json
import os
import sys


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--manifest", required=True, help="JSONL, one example per line")
  parser.add_argument("--output", required=True, help="dataset directory to write (or resume)")
  parser.add_argument("--tokenizer", required=True,
                      help="a sentencepiece .model, a tokenizer.json or a Hugging Face directory")
  parser.add_argument("--vqgan", default=None, help="VQGAN directory (config.json + params.npz)")
  parser.add_argument("--max-frames", type=int, default=None,
                      help="frames per video, spread uniformly (with --fps: at most this many)")
  parser.add_argument("--fps", type=float, default=None, help="frames per second of video to keep")
  parser.add_argument("--min-frames", type=int, default=None,
                      help="fewer sampled frames fail the line "
                      "(default: --max-frames without --fps, else 1)")
  parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                      help="local cluster: worker processes (0: a thread in this process)")
  parser.add_argument("--scheduler", default=None, help="run on this Dask scheduler (tcp://HOST:PORT)")
  parser.add_argument("--scheduler-file", default=None,
                      help="run on the Dask scheduler described by this file (dask scheduler "
                      "--scheduler-file F)")
  parser.add_argument("--encoder-resources", default=None,
                      help="e.g. GPU=1: VQGAN encoding only on workers started with "
                      "--resources GPU=1")
  parser.add_argument("--chunk-size", type=int, default=64,
                      help="manifest lines per task, per TFDS shard and per resumable unit")
  parser.add_argument("--encode-batch", type=int, default=16, help="frames per VQGAN call")
  parser.add_argument("--line-timeout", type=float, default=600.0,
                      help="seconds one video may take to decode before its line fails as "
                      "'timeout'")
  parser.add_argument("--decoder", default="lwm.data.video:decode_video",
                      help="module:function(path, size, sampling) -> uint8 [n, size, size, 3] "
                      "frames, run in each worker's isolated decoder process")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  from lwm.data import dask_cluster
  from lwm.data.preprocess import PreprocessOptions, preprocess
  from lwm.data.video import FrameSampling
  if args.fps is None and args.max_frames is None:
    args.max_frames = 8
  options = PreprocessOptions(
      manifest=args.manifest, output=args.output, tokenizer=args.tokenizer, vqgan=args.vqgan,
      sampling=FrameSampling(fps=args.fps, max_frames=args.max_frames, min_frames=args.min_frames),
      chunk_size=args.chunk_size, encode_batch=args.encode_batch, line_timeout_s=args.line_timeout,
      decoder=args.decoder)
  resources = dask_cluster.parse_resources(args.encoder_resources)
  if resources and not (args.scheduler or args.scheduler_file):
    sys.exit("--encoder-resources needs --scheduler or --scheduler-file: the workers of the local "
             "cluster declare no resources")
  with dask_cluster.connect(args.workers, args.scheduler, args.scheduler_file) as client:
    summary = preprocess(options, client, encoder_resources=resources)
  print(json.dumps(summary, indent=1))
  if summary["failures"]:
    print(f"{summary['failures']} lines failed; reasons in {args.output}/failures.jsonl",
          file=sys.stderr)
  if summary["examples"] == 0:
    print("no line became an example", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
