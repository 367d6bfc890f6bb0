"""lwm's own long-context suite: RULER-style text tasks (`ruler.py`, on a depth grid) and the video
tasks over context lengths, depths and samples, scored by generation or teacher forcing; resumable
like the needle grid. Its average is not RULER's: RULER as RULER builds and scores it is
`ruler_suite.py` (`eval_long.py --suite ruler`).

  summary = run_long_eval(loaded, output="out/long", tasks=["niah_single", "vt", "video_order"],
                          context_lengths=[1024, 4096], depths=[0, 50, 100], samples=2)

Writes OUT/results.json (one entry per sample: task, context_length, depth (None where it does not
apply), sample, prompt_tokens, expected, answer, score in [0, 1], ...), OUT/run.json (settings; a
rerun with others is refused), OUT/heatmap_<task>.png (depth x length, tasks with depth),
OUT/tasks.png (task x length) and OUT/summary.json (the table, per-length averages and RULER's
effective length).
"""
import logging
import os
import zlib

import numpy as np

from lwm.eval import grid, ruler, scoring, video_tasks
from lwm.files import write_json

log = logging.getLogger(__name__)
TASKS = ruler.TEXT_TASKS + video_tasks.VIDEO_TASKS
SCORING = ("generate", "teacher_forced")


def parse_tasks(text: str) -> list[str]:
  tasks = [t.strip() for t in text.split(",") if t.strip()]
  unknown = [t for t in tasks if t not in TASKS]
  if unknown or not tasks:
    raise ValueError(f"unknown tasks {unknown or text!r}; choose from {', '.join(TASKS)}")
  return tasks


def uses_depth(task: str) -> bool:
  return task in video_tasks.VIDEO_TASKS or ruler.uses_depth(task)


def cells_for(tasks, context_lengths, depths, samples: int) -> list[dict]:
  return [{"task": t, "context_length": int(n), "depth": float(d) if d is not None else None,
           "sample": s}
          for t in tasks for n in context_lengths
          for d in (depths if uses_depth(t) else [None]) for s in range(samples)]


def cell_key(cell: dict) -> tuple:
  depth = cell["depth"]
  return (cell["task"], int(cell["context_length"]), -1.0 if depth is None else float(depth),
          int(cell["sample"]))


def cell_rng(seed: int, cell: dict) -> np.random.Generator:
  depth = cell["depth"]
  return np.random.default_rng([seed, zlib.crc32(cell["task"].encode()), cell["context_length"],
                                10 ** 6 if depth is None else int(round(depth * 1000)),
                                cell["sample"]])


def with_chat_template(sample, prefix: list, wrap: tuple):
  """`sample` with each prompt made the user's message of a chat template: `wrap` (ids before,
  ids after; lwm.data.chat.wrap_ids) replaces the `prefix` (BOS) the prompts start with; the
  recorded positions (info `*_positions`) move with it."""
  head, tail = (np.asarray(ids, np.int32) for ids in wrap)
  for v in sample.variants:
    if v.tokens[:len(prefix)].tolist() != list(prefix):
      raise ValueError(f"a {sample.task} prompt starts with {v.tokens[:len(prefix)].tolist()}, "
                       f"not the tokenizer's prefix {list(prefix)}")
    v.tokens = np.concatenate([head, v.tokens[len(prefix):], tail])
    if v.vision_mask is not None:
      v.vision_mask = np.concatenate([np.zeros(len(head), bool), v.vision_mask[len(prefix):],
                                      np.zeros(len(tail), bool)])
  for key in [k for k in sample.info if k.endswith("_positions")]:
    sample.info[key] = [p + len(head) - len(prefix) for p in sample.info[key]]
  return sample


# ------------------------------------------------------------------------------------ Scoring

def score_variant(variant, answer: str, pattern: str, ordered: bool, options: int) -> dict:
  """A generated answer's score: the option letter (of `options`) for a multiple-choice variant,
  else the task's rule (the stricter of RULER's string match and the exact item rule)."""
  if variant.letter:
    right = float(scoring.choice_letter(answer, options) == variant.letter)
    return {"string_match_all": right, "score": right}
  return scoring.task_score(answer, variant.expected, pattern, ordered)


def generation_budget(tokenizer, sample) -> int:
  """Room for the right answer and 8 tokens more, rounded up to a power of two (>= 16) so that a
  run compiles few decode shapes."""
  need = max(len(tokenizer.encode(v.answer, add_special_tokens=False))
             for v in sample.variants) + 8
  return max(16, 1 << (need - 1).bit_length())


