"""Imports one of LWM's released JAX checkpoints into a standalone model directory.

  python scripts/import_lwm.py --params LWM-Chat-1M-Jax/params --config lwm-chat-1m \
      --vqgan LWM-Chat-1M-Jax/vqgan --tokenizer LWM-Chat-1M-Jax/tokenizer.model \
      --output models/lwm-chat-1m
  python scripts/eval_needle.py --checkpoint models/lwm-chat-1m --mode video ...
  python scripts/ask.py --checkpoint models/lwm-chat-1m --video clip.mp4 --question "..."
  python scripts/train.py --config ... --config.model init_from \
      --config.init_from models/lwm-chat-1m

--config is a released model name (lwm-chat-1m, lwm-text-chat-1m, ...; see
lwm.model.lwm_format.RELEASED) or LWM's config as JSON (VideoLLaMAConfig / LLaMAConfig fields).
--vqgan-config gives LWM VQGANConfig fields as JSON (default: the released 256px, 8192-code VQGAN).
The vision ids keep LWM's layout: codes, then <eof> 8192 and <eov> 8193 (hard-coded in LWM).
"""
import argparse


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--params", required=True, help="LWM's `params` file (streaming msgpack)")
  p.add_argument("--config", required=True, help="released model name or LWM config JSON")
  p.add_argument("--vqgan", default=None, help="LWM's `vqgan` pickle (video models)")
  p.add_argument("--vqgan-config", default=None, help="LWM VQGANConfig JSON (default: released)")
  p.add_argument("--tokenizer", default=None, help="the sentencepiece tokenizer.model")
  p.add_argument("--output", required=True, help="the model directory to write")
  p.add_argument("--dtype", default="float32", help="parameter dtype stored (float32, bfloat16)")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  import logging
  logging.basicConfig(level=logging.INFO, format="[import_lwm] %(message)s")
  from lwm import workdir
  from lwm import vqgan
  from lwm.data import text_tokenizer
  from lwm.model import from_lwm
  from lwm.vocab import LWM_CODEBOOK_SIZE, Vocab
  model = from_lwm(args.params, args.config, dtype=args.dtype)
  config = model.config
  encoder = vqgan.from_lwm(args.vqgan, args.vqgan_config) if args.vqgan else None
  codebook = encoder.config.codebook_size if encoder else 0
  if codebook and not config.vision_vocab_size:
    raise SystemExit(f"--vqgan was given but {args.config} is a text-only model")
  if codebook > LWM_CODEBOOK_SIZE:
    raise SystemExit(f"the VQGAN has {codebook} codes; LWM's <eof> is id {LWM_CODEBOOK_SIZE}")
  # LWM's <eof>/<eov> are 8192/8193 whatever the VQGAN (lwm/data.py, vision_chat.py).
  ids = dict(eof=LWM_CODEBOOK_SIZE, eov=LWM_CODEBOOK_SIZE + 1,
             vision_vocab_size=config.vision_vocab_size) if codebook else {}
  if args.tokenizer:
    vocab = Vocab.for_tokenizer(text_tokenizer.load_tokenizer(args.tokenizer), codebook, **ids)
  else:  # LLaMA's ids; <vision> is spelled by the tokenizer that evaluation will be given
    vocab = Vocab(bos=1, eos=2, vision_start=(), vision_end=(), codebook_size=codebook,
                  text_vocab_size=config.vocab_size, **ids)
  workdir.write_model_dir(args.output, model, vocab, tokenizer=args.tokenizer, vqgan=encoder,
                          meta={"step": 0, "source": f"LWM params {args.params}",
                                "chat_template": "lwm"})
  print(f"wrote {args.output}: {config.num_layers} layers, vocab {config.vocab_size} text + "
        f"{config.vision_vocab_size} vision ids, theta {config.rope_theta:g}"
        f"{', VQGAN ' + str(codebook) + ' codes' if codebook else ''}"
        f"{', tokenizer' if args.tokenizer else ' (no tokenizer: pass --tokenizer to evaluation)'}")


if __name__ == "__main__":
  main()
