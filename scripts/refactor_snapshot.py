"""Bit-identical check for refactors: run every engine on small seeded inputs, save the arrays.

    python scripts/refactor_snapshot.py OUT_DIR           # writes OUT_DIR/snapshot.npz
    python scripts/refactor_snapshot.py --compare A B     # table; exit 1 if any array differs

Runs headless with one torch thread (a few seconds per engine): Self2Seg 2D and stack,
NS-N2N train + predict, denoiSplit train + predict, Noise2Fast, and the chunked CLI runs
(Self2Seg and split predict into OME-Zarr, NS-N2N with ``--model`` into OME-Zarr), whose
output arrays are read back.  Only public entry points (the engine packages and
``python -m napari_duet``) are used, so the script runs unchanged before and after a move.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _arrays(prefix: str, obj, names) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            out[f"{prefix}.{name}"] = np.asarray(value)
    return out


def _self2seg() -> dict[str, np.ndarray]:
    from napari_duet.core.synthetic import synthetic_nuclei
    from napari_duet.self2seg import Self2SegConfig, self2seg, self2seg_stack

    fast = dict(expert_steps=30, expert_steps_warm=15, patience=15, n_average=2, batch_size=4,
                crop=24, expert_width=8, expert_depth=3, device="cpu", threads=1)
    img = np.asarray(synthetic_nuclei((56, 56), seed=1).noisy, np.float32)
    res = self2seg(img, config=Self2SegConfig(max_alternations=2, seed=3, **fast))
    out = _arrays("self2seg2d", res, ("labels", "u", "denoised", "experts"))
    stack = np.stack([synthetic_nuclei((40, 44), noise_sigma=15, seed=s).noisy
                      for s in range(3)]).astype(np.uint16)
    st = self2seg_stack(stack, None, Self2SegConfig(experts="linear", max_alternations=2,
                                                    seed=3))
    out.update(_arrays("self2seg_stack", st, ("labels", "denoised")))
    return out


def _nsn2n() -> dict[str, np.ndarray]:
    from scipy import ndimage

    from napari_duet.nsn2n import NSN2NConfig, NSN2NModel, train

    rng = np.random.default_rng(0)
    f = ndimage.gaussian_filter(rng.random((8, 40, 40)), (1.5, 3, 3))
    clean = ((f - f.min()) / (f.max() - f.min())).astype(np.float32)
    noisy = (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)
    cfg = NSN2NConfig(iterations=40, width=8, batch_size=4, crop_size=32, device="cpu",
                      preview_every=20, context="2.5d", seed=0)
    res = train(noisy, axis=0, config=cfg)
    out = _arrays("nsn2n_train", res, ("denoised", "uncertainty"))
    with tempfile.TemporaryDirectory() as tmp:
        path = res.model.save(Path(tmp) / "m.duet")
        model = NSN2NModel.load(path, device="cpu")
        pred = model.predict(noisy[:5], axis=0)
    out.update(_arrays("nsn2n_predict", pred, ("denoised", "uncertainty")))
    return out


def _denoisplit() -> dict[str, np.ndarray]:
    from napari_duet.denoisplit import SplitConfig, SplitModel, TrainConfig, train
    from napari_duet.denoisplit._synthetic import synthetic_split

    d = synthetic_split((64, 64), seed=3)
    cfg = SplitConfig(n_levels=2, z_dims=4, filters=8, dropout=0.0)
    tc = TrainConfig(epochs=2, patch_size=16, batch_size=4, steps_per_epoch=4, device="cpu",
                     calib_samples=2, log_every=1, seed=0)
    result = train([d.noisy_a, d.noisy_b], cfg, tc)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.duet"
        result.model.save(path)
        model = SplitModel.load(path, device="cpu")
    pred = model.predict(d.noisy_a + d.noisy_b, samples=3, tile=32, batch_size=4,
                         return_samples=True, seed=7)
    out.update(_arrays("split_predict", pred, ("mean", "std", "samples", "noise_std")))
    return out


def _n2f() -> dict[str, np.ndarray]:
    from napari_duet.core.n2f import noise2fast
    from napari_duet.core.synthetic import synthetic_nuclei

    img = np.asarray(synthetic_nuclei((48, 48), seed=2).noisy, np.float32)
    den = noise2fast(img, steps=40, device="cpu", seed=0, width=8, depth=3, patience=0,
                     threads=1)
    return {"n2f.denoised": np.asarray(den)}


def _write_zarr(path: Path, arr: np.ndarray, axes) -> None:
    try:
        from napari_duet.io import ImageMeta, write_ome_zarr
    except ImportError:
        from napari_duet.core.io import ImageMeta, write_ome_zarr
    meta = ImageMeta(tuple(axes), (1.0,) * len(axes), ("micrometer",) * len(axes))
    write_ome_zarr(path, arr, meta, levels=1)


def _zarr_arrays(prefix: str, path: Path) -> dict[str, np.ndarray]:
    import zarr

    out = {}
    group = zarr.open_group(str(path), mode="r")

    def walk(g, name):
        for key, arr in g.arrays():
            out[f"{prefix}/{name}{key}"] = np.asarray(arr[...])
        for key, sub in g.groups():
            walk(sub, f"{name}{key}/")

    walk(group, "")
    return out


def _duet(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "napari_duet", *args, "-q", "--threads", "1"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"duet {' '.join(args)} failed:\n{proc.stderr}")


def _chunked() -> dict[str, np.ndarray]:
    from scipy import ndimage

    from napari_duet.core.synthetic import synthetic_nuclei
    from napari_duet.nsn2n import NSN2NConfig, train

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stack = np.stack([synthetic_nuclei((40, 44), noise_sigma=15, seed=s).noisy
                          for s in range(3)]).astype(np.uint16)
        _write_zarr(tmp / "stack.ome.zarr", stack, "zyx")
        _duet("self2seg", str(tmp / "stack.ome.zarr"), "-o", str(tmp / "seg.ome.zarr"),
              "--experts", "constant", "--max-alternations", "2")
        out.update(_zarr_arrays("chunked_self2seg", tmp / "seg.ome.zarr"))

        # The bundled demo model, wherever the package keeps it.
        import napari_duet

        demo = next(Path(napari_duet.__file__).parent.rglob("split_demo.safetensors"))
        img = np.random.default_rng(2).uniform(0, 100, (2, 40, 36)).astype(np.float32)
        _write_zarr(tmp / "img.ome.zarr", img, "tyx")
        _duet("split", "predict", str(tmp / "img.ome.zarr"), "--model", str(demo),
              "-o", str(tmp / "split.ome.zarr"), "--samples", "2", "--tile", "16",
              "--device", "cpu")
        out.update(_zarr_arrays("chunked_split", tmp / "split.ome.zarr"))

        rng = np.random.default_rng(0)
        f = ndimage.gaussian_filter(rng.random((6, 32, 32)), (1.5, 3, 3)).astype(np.float32)
        res = train(f, axis=0, config=NSN2NConfig(iterations=4, width=4, batch_size=2,
                                                  crop_size=16, device="cpu", context="2.5d"))
        res.model.save(tmp / "n.duet")
        _write_zarr(tmp / "vol.ome.zarr", f, "zyx")
        _duet("nsn2n", str(tmp / "vol.ome.zarr"), "--model", str(tmp / "n.duet"),
              "-o", str(tmp / "den.ome.zarr"), "--device", "cpu")
        out.update(_zarr_arrays("chunked_nsn2n", tmp / "den.ome.zarr"))
        # Slab by slab into TIFF files (--slab: chunked), with the uncertainty of TTA.
        _duet("nsn2n", str(tmp / "vol.ome.zarr"), "--model", str(tmp / "n.duet"),
              "-o", str(tmp / "den.tif"), "--uncertainty", str(tmp / "unc.tif"),
              "--slab", "2", "--device", "cpu")
        import tifffile

        for name in ("den", "unc"):
            out[f"chunked_nsn2n_tiff/{name}"] = tifffile.imread(tmp / f"{name}.tif")
        # What the NS-N2N widget runs for a large layer (OME-Zarr with uncertainty).
        from napari_duet.nsn2n import NSN2NModel, iter_denoise_to_zarr

        try:
            from napari_duet.nsn2n._store import run_signature as widget_signature
        except ImportError:  # pragma: no cover - moved
            widget_signature = None
        model = NSN2NModel.load(tmp / "n.duet", device="cpu")
        try:
            from napari_duet.core.io import ImageMeta
        except ImportError:  # pragma: no cover - before the io package
            from napari_duet.io import ImageMeta
        sig = widget_signature(model, f, axis=0, tta=True, input_name="vol")
        sig["uncertainty"] = True
        gen = iter_denoise_to_zarr(model, f, tmp / "w.ome.zarr", ImageMeta.default(3), axis=0,
                                   tta=True, signature=sig, slab=2,
                                   uncertainty_path=tmp / "wu.ome.zarr")
        try:
            while True:
                next(gen)
        except StopIteration:
            pass
        out.update(_zarr_arrays("widget_nsn2n", tmp / "w.ome.zarr"))
        out.update(_zarr_arrays("widget_nsn2n_unc", tmp / "wu.ome.zarr"))
    return out


ENGINES = {"self2seg": _self2seg, "nsn2n": _nsn2n, "denoisplit": _denoisplit, "n2f": _n2f,
           "chunked": _chunked}


def snapshot(folder: Path, only: list[str] | None = None) -> Path:
    import time

    import torch

    torch.set_num_threads(1)
    arrays: dict[str, np.ndarray] = {}
    for name, fn in ENGINES.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        got = fn()
        print(f"{name:12s} {len(got):3d} arrays  {time.perf_counter() - t0:6.1f} s", flush=True)
        arrays.update(got)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "snapshot.npz"
    np.savez(path, **arrays)
    return path


def compare(a: Path, b: Path) -> bool:
    za, zb = np.load(_npz(a)), np.load(_npz(b))
    names = sorted(set(za.files) | set(zb.files))
    ok = True
    print(f"{'array':48s} {'shape':18s} {'dtype':8s} identical")
    for name in names:
        if name not in za.files or name not in zb.files:
            print(f"{name:48s} {'':18s} {'':8s} MISSING in {'A' if name not in za.files else 'B'}")
            ok = False
            continue
        x, y = za[name], zb[name]
        same = x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
        ok &= same
        print(f"{name:48s} {str(x.shape):18s} {str(x.dtype):8s} {'yes' if same else 'NO'}")
    print("ALL IDENTICAL" if ok else "DIFFERENCES FOUND")
    return ok


def _npz(p: Path) -> Path:
    return p / "snapshot.npz" if p.is_dir() else p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    parser.add_argument("--only", nargs="*", choices=list(ENGINES))
    args = parser.parse_args(argv)
    if args.compare:
        return 0 if compare(*args.compare) else 1
    if args.folder is None:
        parser.error("give an output folder or --compare A B")
    print(snapshot(args.folder, args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