def answer_sample(sample, tokenizer, mode: str, generator, forcer, seed: int) -> dict:
  """Asks every variant of `sample`; the sample scores the minimum (all rotations right)."""
  answers, scores, matches = [], [], []
  for v in sample.variants:
    if mode == "teacher_forced":
      target = tokenizer.encode(v.answer, add_special_tokens=False)
      predicted = forcer(v.tokens, v.vision_mask, target)
      answers.append(tokenizer.decode(predicted, skip_special_tokens=True))
      right = float(predicted == target)
      scores.append(right)
      matches.append(float(np.mean(np.equal(predicted, target))))
    else:
      budget = generation_budget(tokenizer, sample)
      [ids] = generator([v.tokens], None if v.vision_mask is None else [v.vision_mask],
                        max_new_tokens=budget, eos_ids=tokenizer.eos_token_ids, seed=seed)
      answers.append(tokenizer.decode(ids, skip_special_tokens=True))
      result = score_variant(v, answers[-1], sample.pattern, sample.ordered, len(sample.variants))
      scores.append(result["score"])
      matches.append(result["string_match_all"])
  key = "token_accuracy" if mode == "teacher_forced" else "string_match_all"
  return {"answer": answers[0] if len(answers) == 1 else answers, "score": min(scores),
          key: float(np.mean(matches)), "rotations_right": int(sum(s == 1.0 for s in scores))}


# ------------------------------------------------------------------------------------ Summary

def summarize(cells: list[dict], threshold: float = scoring.RULER_THRESHOLD) -> dict:
  """Per task x length mean scores, the per-length average over tasks, the effective length."""
  groups = {}
  for c in cells:
    groups.setdefault(c["task"], {}).setdefault(int(c["context_length"]), []).append(c["score"])
  table = {t: {n: float(np.mean(v)) for n, v in sorted(by.items())} for t, by in groups.items()}
  lengths = sorted({n for by in table.values() for n in by})
  averages = {n: float(np.mean([by[n] for by in table.values() if n in by])) for n in lengths}
  effective = scoring.effective_length(averages, threshold)
  width = max([len(t) for t in table] + [8])
  rows = [f"{'task':{width}} | " + " ".join(f"{grid.length_label(n):>6}" for n in lengths)]
  rows.append("-" * len(rows[0]))
  for name, by in list(table.items()) + [("average", averages)]:
    rows.append(f"{name:{width}} | " + " ".join(f"{by[n]:6.2f}" if n in by else "     -"
                                                for n in lengths))
  line = (f"effective length: {effective if effective is not None else 'none'} (longest length "
          f"whose task average is >= {threshold}; lwm's tasks and stricter scoring, not RULER's "
          "average: --suite ruler gives that)")
  return {"tasks": table, "average": averages, "effective_length": effective,
          "threshold": threshold, "table": "\n".join(rows + [line])}


