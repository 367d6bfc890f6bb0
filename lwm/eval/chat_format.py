"""How a benchmark's task text is wrapped for the model (`--chat-template`), in one place.

  format_prompt = prompt_formatter("lwm")
  format_prompt("What is 2 + 2?")
  # -> "You are a helpful assistant. USER: What is 2 + 2? ASSISTANT: "

A formatter is any `Callable[[str], str]` that wraps the whole task text (RULER applies its model
template to the task input and then appends the answer prefix; V-NIAH puts the video and question
between the template's two halves, see `split_template`).

- none: the text as it is (RULER's `base`).
- lwm: RULER's `lwm-chat` row of scripts/data/template.py, verbatim (its trailing space
  included), the template of RULER's published LWM-Text-Chat-1M scores.
- auto, or a Jinja file: the model's own chat template (`lwm.data.chat`; auto without one is
  none), one user turn with the generation prompt. RULER encodes the whole input with the
  tokenizer's special tokens, so a BOS the template writes itself is left to the tokenizer.
"""
from typing import Callable

CHAT_TEMPLATES = {
    "none": "{task}",
    "lwm": "You are a helpful assistant. USER: {task} ASSISTANT: ",
}
_SENTINEL = "\x00TASK\x00"


def prompt_formatter(name: str, tokenizer=None) -> Callable[[str], str]:
  """The formatter of `--chat-template NAME`: RULER's rows by name, else the model's template."""
  if name in CHAT_TEMPLATES:
    template = CHAT_TEMPLATES[name]
    return lambda task: template.replace("{task}", task)
  from lwm.data import chat
  if tokenizer is None:
    raise ValueError(f"--chat-template {name!r} needs the model's tokenizer")
  source = chat.resolve(tokenizer, name)
  if source is None:
    return lambda task: task
  bos = tokenizer.special_tokens_map.get("bos_token") if tokenizer.prefix_ids else None

  def format_prompt(task: str) -> str:
    text = chat.user_turn(tokenizer, source, task)
    return text[len(bos):] if bos and text.startswith(bos) else text  # the tokenizer adds it

  return format_prompt


def split_template(format_prompt: Callable[[str], str]) -> tuple[str, str]:
  """(text before the task, text after it): RULER and V-NIAH put their own parts between."""
  wrapped = format_prompt(_SENTINEL)
  if wrapped.count(_SENTINEL) != 1:
    raise ValueError("the prompt formatter must include the task text exactly once, got "
                     f"{wrapped!r}")
  before, after = wrapped.split(_SENTINEL)
  return before, after
