"""Helpers for the evaluation tests: a tokenizer that knows the needle format, a tiny VQGAN, and a
training workdir with a random `tiny` model (config.json, a dataset vocab.json, one checkpoint)."""
import json
import os

import numpy as np
from flax import nnx

from lwm import checkpoint, model_dir, stage_schema
from lwm import vqgan
from lwm.data import text_tokenizer
from lwm.eval import needle, video_needle
from lwm.model import Transformer


def make_tokenizer(root: str) -> str:
  rng = np.random.default_rng(0)
  texts = [needle.synthetic_haystack(400, seed=1), video_needle.video_example_text("123")]
  for n in needle.draw_needles(rng, 20, split="all"):
    texts.append(needle.format_prompt(needle.text_needle_sentence(n.key, n.value),
                                      needle.text_question(n.key)) + needle.text_answer(n.value))
  return text_tokenizer.train_tokenizer(texts, os.path.join(root, "tok.model"), vocab_size=400)


def make_ruler_tokenizer(root: str) -> str:
  """A tokenizer that knows English words (RULER's word lists, templates and filler), so that
  RULER's tasks fit lengths of 2K-4K tokens as they do with a real model's tokenizer."""
  from lwm.eval import ruler_data, ruler_tasks
  words = ruler_data.wonderwords_lists()
  # One word a line (sentencepiece skips lines over 4 KB), repeated so that BPE merges them whole.
  texts = ["\n".join(ws) for ws in words.values()] * 4 + [needle.synthetic_haystack(400, seed=1)]
  texts += [t + p for t, p, _ in ruler_tasks.TEMPLATES.values()] + [ruler_tasks.NOISE] * 20
  texts += ["\n".join(f"{i}. {w}" for i, w in enumerate(words["nouns"][:1000]))]
  return text_tokenizer.train_tokenizer(texts, os.path.join(root, "ruler_tok.model"),
                                        vocab_size=8000)


def make_vqgan(root: str) -> str:
  path = os.path.join(root, "vq")
  vqgan.save(path, vqgan.create(vqgan.get_config("tiny"), seed=0))
  return path


def video_parts(root: str):
  """(tokenizer, frame encoder, vision vocabulary) of a tiny tokenizer and VQGAN made in `root`."""
  tokenizer = text_tokenizer.load_tokenizer(make_tokenizer(root))
  encoder = vqgan.FrameEncoder(vqgan.load(make_vqgan(root)))
  return tokenizer, encoder, video_needle.vocab_for(tokenizer, encoder.config.codebook_size)


def make_workdir(root: str, seed: int = 0, tokenizer: str | None = None) -> str:
  """A workdir as scripts/train.py leaves it, with a random tiny model at step 3 (and the
  tokenizer `tokenizer`, default `make_tokenizer`'s)."""
  tokenizer = text_tokenizer.load_tokenizer(tokenizer or make_tokenizer(root))
  vq = make_vqgan(root)
  data = os.path.join(root, "data")
  os.makedirs(data, exist_ok=True)
  codebook = vqgan.get_config("tiny").codebook_size
  vocab = {"text_vocab_size": len(tokenizer), "bos": tokenizer.bos_token_id,
           "eos": tokenizer.eos_token_id, "vision_start": tokenizer.vision_start,
           "vision_end": tokenizer.vision_end, "tokenizer": tokenizer.path,
           "tokenizer_hash": tokenizer.content_hash,
           "codebook_size": codebook, "eof": codebook, "eov": codebook + 1,
           "vision_vocab_size": codebook + 256,
           "codes_per_frame": vqgan.get_config("tiny").codes_per_frame, "vqgan": vq}
  with open(os.path.join(data, "vocab.json"), "w") as f:
    json.dump(vocab, f)
  config = stage_schema.base_config()
  config.model, config.seq_len, config.mesh = "tiny", 256, "1,1,1,8"
  config.data.path, config.train.dtype = data, "float32"
  workdir = os.path.join(root, "workdir")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  model_config = model_dir.model_config(config, vocab)
  _, params = nnx.split(Transformer(model_config, rngs=nnx.Rngs(seed)), nnx.Param)
  mngr = checkpoint.manager(workdir, async_save=False)
  checkpoint.save(mngr, 3, params, params, {}, {"step": 3})
  mngr.wait_until_finished()
  mngr.close()
  return workdir


def run_script(script: str, *args, timeout: int = 300) -> str:
  """Runs scripts/<script> with `args` on the CPU; returns its stdout (an error fails the test)."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, os.path.join(root, "scripts", script), *args],
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=timeout, cwd=root)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout
