"""Hugging Face config.json of the LLaMA family (llama, qwen2, mistral) to ModelConfig and back.

Read as transformers 4.x and 5.x read it, family by family: what each family's modeling code
reads is honoured (biases, head_dim, RoPE, sliding window), with that family's defaults for a
missing field; a field that would change the function and that lwm does not implement is refused
with an error naming it. docs/model.md lists every field and what becomes of it.
"""
import logging

import jax.numpy as jnp

from lwm.model import rope
from lwm.model.config import ModelConfig

log = logging.getLogger(__name__)

MODEL_TYPES = ("llama", "qwen2", "mistral")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "mistral": "MistralForCausalLM"}

# transformers' defaults, per family, for fields a config.json may leave out (and that differ).
_DEFAULTS = {
    "llama": {"num_key_value_heads": None, "max_position_embeddings": 2048},
    "qwen2": {"num_key_value_heads": 32, "max_position_embeddings": 32768,
              "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28},
    "mistral": {"num_key_value_heads": 8, "max_position_embeddings": 131072,
                "sliding_window": 4096},
}
# Both names transformers' ACT2FN maps to torch's SiLU.
_SILU = ("silu", "swish")
_ROPE_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")
_LAYER_TYPES = ("full_attention", "sliding_attention")


# ------------------------------------------------------------------------------------ RoPE

def _rope_from_hf(hf: dict) -> tuple[float, tuple]:
  """(rope_theta, rope_scaling) from a config.json, as both transformers majors read it.

  4.x reads top-level `rope_theta` and `rope_scaling`; 5.x reads `rope_parameters` (with
  `rope_theta` inside), where a non-null `rope_scaling` takes its place and a top-level
  `rope_theta` fills a missing one. Where the two readings would differ, the config is refused.
  """
  scaling, params = hf.get("rope_scaling"), hf.get("rope_parameters")
  strip = lambda d: {k: v for k, v in d.items() if k != "rope_theta"}
  if scaling and params and strip(scaling) != strip(params):
    raise ValueError(f"config.json: rope_scaling={scaling} and rope_parameters={params} disagree "
                     "(transformers 4.x reads the first, 5.x would too); make them equal")
  field = "rope_scaling" if scaling else "rope_parameters"
  source = dict(scaling or params or {})
  thetas = {float(t) for t in (hf.get("rope_theta"), source.get("rope_theta")) if t is not None}
  if len(thetas) > 1:
    raise ValueError(f"config.json: rope_theta={hf.get('rope_theta')} but "
                     f"{field}.rope_theta={source.get('rope_theta')}; they must agree")
  theta = thetas.pop() if thetas else 10000.0  # The families' default.
  kind = source.get("rope_type", source.get("type", "default"))
  if "type" in source and source.get("rope_type", kind) != source["type"]:
    raise ValueError(f"config.json: {field} has rope_type={source['rope_type']!r} and "
                     f"type={source['type']!r}; they must agree")
  if float(source.get("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError(f"config.json: {field}.partial_rotary_factor="
                     f"{source['partial_rotary_factor']}; only full rotary embeddings (1.0) are "
                     "implemented")
  if kind == "default":
    extra = sorted(set(source) - set(_ROPE_KEYS))
    if extra:
      raise ValueError(f"config.json: {field} of rope_type 'default' has {extra}, which it does "
                       "not use; remove them or give the scaling's rope_type")
    return theta, ()
  if kind not in rope.SCALING_KEYS:
    raise ValueError(f"config.json: {field}.rope_type={kind!r} is not implemented; supported: "
                     f"'default', {', '.join(repr(k) for k in rope.SCALING_KEYS)}")
  scaled = {k: v for k, v in source.items() if k not in _ROPE_KEYS}
  if kind == "llama3":  # 5.x fills it from max_position_embeddings; 4.x requires it.
    scaled.setdefault("original_max_position_embeddings",
                      hf.get("max_position_embeddings", 2048))
  try:
    return theta, rope.normalize_scaling({"rope_type": kind, **scaled})
  except ValueError as e:
    raise ValueError(f"config.json: {field}: {e}") from None


# ------------------------------------------------------------------------------------ families

def _flag(hf: dict, field: str, default: bool = False) -> bool:
  value = hf.get(field, default)
  if not isinstance(value, bool):
    raise ValueError(f"config.json: {field}={value!r}; expected true or false")
  return value


def _biases(hf: dict, family: str) -> dict:
  """ModelConfig's bias flags as the family's modeling code builds its Linear layers."""
  if family == "llama":  # attention_bias: q, k, v and o; mlp_bias: gate, up and down.
    attention, mlp = _flag(hf, "attention_bias"), _flag(hf, "mlp_bias")
    return dict(qkv_bias=attention, out_bias=attention, mlp_bias=mlp)
  for field in ("attention_bias", "mlp_bias"):
    if hf.get(field):
      log.warning("config.json: %s=%s is not read by model_type %r (nor by transformers)", field,
                  hf[field], family)
  # Qwen2: q, k, v with biases, o and the MLP without; Mistral: none.
  return dict(qkv_bias=family == "qwen2", out_bias=False, mlp_bias=False)


def _window(value, family: str) -> int:
  if value is None:
    return 0
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"config.json: sliding_window={value!r} (model_type {family!r}); expected "
                     "null or a positive number of tokens")
  return value


def _sliding_window(hf: dict, family: str, num_layers: int) -> int:
  """The attention window transformers applies to some layer of this model (0: none).

  Mistral applies `sliding_window` to every layer unless it is null. Qwen2 applies it only with
  `use_sliding_window`, to the layers `layer_types` marks "sliding_attention" (by default those
  from `max_window_layers` on). LLaMA has none.
  """
  defaults = _DEFAULTS[family]
  if family == "llama":
    return 0
  window = _window(hf.get("sliding_window", defaults["sliding_window"]), family)
  if family == "mistral":
    return window
  if not _flag(hf, "use_sliding_window", defaults["use_sliding_window"]):
    return 0  # Qwen2Config then sets sliding_window to None: every layer attends fully.
  types = hf.get("layer_types") or [
      "sliding_attention" if window and i >= hf.get("max_window_layers",
                                                    defaults["max_window_layers"])
      else "full_attention" for i in range(num_layers)]
  unknown = sorted(set(types) - set(_LAYER_TYPES))
  if unknown:
    raise ValueError(f"config.json: layer_types has {unknown}; lwm implements {_LAYER_TYPES}")
  return window if "sliding_attention" in types else 0


def _refuse_unimplemented(hf: dict) -> None:
  """Refuses, by name, the fields the three families read that lwm computes only one way."""
  act = hf.get("hidden_act", "silu")
  if act not in _SILU:
    raise ValueError(f"config.json: hidden_act={act!r} is not implemented (only 'silu'); the "
                     "logits would differ from transformers'")
  if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError(f"config.json: partial_rotary_factor={hf['partial_rotary_factor']} is not "
                     "implemented (only 1.0, full rotary embeddings)")
  if hf.get("quantization_config"):
    method = hf["quantization_config"].get("quant_method", "?")
    raise ValueError(f"config.json: quantization_config (quant_method {method!r}) is not "
                     "implemented; start from the unquantised checkpoint")
  if hf.get("attention_dropout", 0.0):  # Training-only in transformers; lwm trains without it.
    log.warning("config.json: attention_dropout=%s acts only in transformers' training; lwm "
                "applies no dropout", hf["attention_dropout"])
  if hf.get("pretraining_tp", 1) != 1:  # Same function; only the order of HF's sums differs.
    log.info("config.json: pretraining_tp=%s only splits HF's matmuls; ignored",
             hf["pretraining_tp"])


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """ModelConfig from a HF config.json dict of model_type llama, qwen2 or mistral; `overrides`
  replace any field.

  A missing field takes the family's transformers default. A sliding window (Mistral v0.1; Qwen2
  with use_sliding_window) is honoured up to its length: max_sequence_length (the
  `max_sequence_length` override, else max_position_embeddings cut to the window) must not exceed
  it. Raises ValueError naming any field whose value lwm does not implement (another model_type,
  activation, partial or unsupported RoPE, a quantised checkpoint, a window shorter than the
  sequence asked for).
  """
  family = hf.get("model_type", "llama")
  if family not in MODEL_TYPES:
    raise ValueError(f"config.json: model_type={family!r} is not implemented; lwm reads "
                     f"{', '.join(repr(t) for t in MODEL_TYPES)}")
  _refuse_unimplemented(hf)
  theta, scaling = _rope_from_hf(hf)
  defaults = _DEFAULTS[family]
  num_layers = hf["num_hidden_layers"]
  window = _sliding_window(hf, family, num_layers)
  length = hf.get("max_position_embeddings", defaults["max_position_embeddings"])
  if window and "max_sequence_length" in overrides and overrides["max_sequence_length"] > window:
    raise ValueError(f"config.json: sliding_window={window} (model_type {family!r}) is shorter "
                     f"than max_sequence_length={overrides['max_sequence_length']}: lwm computes "
                     f"full attention, which equals the window's only up to {window} tokens; "
                     f"use a sequence length of at most {window}")
  if window and length > window:
    log.info("config.json: sliding_window=%d < max_position_embeddings=%d; sequences are held to "
             "%d tokens, where full attention equals the window's", window, length, window)
    length = window
  kv_heads = hf.get("num_key_value_heads", defaults["num_key_value_heads"])
  fields = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"], num_layers=num_layers,
      num_heads=hf["num_attention_heads"], num_kv_heads=kv_heads or hf["num_attention_heads"],
      head_dim=hf.get("head_dim") or 0, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=theta, rope_scaling=scaling, max_sequence_length=length,
      initializer_range=hf.get("initializer_range", 0.02), sliding_window=window,
      **_biases(hf, family))
  fields.update(overrides)
  return ModelConfig(**fields)


