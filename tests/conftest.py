"""Every test runs on the CPU with 8 simulated devices (set before JAX initializes)."""
import os

from lwm import launch

os.environ.setdefault("JAX_PLATFORMS", "cpu")
launch.set_device_count(8)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)
