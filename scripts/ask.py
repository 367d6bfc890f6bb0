"""Asks a trained model one question about a video or a document and prints the answer.

  python scripts/ask.py --checkpoint workdirs/vision --video clip.mp4 --question "What happens?"
  python scripts/ask.py --checkpoint workdirs/text --text-file book.txt --question "Who is Ada?"

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
  p.add_argument("--question", required=True)
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
  launch.setup_devices_for_mesh(args.mesh)
  from lwm import model_dir, vqgan
  from lwm.data import chat
  from lwm.data.video import FrameSampling, decode_video
  from lwm.eval import inference, needle, video_needle
  loaded = model_dir.load_for_command(args)
  if loaded.tokenizer is None:
    sys.exit("no tokenizer recorded for this checkpoint: pass --tokenizer PATH")
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
                                                       args.question, wrap)
    mask = [mask]
    print(f"[ask] {len(frames)} frames, {len(tokens)} prompt tokens", file=sys.stderr)
  else:
    with open(args.text_file, encoding="utf-8") as f:
      tokens = needle.text_prompt_tokens(loaded.tokenizer, f.read(), args.question,
                                         args.chat_template)
    print(f"[ask] {len(tokens)} prompt tokens", file=sys.stderr)
  generate = inference.Generator(loaded.model)
  [ids] = generate([tokens], mask, max_new_tokens=args.max_new_tokens,
                   eos_ids=loaded.tokenizer.eos_token_ids, temperature=args.temperature,
                   top_p=args.top_p, seed=args.seed)
  print(loaded.tokenizer.decode(ids, skip_special_tokens=True).strip())


if __name__ == "__main__":
  main()
