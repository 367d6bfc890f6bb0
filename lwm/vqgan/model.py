"""The image tokenizer: a Flax (NNX) VQGAN that turns frames into a grid of codebook indices and
back.

Named configs: `lwm` is LWM's tokenizer exactly (256x256 frames -> 16x16 = 256 codes, codebook
8192, 16x downsampling via channel_mult (1,2,2,4,6), embedding dim 64, 128 hidden channels, no
attention, GroupNorm 32 groups eps 1e-6, 3 res blocks per decoder level), so that its released
weights load with `from_lwm`; `small` and `tiny` keep the same structure at CPU sizes.

  model = create(get_config("tiny"), seed=0)
  codes = model.encode(pixels)      # [n, H, W, 3] in [-1, 1] -> int32 [n, h, w]
  pixels = model.decode(codes)      # -> [n, H, W, 3]
  losses = model.losses(pixels)     # reconstruction, codebook, commitment (straight-through)
"""
import dataclasses

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  resolution: int          # square frame side in pixels
  channel_mult: tuple      # one entry per level; len - 1 downsamplings by 2
  hidden_channels: int
  num_res_blocks: int
  codebook_size: int
  embed_dim: int
  num_groups: int          # GroupNorm groups; divides every channel count
  commitment_cost: float = 0.25
  z_channels: int = 0      # encoder output channels before quant_conv (LWM: 64); 0 = embed_dim
  decoder_res_blocks: int = 0  # res blocks per decoder level; 0 = num_res_blocks (LWM: that + 1)

  @property
  def latent_channels(self) -> int:
    return self.z_channels or self.embed_dim

  @property
  def decoder_blocks(self) -> int:
    return self.decoder_res_blocks or self.num_res_blocks

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)

  @property
  def grid(self) -> int:
    """Codes per side of a frame: resolution // downsample."""
    return self.resolution // self.downsample

  @property
  def codes_per_frame(self) -> int:
    return self.grid ** 2


CONFIGS = {
    "lwm": VQGANConfig(256, (1, 2, 2, 4, 6), 128, 2, 8192, 64, 32, z_channels=64,
                       decoder_res_blocks=3),
    "small": VQGANConfig(64, (1, 2, 2, 4), 32, 1, 1024, 16, 8),
    "tiny": VQGANConfig(16, (1, 2, 2), 8, 1, 64, 8, 4),
}


def get_config(name: str) -> VQGANConfig:
  if name not in CONFIGS:
    raise ValueError(f"VQGAN config must be one of {sorted(CONFIGS)}, got {name!r}")
  return CONFIGS[name]


NORM_EPS = 1e-6  # LWM's (flax's GroupNorm default)


def group_norm(channels: int, groups: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
  """GroupNorm as LWM's VQGAN computes it (variance as E[x^2] - E[x]^2, eps 1e-6)."""
  return nnx.GroupNorm(channels, num_groups=groups, epsilon=NORM_EPS, use_fast_variance=True,
                       rngs=rngs)


class ResBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, groups: int, rngs: nnx.Rngs):
    self.norm1 = group_norm(cin, groups, rngs)
    self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
    self.norm2 = group_norm(cout, groups, rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs)
    self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(nnx.swish(self.norm1(x)))
    h = self.conv2(nnx.swish(self.norm2(h)))
    return h + (self.skip(x) if self.skip is not None else x)


class Encoder(nnx.Module):
  """[n, H, W, 3] -> [n, H/d, W/d, latent_channels]."""

  def __init__(self, c: VQGANConfig, rngs: nnx.Rngs):
    width = [c.hidden_channels * m for m in c.channel_mult]
    self.conv_in = nnx.Conv(3, c.hidden_channels, (3, 3), rngs=rngs)
    layers, cin = [], c.hidden_channels
    for level, cout in enumerate(width):
      for _ in range(c.num_res_blocks):
        layers.append(ResBlock(cin, cout, c.num_groups, rngs))
        cin = cout
      if level < len(width) - 1:  # LWM's Downsample: pad bottom/right by 1, stride-2 VALID conv
        layers.append(nnx.Conv(cin, cin, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
                               rngs=rngs))
    self.layers = nnx.List(layers)
    self.mid = nnx.List([ResBlock(cin, cin, c.num_groups, rngs) for _ in range(2)])
    self.norm_out = group_norm(cin, c.num_groups, rngs)
    self.conv_out = nnx.Conv(cin, c.latent_channels, (3, 3), rngs=rngs)

  def __call__(self, x):
    x = self.conv_in(x)
    for layer in [*self.layers, *self.mid]:
      x = layer(x)
    return self.conv_out(nnx.swish(self.norm_out(x)))


class Decoder(nnx.Module):
  """[n, h, w, latent_channels] -> [n, h*d, w*d, 3]. Walks the levels from the coarsest."""

  def __init__(self, c: VQGANConfig, rngs: nnx.Rngs):
    width = [c.hidden_channels * m for m in c.channel_mult][::-1]
    cin = width[0]
    self.conv_in = nnx.Conv(c.latent_channels, cin, (3, 3), rngs=rngs)
    self.mid = nnx.List([ResBlock(cin, cin, c.num_groups, rngs) for _ in range(2)])
    layers = []
    for level, cout in enumerate(width):
      for _ in range(c.decoder_blocks):
        layers.append(ResBlock(cin, cout, c.num_groups, rngs))
        cin = cout
      if level < len(width) - 1:
        layers.append(Upsample(cin, rngs))
    self.layers = nnx.List(layers)
    self.norm_out = group_norm(cin, c.num_groups, rngs)
    self.conv_out = nnx.Conv(cin, 3, (3, 3), rngs=rngs)

  def __call__(self, x):
    x = self.conv_in(x)
    for layer in [*self.mid, *self.layers]:
      x = layer(x)
    return self.conv_out(nnx.swish(self.norm_out(x)))


