"""Where the GPU time of denoiSplit goes: noise-model fit, training step, prediction.

Usage (on a GPU machine)::

    python benchmarks/profile_gpu.py [--parts fit train predict] [--profile]

Prints seconds, throughput and, with ``--profile``, the top kernels/operators
of each part (torch.profiler), so a change can be judged on one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def sync():
    import torch

    torch.cuda.synchronize()


def part_fit(args, out):
    import torch

    from napari_duet.core.noise_models import fit_noise_model

    rng = np.random.default_rng(0)
    s = rng.uniform(0, 5000, 1_000_000).astype(np.float32)
    x = (rng.poisson(s / 10) * 10 + rng.normal(0, 50, s.size)).astype(np.float32)
    fit_noise_model(s, x, iterations=20, device="cuda")  # start-up
    sync()
    t = time.perf_counter()
    nm = fit_noise_model(s, x, device="cuda")
    out["fit_graph_s"] = time.perf_counter() - t
    import napari_duet.core.noise_models as nmod

    graphed = nmod._fit_steps

    def eager(*args, graph, **kwargs):  # the same steps on the GPU, launched from Python
        return graphed(*args, graph=False, **kwargs)

    nmod._fit_steps = eager
    try:
        t = time.perf_counter()
        ref = fit_noise_model(s, x, device="cuda")
        out["fit_eager_s"] = time.perf_counter() - t
    finally:
        nmod._fit_steps = graphed
    st, xt = torch.as_tensor(s[:200_000]), torch.as_tensor(x[:200_000])
    for name, m in (("graph", nm), ("eager", ref)):
        out[f"fit_{name}_nll"] = float(-m.log_likelihood(xt, st).mean())
        out[f"fit_{name}_std_at_1000_4000"] = m.std(np.array([1000.0, 4000.0])).tolist()
    out["fit_true_std_at_1000_4000"] = [float(np.sqrt(10 * 1000 + 2500)),
                                        float(np.sqrt(10 * 4000 + 2500))]


def _train_setup(p, bs, compile_net=False):
    import torch

    from denoisplit import synthetic_train_step
    from napari_duet.core.noise_models import fit_noise_model
    from napari_duet.denoisplit import SplitConfig
    from napari_duet.denoisplit._lvae import LadderVAE

    rng = np.random.default_rng(0)
    s = rng.uniform(0, 5000, 100_000).astype(np.float32)
    x = (rng.poisson(s / 10) * 10 + rng.normal(0, 50, s.size)).astype(np.float32)
    nm = fit_noise_model(s, x, iterations=20, device="cuda").to("cuda")
    net = LadderVAE(SplitConfig.preset("default"), p).to("cuda")
    net = net.to(memory_format=torch.channels_last)
    fwd = torch.compile(net) if compile_net else None
    step = synthetic_train_step(net, p, bs, [nm, nm], rng, side=512, forward=fwd)
    return step, len(list(net.parameters()))


def _profile(fn, n, label, out, rows=18):
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        sync()
    ka = prof.key_averages()
    cuda_total = sum(e.self_device_time_total for e in ka) / 1e3 / n
    out[f"{label}_kernel_ms_per_call"] = cuda_total
    print(f"--- {label}: GPU kernel time {cuda_total:.1f} ms per call")
    print(ka.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60))
    del torch


def part_train(args, out):
    cases = [(128, 32, False), (128, 64, False)] + ([] if args.no_compile else [(128, 32, True)])
    for p, bs, comp in cases:
        label = f"train_p{p}_b{bs}{'_compiled' if comp else ''}"
        t = time.perf_counter()
        step, n_params = _train_setup(p, bs, comp)
        for _ in range(5):
            step()
        sync()
        out[f"{label}_setup_s"] = time.perf_counter() - t
        t = time.perf_counter()
        n = 30
        for _ in range(n):
            step()
        sync()
        dt = (time.perf_counter() - t) / n
        out[f"{label}_ms_per_step"] = dt * 1e3
        out[f"{label}_patches_per_s"] = bs / dt
        out["param_tensors"] = n_params
        print(f"{label}: {dt * 1e3:.1f} ms/step, {bs / dt:.0f} patches/s", flush=True)
        if args.profile and not comp and bs == 32:
            _profile(step, 5, label, out)


def part_predict(args, out):
    import torch

    from napari_duet.core.intensity import Normalizer
    from napari_duet.core.noise_models import fit_noise_model
    from napari_duet.denoisplit import SplitConfig, SplitModel
    from napari_duet.denoisplit._lvae import LadderVAE

    rng = np.random.default_rng(0)
    s = rng.uniform(0, 5000, 100_000).astype(np.float32)
    x = (rng.poisson(s / 10) * 10 + rng.normal(0, 50, s.size)).astype(np.float32)
    nm = fit_noise_model(s, x, iterations=20, device="cuda")
    cfg = SplitConfig.preset("default")
    net = LadderVAE(cfg, 128).to("cuda").to(memory_format=torch.channels_last).eval()
    norm = Normalizer(1500.0, 900.0)
    model = SplitModel(net, cfg, patch_size=128, input_norm=Normalizer(3000.0, 1300.0),
                       target_norms=[norm, norm], noise_models=[nm, nm])
    img = rng.uniform(0, 6000, size=(1024, 1024)).astype(np.float32)
    model.predict(img[:256, :256], samples=2, tile=256, batch_size=64)
    for tile, overlap, bs in ((256, 64, 256), (256, 64, 128), (512, 64, 64), (384, 64, 128)):
        sync()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        model.predict(img, samples=50, tile=tile, overlap=overlap, batch_size=bs)
        sync()
        dt = time.perf_counter() - t
        label = f"predict_t{tile}_o{overlap}_b{bs}"
        out[f"{label}_mpx_per_s"] = img.size / 1e6 / dt
        out[f"{label}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"{label}: {dt:.2f} s, {img.size / 1e6 / dt:.3f} MP/s, "
              f"peak {out[f'{label}_peak_gib']:.1f} GiB", flush=True)
    if args.profile:
        small = img[:512, :512]
        _profile(lambda: model.predict(small, samples=50, tile=256, overlap=64,
                                       batch_size=256), 1, "predict_512px", out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["fit", "train", "predict"])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile case")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out: dict = {}
    for part in args.parts:
        print(f"=== {part}", flush=True)
        {"fit": part_fit, "train": part_train, "predict": part_predict}[part](args, out)
    for k, v in out.items():
        print(f"  {k:44s} {v}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
