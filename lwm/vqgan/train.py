"""Training the VQGAN image tokenizer on frames (e.g. `lwm.data.video.manifest_frames`).

  frames, held_out = manifest_frames("m.jsonl", resolution=64, frames_per_video=8)
  model, history = train(VQGAN(get_config("small"), rngs=nnx.Rngs(0)), frames, steps=2000)
  print(reconstruction_psnr(model, held_out))

Losses: L1 + L2 reconstruction, codebook and commitment (straight-through); no perceptual or
adversarial term (see docs/data.md).
"""
import logging

import flax.nnx as nnx
import jax
import numpy as np
import optax

from lwm.vqgan.model import VQGAN, psnr, to_pixels

log = logging.getLogger(__name__)


def train(model: VQGAN, frames: np.ndarray, steps: int, batch_size: int = 16,
          learning_rate: float = 1e-3, seed: int = 0, log_every: int = 0):
  """Trains `model` in place on uint8 frames `[n, R, R, 3]`; returns (model, [loss dicts])."""
  optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, batch):
    def loss_fn(model):
      losses = model.losses(to_pixels(batch))
      return losses["loss"], losses
    grads, losses = nnx.grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return losses

  rng = np.random.default_rng(seed)
  history = []
  for i in range(steps):
    batch = frames[rng.integers(0, len(frames), batch_size)]
    flip = rng.random(batch_size) < 0.5  # cheap augmentation: horizontal flips
    batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
    losses = {k: float(v) for k, v in jax.device_get(step(model, optimizer, batch)).items()}
    history.append(losses)
    if log_every and (i % log_every == 0 or i == steps - 1):
      log.info("step %5d %s", i, " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
  return model, history


def reconstruction_psnr(model: VQGAN, frames: np.ndarray, batch_size: int = 16) -> float:
  """PSNR (dB) of encode -> decode over uint8 frames `[n, R, R, 3]`."""
  roundtrip = nnx.jit(lambda model, x: model.decode(model.encode(x)))
  errors = []
  for start in range(0, len(frames), batch_size):
    x = to_pixels(frames[start:start + batch_size])
    recon = np.clip(np.asarray(roundtrip(model, x)), -1, 1)
    errors.append(np.square(recon - np.asarray(x)).reshape(-1))
  mse = float(np.mean(np.concatenate(errors)))
  return psnr(np.zeros(1), np.full(1, np.sqrt(mse)))
