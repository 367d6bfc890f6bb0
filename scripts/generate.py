"""Generates an image (PNG) or a video (MP4) from a text prompt, as LWM does.

  python scripts/generate.py --checkpoint lwm-chat-1m --prompt "a boat on a lake" --output boat.png
  python scripts/generate.py --checkpoint lwm-chat-1m --prompt "waves" --output waves.mp4 --frames 8

LWM's prompt and classifier-free guidance against `<vision>` alone, with the scale, top-k and
temperature of the first frame (`--*-image`) and of the frames after it (`--*-video`); only the
VQGAN's codes are sampled inside a frame, `<eof>`/`<eov>` follow by rule (lwm/eval/
vision_generation.py). Frames are decoded by the model's VQGAN (or --vqgan).
"""
import argparse
import os
import sys

from lwm import launch


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  launch.add_model_flags(p)
  p.add_argument("--prompt", required=True, help="what to generate")
  p.add_argument("--output", required=True, help="F.png (one frame) or F.mp4")
  p.add_argument("--frames", type=int, default=None, help="default: 1 for .png, 8 for .mp4")
  p.add_argument("--cfg-scale-image", type=float, default=5.0, help="guidance of the first frame")
  p.add_argument("--cfg-scale-video", type=float, default=1.0, help="guidance of later frames")
  p.add_argument("--top-k-image", type=int, default=8192, help="0: every code")
  p.add_argument("--top-k-video", type=int, default=1000, help="0: every code")
  p.add_argument("--temperature-image", type=float, default=1.0, help="0: greedy")
  p.add_argument("--temperature-video", type=float, default=1.0, help="0: greedy")
  p.add_argument("--fps", type=int, default=4, help="frame rate of the MP4")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  kind = os.path.splitext(args.output)[1].lower()
  if kind not in (".png", ".mp4"):
    sys.exit(f"--output must end in .png or .mp4, got {args.output!r}")
  frames = args.frames or (1 if kind == ".png" else 8)
  if kind == ".png" and frames != 1:
    sys.exit(f"a PNG holds one frame, got --frames {frames}; write an .mp4")
  launch.setup_devices_for_mesh(args.mesh)
  from lwm import model_dir
  from lwm.eval import vision_generation as vg
  loaded = model_dir.load_for_command(args)
  tokenizer, decoder, vocab = vg.generation_assets(loaded)
  settings = vg.Settings(args.cfg_scale_image, args.cfg_scale_video, args.top_k_image,
                         args.top_k_video, args.temperature_image, args.temperature_video)
  image, video, uncond = vg.prompt_ids(tokenizer, vocab, args.prompt)
  codes = vg.generate_codes(loaded.model, [image], [uncond], vocab, settings, frames=frames,
                            video_prompts=[video], codes_per_frame=decoder.config.codes_per_frame,
                            seed=args.seed, progress=True)
  pixels = vg.decode_frames(decoder, codes[0])
  if kind == ".png":
    vg.write_png(args.output, pixels[0])
  else:
    vg.write_mp4(args.output, pixels, fps=args.fps)
  print(f"[generate] {frames} frame(s) of {pixels.shape[1]}x{pixels.shape[2]} -> {args.output}",
        file=sys.stderr)


if __name__ == "__main__":
  main()
