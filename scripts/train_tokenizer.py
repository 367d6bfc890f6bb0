"""Trains a text tokenizer on a manifest's text, with <vision>, </vision>, <eof>, <eov> reserved
and digits split.

  python scripts/train_tokenizer.py --manifest corpus/manifest.jsonl --output tok.model \
      --vocab-size 8000
  python scripts/train_tokenizer.py --format hf --manifest corpus/manifest.jsonl --output tok/ \
      --vocab-size 8000

--format sentencepiece (default) writes a BPE `.model`; --format hf a byte-level BPE tokenizer.json
(with tokenizer_config.json) into the directory --output, the kind Llama 3 and Qwen2 ship. Either is
what --tokenizer takes. An existing tokenizer (LLaMA-2's tokenizer.model, a Hugging Face model
directory) needs no training: pass it to --tokenizer directly.
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
  parser.add_argument("--output", required=True,
                      help="the .model file to write (sentencepiece), or the directory (hf)")
  parser.add_argument("--vocab-size", type=int, default=8000)
  parser.add_argument("--format", choices=["sentencepiece", "hf"], default="sentencepiece")
  args = parser.parse_args(argv)
  from lwm.data.text_tokenizer import load_tokenizer, train_tokenizer
  path = train_tokenizer(manifest_texts(args.manifest), args.output, args.vocab_size, args.format)
  tok = load_tokenizer(path)
  print(f"wrote {path}: {len(tok)} ids, "
        f"<vision>={tok.vision_start} </vision>={tok.vision_end}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
