"""Training metrics to a JSON-lines file and TensorBoard (process 0 only), the FLOPs of a step, the
speed of a window of steps, and the one line per log step that the train loop logs."""
import json
import os
import time


def compiled_peak_bytes(stats) -> int:
  """Per-device peak of a compiled program from its `memory_analysis()`: arguments + outputs -
  donated (aliased) bytes + temporaries."""
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
          + stats.temp_size_in_bytes)


def train_step_flops(config, batch: int, seq_len: int) -> float:
  """Matmul and causal-attention FLOPs of one training step's forward + backward (3x forward, no
  recompute) for a `lwm.model.ModelConfig` on `batch` sequences of `seq_len` tokens: what MFU
  counts. Embedding lookups are free; both heads count where the model has a vision vocabulary."""
  D, F, L = config.hidden_size, config.intermediate_size, config.num_layers
  q, kv = config.num_heads * config.dim_per_head, config.num_kv_heads * config.dim_per_head
  per_token = L * 2 * (D * (q + 2 * kv) + q * D + 3 * D * F)
  per_token += 2 * D * (config.vocab_size + config.vision_vocab_size)
  attention = L * 2 * seq_len * seq_len * q  # QK^T and PV, 2 FLOPs a pair each, half the pairs
  return 3 * batch * (per_token * seq_len + attention)


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


class Throughput:
  """Step time, tokens/s, MFU and the share of time the loop waited for its input, over the steps
  since the last window."""

  def __init__(self, tokens_per_step: int, flops_per_step: float, peak_flops: float,
               first_step: int = 0):
    self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
    self.peak = peak_flops
    self.restart(first_step)

  def restart(self, step: int) -> None:
    self.start, self.step, self.waited = time.perf_counter(), step, 0.0

  def wait_for(self, batches):
    """next(batches), timing how long the loop waited for it."""
    start = time.perf_counter()
    batch = next(batches)
    self.waited += time.perf_counter() - start
    return batch

  def window(self, step: int) -> dict:
    """The window's figures (call after the devices finished `step`); starts the next window."""
    elapsed = time.perf_counter() - self.start
    seconds = elapsed / max(step - self.step, 1)
    out = {"step_time": seconds, "tokens_per_second": self.tokens_per_step / seconds,
           "input_wait": self.waited / elapsed}
    if self.peak:
      out["mfu"] = self.flops_per_step / seconds / self.peak
    self.restart(step)
    return out


def log_line(step: int, steps: int, record: dict) -> str:
  """'step 10/40: loss 5.1234, grad_norm 0.81, lr 3.0e-03, 0.214 s/step, ...' from a record."""
  parts = [f"loss {record['loss']:.4f}"] if "loss" in record else []
  for key, form in (("grad_norm", "grad_norm {:.3g}"), ("lr", "lr {:.2e}"),
                    ("step_time", "{:.3f} s/step"), ("tokens_per_second", "{:,.0f} tokens/s"),
                    ("mfu", "mfu {:.1%}"), ("input_wait", "input wait {:.0%}"),
                    ("eval_loss", "eval_loss {:.4f}")):
    if key in record:
      parts.append(form.format(record[key]))
  return f"step {step}/{steps}: " + ", ".join(parts)
