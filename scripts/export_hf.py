"""Exports a model's text part as a Hugging Face directory that transformers loads.

  python scripts/export_hf.py --checkpoint workdirs/text_32k --output exported/text_32k
  python scripts/export_hf.py --checkpoint checkpoints/Qwen2.5-7B --output exported/qwen \
      --dtype bfloat16

--checkpoint is what evaluation takes: a training workdir, a model directory (scripts/import_lwm.py)
or a Hugging Face directory. The family (llama, qwen2, mistral), biases, head_dim, RoPE and tied
head are written as lwm.model.hf_config.export_family says; the vision embedding and head are not
exported. The tokenizer files (lwm.model.hf.TOKENIZER_FILES) are copied from --tokenizer, else
from the model's own tokenizer, with the bos/eos ids in config.json and generation_config.json.
"""
import argparse


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="workdir, model directory or HF directory")
  p.add_argument("--output", required=True, help="the Hugging Face directory to write")
  p.add_argument("--tokenizer", default=None,
                 help="a directory of tokenizer files, or a tokenizer.model / tokenizer.json "
                      "(default: the model's own)")
  p.add_argument("--dtype", default=None, help="tensor dtype on disk (default: the parameters')")
  return p.parse_args(argv)


def token_ids(vocab: dict) -> dict:
  """bos/eos ids that a model directory's vocab.json records (-1 or absent: none)."""
  ids = {"bos_token_id": vocab.get("bos"), "eos_token_id": vocab.get("eos")}
  return {k: v for k, v in ids.items() if v is not None and v != -1}


def main(argv=None):
  args = parse_args(argv)
  import logging
  logging.basicConfig(level=logging.INFO, format="[export_hf] %(message)s")
  from lwm import model_dir
  from lwm.model import to_hf_llama
  loaded = model_dir.load_model(args.checkpoint)
  source = args.tokenizer or loaded.vocab.get("tokenizer") or (
      args.checkpoint if model_dir.kind(args.checkpoint) == model_dir.HF else None)
  to_hf_llama(loaded.model, args.output, dtype=args.dtype, tokenizer_from=source,
              token_ids=token_ids(loaded.vocab) or None)
  config = loaded.model.config
  print(f"wrote {args.output}: {config.num_layers} layers, {config.vocab_size} text ids"
        f"{', tokenizer from ' + source if source else ' (no tokenizer: pass --tokenizer)'}")


if __name__ == "__main__":
  main()
