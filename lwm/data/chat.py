"""Chat templates: the model's own (Jinja, rendered as transformers renders them), LWM's, or none.

  text = prompt_text(tokenizer, "What number is shown?", chat_template="auto")
  ids = prompt_ids(tokenizer, "What number is shown?", "auto")     # encoded as transformers does
  head, tail = wrap_ids(tokenizer, "auto")  # prompts built piece by piece: head + ids + tail

`chat_template` is what the commands' `--chat-template` takes:
- auto: the tokenizer's own template (tokenizer_config.json's chat_template or
  chat_template.jinja; LWM's for an LWM import, see lwm.model_dir.load_model), else none;
- none: the text as it is, after the tokenizer's own special tokens (BOS);
- lwm: LWM's format, `<s>You are a helpful assistant. USER: {prompt} ASSISTANT:`;
- a path to a Jinja file.

Rendering follows transformers (utils/chat_template_utils.py): jinja2's
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension, a
`{% generation %}` block that renders its body, `tojson` without HTML escaping, and the globals
`raise_exception` and `strftime_now`; the special tokens (bos_token, eos_token, ...) are template
variables. A rendered template is encoded without adding special tokens (a template that writes
`bos_token` gives one BOS, as apply_chat_template(tokenize=True) does).
"""
import datetime
import functools
import json
import os

CHOICES = ("auto", "none", "lwm")
LWM_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}You are a helpful assistant.{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %} USER: {{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %} ASSISTANT: {{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}")
_USER_TEXT = "\x00user-text\x00"  # stands for the user's text where a prompt is built in pieces


class ChatTemplateError(ValueError):
  """A chat template that cannot be parsed or rendered; the message carries the template's."""


@functools.cache
def _compile(source: str):
  import jinja2
  from jinja2 import nodes
  from jinja2.ext import Extension, loopcontrols
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class Generation(Extension):
    """`{% generation %}...{% endgeneration %}` (marks assistant text for training masks in
    transformers): rendered as its body."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(source)
  except jinja2.exceptions.TemplateError as e:
    raise ChatTemplateError(f"the chat template does not parse: {e}") from None


def render(template: str, messages: list, *, add_generation_prompt: bool = False,
           **variables) -> str:
  """`messages` ([{"role": ..., "content": ...}]) rendered with the Jinja `template`; `variables`
  (the special tokens, tools, ...) are the template's other variables."""
  import jinja2
  variables.setdefault("tools", None)
  variables.setdefault("documents", None)
  try:
    return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **variables)
  except jinja2.exceptions.TemplateError as e:
    raise ChatTemplateError(f"the chat template failed to render: {e}") from None


def resolve(tokenizer, chat_template: str = "auto") -> str | None:
  """The Jinja source that `--chat-template chat_template` names for `tokenizer` (None: none)."""
  if chat_template == "none":
    return None
  if chat_template == "lwm":
    return LWM_TEMPLATE
  if chat_template == "auto":
    return tokenizer.chat_template
  if not os.path.isfile(chat_template):
    raise ValueError(f"--chat-template {chat_template!r} is neither one of {', '.join(CHOICES)} "
                     "nor a Jinja template file")
  with open(chat_template, encoding="utf-8") as f:
    return f.read()


def run_setting(tokenizer, chat_template: str = "auto") -> dict:
  """What an evaluation's run.json records: {"chat_template": ...} when a template applies, {}
  when none does (so runs without one resume from results written before templates)."""
  return {} if resolve(tokenizer, chat_template) is None else {"chat_template": chat_template}


def user_turn(tokenizer, template: str, user_text: str) -> str:
  """One user message rendered with the generation prompt (the assistant's turn opened)."""
  return tokenizer.apply_chat_template([{"role": "user", "content": user_text}],
                                       add_generation_prompt=True, chat_template=template)


def prompt_text(tokenizer, user_text: str, chat_template: str = "auto") -> str:
  """The prompt as text: the rendered template, or `user_text` itself when there is none (the
  tokenizer adds its BOS when it is encoded: see prompt_ids)."""
  template = resolve(tokenizer, chat_template)
  return user_text if template is None else user_turn(tokenizer, template, user_text)


def prompt_ids(tokenizer, user_text: str, chat_template: str = "auto") -> list[int]:
  """The prompt's ids: a rendered template encoded without special tokens (it writes its own), or
  the plain text with the tokenizer's prefix (BOS) and none after."""
  template = resolve(tokenizer, chat_template)
  if template is None:
    return list(tokenizer.prefix_ids) + tokenizer.encode(user_text, add_special_tokens=False)
  return tokenizer.encode(user_turn(tokenizer, template, user_text), add_special_tokens=False)


def wrap_ids(tokenizer, chat_template: str = "auto") -> tuple[list[int], list[int]]:
  """(ids before, ids after) the user's text in a prompt: for prompts built from token pieces
  (needle haystacks, videos). Without a template: (the tokenizer's prefix, [])."""
  template = resolve(tokenizer, chat_template)
  if template is None:
    return list(tokenizer.prefix_ids), []
  rendered = user_turn(tokenizer, template, _USER_TEXT)
  if rendered.count(_USER_TEXT) != 1:
    raise ChatTemplateError("the chat template does not write the user's message exactly once "
                            f"(rendered: {rendered!r})")
  before, after = rendered.split(_USER_TEXT)
  if tokenizer.marks_word_starts:  # the user text's ids start a word themselves: one space less
    before = before[:-1] if before.endswith(" ") else before
    after = after[1:] if after.startswith(" ") else after
  return (tokenizer.encode(before, add_special_tokens=False),
          tokenizer.encode(after, add_special_tokens=False))