def task_plot(table: dict, path: str, title: str) -> str:
  """Task (rows) x context length (columns) mean scores as a PNG, red to green."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.colors import LinearSegmentedColormap
  tasks = list(table)
  lengths = sorted({n for by in table.values() for n in by})
  values = np.array([[table[t].get(n, np.nan) for n in lengths] for t in tasks])
  fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(lengths) + 3), max(3, 0.4 * len(tasks) + 1.5)))
  cmap = LinearSegmentedColormap.from_list("tasks", grid.HEATMAP_COLORS)
  image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
  for i, j in np.ndindex(values.shape):
    if not np.isnan(values[i, j]):
      ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7)
  ax.set_xticks(range(len(lengths)), [grid.length_label(n) for n in lengths])
  ax.set_yticks(range(len(tasks)), tasks)
  ax.set_xlabel("Token Limit")
  ax.set_title(title)
  fig.colorbar(image, ax=ax, label="score")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def write_outputs(output: str, cells: list[dict], threshold: float, title: str) -> dict:
  """summary.json, tasks.png and a depth x length heatmap per task with depths."""
  summary = summarize(cells, threshold)
  summary["plot"] = task_plot(summary["tasks"], os.path.join(output, "tasks.png"), title)
  summary["heatmaps"] = {}
  for task in summary["tasks"]:
    mine = [c for c in cells if c["task"] == task and c["depth"] is not None]
    if mine:
      per = grid.summarize(mine)
      summary["heatmaps"][task] = grid.heatmap(per["cells"], per["accuracy"],
                                               os.path.join(output, f"heatmap_{task}.png"), task)
  summary["results"] = os.path.join(output, "results.json")
  write_json(os.path.join(output, "summary.json"), summary)
  return summary


# ------------------------------------------------------------------------------------ The run

def run_long_eval(loaded, *, output: str, tasks, context_lengths, depths=(0.0, 50.0, 100.0),
                  samples: int = 1, scoring_mode: str = "generate", haystack: str | None = None,
                  video: str | None = None, manifest: str | None = None, values=None,
                  text_digits: int = 7, video_digits: int = 3, needles: int = 3,
                  max_count: int = 4, choices: int = 0, seed: int = 0,
                  threshold: float = scoring.RULER_THRESHOLD, progress: bool = True,
                  generator=None, forcer=None, encoder=None, chat_template: str = "none") -> dict:
  """Runs (or resumes) every (task, length, depth, sample) cell; returns the summary.

  loaded: a `lwm.model_dir.LoadedModel`. haystack: a .txt/.jsonl essay for the NIAH tasks
  (default: the built-in filler). video/manifest: the video haystack (default: generated frames).
  values: a pool for needle values (text and video). choices > 1: video questions are multiple
  choice, scored circularly. chat_template: auto, none, lwm or a Jinja file (lwm.data.chat): the
  prompts become the user's message of that template (they grow by its tokens beyond the context
  length). generator / forcer / encoder replace the model's (tests).
  """
  from lwm.data import chat
  from lwm.eval import inference, needle, teacher_forced, video_needle
  if scoring_mode not in SCORING:
    raise ValueError(f"scoring must be one of {SCORING}, got {scoring_mode!r}")
  if choices < 0 or choices == 1 or choices > len(scoring.LETTERS):
    raise ValueError(f"choices={choices}: 0 for open questions, or 2 to {len(scoring.LETTERS)} "
                     "options of a multiple-choice question")
  tokenizer = loaded.tokenizer
  if tokenizer is None:
    raise ValueError("the long-context tasks need a tokenizer: pass --tokenizer PATH")
  video_wanted = [t for t in tasks if t in video_tasks.VIDEO_TASKS]
  if video_wanted and encoder is None:
    from lwm import vqgan
    if not loaded.vqgan_dir:
      raise ValueError(f"{', '.join(video_wanted)} need the VQGAN the model was trained with: "
                       "pass --vqgan DIR")
    encoder = vqgan.FrameEncoder(vqgan.load(loaded.vqgan_dir))
  if scoring_mode == "generate":
    generator = generator or inference.Generator(loaded.model)
  else:
    forcer = forcer or teacher_forced.TeacherForcer(loaded.model)
  values = None if values is None else sorted(set(values))
  templated = chat.run_setting(tokenizer, chat_template)
  settings = dict(kind="long", scoring=scoring_mode, seed=seed, values=values,
                  haystack=os.path.abspath(haystack) if haystack else "synthetic",
                  video=video, manifest=manifest, text_digits=text_digits,
                  video_digits=video_digits, needles=needles, max_count=max_count,
                  choices=choices, source=loaded.source, **templated)
  results = grid.Results(output, settings, key=cell_key)
  wrap = chat.wrap_ids(tokenizer, chat_template) if templated else None
  essay = needle.read_haystack(haystack) if haystack else None
  video_cache = {}

  def video_haystack(task, length):
    per_frame = encoder.config.codes_per_frame
    vocab = video_needle.vocab_for(tokenizer, encoder.config.codebook_size)
    count = video_tasks.haystack_frame_count(
        tokenizer, vocab, length, per_frame, task, digits=video_digits, choices=choices,
        needles=needles, max_count=max_count)
    if count not in video_cache:
      frames = video_needle.haystack_frames(count, encoder.config.resolution, video=video,
                                            manifest=manifest, seed=seed)
      video_cache[count] = encoder(frames)
    return vocab, video_cache[count]

  def build(cell):
    task, length, rng = cell["task"], cell["context_length"], cell_rng(seed, cell)
    depth = 50.0 if cell["depth"] is None else cell["depth"]
    if task in video_tasks.VIDEO_TASKS:
      vocab, hay = video_haystack(task, length)
      return video_tasks.make_video_sample(task, tokenizer, vocab, encoder, hay, rng, depth,
                                           digits=video_digits, values=values, needles=needles,
                                           max_count=max_count, choices=choices)
    return ruler.make_text_sample(task, tokenizer, rng, length, depth, essay=essay,
                                  digits=text_digits, values=values)

  def evaluate(cell):
    sample = build(cell)
    if wrap is not None:
      sample = with_chat_template(sample, tokenizer.prefix_ids, wrap)
    out = answer_sample(sample, tokenizer, scoring_mode, generator, forcer, seed)
    first = sample.variants[0]
    expected = (sample.info["options"][scoring.LETTERS.index(first.letter)] if first.letter
                else ", ".join(first.expected))
    return {"prompt_tokens": sample.prompt_tokens, "needle_depth": sample.depth,
            "expected": expected, "scoring": scoring_mode, "variants": len(sample.variants),
            **out, "info": sample.info}

  from tqdm import tqdm
  cells = cells_for(tasks, context_lengths, depths, samples)
  todo = [c for c in cells if cell_key(c) not in results.done]
  for cell in tqdm(todo, desc="long-context tasks", disable=not progress, dynamic_ncols=True):
    results.add({**cell, **evaluate(cell)})
  wanted = {cell_key(c) for c in cells}
  finished = [c for c in results.cells if cell_key(c) in wanted]
  summary = write_outputs(output, finished, threshold, f"Long-context tasks ({scoring_mode})")
  summary["skipped"] = len(cells) - len(todo)
  log.info("long-context tasks: %d cells evaluated, %d resumed", len(todo), summary["skipped"])
  return summary
