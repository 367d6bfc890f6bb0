"""Chunk records: the unit of resumable preprocessing.

The manifest is cut into chunks of `chunk_size` lines. When a chunk's task has written its TFDS
shard, it writes `work/chunk-NNNNNNNN.json` (atomically: a temporary file, then a rename) with what
the end of the run needs and nothing more: its failures, its counts for summary.json and the
packing-index rows of its examples. A record present means the chunk is done, so a rerun redoes
exactly the chunks without one, and the final step reads these small records, never the examples.
"""
import json
import os
import uuid

PATTERN = "chunk-*.json"


def record_path(work_dir: str, index: int) -> str:
  return os.path.join(work_dir, f"chunk-{index:08d}.json")


def write_record(path: str, record: dict) -> None:
  """Writes one chunk's record (a JSON-able dict); concurrent writers of the same chunk (a task
  re-run after its worker was thought lost) each rename a whole file of their own."""
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  with open(tmp, "w") as f:
    json.dump(record, f)
  os.replace(tmp, path)


def read_record(path: str) -> dict:
  with open(path) as f:
    return json.load(f)
