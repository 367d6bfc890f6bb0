"""A stage with bfloat16 activations (parameters and optimizer state float32, as
lwm.model_dir.model_config sets them) follows the float32 stage's loss curve on the tiny model."""
import numpy as np
import pytest

import training_data
from lwm import stage_schema, train
from lwm.metrics import read_metrics

BAND = 0.01  # |loss_bf16 - loss_f32| <= BAND * loss_f32 at every step (measured max in docs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return training_data.make_text_dataset(str(tmp_path_factory.mktemp("text")))


def losses(data_path: str, workdir: str, dtype: str, steps: int) -> np.ndarray:
  c = stage_schema.base_config()
  c.model, c.seq_len, c.rope_theta, c.mesh = "tiny", 256, 1e4, "1,8,1,1"
  c.data.path = data_path
  c.train.steps, c.train.batch_size, c.train.lr, c.train.warmup_steps = steps, 8, 3e-3, 5
  c.train.log_every, c.train.dtype = 1, dtype
  c.checkpoint.every, c.checkpoint.async_save = steps, False
  train.train(c, workdir)
  return np.array([m["loss"] for m in read_metrics(workdir) if "loss" in m])


@pytest.mark.parametrize("steps", [20, pytest.param(100, marks=pytest.mark.slow)])
def test_bf16_loss_follows_f32(dataset, tmp_path, steps):
  f32 = losses(dataset, str(tmp_path / "f32"), "float32", steps)
  bf16 = losses(dataset, str(tmp_path / "bf16"), "bfloat16", steps)
  assert len(f32) == len(bf16) == steps
  deviation = np.abs(bf16 - f32) / f32
  print(f"max relative deviation over {steps} steps: {deviation.max():.4f}")
  assert not np.array_equal(bf16, f32)  # bf16 is honoured, not silently float32
  assert deviation.max() <= BAND, deviation
  assert f32[-1] < f32[0] and bf16[-1] < bf16[0]  # both learn
