"""Trains one stage from an ml-collections config file.

  python scripts/train.py --config configs/tiny.py:stage1 --workdir /tmp/stage1 \
      [--config.train.steps=10 ...] \
      [--coordinator_address host:port --num_processes N --process_id I]

Rerunning the same command resumes. When there is no accelerator, the CPU is split into as many
simulated devices as the config's mesh needs (set before JAX starts). Multi-host: pass the three
distributed flags, or --distributed to let jax.distributed.initialize() read SLURM / TPU pod
settings.
"""
import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "stage config file[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints and metrics")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize()")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  config = _CONFIG.value
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  std_logging.getLogger("lwm").setLevel(std_logging.INFO)  # one line per log step
  from lwm import launch  # noqa: E402 (sets up devices before JAX initialises)
  launch.setup_devices(config, num_processes=_NUM_PROCESSES.value or 1)
  launch.initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                _PROCESS_ID.value)
  from lwm import train
  train.train(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
