"""Does a generated video show what was asked? Text -> video generation scored against renderings.

  result = run_number_generation(model, tokenizer, vocab, vqgan, values=["17", "40"],
                                 output="out/generation")
  # -> out/generation/results.json ({"score", "chance", "samples": [...]}), strip.png

The quickstart's check (issue 26): the model is asked for "a video of the number 40" in LWM's
prompt format (`lwm.eval.vision_generation`), its codes are decoded by the VQGAN, and a video
counts as right when its frames are closer, in pixel mean squared error, to the rendering of the
asked number (`video_needle.needle_frame`, what the corpus's videos show) than to that of every
other number of as many digits. Chance is one over that count.
"""
import dataclasses
import os

import numpy as np

from lwm import files

SUBJECT = "the number {}"  # what is asked for: "Generate a video of the number 40"
STRIP_SCALE = 4            # pixels of the strip PNG per frame pixel (16-pixel frames are small)


def nearest_rendering_score(videos, asked, renderings: dict) -> tuple:
  """How often a generated video shows what was asked: (fraction of videos whose frames are
  closer to the rendering of the asked label than to every other label's, the nearest label of
  each, whether each is such a hit).

  videos: `[n, frames, H, W, 3]` (any numeric dtype); asked: n labels; renderings: {label: `[H,
  W, 3]`}, one per label that could be asked. A video's distance to a rendering is the pixel mean
  squared error averaged over its frames (float64); a tie with another label counts as a miss.
  """
  videos = np.asarray(videos, np.float64)
  if len(videos) != len(asked) or not len(asked):
    raise ValueError(f"need one asked label per video (at least one), got {len(asked)} labels "
                     f"for {len(videos)} videos")
  missing = sorted(set(asked) - set(renderings))
  if missing:
    raise ValueError(f"no rendering of asked label(s) {missing}")
  labels = list(renderings)
  table = np.stack([np.asarray(renderings[k], np.float64) for k in labels])  # [labels, H, W, 3]
  if table.shape[1:] != videos.shape[2:]:
    raise ValueError(f"renderings are {table.shape[1:]} but frames are {videos.shape[2:]}")
  # [n, labels]: mean over frames and pixels of the squared difference
  distance = ((videos[:, :, None] - table[None, None]) ** 2).mean(axis=(1, 3, 4, 5))
  hits, nearest = [], []
  for row, label in zip(distance, asked):
    own = row[labels.index(label)]
    others = np.delete(row, labels.index(label))
    hits.append(bool(others.size == 0 or own < others.min()))
    nearest.append(labels[int(np.argmin(row))])
  return float(np.mean(hits)), nearest, hits


def frame_strip(videos, gap: int = 1) -> np.ndarray:
  """uint8 videos `[n, frames, H, W, 3]` as one image: a row per video, its frames left to right,
  `gap` white pixels between them."""
  videos = np.asarray(videos, np.uint8)
  n, frames, h, w, _ = videos.shape
  strip = np.full((n * (h + gap) - gap, frames * (w + gap) - gap, 3), 255, np.uint8)
  for i in range(n):
    for f in range(frames):
      strip[i * (h + gap):i * (h + gap) + h, f * (w + gap):f * (w + gap) + w] = videos[i, f]
  return strip


def number_labels(values) -> list:
  """Every number with as many digits as `values` (all the same count, no leading zero): the
  labels a generated number video is compared against."""
  digits = {len(v) for v in values}
  if len(digits) != 1 or not all(v.isdigit() and v[0] != "0" for v in values):
    raise ValueError(f"values must be numbers of one digit count without a leading 0, got "
                     f"{sorted(set(values))[:8]}")
  [d] = digits
  return [str(v) for v in range(10 ** (d - 1), 10 ** d)]


def run_number_generation(model, tokenizer, vocab, decoder, *, values, output: str,
                          frames: int = 2, settings=None, seed: int = 0,
                          subject: str = SUBJECT) -> dict:
  """Generates a `frames`-frame video of each number in `values` (one batch), scores them with
  `nearest_rendering_score` against every number of that many digits, and writes
  OUTPUT/results.json and OUTPUT/strip.png (a row per value: its rendering, then the generated
  frames). `vocab`: the interleaver's ids (`video_needle.vocab_for`); `decoder`: the model's
  VQGAN. Returns the results."""
  from lwm.eval import video_needle
  from lwm.eval import vision_generation as vg
  settings = settings or vg.Settings(cfg_scale_image=1.0, cfg_scale_video=1.0, top_k_image=1,
                                     top_k_video=1)  # greedy, the conditional stream alone
  labels = number_labels(values)
  prompts = [vg.prompt_ids(tokenizer, vocab, subject.format(v)) for v in values]
  image, video, uncond = (list(p) for p in zip(*prompts))
  codes = vg.generate_codes(model, image, uncond, vocab, settings, frames=frames,
                            video_prompts=video, codes_per_frame=decoder.config.codes_per_frame,
                            seed=seed)
  videos = np.stack([vg.decode_frames(decoder, c) for c in codes])  # [n, frames, R, R, 3]
  size = decoder.config.resolution
  renderings = {label: video_needle.needle_frame(label, size) for label in labels}
  score, nearest, hits = nearest_rendering_score(videos, list(values), renderings)
  result = {"score": score, "chance": 1.0 / len(labels), "labels": len(labels),
            "frames": frames, "subject": subject, "seed": seed,
            "settings": dataclasses.asdict(settings),
            "samples": [{"asked": v, "nearest": k, "hit": hit}
                        for v, k, hit in zip(values, nearest, hits)]}
  os.makedirs(output, exist_ok=True)
  files.write_json(os.path.join(output, "results.json"), result)
  rows = np.concatenate([np.stack([renderings[v] for v in values])[:, None], videos], axis=1)
  strip = frame_strip(rows.repeat(STRIP_SCALE, axis=2).repeat(STRIP_SCALE, axis=3))
  vg.write_png(os.path.join(output, "strip.png"), strip)
  return result
