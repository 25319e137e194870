"""Larger than memory: ``duet nsn2n VOL.ome.zarr -o OUT.ome.zarr --model M``, end to end.

Writes a synthetic uint16 OME-Zarr volume (slab by slab, never whole in
memory) and a model, then runs the command in a subprocess, once in-process
(the default) and once on a 2-worker dask LocalCluster (``--scheduler
processes:2``), and reports for each:

* the memory cap: with ``--cgroup-limit`` every case runs in a fresh cgroup
  (v1 memory controller, created below this process's own memory cgroup, so
  limits only ever tighten) whose ``memory.limit_in_bytes`` (and
  ``memory.memsw.limit_in_bytes``: no swap either) is the cap; the command's
  processes, the cluster's workers included, inherit it, and a run that needs
  more is killed by the kernel.  Reported: the cgroup's peak usage (``memory.
  max_usage_in_bytes``: anonymous memory *and* page cache, which the kernel
  reclaims at the limit, so it sits near the cap on large volumes), the peak of
  its anonymous memory (``total_rss`` of ``memory.stat``, sampled), and
  ``memory.failcnt`` (how often the limit made the kernel reclaim).  Where
  cgroups are not writable the run says so and goes on uncapped.
  (``prlimit --as`` is no use with torch, which reserves far more address
  space than it touches.)
* peak RSS: the largest single process (``getrusage`` of the children in a
  fresh parent per case, which includes the cluster's worker processes), and
  the sum over the process tree (sampled every 0.1 s with psutil; shared
  library pages count once per process there, once in the cgroup);
* voxels per second (wall clock of the command, statistics passes, slabs and
  pyramid included) and per CPU second (user + system time of every process:
  on a shared machine the fairer measure of the work);
* correctness: a few slices of the output against the in-memory predictor
  (same model and normalisation), and the cluster's output against the local one.

Models (``--model-kind``): ``tiny`` (default) is the smallest useful one, a 2D
U-Net of width 4 and depth 1 trained for 20 steps on a crop (fast enough to push
gigabytes through 2 shared CPU cores: memory is the point here, not quality);
``default`` is the engine's CPU default (2.5D context, width 24, depth 2), also
briefly trained.  ``--reference-shape`` adds one uncapped local run of the
default model on a small volume, for its voxels per second.

    # 1.5 GiB through a 512 MiB cap in one process, and the default model's speed:
    .venv/bin/python benchmarks/scale.py --shape 192 2048 2048 --cgroup-limit 512MiB
        --cases local --reference-shape 8 512 512
    # 4 GiB through a 1344 MiB cap on 2 worker processes (+ the client):
    .venv/bin/python benchmarks/scale.py --shape 512 2048 2048 --cgroup-limit 1344MiB
        --cases cluster
    .venv/bin/python benchmarks/scale.py --shape 64 1024 1024        # smaller, uncapped
    .venv/bin/python benchmarks/scale.py --device cuda --model-kind default

Prints a table and writes ``benchmarks/results/scale-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def make_volume(path: Path, shape: tuple[int, int, int], slab: int, seed: int = 0) -> None:
    """A noisy uint16 volume of smooth blobs, written slab by slab as OME-Zarr."""
    from scipy import ndimage

    from napari_duet.core.io import ImageMeta, create_ome_zarr

    meta = ImageMeta(("z", "y", "x"), (2.0, 0.3, 0.3), ("micrometer",) * 3)
    arr = create_ome_zarr(path, shape, np.uint16, meta,
                          chunks=(slab, min(512, shape[1]), min(512, shape[2])))
    rng = np.random.default_rng(seed)
    # One smooth plane pattern, shifted per slice: structure without a whole-volume filter.
    base = ndimage.gaussian_filter(rng.random(shape[1:], dtype=np.float32), 6)
    base = (base - base.min()) / np.ptp(base)
    for z0 in range(0, shape[0], slab):
        z1 = min(z0 + slab, shape[0])
        block = np.stack([np.roll(base, 3 * z, axis=1) for z in range(z0, z1)])
        noisy = block * 2000 + 300 + rng.normal(0, 150, block.shape).astype(np.float32)
        arr[z0:z1] = noisy.clip(0, 65535).astype(np.uint16)


def make_model(path: Path, kind: str, vol: Path, device: str) -> dict:
    """Train a model briefly on a small crop of the volume; returns its description."""
    import torch
    import zarr

    from napari_duet.nsn2n import NSN2NConfig, train

    torch.manual_seed(0)
    if kind == "tiny":
        spec = {"context": "2d", "width": 4, "depth": 1}
    else:
        spec = {"context": "2.5d", "width": 24, "depth": 2}
    crop = zarr.open_group(str(vol), mode="r")["0"][:8, :128, :128]
    cfg = NSN2NConfig(**spec, iterations=20, budget="auto", batch_size=4, crop_size=64,
                      preview_every=0, tta=False, device=device)
    train(crop, config=cfg).model.save(path)
    return {"kind": kind, **spec, "iterations": 20, "trained_on": "8 x 128 x 128 crop"}


_KIB = {"k": 1, "m": 2, "g": 3}


def parse_size(text: str) -> int:
    """Bytes of ``'1GiB'``, ``'768MiB'``, ``'512M'`` or a plain number of bytes."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    if t and t[-1] in _KIB:
        return int(float(t[:-1]) * 1024 ** _KIB[t[-1]])
    return int(float(t))


