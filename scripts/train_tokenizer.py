"""Trains a sentencepiece text tokenizer on a manifest's text, with <vision>, </vision>, <eof>,
<eov> reserved.

  python scripts/train_tokenizer.py --manifest corpus/manifest.jsonl --output tok.model \
      --vocab-size 8000

An existing model (e.g. LLaMA-2's tokenizer.model) needs no training: pass it to --tokenizer
directly.
"""
import argparse
import json
import sys


def manifest_texts(path: str):
  """The 'prompt' and 'text' of every line that has them; other lines are left to preprocessing to
  report."""
  with open(path, "rb") as f:
    for raw in f:
      try:
        record = json.loads(raw)
      except ValueError:
        continue
      if not isinstance(record, dict):
        continue
      for field in ("prompt", "text"):
        if isinstance(record.get(field), str):
          yield record[field]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--manifest", required=True)
  parser.add_argument("--output", required=True, help="path of the .model file to write")
  parser.add_argument("--vocab-size", type=int, default=8000)
  args = parser.parse_args(argv)
  from lwm.data.text_tokenizer import load_tokenizer, train_tokenizer
  path = train_tokenizer(manifest_texts(args.manifest), args.output, args.vocab_size)
  tok = load_tokenizer(path)
  print(f"wrote {path}: {tok.vocab_size} pieces, "
        f"<vision>={tok.vision_start} </vision>={tok.vision_end}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
