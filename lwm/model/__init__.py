"""The video-language transformer (LLaMA-style, LWM vision vocabulary, ring attention)."""
from lwm.model.config import CONFIGS, ModelConfig, get_config
from lwm.model.hf import from_hf_llama, to_hf_llama
from lwm.model.lwm_format import from_lwm
from lwm.model.loss import BATCH_KEYS, loss_fn
from lwm.model.step import (abstract_batch, abstract_model, abstract_train_state, adamw,
                            create_sharded, init_optimizer, jit_train_step, lower_train_step,
                            make_train_step)
from lwm.model.transformer import Transformer, count_params

__all__ = ["CONFIGS", "ModelConfig", "get_config", "from_hf_llama", "to_hf_llama", "from_lwm",
           "BATCH_KEYS", "loss_fn", "abstract_batch", "abstract_model", "abstract_train_state",
           "adamw", "init_optimizer", "create_sharded", "jit_train_step",
           "lower_train_step", "make_train_step", "Transformer", "count_params"]
