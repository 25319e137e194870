"""Peak memory of ``duet nsn2n VOL.ome.zarr -o OUT.ome.zarr --model M`` against the depth.

The chunked run promises memory bounded by one slab, whatever the number of
slices.  This writes synthetic uint16 OME-Zarr volumes of the same plane and
growing depth (default 96, 192 and 384 slices of 512 x 512), a width-4 2.5D
model (random weights: memory is the point, not quality), and runs the command
once per depth in a fresh subprocess (``--no-tta --threads 1``), reporting:

* peak RSS of the command (``wait4``'s ``ru_maxrss``: the largest resident set);
* with ``--cgroup-limit``: the same runs inside a memory cgroup (v1) with that
  hard cap, whether they finished, and the cgroup's peak usage (see
  ``benchmarks/scale.py`` for the cgroup details);
* the anchor: the bytes of the whole volume as float32 (what an in-memory run
  holds at least), beside each peak, and the slope of the peak against depth
  (MiB per 100 slices: flat memory means about 0).

``--src`` picks the source tree to measure (e.g. an older checkout's ``src``),
so a before/after comparison runs the same script on the same machine.

    .venv/bin/python benchmarks/chunked_memory.py                      # 96/192/384 x 512²
    .venv/bin/python benchmarks/chunked_memory.py --depths 96 384 --plane 1024
    .venv/bin/python benchmarks/chunked_memory.py --src /tmp/old/src --label before
    .venv/bin/python benchmarks/chunked_memory.py --cgroup-limit 400MiB

Prints a table and writes ``benchmarks/results/chunked_memory-<label>-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_model(path: Path) -> dict:
    """A 2.5D NS-N2N model of width 4 with random (non-trivial) weights."""
    import torch

    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel
    from napari_duet.nsn2n._context import ContextNet

    torch.manual_seed(0)
    net = ContextNet(width=4, depth=2)
    torch.nn.init.normal_(net.unet.head.weight, std=0.05)
    NSN2NModel(net, NSN2NConfig(width=4, device="cpu", context="2.5d"), [], {},
               device="cpu").save(path)
    return {"context": "2.5d", "width": 4, "depth": 2, "weights": "random"}


def run_case(src: Path, vol: Path, model: Path, out: Path, cgroup=None) -> dict:
    """Run the command in a subprocess; its peak RSS, wall time and exit code."""
    cmd = [sys.executable, "-c", "import sys; from napari_duet.cli import main; "
           "sys.exit(main(sys.argv[1:]))", "nsn2n", str(vol), "-o", str(out), "--model",
           str(model), "--no-tta", "--device", "cpu", "--threads", "1", "-q"]
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE,
                            preexec_fn=cgroup.join if cgroup else None)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    rc = os.waitstatus_to_exitcode(status)
    return {"rc": rc, "seconds": time.perf_counter() - t0,
            "peak_rss_mib": usage.ru_maxrss / 1024, "cpu_seconds": usage.ru_utime
            + usage.ru_stime, "stderr_tail": err.strip().splitlines()[-1:] if rc else []}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[96, 192, 384])
    p.add_argument("--plane", type=int, default=512)
    p.add_argument("--src", type=Path, default=ROOT / "src",
                   help="source tree whose napari_duet runs the command")
    p.add_argument("--label", default="after")
    p.add_argument("--cgroup-limit", default=None,
                   help="also run every depth in a memory cgroup with this cap (e.g. 400MiB)")
    p.add_argument("--keep", type=Path, default=None, help="folder for the volumes (reused)")
    args = p.parse_args(argv)

    from scale import MemoryCgroup, make_volume, parse_size

    tmp = Path(tempfile.mkdtemp(prefix="duet-chunkmem-")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    model = tmp / "m.duet"
    spec = make_model(model)
    rows = []
    for depth in args.depths:
        shape = (depth, args.plane, args.plane)
        vol = tmp / f"vol-{depth}x{args.plane}.ome.zarr"
        if not vol.exists():
            make_volume(vol, shape, slab=16)
        anchor = depth * args.plane * args.plane * 4 / 2**20
        caps = [None] + ([parse_size(args.cgroup_limit)] if args.cgroup_limit else [])
        for cap in caps:
            out = tmp / f"out-{depth}-{cap}.ome.zarr"
            cg = MemoryCgroup.create(f"duet-chunkmem-{os.getpid()}-{depth}", cap) if cap \
                else None
            try:
                res = run_case(args.src, vol, model, out, cg)
                if cg is not None:
                    res["cgroup"] = cg.report()
            finally:
                if cg is not None:
                    cg.remove()
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            rows.append({"depth": depth, "plane": args.plane, "cap_mib":
                         None if cap is None else cap / 2**20,
                         "volume_float32_mib": anchor, **res})
            r = rows[-1]
            print(f"{depth:5d} x {args.plane}²  cap {r['cap_mib'] or '-':>6}  rc {r['rc']}  "
                  f"peak RSS {r['peak_rss_mib']:7.1f} MiB  (whole volume as float32: "
                  f"{anchor:7.1f} MiB)  {r['seconds']:6.1f} s", flush=True)
    uncapped = [r for r in rows if r["cap_mib"] is None and r["rc"] == 0]
    slope = None
    if len(uncapped) >= 2:
        d = np.array([r["depth"] for r in uncapped], float)
        m = np.array([r["peak_rss_mib"] for r in uncapped], float)
        slope = float(np.polyfit(d, m, 1)[0] * 100)
    print(f"\n{args.label}: peak RSS grows {slope:.1f} MiB per 100 slices "
          f"(the whole volume as float32 grows "
          f"{args.plane * args.plane * 4 * 100 / 2**20:.1f} MiB per 100 slices)"
          if slope is not None else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"chunked_memory-{args.label}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "label": args.label, "src": str(args.src), "model": spec, "rows": rows,
        "slope_mib_per_100_slices": slope, "machine": platform.platform(),
        "cpus": os.cpu_count(), "note": "2 CPU cores shared with other jobs: times are "
        "under contention; memory is not"}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
