"""Chunk files: the unit of resumable preprocessing.

Each chunk of manifest lines is written once, atomically (temporary file, then rename), as
`work/chunk-NNNNNNNN.npz` holding its examples (concatenated arrays plus offsets) and its failures.
A chunk file either exists whole or not at all, so a rerun redoes exactly the missing chunks.
"""
import json
import os

import numpy as np

PATTERN = "chunk-*.npz"


def chunk_path(work_dir: str, index: int) -> str:
  return os.path.join(work_dir, f"chunk-{index:08d}.npz")


def write_chunk(path: str, examples: list[dict], failures: list[dict]) -> None:
  """Writes examples (dicts of tokens/vision_mask/loss_mask arrays, line, num_frames) and failures."""
  lengths = [len(e["tokens"]) for e in examples]
  cat = lambda key, dtype: (np.concatenate([e[key] for e in examples]).astype(dtype)
                            if examples else np.zeros((0,), dtype))
  tmp = path + ".tmp.npz"
  np.savez(tmp, tokens=cat("tokens", np.int32), vision_mask=cat("vision_mask", bool),
           loss_mask=cat("loss_mask", bool), offsets=np.cumsum([0] + lengths).astype(np.int64),
           lines=np.asarray([e["line"] for e in examples], np.int64),
           num_frames=np.asarray([e["num_frames"] for e in examples], np.int32),
           failures=np.asarray(json.dumps(failures)))
  os.replace(tmp, path)


def read_chunk(path: str) -> dict:
  """{'examples': [dict], 'failures': [dict]} of a chunk file."""
  with np.load(path) as z:
    offsets = z["offsets"]
    examples = []
    for i, line in enumerate(z["lines"]):
      sl = slice(offsets[i], offsets[i + 1])
      examples.append({"tokens": z["tokens"][sl], "vision_mask": z["vision_mask"][sl],
                       "loss_mask": z["loss_mask"][sl], "line": int(line),
                       "num_frames": int(z["num_frames"][i])})
    return {"examples": examples, "failures": json.loads(str(z["failures"]))}
