"""Time to first token of a conversation's first and second questions on one cache (CPU).

  python scripts/bench/inference.py --prompt-tokens 8192 --prefill-chunk 1024 --model small

A random model of --model's size reads a --prompt-tokens prompt (the first question) in chunks of
--prefill-chunk tokens, answers, then gets a second question of --question-tokens tokens that
extends the same cache (lwm.eval.chat_session). Each time to first token is measured after a
warm-up conversation that compiles every shape, and the ratio of the second to the first is printed.
"""
import argparse
import time

from lwm import launch


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="small")
  p.add_argument("--prompt-tokens", type=int, default=8192)
  p.add_argument("--question-tokens", type=int, default=32)
  p.add_argument("--prefill-chunk", type=int, default=1024)
  p.add_argument("--devices", type=int, default=1)
  return p.parse_args()


def main():
  args = parse_args()
  launch.set_device_count(args.devices)
  import numpy as np
  from flax import nnx
  from lwm import sharding as shd
  from lwm.eval import chat_session, inference
  from lwm.model import Transformer, get_config
  mesh = shd.make_mesh(sp=args.devices)
  model = Transformer(get_config(args.model), rngs=nnx.Rngs(0), mesh=mesh)
  gen = inference.Generator(model)
  rng = np.random.default_rng(0)
  first = rng.integers(3, 1000, args.prompt_tokens)
  second = rng.integers(3, 1000, args.question_tokens)

  def conversation():
    session = chat_session.ChatSession(gen, capacity=args.prompt_tokens + 4 * args.question_tokens
                                       + 64, prefill_chunk=args.prefill_chunk)
    times = []
    for turn in (first, second):
      start = time.perf_counter()
      session.ask_ids(turn, max_new_tokens=1)  # the first token only
      times.append(time.perf_counter() - start)
    return times

  conversation()  # compiles every shape
  t1, t2 = conversation()
  print(f"model {args.model}, prompt {args.prompt_tokens} tokens, chunks of {args.prefill_chunk}, "
        f"{args.devices} device(s)")
  print(f"first question, time to first token:  {t1:.3f} s")
  print(f"second question ({args.question_tokens} tokens), time to first token: {t2:.3f} s")
  print(f"second / first: {100 * t2 / t1:.1f}%")


if __name__ == "__main__":
  main()
