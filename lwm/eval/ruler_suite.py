"""`scripts/eval_long.py --suite ruler`: RULER's 13 tasks at each length, answered by generation
and scored as NVIDIA/RULER scores them, so the numbers can sit next to RULER's published tables.

  summary = run_ruler(loaded, output="out", lengths=[4096, 8192], samples=500,
                      essays="essays/", squad="dev-v2.0.json",
                      hotpotqa="hotpot_dev_distractor_v1.json")

Writes under OUT/ruler/:
- <length>/<task>.jsonl: one line per sample with the fields of RULER's prediction files (index,
  pred, input (what the model was given: the prompt and the answer prefix), outputs, others,
  truncation, length), so RULER's `scripts/eval/evaluate.py --data_dir OUT/ruler/<length>`
  scores lwm's predictions; a rerun skips the samples already there.
- <length>/summary.csv: as RULER's evaluate.py writes it (Tasks / Score / Nulls rows);
  summary.csv: tasks x lengths (0-100) and the average; summary.json; tasks.png.
The average over the 13 tasks and the effective length (RULER's 85.6) are given as RULER's only
when all 13 ran RULER-comparably at every length; otherwise they are labelled partial and the
summary says which tasks are missing or differ, and why.
"""
import csv
import json
import os

import numpy as np

from lwm.eval import chat_format, ruler_build, ruler_data, ruler_tasks, scoring

TASK_NAMES = tuple(ruler_tasks.TASKS)
ESSAY_TASKS = tuple(t for t, (f, a) in ruler_tasks.TASKS.items()
                    if f == "niah" and a["type_haystack"] == "essay")
THRESHOLD = 85.6  # Llama-2-7B's average at 4K, RULER's bar for the effective length
RUN_SETTINGS = ("seed", "chat_template", "essays", "squad", "hotpotqa", "cwe_words", "source")


# ------------------------------------------------------------------------------------ Data

def prepare_data(seed: int, essays=None, squad=None, hotpotqa=None, cwe_words=None):
  """(TaskData, {task: why it differs from RULER}, {task: why it cannot run})."""
  differs, cannot = {}, {}
  if essays:
    words = ruler_data.essay_words(ruler_data.read_essays(essays))
  else:
    from lwm.eval import needle
    words = ruler_data.essay_words(needle.synthetic_haystack(4000, seed=0))
    for task in ESSAY_TASKS:
      differs[task] = ("essay haystack: lwm's synthetic filler, not Paul Graham's essays "
                       "(pass --essays DIR)")
  qa = {}
  for dataset, path, flag, name in (("squad", squad, "--squad", "SQuAD v2.0 dev"),
                                    ("hotpotqa", hotpotqa, "--hotpotqa",
                                     "HotpotQA distractor dev")):
    task = "qa_1" if dataset == "squad" else "qa_2"
    if path:
      reader = ruler_data.read_squad if dataset == "squad" else ruler_data.read_hotpotqa
      qa[dataset] = reader(path)
    else:
      cannot[task] = f"needs {name} ({flag} FILE)"
  extra = ruler_data.read_word_list(cwe_words) if cwe_words else []
  data = ruler_tasks.TaskData.english(seed=seed, essay_words=words, qa=qa, extra_words=extra)
  return data, differs, cannot


# ------------------------------------------------------------------------------------ Files

