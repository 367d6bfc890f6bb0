"""Process set-up before JAX starts: simulated CPU devices and multi-host initialisation."""
import os

from lwm import mesh_spec, stage_schema

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def set_device_count(count: int | None, *, replace: bool = False, environ=None) -> None:
  """Gives the CPU backend `count` simulated devices through XLA_FLAGS (before JAX initialises).

  An XLA_FLAGS that already sets a count wins (a test harness or the user chose it) unless
  `replace`; `count=None` removes the flag (for child processes that size their own). Harmless
  with accelerators: the flag only shapes the host (CPU) platform, which JAX then does not use by
  default. `environ`: the environment dict to change (default: this process's).
  """
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "").split()
  present = any(f.startswith(DEVICE_COUNT_FLAG) for f in flags)
  if present and not replace and count is not None:
    return
  flags = [f for f in flags if not f.startswith(DEVICE_COUNT_FLAG)]
  if count is not None:
    flags.append(f"{DEVICE_COUNT_FLAG}={count}")
  environ["XLA_FLAGS"] = " ".join(flags)


def setup_devices(config, num_processes: int = 1) -> None:
  """Gives the CPU backend as many devices as this process's share of the config's mesh."""
  if config.mesh == "auto":  # the planner (lwm.bench.mesh_plan) takes the devices there are
    return
  set_device_count(stage_schema.device_count_needed(config) // max(num_processes, 1))


def setup_devices_for_mesh(mesh: str | None) -> None:
  """A command line's --mesh ("sp=8", "1,2,1,4"): the CPU gets as many devices as it needs. Nothing
  without a mesh, or when a -1 leaves the count to the devices there are."""
  count = mesh_spec.device_count(mesh) if mesh else None
  if count is not None:
    set_device_count(count)


def add_model_flags(parser) -> None:
  """The flags of a command that loads a model (read by `lwm.model_dir.load_for_command`)."""
  add = parser.add_argument
  add("--checkpoint", required=True, help="a model directory (training workdir, "
      "scripts/import_lwm.py's output) or a Hugging Face directory")
  add("--tokenizer", default=None, help="the text tokenizer (default: the model's)")
  add("--vqgan", default=None, help="VQGAN directory (default: the model's)")
  add("--mesh", default=None,
      help="e.g. sp=8, hp=2,sp=4 or dp,fsdp,tp,hp,sp sizes (default: all devices on sp)")
  add("--dtype", default=None,
      help="activation dtype (default: the stage's; float32 for HF directories)")


def add_chat_template_argument(parser) -> None:
  """--chat-template of the evaluation commands (lwm.data.chat)."""
  parser.add_argument("--chat-template", default="auto",
                      help="auto: the model's own (tokenizer_config.json or chat_template.jinja; "
                           "LWM's for an LWM import), else none; none: the text after BOS; lwm: "
                           "LWM's format; or a Jinja file")


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
