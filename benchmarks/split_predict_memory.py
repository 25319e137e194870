"""Peak memory of denoiSplit prediction with posterior samples: in memory vs streamed to disk.

Each case runs in a fresh subprocess (peak RSS = ``ru_maxrss``): a small
untrained network (the cost of prediction does not depend on the weights)
splits a ``--size``² frame with ``--samples`` samples, returning the samples
in memory (``return_samples=True``) or writing them into a memory-mapped
TIFF (``samples_out=``, what ``duet split predict`` does).  Prints a table and
writes JSON (``--json``).

    python benchmarks/split_predict_memory.py --size 2048 --samples 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import resource, sys, time, numpy as np, torch, tifffile
from napari_duet.denoisplit import SplitConfig, SplitModel
from napari_duet.denoisplit._lvae import LadderVAE
from napari_duet.core.intensity import Normalizer
torch.set_num_threads(1)
size, n, mode, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
batch, tile = int(sys.argv[5]) or None, int(sys.argv[6])
torch.manual_seed(0)
cfg = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0, predict_logvar=True)
model = SplitModel(LadderVAE(cfg, 32).eval(), cfg, patch_size=32, input_norm=Normalizer(0.0, 1.0),
                   target_norms=[Normalizer(0.0, 1.0), Normalizer(0.0, 1.0)])
img = np.random.default_rng(0).random((size, size), dtype=np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "memory":
    res = model.predict(img, samples=n, tile=tile, batch_size=batch, return_samples=True)
else:
    sink = tifffile.memmap(path, shape=(n, 2, size, size), dtype=np.float32,
                           photometric="minisblack")
    res = model.predict(img, samples=n, tile=tile, batch_size=batch, return_samples=True,
                        samples_out=sink)
    sink.flush()
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{base / 1024:.1f} {peak / 1024:.1f} {sec:.2f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=0,
                    help="network passes per batch (0: the default, about 1 GB of activations)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--json", default="benchmarks/results/split_predict_memory.json")
    args = ap.parse_args()
    samples_mib = args.samples * 2 * args.size**2 * 4 / 2**20
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("memory", "streamed"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.size), str(args.samples),
                                  mode, str(Path(tmp) / "samples.tif"), str(args.batch_size),
                                  str(args.tile)],
                                 capture_output=True, text=True, check=True)
            base, peak, sec = map(float, out.stdout.split()[-3:])
            rows.append({"mode": mode, "size": args.size, "samples": args.samples,
                         "batch_size": args.batch_size or "default", "tile": args.tile,
                         "samples_mib": round(samples_mib, 1), "rss_before_mib": base,
                         "peak_rss_mib": peak, "growth_mib": round(peak - base, 1),
                         "seconds": sec})
    print("| mode | frame | samples | batch | samples size MiB | peak RSS MiB | growth MiB | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['mode']} | {r['size']}² | {r['samples']} | {r['batch_size']} | "
              f"{r['samples_mib']} | "
              f"{r['peak_rss_mib']:.0f} | {r['growth_mib']:.0f} | {r['seconds']:.1f} |")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"time": time.time(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
