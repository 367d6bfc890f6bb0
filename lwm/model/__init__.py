"""The video-language transformer (LLaMA-style, LWM vision vocabulary, ring attention)."""
from lwm.model.config import CONFIGS, ModelConfig, get_config
from lwm.model.hf import from_hf_llama, to_hf_llama
from lwm.model.loss import BATCH_KEYS, loss_fn
from lwm.model.step import (abstract_model, adamw, create_sharded, jit_train_step, lower_train_step,
                            make_train_step)
from lwm.model.transformer import Transformer, count_params

__all__ = ["CONFIGS", "ModelConfig", "get_config", "from_hf_llama", "to_hf_llama", "BATCH_KEYS",
           "loss_fn", "abstract_model", "adamw", "create_sharded", "jit_train_step",
           "lower_train_step", "make_train_step", "Transformer", "count_params"]
