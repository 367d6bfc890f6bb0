"""Ring attention memory from XLA's compiled memory analysis (compile only, nothing runs)."""
import numpy as np

from lwm.bench import attention_memory as measure

GiB = 2**30


def test_temp_memory_grows_linearly_with_tokens_per_device():
  tokens = [65536, 262144, 1048576]
  temp = [measure.compiled_memory("ring_causal", n, 8)["temp"] for n in tokens]
  slope = np.polyfit(np.log(tokens), np.log(temp), 1)[0]
  assert slope <= 1.1, (slope, temp)
  assert temp[-1] <= 1.2 * GiB, temp[-1] / GiB


def test_temp_memory_does_not_grow_with_device_count():
  # Same tokens per device on 2, 4 and 8 devices: a device holds one block whatever the ring size.
  temp = {p: measure.compiled_memory("ring_causal", 16384 * p, p)["temp"] for p in (2, 4, 8)}
  assert max(temp.values()) <= 1.1 * min(temp.values()), temp


def test_keys_and_values_travel_by_collective_permute_not_all_gather():
  ring = measure.compiled_memory("ring_causal", 8192, 8)
  assert ring["collective_permutes"] > 0 and ring["all_gathers"] == 0
  baseline = measure.compiled_memory("all_gather_causal", 8192, 8)
  assert baseline["all_gathers"] > 0 and baseline["temp"] > ring["temp"]
