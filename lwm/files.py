"""Writing files so that a reader never sees half of one."""
import json
import os


def write_json(path: str, value, indent: int = 1) -> None:
  """Writes `value` as JSON to `path` through a temporary file and a rename (atomic on POSIX)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=indent)
  os.replace(tmp, path)