class Upsample(nnx.Module):
  def __init__(self, channels: int, rngs: nnx.Rngs):
    self.conv = nnx.Conv(channels, channels, (3, 3), rngs=rngs)

  def __call__(self, x):
    n, h, w, c = x.shape
    return self.conv(jax.image.resize(x, (n, 2 * h, 2 * w, c), "nearest"))


class VQGAN(nnx.Module):
  def __init__(self, config: VQGANConfig, rngs: nnx.Rngs):
    self.config = config
    self.encoder = Encoder(config, rngs)
    self.quant_conv = nnx.Conv(config.latent_channels, config.embed_dim, (1, 1), rngs=rngs)
    init = nnx.initializers.uniform(2.0 / config.codebook_size)
    self.codebook = nnx.Param(init(rngs.params(), (config.codebook_size, config.embed_dim)) -
                              1.0 / config.codebook_size)
    self.post_quant_conv = nnx.Conv(config.embed_dim, config.latent_channels, (1, 1), rngs=rngs)
    self.decoder = Decoder(config, rngs)

  def _latents(self, pixels):
    return self.quant_conv(self.encoder(pixels))

  def _nearest(self, z):
    """Codebook indices [...] of latents z [..., embed_dim] (squared Euclidean distance)."""
    book = self.codebook[...]
    dist = (jnp.sum(z ** 2, -1, keepdims=True) - 2 * z @ book.T + jnp.sum(book ** 2, -1))
    return jnp.argmin(dist, -1).astype(jnp.int32)

  def encode(self, pixels):
    """pixels [n, H, W, 3] in [-1, 1] -> codes int32 [n, h, w]."""
    return self._nearest(self._latents(pixels))

  def decode(self, codes):
    """codes int32 [n, h, w] -> pixels [n, H, W, 3], clipped to [-1, 1] as LWM's decode does."""
    return jnp.clip(self.decoder(self.post_quant_conv(self.codebook[...][codes])), -1.0, 1.0)

  def losses(self, pixels):
    """Scalar losses on pixels `[n, H, W, 3]` in [-1, 1]; gradients pass the quantizer straight."""
    z = self._latents(pixels)
    quantized = self.codebook[...][self._nearest(z)]
    codebook = jnp.mean((jax.lax.stop_gradient(z) - quantized) ** 2)
    commitment = jnp.mean((z - jax.lax.stop_gradient(quantized)) ** 2)
    straight = z + jax.lax.stop_gradient(quantized - z)
    recon = self.decoder(self.post_quant_conv(straight))
    l1 = jnp.mean(jnp.abs(recon - pixels))
    l2 = jnp.mean((recon - pixels) ** 2)
    total = l1 + l2 + codebook + self.config.commitment_cost * commitment
    return {"loss": total, "l1": l1, "l2": l2, "codebook": codebook, "commitment": commitment}


def to_pixels(frames) -> jnp.ndarray:
  """uint8 frames -> float32 in [-1, 1]."""
  return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


def psnr(a, b) -> float:
  """PSNR in dB between two pixel arrays in [-1, 1]."""
  mse = float(np.mean((np.clip(np.asarray(a), -1, 1) - np.asarray(b)) ** 2))
  return 10 * np.log10(4.0 / max(mse, 1e-12))


def create(config: VQGANConfig, seed: int = 0) -> VQGAN:
  """A freshly initialised VQGAN, drawn on the host with NumPy.

  Same scheme as the layers' defaults (LeCun-normal kernels, zero biases, unit norm scales), but
  without compiling one XLA initializer per parameter shape, which takes seconds on a CPU.
  """
  model = nnx.eval_shape(lambda: VQGAN(config, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  for path, var in nnx.to_flat_state(state):
    name, shape = str(path[-1]), var.shape
    if name == "kernel":
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    elif name == "codebook":
      value = rng.uniform(-1.0 / config.codebook_size, 1.0 / config.codebook_size, shape)
    elif name == "scale":
      value = np.ones(shape)
    else:
      value = np.zeros(shape)
    var.set_value(jnp.asarray(value, jnp.float32))
  nnx.update(model, state)
  return model


class FrameEncoder:
  """Jitted frames -> codes with a fixed batch size (the last batch is padded: one compilation)."""

  def __init__(self, model: VQGAN, batch_size: int = 16):
    self.config = model.config
    self.batch_size = batch_size
    graphdef, state = nnx.split(model)
    self._encode = jax.jit(
        lambda state, frames: nnx.merge(graphdef, state).encode(to_pixels(frames)))
    self._state = state

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    """uint8 `[n, R, R, 3]` -> int32 `[n, codes_per_frame]` (row-major over the code grid)."""
    r = self.config.resolution
    if frames.shape[1:] != (r, r, 3):
      raise ValueError(f"frames must be [n, {r}, {r}, 3] for this VQGAN, got {frames.shape}")
    out = []
    for start in range(0, len(frames), self.batch_size):
      chunk = frames[start:start + self.batch_size]
      padded = np.zeros((self.batch_size, r, r, 3), np.uint8)
      padded[:len(chunk)] = chunk
      out.append(np.asarray(self._encode(self._state, padded))[:len(chunk)])
    empty = np.zeros((0, self.config.grid, self.config.grid), np.int32)
    codes = np.concatenate(out) if out else empty
    return codes.reshape(len(frames), -1).astype(np.int32)
