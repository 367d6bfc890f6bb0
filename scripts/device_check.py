"""One script that measures what the accelerator path needs, rows in `lwm.bench.device_check`.

  python scripts/device_check.py --output OUT.json          # on a GPU or TPU host (< 8 minutes)
  python scripts/device_check.py --output OUT.json --smoke  # the same rows, tiny, on the CPU

Writes OUT.json ({"device", "settings", "seconds", "rows"}: every row has "figures" or
"missing": why) and OUT.md (the same rows as a markdown table), and prints the rows as they come.
"""
import argparse
import json
import os


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", required=True, help="the JSON file; the table goes beside it "
                      "as .md")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny shapes on 2 simulated CPU devices, Pallas in interpret mode")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.smoke:  # before JAX starts: it reads these once
    from lwm import launch
    launch.set_device_count(2, replace=True)
    os.environ["JAX_PLATFORMS"] = "cpu"
  from lwm.bench import device_check
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  report = device_check.run_all(device_check.SMOKE if args.smoke else device_check.DEVICE)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=1, default=str)
  table = os.path.splitext(args.output)[0] + ".md"
  with open(table, "w") as f:
    f.write(device_check.markdown(report))
  print(f"wrote {args.output} and {table} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