class MemoryCgroup:
    """A cgroup-v1 memory cgroup with a hard limit, below this process's own memory cgroup."""

    ROOT = Path("/sys/fs/cgroup/memory")

    def __init__(self, name: str, limit: int) -> None:
        own = [line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().split()
               if line.split(":", 2)[1] == "memory"][0]
        self.path = self.ROOT / own.lstrip("/") / name
        self.path.mkdir()
        try:
            # memory.limit before memsw (the kernel wants memsw >= memory at all times).
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            memsw = self.path / "memory.memsw.limit_in_bytes"
            self.memsw = memsw.exists()
            if self.memsw:
                memsw.write_text(str(limit))
            self.limit = int((self.path / "memory.limit_in_bytes").read_text())
        except OSError:
            self.remove()
            raise

    @classmethod
    def create(cls, name: str, limit: int) -> MemoryCgroup | None:
        """The cgroup, or None (with the reason printed) where cgroups are not writable."""
        try:
            return cls(name, limit)
        except (OSError, IndexError) as exc:
            print(f"cgroup memory limit unavailable ({exc}); running uncapped, "
                  "peak RSS is still measured", flush=True)
            return None

    def join(self) -> None:
        """Move the calling process (a child before exec) into the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def read(self, name: str) -> int:
        return int((self.path / name).read_text())

    def anon(self) -> int:
        stat = dict(line.split() for line in (self.path / "memory.stat").read_text().splitlines())
        return int(stat["total_rss"])

    def report(self) -> dict:
        oom = dict(line.split() for line in
                   (self.path / "memory.oom_control").read_text().splitlines())
        out = {"limit_mib": self.limit / 2**20,
               "max_usage_mib": self.read("memory.max_usage_in_bytes") / 2**20,
               "failcnt": self.read("memory.failcnt"), "oom_kills": int(oom.get("oom_kill", 0)),
               "memsw_limited": self.memsw}
        if self.memsw:
            out["memsw_max_usage_mib"] = self.read("memory.memsw.max_usage_in_bytes") / 2**20
            out["memsw_failcnt"] = self.read("memory.memsw.failcnt")
        return out

    def remove(self) -> None:
        for _ in range(50):  # the last processes may take a moment to leave
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        print(f"could not remove {self.path}", flush=True)


class TreeRSS:
    """Peak of the summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.1, cgroup: MemoryCgroup | None = None) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.every = every
        self.cgroup = cgroup
        self.peak = 0
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                for p in [self.proc, *self.proc.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            if self.cgroup is not None:
                self.peak_anon = max(self.peak_anon, self.cgroup.anon())
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# Runs the command as its child and prints the children's peak RSS (KiB) and CPU seconds:
# a fresh parent per case, so that the peak is this case's (workers included, see above).
_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print('USAGE', u.ru_maxrss, u.ru_utime + u.ru_stime); sys.exit(rc)")


def run_case(name: str, cmd: list[str], voxels: int, env: dict,
             limit: int | None = None) -> dict:
    """Run ``cmd`` (in a fresh cgroup of ``limit`` bytes when given) and measure it."""
    cgroup = None
    if limit is not None:
        cgroup = MemoryCgroup.create(f"duet_scale_{os.getpid()}_{name}", limit)
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, *cmd], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=None if cgroup is None else cgroup.join)
        tree = TreeRSS(proc.pid, cgroup=cgroup)
        out, _ = proc.communicate()
        seconds = time.perf_counter() - t0
        tree_peak = tree.stop()
        mem = None if cgroup is None else cgroup.report()
        if mem is not None:
            mem["peak_anon_mib"] = tree.peak_anon / 2**20
    finally:
        if cgroup is not None:
            cgroup.remove()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}; cgroup {mem}):\n{out[-3000:]}")
    usage = [line.split() for line in out.splitlines() if line.startswith("USAGE ")][-1]
    return {"case": name, "seconds": seconds, "voxels_per_second": voxels / seconds,
            "cpu_seconds": float(usage[2]),
            "voxels_per_cpu_second": voxels / max(float(usage[2]), 1e-9),
            "peak_rss_process_mib": int(usage[1]) / 1024,
            "peak_rss_tree_mib": tree_peak / 2**20, "cgroup": mem,
            "load_average_after": os.getloadavg(), "command": cmd}


