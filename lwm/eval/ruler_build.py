"""RULER's samples fitted to a length in tokens, as RULER fits them: the haystack size found once
per task and length by its binary search (prompt tokens + tokens_to_generate <= length), each
sample shrunk by the task's step while it does not fit, and the answer prefix cut off the end.

  task = RulerTask("niah_single_1", 4096, data, count_tokens)
  sample = task.sample(0)   # Sample(index, input, answer_prefix, outputs, length)

`count_tokens(text)` is the length of the prompt as the model gets it (BOS included where the
tokenizer adds one; RULER counts without it, so lwm's prompts are at most one token shorter).
Sample i is drawn from its own generator (seed, task, length, i), so a resumed run rebuilds it.
"""
import dataclasses
import random

from lwm.eval import ruler_tasks as rt


@dataclasses.dataclass
class Sample:
  """input: the prompt up to the answer prefix (model template included); the model is given
  input + answer_prefix. length: its tokens + tokens_to_generate (RULER's `length`)."""
  index: int
  input: str
  answer_prefix: str
  outputs: list
  length: int


def largest_fitting(fits, low: int, high: int) -> int | None:
  """The largest n in [low, high] with fits(n) (fits non-increasing in n), None when none."""
  best = None
  while low <= high:
    mid = (low + high) // 2
    if fits(mid):
      best, low = mid, mid + 1
    else:
      high = mid - 1
  return best


