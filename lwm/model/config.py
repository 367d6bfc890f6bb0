"""Model configuration and the named sizes (`tiny` for tests up to LLaMA-2-7B's exact shapes)."""
import dataclasses
import logging

import jax
import jax.numpy as jnp

from lwm.model import rope
from lwm.ops.impls import IMPLS as ATTENTION_IMPLS
from lwm.vocab import LWM_CODEBOOK_SIZE, vision_vocab_size

LWM_VISION_VOCAB_SIZE = vision_vocab_size(LWM_CODEBOOK_SIZE)  # 8192 codes + 256 = 8448

# What a checkpointed layer keeps for its backward, by the names the layer tags
# (`jax.ad_checkpoint.checkpoint_name`): "attention_out" and "attention_lse" are ring attention's
# custom_vjp residuals (tagged inside its forward rule, lwm/ops/ring_attention.py), "ffn_input" the
# normalised input of the feed-forward, "attention_qkv" q, k, v after RoPE. Everything not kept is
# recomputed from the layer input, which the layer scan always keeps.
NAMED_POLICIES = {
    "save_attention": ("attention_out", "attention_lse"),
    "save_attention_ffn": ("attention_out", "attention_lse", "ffn_input"),
    "save_attention_qkv_ffn": ("attention_out", "attention_lse", "ffn_input", "attention_qkv"),
}
# "auto" keeps the attention outputs (the fast policy: the backward then never re-runs the ring
# forward) while they fit in `remat_save_limit_gib` per device, and recomputes the whole layer
# beyond that (1b at 1M tokens on 8 devices would need 11 GiB more for them). See docs/model.md.
AUTO_POLICIES = ("save_attention", "nothing_saveable")
REMAT_POLICIES = ("auto", "none", "nothing_saveable", "dots_saveable",
                  "dots_with_no_batch_dims_saveable", "everything_saveable") + tuple(NAMED_POLICIES)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A LLaMA-style decoder with LWM's separate vision vocabulary.

  Attributes (sizes):
    vocab_size: text vocabulary (the base model's, kept as is).
    vision_vocab_size: VQGAN codes plus `<eof>`/`<eov>` and spare ids (LWM: 8192 + 256).
      0 builds a text-only model (no vision embedding or head).
    head_dim: 0 means hidden_size // num_heads.
    rope_scaling: () for plain RoPE, or sorted (key, value) pairs of a "linear" or "llama3"
      frequency scaling as Hugging Face configs write it (lwm.model.rope; a dict is accepted).
    max_sequence_length: the longest sequence the model is used at (a stage's seq_len; exported as
      max_position_embeddings); RoPE has no table, so it only matters with `sliding_window`.
  Attributes (the LLaMA family's variants, as Hugging Face configs set them; lwm.model.hf):
    qkv_bias: biases on the q, k, v projections, added before RoPE (Qwen2; LLaMA attention_bias).
    out_bias: a bias on the attention output projection (LLaMA attention_bias).
    mlp_bias: biases on the gate, up and down projections (LLaMA mlp_bias).
    sliding_window: 0, or the attention window of a checkpoint trained with one (Mistral v0.1).
      lwm computes full causal attention, which is the window's for sequences of at most
      `sliding_window` tokens: max_sequence_length and every sequence are held to that.
  Attributes (long-sequence machinery):
    dtype / param_dtype: activation and parameter dtypes, as names ("bfloat16", "float32").
    remat_policy: one of REMAT_POLICIES, applied to each scanned layer ("auto": see AUTO_POLICIES).
    remat_save_limit_gib: per-device budget of what "auto" keeps beyond the layer inputs.
    ffn_chunk: tokens per feed-forward chunk (blockwise FFN, recomputed in the backward).
    attention_block_q / attention_block_kv: ring attention tile sizes.
    attention_impl: the ring's per-block implementation (`lwm.ops.impls`): "auto" (the
      platform's fused kernel, "xla" on a CPU), "xla", "pallas_gpu" or "pallas_tpu".
    loss_chunk: tokens per cross-entropy chunk (the [seq, vocab] logits never exist at once).
    text_loss_weight / vision_loss_weight: weights of the two cross-entropies (LWM: 0.5 / 0.5).
  """
  vocab_size: int = 32000
  vision_vocab_size: int = LWM_VISION_VOCAB_SIZE
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int = 0
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: tuple = ()
  max_sequence_length: int = 4096
  initializer_range: float = 0.02
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  sliding_window: int = 0
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  remat_policy: str = "auto"
  remat_save_limit_gib: float = 1.0
  ffn_chunk: int = 2048
  attention_block_q: int = 512
  attention_block_kv: int = 512
  attention_impl: str = "auto"
  loss_chunk: int = 2048
  text_loss_weight: float = 0.5
  vision_loss_weight: float = 0.5

  def __post_init__(self):
    object.__setattr__(self, "rope_scaling", rope.normalize_scaling(self.rope_scaling))
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads} (grouped-query attention)")
    if not self.head_dim and self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                       f"num_heads={self.num_heads}; set head_dim explicitly")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.attention_impl!r}; expected one of {ATTENTION_IMPLS}")
    for name in ("dtype", "param_dtype"):
      jnp.dtype(getattr(self, name))  # Fails early on a misspelt dtype name.
    if self.sliding_window < 0:
      raise ValueError(f"sliding_window={self.sliding_window}; expected 0 (none) or a window")
    self.check_length(self.max_sequence_length, "max_sequence_length")

  def check_length(self, tokens: int, what: str = "sequence length") -> None:
    """Refuses `tokens` positions where a sliding window would differ from full attention.

    A query sees keys less than `sliding_window` positions back (transformers' mask), so the two
    agree on any sequence of at most `sliding_window` tokens.
    """
    if self.sliding_window and tokens > self.sliding_window:
      raise ValueError(f"{what}={tokens} but the model has sliding_window={self.sliding_window}: "
                       "lwm computes full attention, which equals the window's only up to "
                       f"{self.sliding_window} tokens; use at most that many")

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def resolved_remat_policy(self, tokens_per_device: int, heads_shards: int = 1) -> str:
    """The policy the layers run under: `remat_policy`, with "auto" resolved for a shard of
    `tokens_per_device` tokens (batch x sequence) and heads split `heads_shards` ways (tp)."""
    if self.remat_policy != "auto":
      return self.remat_policy
    # Per layer: the attention output [tokens, heads * head_dim]; its f32 lse is 1/head_dim of that.
    width = self.num_heads * self.dim_per_head // heads_shards
    saved = self.num_layers * tokens_per_device * width * self.compute_dtype.itemsize
    return AUTO_POLICIES[0] if saved <= self.remat_save_limit_gib * 2**30 else AUTO_POLICIES[1]

  def remat(self, fn, tokens_per_device: int = 0, heads_shards: int = 1):
    """Wraps a layer function in `jax.checkpoint` with this config's policy (see
    `resolved_remat_policy` for "auto")."""
    name = self.resolved_remat_policy(tokens_per_device, heads_shards)
    logging.info("remat policy %s (config: %s)", name, self.remat_policy)
    if name == "none":
      return fn
    if name in NAMED_POLICIES:
      policy = jax.checkpoint_policies.save_only_these_names(*NAMED_POLICIES[name])
    else:
      policy = getattr(jax.checkpoint_policies, name)
    return jax.checkpoint(fn, policy=policy, prevent_cse=False)


CONFIGS = {
    # Tests: every axis of an 8-device mesh divides it (heads 4, kv heads 2 for tp=2).
    "tiny": ModelConfig(vocab_size=256, vision_vocab_size=64, hidden_size=64, intermediate_size=128,
                        num_layers=2, num_heads=4, num_kv_heads=2, rope_theta=10000.0,
                        dtype="float32", ffn_chunk=8, attention_block_q=8, attention_block_kv=8,
                        loss_chunk=8),
    # CPU demos.
    "small": ModelConfig(vocab_size=32000, hidden_size=256, intermediate_size=688, num_layers=4,
                         num_heads=8, num_kv_heads=4, ffn_chunk=512, loss_chunk=512),
    # LWM's 1b preset (OpenLLaMA-style shapes).
    "1b": ModelConfig(hidden_size=2048, intermediate_size=5504, num_layers=22, num_heads=16,
                      num_kv_heads=16),
    # LLaMA-2-7B: 6,738,415,616 text parameters.
    "7b": ModelConfig(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                      num_kv_heads=32),
}


def get_config(name: str, **overrides) -> ModelConfig:
  """Returns the named size with `overrides` applied (e.g. rope_theta=1e6)."""
  if name not in CONFIGS:
    raise ValueError(f"unknown model size {name!r}; expected one of {sorted(CONFIGS)}")
  return CONFIGS[name].replace(**overrides)
