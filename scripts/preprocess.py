"""Tokenizes a JSONL manifest of videos and text into the `lwm_examples` TFDS dataset.

  python scripts/preprocess.py --manifest corpus/manifest.jsonl --output out/ \
      --tokenizer tok.model --vqgan vq/ --max-frames 8 --workers 4

Writes out/lwm_examples/1.0.0/ (array_record), out/summary.json, out/failures.jsonl,
out/index.npz and out/vocab.json. Rerun the same command after an interruption to finish the work.
Exits 0 unless no line became an example.
"""
import argparse
import json
import sys


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--manifest", required=True, help="JSONL, one example per line")
  parser.add_argument("--output", required=True, help="dataset directory to write (or resume)")
  parser.add_argument("--tokenizer", required=True, help="sentencepiece .model file")
  parser.add_argument("--vqgan", default=None, help="VQGAN directory (config.json + params.npz)")
  parser.add_argument("--max-frames", type=int, default=None,
                      help="frames per video, spread uniformly (with --fps: at most this many)")
  parser.add_argument("--fps", type=float, default=None, help="frames per second of video to keep")
  parser.add_argument("--min-frames", type=int, default=None,
                      help="fewer sampled frames fail the line "
                      "(default: --max-frames without --fps, else 1)")
  parser.add_argument("--workers", type=int, default=0, help="worker processes (0: this process)")
  parser.add_argument("--chunk-size", type=int, default=64, help="manifest lines per resumable unit")
  parser.add_argument("--encode-batch", type=int, default=16, help="frames per VQGAN call")
  parser.add_argument("--line-timeout", type=float, default=600.0,
                      help="with --workers: seconds a line may take before it fails as 'timeout'")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  from lwm.data.preprocess import PreprocessOptions, preprocess
  from lwm.data.video import FrameSampling
  if args.fps is None and args.max_frames is None:
    args.max_frames = 8
  options = PreprocessOptions(
      manifest=args.manifest, output=args.output, tokenizer=args.tokenizer, vqgan=args.vqgan,
      sampling=FrameSampling(fps=args.fps, max_frames=args.max_frames, min_frames=args.min_frames),
      chunk_size=args.chunk_size, encode_batch=args.encode_batch, line_timeout_s=args.line_timeout)
  summary = preprocess(options, workers=args.workers)
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
