"""The video-language transformer: text and vision embeddings, scanned decoder layers, two heads.

LWM's layout: the base model's text vocabulary, embedding and head stay as they are; a vision
embedding and a vision head (VQGAN codes plus <eof>/<eov>) are added, and `vision_mask` chooses per
position which table embeds a token. Layer weights are stacked on a leading `layers` axis and the
layers run under `jax.lax.scan` with the configured remat policy.
"""
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from lwm import ops
from lwm import sharding as shd
from lwm.model import layers
from lwm.model.config import ModelConfig

# Stacked per-layer weights: name -> logical axes. Matrices are [in, out] (HF stores [out, in]).
LAYER_AXES = {
    "attn_norm": ("layers", "norm"),
    "wq": ("layers", "embed", "heads"),
    "wk": ("layers", "embed", "kv_heads"),
    "wv": ("layers", "embed", "kv_heads"),
    "wo": ("layers", "heads", "embed"),
    "ffn_norm": ("layers", "norm"),
    "w_gate": ("layers", "embed", "mlp"),
    "w_up": ("layers", "embed", "mlp"),
    "w_down": ("layers", "mlp", "embed"),
}
# Biases (ModelConfig.qkv_bias / out_bias / mlp_bias): each shares its matrix's output axis.
BIAS_AXES = {
    "bq": ("layers", "heads"), "bk": ("layers", "kv_heads"), "bv": ("layers", "kv_heads"),
    "bo": ("layers", "embed"),
    "b_gate": ("layers", "mlp"), "b_up": ("layers", "mlp"), "b_down": ("layers", "embed"),
}


def bias_names(config: ModelConfig) -> tuple[str, ...]:
  """The biases `config` has, in BIAS_AXES' order (none for LLaMA, LWM and the named sizes)."""
  on = {"bq": config.qkv_bias, "bk": config.qkv_bias, "bv": config.qkv_bias,
        "bo": config.out_bias, "b_gate": config.mlp_bias, "b_up": config.mlp_bias,
        "b_down": config.mlp_bias}
  return tuple(name for name in BIAS_AXES if on[name])


def layer_shapes(config: ModelConfig) -> dict:
  """Shapes of the stacked layer weights and biases, `[num_layers, ...]`."""
  L, D, F = config.num_layers, config.hidden_size, config.intermediate_size
  q, kv = config.num_heads * config.dim_per_head, config.num_kv_heads * config.dim_per_head
  shapes = {"attn_norm": (L, D), "wq": (L, D, q), "wk": (L, D, kv), "wv": (L, D, kv),
            "wo": (L, q, D), "ffn_norm": (L, D), "w_gate": (L, D, F), "w_up": (L, D, F),
            "w_down": (L, F, D)}
  outputs = {"bq": q, "bk": kv, "bv": kv, "bo": D, "b_gate": F, "b_up": F, "b_down": D}
  return shapes | {name: (L, outputs[name]) for name in bias_names(config)}


def layer_axes(config: ModelConfig) -> dict:
  """Logical axes of every stacked layer parameter `config` has (see layer_shapes)."""
  return LAYER_AXES | {name: BIAS_AXES[name] for name in bias_names(config)}


def _param(rngs, shape, axes, dtype, std):
  """A Param initialised N(0, std) (std None: ones, for norms; 0: zeros, for biases as
  transformers initialises them), tagged with its logical axes."""
  if std is None:
    value = jnp.ones(shape, dtype)
  elif std == 0:
    value = jnp.zeros(shape, dtype)
  else:
    value = std * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, logical_axes=axes)


