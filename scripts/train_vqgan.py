"""Trains the VQGAN image tokenizer on frames sampled from a manifest's videos; prints held-out
PSNR.

  python scripts/train_vqgan.py --manifest corpus/manifest.jsonl --output vq/ \
      --config small --steps 2000

Configs: tiny (16x16 -> 4x4 codes), small (64x64 -> 8x8), lwm (256x256 -> 16x16, codebook 8192).
The directory gets config.json and params.npz, which scripts/preprocess.py --vqgan reads.
"""
import argparse
import logging
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--manifest", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--config", default="small", help="tiny | small | lwm")
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--learning-rate", type=float, default=1e-3)
  parser.add_argument("--frames-per-video", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  logging.basicConfig(format="%(message)s")
  logging.getLogger("lwm").setLevel(logging.INFO)  # the training steps' losses
  from lwm import vqgan
  from lwm.data.video import manifest_frames
  from lwm.vqgan import train as vqgan_train
  config = vqgan.get_config(args.config)
  frames, held_out = manifest_frames(args.manifest, config.resolution,
                                                 args.frames_per_video)
  print(f"{len(frames)} training frames, {len(held_out)} held-out frames at {config.resolution}px")
  model = vqgan.create(config, args.seed)
  before = vqgan_train.reconstruction_psnr(model, held_out)
  model, _ = vqgan_train.train(model, frames, args.steps, args.batch_size, args.learning_rate,
                               args.seed, log_every=max(1, args.steps // 10))
  after = vqgan_train.reconstruction_psnr(model, held_out)
  vqgan.save(args.output, model)
  print(f"held-out PSNR {before:.2f} dB before training, {after:.2f} dB after; saved {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
