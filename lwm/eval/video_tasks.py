"""Video tasks beyond one needle (VNBench's retrieval, ordering and counting; V-NIAH's depths), in
the video needle's format (lwm/eval/video_needle.py):

  BOS <vision> f1 <eof> ... fN <eov> </vision> Question: {question} Answer:

- video_retrieve: one frame showing a number at the cell's depth; "What number is shown in the
  video?" -> " 47".
- video_order: K frames with distinct numbers (default 3), the first at the cell's depth and the
  others spread after it; "In what order are the numbers shown in the video?" -> " 12, 47, 80"
  (right only in that order).
- video_count: one number shown on c frames (1 <= c <= max_count), spread the same way; "How many
  times is the number 47 shown in the video?" -> " 3".

With `choices` > 1 a question lists that many options ("(A) 12 (B) 47 ...", VNBench uses 4) and is
asked once per rotation of the options: it counts as right only if every rotation is answered with
the right letter. Needle frames go before haystack frame round(d% x haystack frames), so depths
are exact in tokens at frame granularity.
"""
import itertools

import numpy as np

from lwm.eval import needle, scoring, video_needle
from lwm.eval.sample import Sample, Variant

VIDEO_TASKS = ("video_retrieve", "video_order", "video_count")
RETRIEVE_QUESTION = video_needle.VIDEO_QUESTION
ORDER_QUESTION = "In what order are the numbers shown in the video?"
COUNT_QUESTION = "How many times is the number {value} shown in the video?"
CHOICE_INSTRUCTION = "Answer with the option's letter."


def choice_question(question: str, options: list[str]) -> str:
  return f"{question} {scoring.choice_text(options)} {CHOICE_INSTRUCTION}"


def longest_question(task: str, digits: int, choices: int, needles: int) -> str:
  """A question at least as long as any this task asks (to size the haystack once per length)."""
  value = "8" * digits
  if task == "video_retrieve":
    question, option = RETRIEVE_QUESTION, value
  elif task == "video_order":
    question, option = ORDER_QUESTION, ", ".join([value] * needles)
  else:
    question, option = COUNT_QUESTION.format(value=value), "88"
  return choice_question(question, [option] * choices) if choices > 1 else question


def haystack_frame_count(tokenizer, vocab, context_length: int, codes_per_frame: int, task: str,
                         *, digits: int, choices: int, needles: int, max_count: int) -> int:
  """Haystack frames of a `context_length` prompt of `task` (the needle frames take the rest)."""
  overhead = video_needle.prompt_overhead(tokenizer, vocab,
                                          longest_question(task, digits, choices, needles))
  inserted = {"video_retrieve": 1, "video_order": needles, "video_count": max_count}[task]
  frames = video_needle.frames_in_context(context_length, codes_per_frame, overhead) - inserted
  if frames < 1:
    raise ValueError(f"context_length={context_length} leaves no haystack frame for {task} with "
                     f"{inserted} needle frames")
  return frames


def _options(rng, right: str, others: list[str], choices: int) -> list[str]:
  """The right option and up to choices - 1 others, in a random order."""
  others = [o for o in dict.fromkeys(others) if o != right][:choices - 1]
  options = [right] + others
  return [options[i] for i in rng.permutation(len(options))]


def _distractors(rng, task: str, expected: list[str], *, digits: int, values, choices: int,
                 max_count: int) -> list[str]:
  if task == "video_retrieve":
    pool = needle.draw_values(rng, choices + 1, digits=digits, values=values)
    return [v for v in pool if v != expected[0]]
  if task == "video_order":
    perms = [", ".join(p) for p in itertools.permutations(expected)][1:]
    return [perms[i] for i in rng.permutation(len(perms))]
  counts = [str(c) for c in range(1, max(max_count, choices) + 1)]
  return [counts[i] for i in rng.permutation(len(counts))]


def make_video_sample(task: str, tokenizer, vocab, encoder, haystack_codes: np.ndarray, rng,
                      depth: float, *, digits: int = 3, values=None, needles: int = 3,
                      max_count: int = 4, choices: int = 0) -> Sample:
  """A sample of `task` (VIDEO_TASKS). haystack_codes `[frames, codes_per_frame]`: the haystack
  (see haystack_frame_count); encoder: frames `[n, s, s, 3]` uint8 -> codes `[n, codes]`."""
  if not 0 <= depth <= 100:
    raise ValueError(f"depth={depth} must be a percentage in [0, 100]")
  size = encoder.config.resolution
  if task == "video_retrieve":
    shown = needle.draw_values(rng, 1, digits=digits, values=values)
    expected, question, ordered = shown, RETRIEVE_QUESTION, False
  elif task == "video_order":
    shown = needle.draw_values(rng, needles, digits=digits, values=values)
    expected, question, ordered = shown, ORDER_QUESTION, True
  elif task == "video_count":
    [value] = needle.draw_values(rng, 1, digits=digits, values=values)
    count = int(rng.integers(1, max_count + 1))
    shown, expected = [value] * count, [str(count)]
    question, ordered = COUNT_QUESTION.format(value=value), False
  else:
    raise ValueError(f"unknown video task {task!r}; choose from {', '.join(VIDEO_TASKS)}")
  frames = len(haystack_codes)
  depths = needle.needle_depths(depth, len(shown))
  at = [int(round(d / 100.0 * frames)) for d in depths]
  needle_codes = encoder(np.stack([video_needle.needle_frame(v, size) for v in shown]))
  pieces, previous = [], 0
  for index, codes in zip(at, needle_codes):
    pieces += [haystack_codes[previous:index], codes[None]]
    previous = index
  codes = np.concatenate(pieces + [haystack_codes[previous:]])
  per_frame = codes.shape[1] + 1
  right = ", ".join(expected)
  if choices > 1:
    options = _options(rng, right, _distractors(rng, task, expected, digits=digits, values=values,
                                                choices=choices, max_count=max_count), choices)
    questions = [(choice_question(question, rotated), scoring.LETTERS[rotated.index(right)])
                 for rotated in scoring.rotations(options)]
  else:
    options, questions = None, [(question, None)]
  variants = []
  for asked, letter in questions:
    tokens, mask, start = video_needle.video_prompt_tokens(tokenizer, vocab, codes, asked)
    variants.append(Variant(tokens, mask, [letter] if letter else expected,
                            f" {letter}" if letter else needle.text_answer(expected), letter))
  info = {"shown": shown, "question": question, "options": options, "frames": len(codes),
          "needle_frames": [i + k for k, i in enumerate(at)],
          "needle_positions": [start + (i + k) * per_frame for k, i in enumerate(at)],
          "needle_depths": [100.0 * i / frames for i in at]}
  return Sample(task, variants, scoring.NUMBER, ordered=ordered, depth=info["needle_depths"][0],
                info=info)