def read_predictions(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def prediction_line(sample: ruler_build.Sample, pred: str) -> dict:
  """A line of RULER's prediction files (pred/call_api.py's fields)."""
  return {"index": sample.index, "pred": pred, "input": sample.input + sample.answer_prefix,
          "outputs": sample.outputs, "others": {}, "truncation": -1, "length": sample.length}


def _check_settings(root: str, settings: dict) -> None:
  path = os.path.join(root, "run.json")
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    changed = [f"{k}={previous.get(k)!r} there, {settings.get(k)!r} now" for k in RUN_SETTINGS
               if previous.get(k) != settings.get(k)]
    if changed:
      raise ValueError(f"{root} holds predictions of a run with other settings "
                       f"({'; '.join(changed)}); use another --output or the same settings")
  os.makedirs(root, exist_ok=True)
  with open(path, "w") as f:
    json.dump(settings, f, indent=1)


def write_length_csv(path: str, scores: dict, nulls: dict) -> None:
  """RULER's evaluate.py summary.csv: a pandas header row (0..n), then Tasks, Score, Nulls."""
  tasks = [t for t in TASK_NAMES if t in scores]
  rows = [list(range(len(tasks) + 1)), ["Tasks"] + tasks, ["Score"] + [scores[t] for t in tasks],
          ["Nulls"] + [nulls[t] for t in tasks]]
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(rows)


def write_summary_csv(path: str, summary: dict) -> None:
  """Tasks x lengths on RULER's 0-100 scale, the average last ('Avg (partial)' when partial)."""
  label = "Avg" if summary["complete"] else "Avg (partial)"
  rows = [["Tasks"] + list(TASK_NAMES) + [label]]
  for n in summary["lengths"]:
    rows.append([n] + [summary["scores"].get(t, {}).get(n, "") for t in TASK_NAMES] +
                [summary["average"].get(n, "")])
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(rows)


# ------------------------------------------------------------------------------------ Summary

def summarize(scores: dict, nulls: dict, lengths: list, differs: dict, not_run: dict) -> dict:
  """scores: {task: {length: 0-100}}. The average and effective length are RULER's only when
  every task ran at every length with nothing that differs from RULER."""
  ran = {n: [t for t in TASK_NAMES if n in scores.get(t, {})] for n in lengths}
  average = {n: round(float(np.mean([scores[t][n] for t in ran[n]])), 2) for n in lengths
             if ran[n]}
  complete = not differs and all(len(ran[n]) == len(TASK_NAMES) for n in lengths)
  effective = scoring.effective_length(average, THRESHOLD) if average else None
  lines = ["RULER's tasks (scores 0-100, metrics string_match_all / string_match_part for qa)"]
  width = max(len(t) for t in TASK_NAMES) + 1
  lines.append(f"{'task':{width}}| " + " ".join(f"{n:>8}" for n in lengths))
  for t in TASK_NAMES:
    cells = [f"{scores[t][n]:8.2f}" if n in scores.get(t, {}) else f"{'-':>8}" for n in lengths]
    mark = " *" if t in differs else ""
    lines.append(f"{t:{width}}| " + " ".join(cells) + mark)
  name = "average" if complete else "partial avg"
  lines.append(f"{name:{width}}| " + " ".join(f"{average[n]:8.2f}" if n in average else
                                               f"{'-':>8}" for n in lengths))
  shown = (f"{effective}" if effective else f"<{lengths[0]}") if average else "none"
  if complete:
    lines.append(f"effective length: {shown} (longest length whose average is >= {THRESHOLD})")
  else:
    counts = ", ".join(f"{len(ran[n])} of {len(TASK_NAMES)} tasks at {n}" for n in lengths)
    lines.append(f"PARTIAL: not RULER's 13-task average ({counts}"
                 f"{'; * differs from RULER' if differs else ''}); effective length over these "
                 f"tasks only: {shown}")
  for t, why in {**differs, **not_run}.items():
    lines.append(f"  not RULER-comparable: {t}: {why}")
  return {"lengths": list(lengths), "scores": scores, "nulls": nulls, "average": average,
          "complete": complete, "effective_length": effective if complete else None,
          "partial_effective_length": None if complete else effective, "threshold": THRESHOLD,
          "differs": differs, "not_run": not_run, "table": "\n".join(lines)}


# ------------------------------------------------------------------------------------ The run

def generate(generator, tokenizer, prompts: list[list[int]], max_new_tokens: int,
             seed: int) -> list[str]:
  """Greedy answers of up to `max_new_tokens`, cut at any of the tokenizer's EOS ids, decoded
  without special tokens (as RULER's servers return them)."""
  eos = tuple(tokenizer.eos_token_ids)
  outs = generator(prompts, None, max_new_tokens=max_new_tokens, eos_ids=eos, seed=seed)
  texts = []
  for ids in outs:
    ids = list(ids)
    stop = min([ids.index(e) for e in eos if e in ids], default=len(ids))
    texts.append(tokenizer.decode(ids[:stop], skip_special_tokens=True))
  return texts


def _predict(name, length, data, count, format_prompt, path, samples, batch_size, generator,
             tokenizer, seed, progress) -> str:
  """Appends the predictions of the samples not yet in `path`; returns the task's metric."""
  from tqdm import tqdm
  task = ruler_build.RulerTask(name, length, data, count, format_prompt)
  done = {line["index"] for line in read_predictions(path)}
  todo = [i for i in range(samples) if i not in done]
  bar = tqdm(total=len(todo), desc=f"RULER {name} {length}", disable=not progress or not todo)
  for start in range(0, len(todo), batch_size):
    batch = [task.sample(i) for i in todo[start:start + batch_size]]
    prompts = [tokenizer.encode(s.input + s.answer_prefix, add_special_tokens=True)
               for s in batch]
    preds = generate(generator, tokenizer, prompts, task.tokens_to_generate, seed)
    with open(path, "a", encoding="utf-8") as f:
      f.writelines(json.dumps(prediction_line(s, p)) + "\n" for s, p in zip(batch, preds))
    bar.update(len(batch))
  bar.close()
  return task.metric


def run_ruler(loaded, *, output: str, lengths, samples: int = 500, tasks=TASK_NAMES,
              seed: int = 42, chat_template: str = "none", essays=None, squad=None,
              hotpotqa=None, cwe_words=None, batch_size: int = 1, progress: bool = True,
              generator=None, format_prompt=None) -> dict:
  """Runs (or resumes) RULER's `tasks` at `lengths` with `samples` each; returns the summary.
  loaded: a `lwm.model_dir.LoadedModel`; generator replaces its Generator (tests)."""
  unknown = [t for t in tasks if t not in ruler_tasks.TASKS]
  if unknown:
    raise ValueError(f"unknown RULER tasks {unknown}; choose from {', '.join(TASK_NAMES)}")
  if samples < 1 or batch_size < 1:
    raise ValueError(f"--samples and --batch-size must be >= 1, got {samples}, {batch_size}")
  tokenizer = loaded.tokenizer
  if tokenizer is None:
    raise ValueError("RULER's tasks need the model's tokenizer: pass --tokenizer PATH")
  format_prompt = format_prompt or chat_format.prompt_formatter(chat_template, tokenizer)
  root = os.path.join(output, "ruler")
  settings = dict(seed=seed, chat_template=chat_template, essays=essays, squad=squad,
                  hotpotqa=hotpotqa, cwe_words=cwe_words, source=loaded.source)
  _check_settings(root, settings)
  data, differs, not_run = prepare_data(seed, essays, squad, hotpotqa, cwe_words)
  not_run.update({t: "not asked for (--tasks)" for t in TASK_NAMES if t not in tasks})
  if generator is None:
    from lwm.eval import inference
    generator = inference.Generator(loaded.model)
  count = lambda text: len(tokenizer.encode(text, add_special_tokens=True))
  scores, nulls, failures = {}, {}, {}
  for n in lengths:
    directory = os.path.join(root, str(n))
    os.makedirs(directory, exist_ok=True)
    for name in [t for t in TASK_NAMES if t in tasks and t not in not_run]:
      path = os.path.join(directory, f"{name}.jsonl")
      try:
        metric = _predict(name, n, data, count, format_prompt, path, samples, batch_size,
                          generator, tokenizer, seed, progress)
      except ValueError as e:  # too short a length for the task, or too few qa questions
        failures.setdefault(name, []).append(f"not run at {n}: {e}")
        continue
      lines = sorted((ln for ln in read_predictions(path) if ln["index"] < samples),
                     key=lambda ln: ln["index"])
      preds = [ln["pred"] for ln in lines]
      scores.setdefault(name, {})[n] = scoring.ruler_score(preds, [ln["outputs"] for ln in lines],
                                                           metric)
      empty = sum(not scoring.ruler_prediction(p) for p in preds)
      nulls.setdefault(name, {})[n] = f"{empty}/{len(preds)}"
    write_length_csv(os.path.join(directory, "summary.csv"),
                     {t: s[n] for t, s in scores.items() if n in s},
                     {t: s[n] for t, s in nulls.items() if n in s})
  not_run.update({t: "; ".join(why) for t, why in failures.items()})
  summary = summarize(scores, nulls, list(lengths), differs, not_run)
  write_summary_csv(os.path.join(root, "summary.csv"), summary)
  if scores:
    from lwm.eval import long_eval
    table = {t: {n: v / 100 for n, v in by.items()} for t, by in scores.items()}
    summary["plot"] = long_eval.task_plot(table, os.path.join(root, "tasks.png"),
                                          "RULER" if summary["complete"] else "RULER (partial)")
  with open(os.path.join(root, "summary.json"), "w") as f:
    json.dump({**summary, "settings": settings, "samples": samples}, f, indent=1)
  summary["output"] = root
  return summary