class RulerTask:
  """One of RULER's tasks (`ruler_tasks.TASKS`) at one length (`max_seq_length` tokens)."""

  def __init__(self, name: str, max_seq_length: int, data: rt.TaskData, count_tokens,
               format_prompt=None):
    if name not in rt.TASKS:
      raise ValueError(f"unknown RULER task {name!r}; choose from {', '.join(rt.TASKS)}")
    self.name, self.length, self.data, self.count = name, max_seq_length, data, count_tokens
    self.family, self.args = rt.TASKS[name]
    self.template = rt.full_template(self.family, format_prompt)
    self.tokens_to_generate = rt.TEMPLATES[self.family][2]
    self.metric = rt.METRICS[self.family]
    self.one_shot = self._vt_one_shot() if self.family == "variable_tracking" else ""
    self.step = self._step()
    self.size = self._fit()

  def _rng(self, what) -> random.Random:
    return random.Random(f"{self.data.seed}/{self.name}/{self.length}/{what}")

  # ---------------------------------------------------------------------------- One text

  def _text(self, rng, size: int, index: int = 0) -> tuple[str, list]:
    f, a, t = self.family, self.args, self.template
    if f == "niah":
      return rt.niah_text(rng, size, t, a, self.data)
    if f == "variable_tracking":
      return rt.vt_text(rng, size, t, a)
    if f == "common_words_extraction":
      return rt.cwe_text(rng, size, t, a, self.data, self.length)
    if f == "qa":
      questions, docs = self._qa()
      return rt.qa_text(rng, index, size, t, questions, docs, self.data.seed)
    raise AssertionError(f)  # fwe is fitted by _fwe_fit

  def _qa(self):
    dataset = self.args["dataset"]
    if dataset not in self.data.qa:
      flag = {"squad": "--squad", "hotpotqa": "--hotpotqa"}[dataset]
      raise ValueError(f"{self.name} needs {dataset}'s questions: pass {flag} FILE")
    return self.data.qa[dataset]

  def _step(self) -> int:
    """RULER's `incremental`: the step of its search's lower bound and of a sample's shrinking."""
    if self.family == "niah":
      if self.args["type_haystack"] == "essay":
        return 500
      return 5 if self.length < 4096 else 25
    if self.family == "variable_tracking":
      return 5 if self.length < 4096 else 10
    return 10

  # ---------------------------------------------------------------------------- Fitting

  def _fits(self, text: str, extra: int = 0) -> bool:
    return self.count(text) + extra + self.tokens_to_generate <= self.length

  def _fit(self) -> int:
    """RULER's search: an estimate of tokens per unit sets the upper bound (x3; cwe x2)."""
    if self.family == "freq_words_extraction":
      return self._fwe_fit()
    rng, extra = self._rng("search"), 0
    if self.family == "variable_tracking":
      extra = self.count(self.one_shot) if self.one_shot else 0
    probe = 4096 if self.family == "common_words_extraction" else self.step
    per_unit = self.count(self._text(rng, probe)[0]) / probe
    if self.family == "common_words_extraction":
      high = int(self.length // per_unit) * 2
    else:
      high = int(self.length / per_unit * 3)
    best = largest_fitting(lambda n: self._fits(self._text(rng, n)[0], extra), self.step,
                           max(high, 2 * self.step))
    return self.step if best is None else best

  def _fwe_fit(self) -> int:
    """fwe grows its word count from (length - tokens_to_generate) / 6 by 1/32 of that until the
    text reaches it, then steps back once; the vocabulary is (length - generated) / 50 words."""
    budget = self.length - self.tokens_to_generate
    self.fwe_vocab_size, self.fwe_step = budget // 50, max(1, budget // 32)
    if self.fwe_vocab_size < 4:
      raise ValueError(f"fwe at length {self.length}: a vocabulary of {self.fwe_vocab_size} "
                       "words has no three answers after the noise word")
    vocab = rt.fwe_vocab(self._rng("search"), self.fwe_vocab_size, self.data.seed)
    text = lambda n: rt.fwe_text(vocab, n, self.template, self.args["alpha"], self.data.seed)[0]
    words = budget // 6
    while self.count(text(words)) < budget:
      words += self.fwe_step
    return words - self.fwe_step

  def _vt_one_shot(self) -> str:
    """The worked example: RULER builds it once per length as a 500-token sample of the bare task
    template (3-letter names, value 12345), answered."""
    template = rt.TEMPLATES["variable_tracking"][0] + rt.TEMPLATES["variable_tracking"][1]
    rng, step = self._rng("one-shot"), 5  # RULER: incremental 5
    fits = lambda n: self.count(rt.vt_text(rng, n, template, self.args, one_shot=True)[0]) <= 500
    per_unit = self.count(rt.vt_text(rng, step, template, self.args, True)[0]) / step
    size = largest_fitting(fits, step, max(int(500 / per_unit * 3), 2 * step)) or step
    text, outputs = self._shrink(lambda n: rt.vt_text(rng, n, template, self.args, True), size,
                                 step, lambda t: self.count(t) <= 500, strict=False)
    return text + " " + " ".join(outputs) + "\n"

  def _shrink(self, make, size: int, step: int, fits, strict: bool = True):
    """make(size) until fits(text), `step` smaller each time. Where RULER would loop for ever
    (a size of one step still too long), the step halves, down to the smallest haystack the task
    can have; there the text is refused (`strict`) or kept."""
    smallest = {"variable_tracking": self.args.get("num_hops", 0) + 1,
                "common_words_extraction": self.args.get("num_cw", 0)}.get(self.family, 1)
    while True:
      text, outputs = make(size)
      if fits(text) or (size <= smallest and not strict):
        return text, outputs
      if size <= smallest:
        raise ValueError(f"{self.name} does not fit in {self.length} tokens (with "
                         f"{self.tokens_to_generate} to generate), even with its smallest "
                         "haystack")
      while step > 1 and size - step < smallest:
        step //= 2
      size -= step

  # ---------------------------------------------------------------------------- Samples

  def sample(self, index: int) -> Sample:
    rng = self._rng(index)
    if self.family == "freq_words_extraction":
      vocab = rt.fwe_vocab(rng, self.fwe_vocab_size, self.data.seed)
      make = lambda n: rt.fwe_text(vocab, n, self.template, self.args["alpha"], self.data.seed)
      text, outputs = self._shrink(make, self.size, self.fwe_step, self._fits)
    elif self.family == "variable_tracking":
      def make(n):
        text, outputs = self._text(rng, n)
        # The example goes between the model template and the task text, renamed per sample.
        cut = text.index(rt.TEMPLATES["variable_tracking"][0][:20])
        shot = rt.randomize_one_shot(rng, self.one_shot, self.args["num_hops"])
        return text[:cut] + shot + "\n" + text[cut:], outputs
      text, outputs = self._shrink(make, self.size, self.step, self._fits)
    else:
      text, outputs = self._shrink(lambda n: self._text(rng, n, index), self.size, self.step,
                                   self._fits)
    cut = text.rfind(rt.answer_prefix_marker(self.family))
    return Sample(index, text[:cut], text[cut:], list(outputs),
                  self.count(text) + self.tokens_to_generate)
