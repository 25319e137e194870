"""Regenerate the small denoiSplit model bundled for the ``split_demo`` sample.

The model is trained on the CPU, with a fixed seed, on a synthetic field of
filaments and puncta (``synthetic_split``) that is different from the demo
image the sample shows (see ``napari_duet._napari._sample_data.split_demo``).  Its
noise models are fitted to the field's clean and noisy versions (known for
synthetic data).  It takes about five CPU minutes on one thread:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/make_split_demo_model.py

and writes ``src/napari_duet/_samples/split_demo.safetensors`` (a napari-duet
model file; the ``.safetensors`` name keeps it out of ``*.duet`` ignores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "napari_duet" / "_samples" / "split_demo.safetensors"

#: Training field: 8 frames of 128 x 128, a seed the demo image does not use.
TRAIN_SHAPE = (8, 128, 128)
TRAIN_SEED = 101


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch")
    parser.add_argument("--max-minutes", type=float, default=15.0,
                        help="stop early after this many minutes (never reached on a laptop)")
    parser.add_argument("--calib-samples", type=int, default=20)
    args = parser.parse_args()

    import torch

    from napari_duet.denoisplit import SplitConfig, TrainConfig, fit_noise_model, train
    from napari_duet.denoisplit._synthetic import synthetic_split

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    d = synthetic_split(TRAIN_SHAPE, seed=TRAIN_SEED)
    nms = [fit_noise_model(clean, noisy, iterations=400, batch_size=20_000, device="cpu",
                           seed=0)
           for clean, noisy in ((d.clean_a, d.noisy_a), (d.clean_b, d.noisy_b))]
    cfg = SplitConfig.small()
    tc = TrainConfig(epochs=args.epochs, max_minutes=args.max_minutes, patch_size=64,
                     batch_size=8, steps_per_epoch=args.steps, lr=3e-3, seed=0, device="cpu",
                     calib_samples=args.calib_samples, log_every=20)

    def report(p):
        if p.stage == "train" and p.step == p.steps_per_epoch:
            val = f"{p.val_loss:.4g}" if p.val_loss is not None else "-"
            print(f"epoch {p.epoch}/{p.epochs} val {val} ({p.elapsed:.0f} s)", flush=True)

    model = train([d.noisy_a, d.noisy_b], cfg, tc, noise_models=nms,
                  channel_names=("filaments", "puncta"), callback=report).model
    path = model.save(args.output)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