class DecoderStack(nnx.Module):
  """All decoder layers' weights (and biases, where the config has them), stacked on a leading
  `layers` axis (see LAYER_AXES, BIAS_AXES)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    axes = layer_axes(config)
    for name, shape in layer_shapes(config).items():
      std = None if name.endswith("norm") else 0 if name in BIAS_AXES else config.initializer_range
      setattr(self, name, _param(rngs, shape, axes[name], config.weight_dtype, std))

  def arrays(self) -> dict:
    return {name: getattr(self, name)[...] for name in (*LAYER_AXES, *BIAS_AXES)
            if hasattr(self, name)}


class Transformer(nnx.Module):
  """LLaMA-style decoder with LWM's vision vocabulary, sharded over a (dp, fsdp, tp, hp, sp) mesh.

  `mesh=None` runs on one device (a 1x1x1x1 mesh over the first device). Any mesh is taken as
  `lwm.sharding.model_mesh` sees it (Auto axes; e.g. one made with `jax.make_mesh`'s defaults).
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, mesh: Mesh | None = None):
    self.config = config
    self.mesh = shd.model_mesh(mesh)
    D, std, dt = config.hidden_size, config.initializer_range, config.weight_dtype
    self.embed_text = _param(rngs, (config.vocab_size, D), ("vocab", "embed"), dt, std)
    self.layers = DecoderStack(config, rngs=rngs)
    self.final_norm = _param(rngs, (D,), ("norm",), dt, None)
    self.head_text = _param(rngs, (D, config.vocab_size), ("embed", "vocab"), dt, std)
    if config.vision_vocab_size:
      self.embed_vision = _param(rngs, (config.vision_vocab_size, D), ("vocab", "embed"), dt, std)
      self.head_vision = _param(rngs, (D, config.vision_vocab_size), ("embed", "vocab"), dt, std)
    else:
      self.embed_vision = self.head_vision = None

  def get_mesh(self) -> Mesh:
    if self.mesh is not None:
      return self.mesh
    return shd.model_mesh(shd.make_mesh(devices=jax.devices()[:1]))

  def embed(self, tokens, vision_mask=None):
    """tokens, vision_mask: [batch, seq] -> [batch, seq, embed] in the compute dtype."""
    dt, mesh = self.config.compute_dtype, self.get_mesh()
    # Gather each table whole first (FSDP-style): a lookup into a table sharded on `embed` would
    # produce embed-sharded activations that GSPMD can only reshard by replicating them.
    table = lambda p: shd.constrain(p[...].astype(dt), mesh, (None, None))
    if vision_mask is None or self.embed_vision is None:
      return jnp.take(table(self.embed_text), tokens, axis=0)
    text = jnp.take(table(self.embed_text), jnp.where(vision_mask, 0, tokens), axis=0)
    vision = jnp.take(table(self.embed_vision), jnp.where(vision_mask, tokens, 0), axis=0)
    return jnp.where(vision_mask[..., None], vision, text)

  def hidden_states(self, tokens, vision_mask, positions, segment_ids):
    """Final normalised hidden states `[batch, seq, embed]` of a batch in the mesh's zigzag order.

    tokens, positions: [batch, seq] int32; vision_mask: [batch, seq] bool or None; segment_ids:
    [batch, seq] int32 (0 = padding) or None. seq must be a multiple of 2 * the sequence shards.
    """
    config, mesh = self.config, self.get_mesh()
    config.check_length(tokens.shape[1])  # padding included: a sliding window must cover it all
    x = shd.constrain(self.embed(tokens, vision_mask), mesh, ("batch", "seq", "act_embed"))
    cos, sin = layers.rope_angles(positions, config.dim_per_head, config.rope_theta,
                                  config.rope_scaling)

    def body(x, inputs):
      index, params = inputs
      params = jax.tree.map(lambda w: w.astype(config.compute_dtype), params)
      x, _ = layers.decoder_layer(params, x, cos=cos, sin=sin, segment_ids=segment_ids,
                                  config=config, mesh=mesh, layer_index=index, mode="train")
      return x, None

    indices = jnp.arange(config.num_layers, dtype=jnp.int32)
    batch_shards = shd.axis_size(mesh, shd.batch_axes(mesh, tokens.shape[0]))
    tokens_per_device = tokens.size // (batch_shards * shd.seq_shards(mesh))
    remat = config.remat(body, tokens_per_device, shd.axis_size(mesh, shd.mesh_axes("act_heads")))
    x, _ = jax.lax.scan(remat, x, (indices, self.layers.arrays()))
    return layers.rms_norm(x, self.final_norm[...], config.rms_norm_eps)

  def logits(self, hidden, head: str = "text"):
    """hidden [batch, seq, embed] -> float32 logits [batch, seq, vocab] of the `text` or `vision`
    head."""
    if head not in ("text", "vision"):
      raise ValueError(f"head must be 'text' or 'vision', got {head!r}")
    weight = self.head_text if head == "text" else self.head_vision
    if weight is None:
      raise ValueError("this model has no vision head (vision_vocab_size=0)")
    return jnp.einsum("bsd,dv->bsv", hidden, weight[...].astype(hidden.dtype),
                      preferred_element_type=jnp.float32)

  def __call__(self, tokens, vision_mask=None, segment_ids=None, *, head: str = "text"):
    """Logits `[batch, seq, vocab]` (float32) for tokens `[batch, seq]` in natural order.

    Positions are 0..seq-1 (one document per row, unless segment_ids separate several: then
    attention stays inside each segment but positions do not restart; pass zigzag batches with
    their own positions to `hidden_states` for that). Any seq works: the model pads to a multiple
    of 2 * sp * hp, converts to the zigzag layout and back.
    """
    batch, seq = tokens.shape
    self.config.check_length(seq)
    sp = shd.ring_shards(self.get_mesh())
    pad = (-seq) % shd.seq_multiple(self.get_mesh())
    if pad and segment_ids is None:
      segment_ids = jnp.ones((batch, seq), jnp.int32)
    padded = lambda a: jnp.pad(a, ((0, 0), (0, pad))) if pad else a
    zig = lambda a: None if a is None else ops.to_zigzag(padded(a), sp)
    positions = jnp.broadcast_to(jnp.arange(seq + pad, dtype=jnp.int32), (batch, seq + pad))
    hidden = self.hidden_states(zig(tokens), zig(vision_mask), ops.to_zigzag(positions, sp),
                                zig(segment_ids))
    return ops.from_zigzag(self.logits(hidden, head), sp)[:, :seq]


def count_params(state) -> int:
  return sum(x.size for x in jax.tree.leaves(state))
