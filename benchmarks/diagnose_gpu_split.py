"""Diagnose denoiSplit's noise-model path on a GPU: fit (graph vs eager) and first epochs.

Usage (GPU machine): python benchmarks/diagnose_gpu_split.py [seconds per training]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
import denoisplit as bench  # noqa: E402
from napari_duet import noise_models as nmod  # noqa: E402
from napari_duet.denoisplit import SplitConfig, TrainConfig, iter_train  # noqa: E402
from napari_duet.noise2fast import noise2fast  # noqa: E402


def eager(model, weight, st, xt, bs, lr, iterations, tail, seed):
    opt = torch.optim.Adam([weight], lr=lr)
    gen = torch.Generator(device=st.device).manual_seed(seed + 1)
    loss_sum = torch.zeros((), device=st.device)
    for it in range(iterations):
        idx = torch.randint(0, st.numel(), (bs,), device=st.device, generator=gen)
        loss = -model.log_likelihood(xt[idx], st[idx], weight=weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it >= iterations - tail:
            loss_sum += loss.detach()
    return loss_sum


def _bn_finite(net) -> bool:
    return all(bool(torch.isfinite(b).all()) for b in net.buffers() if b.is_floating_point())


def bench_mode(seconds: float) -> None:
    """The quality benchmark's exact set-up: Gaussian model first, then the NM model."""
    from napari_duet.denoisplit import bootstrap_noise_model

    d = bench._load_fmd()
    cut = 3 * d["noisy_G"].shape[1] // 4
    a, b = d["noisy_G"][:, :cut], d["noisy_R"][:, :cut]
    nms = [bootstrap_noise_model(x, denoiser="auto", steps=None, device="cuda", seed=0)
           for x in (a, b)]
    for nm in nms:
        print("NM finite", bool(torch.isfinite(nm.weight).all()), nm.info, flush=True)
    cfg = SplitConfig.preset("default")
    for kw in (dict(likelihood="gaussian", kl="musplit"),
               dict(likelihood="noise_model", kl="denoisplit")):
        tc = TrainConfig(epochs=400, max_minutes=seconds / 60, patch_size=128, batch_size=32,
                         device="cuda", seed=0, calibrate=False, lr=1e-3, **kw)
        gen = iter_train(a, b, cfg, tc, noise_models=nms if kw["likelihood"] ==
                         "noise_model" else None)
        seen = set()
        try:
            while True:
                p = next(gen)
                if p.val_loss is not None and p.epoch not in seen and len(seen) < 6:
                    seen.add(p.epoch)
                    print("   ", kw["likelihood"], p.epoch, p.step, p.val_loss,
                          {k: round(x, 4) for k, x in p.losses.items()}, flush=True)
        except StopIteration as stop:
            model = stop.value
        print(kw["likelihood"], model.training["epochs_run"], "best", model.training["best_epoch"],
              "skipped", model.training["skipped_batches"], "buffers finite",
              _bn_finite(model.net), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["bench"]:
        bench_mode(float(sys.argv[2]))
        return
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    d = bench._load_fmd()
    w = d["noisy_G"].shape[1]
    cut = 3 * w // 4
    a, b = d["noisy_G"][:, :cut], d["noisy_R"][:, :cut]
    models = {"graph": [], "eager": []}
    for x in (a, b):
        s = noise2fast(x, steps=100, device="cuda", seed=0)
        print("n2f signal finite", np.isfinite(s).all(), s.min(), s.max(), flush=True)
        for name in ("graph", "eager"):
            graphed = nmod._fit_cuda_graph
            if name == "eager":
                nmod._fit_cuda_graph = eager
            try:
                nm = nmod.fit_noise_model(s, x, device="cuda")
            finally:
                nmod._fit_cuda_graph = graphed
            print(name, "finite", bool(torch.isfinite(nm.weight).all()), nm.info["final_nll"],
                  nm.std(np.percentile(s, [5, 50, 95])), flush=True)
            models[name].append(nm)
    cfg = SplitConfig.preset("default")
    runs = [("graph NM, AMP", models["graph"], True), ("graph NM, fp32", models["graph"], False),
            ("eager NM, AMP", models["eager"], True)]
    for label, nms, amp in runs:
        tc = TrainConfig(epochs=1000, patch_size=128, batch_size=32, device="cuda",
                         max_minutes=seconds / 60, mixed_precision=amp, calibrate=False)
        t = time.perf_counter()
        vals = []
        gen = iter_train(a, b, cfg, tc, noise_models=nms)
        try:
            while True:
                p = next(gen)
                if p.step == p.steps_per_epoch and p.val_loss is not None and (
                        not vals or vals[-1][0] != p.epoch):
                    vals.append((p.epoch, p.val_loss, dict(p.losses)))
        except StopIteration as stop:
            model = stop.value
        print(f"{label}: {time.perf_counter() - t:.0f}s, epochs {len(vals)}, "
              f"skipped {model.training['skipped_batches']}, best {model.training['best_epoch']}")
        for e, v, losses in vals[:3] + vals[-2:]:
            print("   ", e, v, {k: round(x, 4) for k, x in losses.items()})


if __name__ == "__main__":
    main()