# ------------------------------------------------------------------------------------ export

def export_family(config: ModelConfig) -> tuple[str, dict, tuple[str, ...]]:
  """(model_type, its config.json fields for biases and window, biases to write as zeros).

  q/k/v biases alone are Qwen2's; any other biases are LLaMA's attention_bias (q, k, v and o
  together: a missing one is written as zeros, which computes the same) and mlp_bias; a window
  without biases is Mistral's.
  """
  window = config.sliding_window
  if config.qkv_bias and not (config.out_bias or config.mlp_bias):
    return "qwen2", {"use_sliding_window": bool(window), "sliding_window": window or None,
                     "max_window_layers": 0 if window else config.num_layers,
                     "layer_types": [("sliding" if window else "full") + "_attention"] *
                     config.num_layers}, ()
  if window and not (config.qkv_bias or config.out_bias or config.mlp_bias):
    return "mistral", {"sliding_window": window}, ()
  if window:
    raise ValueError(f"sliding_window={window} with qkv_bias={config.qkv_bias}, out_bias="
                     f"{config.out_bias}, mlp_bias={config.mlp_bias}: no LLaMA-family config "
                     "says both; export with sliding_window=0 if full attention is meant")
  attention = config.qkv_bias or config.out_bias
  zeros = ()
  if attention:
    zeros = ("bq", "bk", "bv") if not config.qkv_bias else ("bo",) if not config.out_bias else ()
  return "llama", {"attention_bias": attention, "mlp_bias": config.mlp_bias}, zeros


