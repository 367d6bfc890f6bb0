"""Process set-up before training: simulated CPU devices and multi-host initialisation."""
import os

from lwm import stage


def setup_devices(config, num_processes: int = 1) -> None:
  """Gives the CPU backend as many devices as this process's share of the mesh (before JAX starts).

  Harmless with accelerators: the flag only shapes the host (CPU) platform, which JAX then does not
  use by default.
  """
  needed = stage.device_count_needed(config) // max(num_processes, 1)
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={needed}".strip()


def initialize_distributed(auto: bool, coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
  """jax.distributed.initialize from explicit flags, or from the environment when `auto`."""
  import jax
  if coordinator is not None:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id")
    # CPU collectives across processes (only the CPU backend reads this; must precede initialize).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif auto:
    jax.distributed.initialize()
