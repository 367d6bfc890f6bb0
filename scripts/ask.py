"""Asks a trained model questions about a video or a document and prints the answers.

  python scripts/ask.py --checkpoint workdirs/vision --video clip.mp4 --question "What happens?"
  python scripts/ask.py --checkpoint workdirs/text --text-file book.txt --question "Who is Ada?" \
      --question "And her father?" --save-cache book.npz
  python scripts/ask.py --checkpoint workdirs/text --load-cache book.npz --interactive

Every question is a turn of one conversation on one key/value cache (lwm.eval.chat_session): the
video or document is prefilled once, in chunks of --prefill-chunk tokens, and each later turn
extends the cache. --save-cache writes the cache after the last turn; --load-cache continues it
(the model and tokenizer must be the same). The cache has room for the prompt plus --max-cache
tokens of later turns and answers; a turn that would overflow it is refused.

The prompt is the format the model was trained with (lwm/eval/needle.py, video_needle.py):
BOS [<vision> frames </vision> | document] Question: {question} Answer:
or, with a chat template (--chat-template, default auto: the model's own if it has one), that text
as the user's message. Frames are sampled as the run's data stage sampled them (or
--max-frames/--fps). Generation stops at any of the tokenizer's EOS ids.
"""
import argparse
import sys

from lwm import launch


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  launch.add_model_flags(p)
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--video", help="a video file")
  source.add_argument("--text-file", help="a text document")
  source.add_argument("--load-cache", help="continue a conversation saved by --save-cache")
  p.add_argument("--question", action="append", default=[], help="repeatable: one turn each")
  p.add_argument("--interactive", action="store_true",
                 help="then read questions from stdin until EOF or an empty line")
  p.add_argument("--save-cache", default=None, help="write the conversation's cache here")
  p.add_argument("--prefill-chunk", type=int, default=4096, help="tokens per prefill chunk")
  p.add_argument("--max-cache", type=int, default=4096,
                 help="cache room beyond the first prompt, for later turns and answers")
  launch.add_chat_template_argument(p)
  p.add_argument("--max-frames", type=int, default=None, help="default: the data stage's sampling")
  p.add_argument("--fps", type=float, default=None)
  p.add_argument("--max-new-tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if not args.question and not args.interactive:
    sys.exit("give at least one --question, or --interactive")
  launch.setup_devices_for_mesh(args.mesh)
  from lwm import model_dir
  from lwm.eval import chat_session, inference
  loaded = model_dir.load_for_command(args)
  if loaded.tokenizer is None:
    sys.exit("no tokenizer recorded for this checkpoint: pass --tokenizer PATH")
  questions = iter(args.question)
  fingerprint = chat_session.fingerprint(loaded.model.config, loaded.tokenizer)
  generate = inference.Generator(loaded.model)
  if args.load_cache:
    import numpy as np
    with np.load(args.load_cache) as f:
      held = len(f["tokens"])
    session = chat_session.ChatSession(generate, capacity=held + args.max_cache,
                                       prefill_chunk=args.prefill_chunk,
                                       eos_ids=loaded.tokenizer.eos_token_ids)
    try:
      session.load(args.load_cache, fingerprint)
    except ValueError as e:
      sys.exit(str(e))
    first = None
  else:
    question = next(questions, None) or read_question()
    if not question:
      sys.exit("no question")
    first = first_prompt(args, loaded, question)
    session = chat_session.ChatSession(generate, capacity=len(first[0]) + args.max_cache,
                                       prefill_chunk=args.prefill_chunk,
                                       eos_ids=loaded.tokenizer.eos_token_ids)
  sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_p=args.top_p, seed=args.seed)
  try:
    if first is not None:
      print_answer(loaded, session.ask_ids(first[0], first[1], **sampling))
    for question in _questions(questions, args.interactive):
      turn = session.turn_ids(loaded.tokenizer, question, args.chat_template)
      print_answer(loaded, session.ask_ids(turn, **sampling))
  except ValueError as e:
    sys.exit(str(e))
  if args.save_cache:
    session.save(args.save_cache, fingerprint)
    print(f"[ask] cache of {session.length} tokens saved to {args.save_cache}", file=sys.stderr)


def read_question() -> str:
  line = sys.stdin.readline()
  return line.strip()


def _questions(given, interactive: bool):
  yield from given
  while interactive:
    question = read_question()
    if not question:
      return
    yield question


def print_answer(loaded, ids):
  print(loaded.tokenizer.decode(ids, skip_special_tokens=True).strip(), flush=True)


def first_prompt(args, loaded, question):
  """(ids, vision mask or None) of the first turn: the video or document and `question`."""
  from lwm import vqgan
  from lwm.data import chat
  from lwm.data.video import FrameSampling, decode_video
  from lwm.eval import needle, video_needle
  mask = None
  if args.video:
    if not loaded.vqgan_dir:
      sys.exit("no VQGAN recorded for this checkpoint: pass --vqgan DIR")
    encoder = vqgan.FrameEncoder(vqgan.load(loaded.vqgan_dir))
    fps, max_frames = args.fps, args.max_frames
    if fps is None and max_frames is None:  # as the run's data stage sampled its videos
      recorded = loaded.sampling or {}
      fps, max_frames = recorded.get("fps"), recorded.get("max_frames")
    if fps is None and max_frames is None:
      max_frames = 8
    frames = decode_video(args.video, encoder.config.resolution,
                          FrameSampling(fps=fps, max_frames=max_frames, min_frames=1))
    vocab = video_needle.vocab_for(loaded.tokenizer, encoder.config.codebook_size, loaded.vocab)
    wrap = chat.wrap_ids(loaded.tokenizer, args.chat_template)
    tokens, mask, _ = video_needle.video_prompt_tokens(loaded.tokenizer, vocab, encoder(frames),
                                                       question, wrap)
    print(f"[ask] {len(frames)} frames, {len(tokens)} prompt tokens", file=sys.stderr)
  else:
    with open(args.text_file, encoding="utf-8") as f:
      tokens = needle.text_prompt_tokens(loaded.tokenizer, f.read(), question,
                                         args.chat_template)
    print(f"[ask] {len(tokens)} prompt tokens", file=sys.stderr)
  return tokens, mask


if __name__ == "__main__":
  main()
