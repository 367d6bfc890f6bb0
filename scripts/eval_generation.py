"""Scores text -> video generation: asks for a video of each number and checks that it shows it.

  python scripts/eval_generation.py --checkpoint quickstart_out/generate \
      --values quickstart_out/corpus/held_out_video.txt --output out/generation [--frames 2]

Each number is asked for in LWM's prompt ("Generate a video of the number 40"), decoded greedily
(top-k 1) at guidance scale 1 unless told otherwise, and counted right when its decoded frames are
closer (pixel MSE) to the number's rendering than to any other number of as many digits
(lwm/eval/generation_eval.py). Writes OUTPUT/results.json and OUTPUT/strip.png.
"""
import argparse
import sys

from lwm import launch


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  launch.add_model_flags(p)
  p.add_argument("--values", required=True, help="file of numbers to ask for, one per line")
  p.add_argument("--output", required=True, help="directory for results.json and strip.png")
  p.add_argument("--frames", type=int, default=2, help="frames per video")
  p.add_argument("--cfg-scale", type=float, default=1.0, help="guidance of every frame")
  p.add_argument("--top-k", type=int, default=1, help="1: greedy; 0: every code")
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  launch.setup_devices_for_mesh(args.mesh)
  from lwm import model_dir
  from lwm.eval import generation_eval, needle
  from lwm.eval import vision_generation as vg
  loaded = model_dir.load_for_command(args)
  tokenizer, decoder, vocab = vg.generation_assets(loaded)
  settings = vg.Settings(cfg_scale_image=args.cfg_scale, cfg_scale_video=args.cfg_scale,
                         top_k_image=args.top_k, top_k_video=args.top_k,
                         temperature_image=args.temperature, temperature_video=args.temperature)
  result = generation_eval.run_number_generation(
      loaded.model, tokenizer, vocab, decoder, values=needle.read_values(args.values),
      output=args.output, frames=args.frames, settings=settings, seed=args.seed)
  print(f"[eval_generation] {result['score']:.2f} of {len(result['samples'])} videos show the "
        f"asked number (chance {result['chance']:.3f}) -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
  main()
