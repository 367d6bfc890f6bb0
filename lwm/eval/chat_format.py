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

The tokenizer work (issue 23) adds the model's own chat template (`apply_chat_template`); that is
the one function to re-point: `prompt_formatter(name, tokenizer)`.
"""
from typing import Callable

CHAT_TEMPLATES = {
    "none": "{task}",
    "lwm": "You are a helpful assistant. USER: {task} ASSISTANT: ",
}
_SENTINEL = "\x00TASK\x00"


def prompt_formatter(name: str, tokenizer=None) -> Callable[[str], str]:
  """The formatter of `--chat-template NAME` (`tokenizer`: for the model's own template, later)."""
  del tokenizer  # the model's own chat template arrives with the tokenizer work (issue 23)
  if name not in CHAT_TEMPLATES:
    raise ValueError(f"--chat-template {name!r} is not known; choose from "
                     f"{', '.join(CHAT_TEMPLATES)}")
  template = CHAT_TEMPLATES[name]
  return lambda task: template.replace("{task}", task)


def split_template(format_prompt: Callable[[str], str]) -> tuple[str, str]:
  """(text before the task, text after it): RULER and V-NIAH put their own parts between."""
  wrapped = format_prompt(_SENTINEL)
  if wrapped.count(_SENTINEL) != 1:
    raise ValueError("the prompt formatter must include the task text exactly once, got "
                     f"{wrapped!r}")
  before, after = wrapped.split(_SENTINEL)
  return before, after