def duet_command(vol: Path, out: Path, model: Path, args, scheduler: str | None) -> list[str]:
    cmd = [sys.executable, "-c", "import sys; from napari_duet.cli import main; "
           "sys.exit(main())", "nsn2n", str(vol), "-o", str(out), "--model", str(model),
           "--device", args.device, "--slab", str(args.slab), "-q", "--threads", "1"]
    if not args.tta:
        cmd.append("--no-tta")
    if scheduler:
        cmd += ["--scheduler", scheduler]
    return cmd


def check_output(vol: Path, out: Path, model: Path, n: int = 3) -> dict:
    """Compare ``n`` slices of the output with the in-memory predictor; check it is complete."""
    import torch
    import zarr

    from napari_duet.core.intensity import Normalizer
    from napari_duet.nsn2n import NSN2NModel

    torch.set_num_threads(1)
    src = zarr.open_group(str(vol), mode="r")["0"]
    grp = zarr.open_group(str(out), mode="r")
    info = dict(grp.attrs)["napari_duet"]
    norm = Normalizer(**info["state"]["normalizers"][0])
    m = NSN2NModel.load(model, device="cpu")
    n_z = src.shape[0]
    zs = sorted({0, n_z // 2, n_z - 1})[:n]
    errors = []
    for z in zs:
        # The 2.5D network reads z-2..z+2 (the chunked path gives it the same halo).
        a, b = max(0, z - 2), min(n_z, z + 3)
        stack = norm.forward(np.asarray(src[a:b], np.float32))
        w = None
        if m.is_context:
            from napari_duet.nsn2n._guide import guide_stack
            from napari_duet.nsn2n._weights import weight_maps

            # The chunked path fits the match threshold to the whole volume: use its tau.
            tau = info["state"]["taus"][0]
            w = weight_maps(guide_stack(stack, m.config), m.config, tau=tau)[0]
        # The blind network's noise level is the whole volume's (chunked: its statistics).
        sigma = (info["state"].get("sigmas") or [None])[0]
        mean, _ = m.predict_stack_slice(stack, z - a, w, False, sigma)
        ref = norm.inverse(mean)
        errors.append(float(np.abs(np.asarray(grp["0"][z]) - ref).max()))
    return {"complete": bool(info.get("complete")), "slices": zs,
            "max_abs_diff_vs_in_memory": errors,
            "exact": (not m.is_context) and max(errors) == 0.0}


def _mib(d: dict, key: str) -> str:
    return f"{d[key]:5.0f} MiB" if key in d else "        -"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(128, 2048, 2048),
                    metavar=("Z", "Y", "X"), help="volume shape (default 128 2048 2048: 1 GiB)")
    ap.add_argument("--cgroup-limit", default=None, metavar="SIZE",
                    help="run every case in a memory cgroup of this size (e.g. 320MiB, 1GiB)")
    ap.add_argument("--model-kind", choices=("tiny", "default"), default="tiny",
                    help="tiny: 2D, width 4, depth 1 (default); default: 2.5D, width 24")
    ap.add_argument("--reference-shape", type=int, nargs=3, default=None,
                    metavar=("Z", "Y", "X"),
                    help="also run the default-size model locally on a volume of this shape")
    ap.add_argument("--slab", type=int, default=2, help="slices per slab (default 2)")
    ap.add_argument("--device", default="cpu", help="device (default cpu)")
    ap.add_argument("--tta", action="store_true", help="8-fold TTA (default: off)")
    ap.add_argument("--cases", nargs="+", default=["local", "cluster"],
                    choices=("local", "cluster"))
    ap.add_argument("--workdir", default=None,
                    help="folder for the volume and outputs (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the volume and outputs")
    args = ap.parse_args(argv)

    limit = None if args.cgroup_limit is None else parse_size(args.cgroup_limit)
    shape = tuple(args.shape)
    voxels = int(np.prod(shape))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="duet-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", DUET_PROGRESS="0")
    rows, checks = [], {}

    if args.reference_shape:
        ref_shape = tuple(args.reference_shape)
        ref_vol, ref_model = work / "ref.ome.zarr", work / "ref.duet"
        if not ref_vol.exists():
            make_volume(ref_vol, ref_shape, args.slab)
        ref_desc = make_model(ref_model, "default", ref_vol, args.device)
        out = work / "out-reference.ome.zarr"
        shutil.rmtree(out, ignore_errors=True)
        row = run_case("reference", duet_command(ref_vol, out, ref_model, args, None),
                       int(np.prod(ref_shape)), env)
        row.update(shape=list(ref_shape), model=ref_desc, volume_mib=np.prod(ref_shape) * 2 / 2**20)
        rows.append(row)
        print(f"  reference ({ref_shape}, default model): {row['seconds']:.0f} s", flush=True)

    vol, model = work / "vol.ome.zarr", work / "model.duet"
    t0 = time.perf_counter()
    if not vol.exists():
        make_volume(vol, shape, args.slab)
    desc = make_model(model, args.model_kind, vol, args.device)
    cap = "uncapped" if limit is None else f"cgroup limit {limit / 2**20:.0f} MiB"
    print(f"volume {shape} uint16 = {voxels * 2 / 2**30:.2f} GiB "
          f"(written in {time.perf_counter() - t0:.0f} s), {cap}, model {desc}", flush=True)
    for case in args.cases:
        out = work / f"out-{case}.ome.zarr"
        shutil.rmtree(out, ignore_errors=True)
        cmd = duet_command(vol, out, model, args, "processes:2" if case == "cluster" else None)
        row = run_case(case, cmd, voxels, env, limit)
        row.update(shape=list(shape), model=desc, volume_mib=voxels * 2 / 2**20)
        rows.append(row)
        print(f"  {case}: {row['seconds']:.0f} s", flush=True)
        checks[case] = check_output(vol, out, model)
        print(f"  {case} output check: {checks[case]}", flush=True)
    if len(args.cases) == 2:
        import zarr

        a, b = (zarr.open_group(str(work / f"out-{c}.ome.zarr"), mode="r")["0"]
                for c in ("local", "cluster"))
        n_z = shape[0]
        same = bool(all(np.array_equal(a[z], b[z]) for z in (0, n_z // 2, n_z - 1)))
    else:
        same = None

    print()
    print(f"{'case':9} {'volume':>9} {'model':>7} {'cap':>9} {'cg peak':>9} {'cg anon':>9} "
          f"{'RSS proc':>9} {'RSS tree':>9} {'wall s':>7} {'Mvox/s':>7} {'CPU s':>6} "
          f"{'load':>5}")
    for r in rows:
        cg = r["cgroup"] or {}
        print(f"{r['case']:9} {r['volume_mib']:5.0f} MiB {r['model']['kind']:>7} "
              f"{_mib(cg, 'limit_mib')} {_mib(cg, 'max_usage_mib')} {_mib(cg, 'peak_anon_mib')} "
              f"{r['peak_rss_process_mib']:5.0f} MiB {r['peak_rss_tree_mib']:5.0f} MiB "
              f"{r['seconds']:7.0f} {r['voxels_per_second'] / 1e6:7.2f} {r['cpu_seconds']:6.0f} "
              f"{r['load_average_after'][0]:5.1f}")
    if same is not None:
        print(f"cluster output equals local output (first, middle, last slice): {same}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"shape": list(shape), "dtype": "uint16", "volume_mib": voxels * 2 / 2**20,
              "cgroup_limit_mib": None if limit is None else limit / 2**20,
              "model": desc, "slab": args.slab, "device": args.device, "tta": args.tta,
              "rows": rows, "checks": checks, "cluster_equals_local": same,
              "load_average": os.getloadavg(), "cpus": os.cpu_count(),
              "python": platform.python_version()}
    path = RESULTS / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {path}")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
