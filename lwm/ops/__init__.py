"""Attention operators for long sequences."""
from lwm.ops.head_parallel import head_parallel_attention, head_parallel_attention_sharded
from lwm.ops.layout import from_zigzag, to_zigzag
from lwm.ops.ring_attention import ring_attention, ring_attention_sharded

__all__ = ["ring_attention", "ring_attention_sharded", "head_parallel_attention",
           "head_parallel_attention_sharded", "to_zigzag", "from_zigzag"]
