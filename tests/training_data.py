"""A small text dataset written with the real data stage, for the training tests."""
import json
import os

import numpy as np

from lwm.data import preprocess, synthetic, text_tokenizer


def make_text_dataset(root: str, num_docs: int = 48, seed: int = 0, tokenizer: str = "") -> str:
  """Writes a manifest of pseudo-word documents, a tokenizer (unless one is given) and the
  preprocessed dataset; returns the dataset directory."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  docs = [synthetic.random_text(rng, int(rng.integers(50, 400))) for _ in range(num_docs)]
  manifest = os.path.join(root, "manifest.jsonl")
  with open(manifest, "w") as f:
    for doc in docs:
      f.write(json.dumps({"text": doc}) + "\n")
  tokenizer = tokenizer or text_tokenizer.train_tokenizer(docs, os.path.join(root, "tok.model"),
                                                          vocab_size=320)
  output = os.path.join(root, "dataset")
  preprocess.preprocess(preprocess.PreprocessOptions(manifest, output, tokenizer, None),
                        progress=False)
  return output
