"""Training metrics to a JSON-lines file, TensorBoard and the progress bar (process 0 only)."""
import json
import os


class MetricsWriter:
  """Appends one JSON object per logged step to `workdir/metrics.jsonl` and to TensorBoard.

  On resume the file is cut back to the restored step, so that it matches a run that was never
  interrupted line for line.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    _truncate_after(self.path, resume_step)
    try:
      from tensorboardX import SummaryWriter
      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # optional: the JSON lines carry everything
      self._tensorboard = None

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tensorboard is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          self._tensorboard.add_scalar(key, value, step)

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def _plain(value):
  value = value.item() if hasattr(value, "item") else value
  return round(value, 8) if isinstance(value, float) else value


def _truncate_after(path: str, step: int) -> None:
  """Keeps only the records with record['step'] <= step (all of them are dropped for step 0)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    records = [line for line in f if line.strip()]
  kept = [line for line in records if json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(kept)


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