def hf_config(config: ModelConfig, dtype, *, tied: bool = False, token_ids: dict | None = None
              ) -> dict:
  """The config.json of a LLaMA-family model with `config`'s text shapes, biases and RoPE.

  RoPE is written both ways: top-level rope_theta + rope_scaling (read by transformers 4.x; 5.x
  takes a non-null rope_scaling as its rope_parameters) and rope_parameters (read by 5.x).
  tied: the head is the embedding (no lm_head tensor). token_ids: bos_token_id, eos_token_id (an
  id or a list), pad_token_id, as the tokenizer's model directory gives them (null if absent).
  """
  family, fields, _ = export_family(config)
  scaling = dict(config.rope_scaling) or None
  parameters = {"rope_type": "default", **(scaling or {}), "rope_theta": config.rope_theta}
  head_dim = {"head_dim": config.dim_per_head}
  if family == "qwen2" and config.dim_per_head == config.hidden_size // config.num_heads:
    head_dim = {}  # Qwen2Config has no head_dim field (its attention reads one if given).
  ids = token_ids or {}
  return {
      "architectures": [ARCHITECTURES[family]], "model_type": family, "hidden_act": "silu",
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      **head_dim, "rms_norm_eps": config.rms_norm_eps,
      "rope_theta": config.rope_theta, "rope_scaling": scaling, "rope_parameters": parameters,
      "max_position_embeddings": config.max_sequence_length,
      "initializer_range": config.initializer_range, **fields,
      "attention_dropout": 0.0, "tie_word_embeddings": tied,
      **({"pretraining_tp": 1} if family == "llama" else {}),
      "torch_dtype": jnp.dtype(dtype).name, "dtype": jnp.dtype(dtype).name,
      "bos_token_id": ids.get("bos_token_id"), "eos_token_id": ids.get("eos_token_id"),
      "pad_token_id": ids.get("pad_token_id"),
  }
