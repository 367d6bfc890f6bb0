"""The end-to-end quickstart on the CPU: corpus -> tokenizers -> dataset -> two training stages ->
needle evaluations (trained vs untrained control) -> OUT/summary.json and heatmaps.

  python scripts/quickstart.py [--output quickstart_out] [--clean] [--small] [--seed 0]

Rerunning reuses finished steps; --clean starts over; --small is the slow test's tiny version.
"""
import argparse
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", default="quickstart_out", help="directory for everything")
  parser.add_argument("--clean", action="store_true", help="delete --output first")
  parser.add_argument("--small", action="store_true", help="tiny settings (tests): minutes")
  parser.add_argument("--seed", type=int, default=0,
                      help="corpus, VQGAN and training seed (another seed: another run to compare)")
  args = parser.parse_args(argv)
  import dataclasses

  from lwm.demo import pipeline
  settings = pipeline.SMALL if args.small else pipeline.FULL
  pipeline.run_pipeline(args.output, dataclasses.replace(settings, seed=args.seed),
                        clean=args.clean)
  return 0


if __name__ == "__main__":
  sys.exit(main())
