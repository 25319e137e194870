"""Memory of splitting a large image on the CPU: a 4096 x 4096 image, tiled and streamed.

Trains a tiny model on synthetic data (seconds), then splits a large
superposition with ``SplitModel.iter_predict`` and reports the peak resident
memory of the process against the size of the input and outputs.  Tiles are
streamed, so the peak stays a small multiple of the output arrays whatever the
image size.

    python benchmarks/split_large.py [--size 4096] [--samples 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/split_large.json")
    args = ap.parse_args()

    from napari_duet.denoisplit import SplitConfig, TrainConfig, train
    from napari_duet.denoisplit._synthetic import synthetic_split

    small = synthetic_split((64, 64), seed=0)
    model = train([small.noisy_a, small.noisy_b],
                  SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0),
                  TrainConfig(epochs=1, steps_per_epoch=4, patch_size=32, batch_size=4,
                              device="cpu", calibrate=False),
                  bootstrap_kwargs={"denoiser": "smooth", "iterations": 50}).model
    rss_model = _peak_rss_mb()
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 20.0, size=(args.size, args.size)).astype(np.float32)
    rss_input = _peak_rss_mb()
    t0 = time.perf_counter()
    result = model.predict(image, samples=args.samples, tile=args.tile,
                           batch_size=args.batch_size)
    secs = time.perf_counter() - t0
    rss_peak = _peak_rss_mb()
    out_mb = (result.mean.nbytes + result.std.nbytes) / 2**20
    row = {
        "size": args.size, "samples": args.samples, "tile": args.tile,
        "seconds": secs, "megapixels_per_s": args.size**2 / 1e6 / secs,
        "input_mb": image.nbytes / 2**20, "outputs_mb": out_mb,
        "peak_rss_mb": rss_peak, "rss_before_predict_mb": rss_input,
        "rss_after_model_mb": rss_model,
        "prediction_overhead_mb": rss_peak - rss_input - out_mb,
        "shape_ok": result.mean.shape == (2, args.size, args.size),
    }
    print(f"{'size':>6} {'samples':>7} {'s':>7} {'MP/s':>6} {'input MB':>9} "
          f"{'outputs MB':>10} {'peak RSS MB':>11} {'overhead MB':>11}")
    print(f"{args.size:>6} {args.samples:>7} {secs:>7.1f} {row['megapixels_per_s']:>6.2f} "
          f"{row['input_mb']:>9.0f} {out_mb:>10.0f} {rss_peak:>11.0f} "
          f"{row['prediction_overhead_mb']:>11.0f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
