"""Open every sample of the installed napari-duet's manifest (run by scripts/check_package.sh).

Run with ``python -I`` from outside the source tree: it fails if napari-duet is imported from the
repository instead of the installed wheel, if a sample of ``napari.yaml`` cannot be imported or
returns layer data of the wrong shape, or if the bundled demo model is missing or cannot split.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
from npe2 import PluginManager
from npe2.manifest.utils import import_python_name

import napari_duet

# The layer data each sample key must give: (layer type, shape) in order.
NUCLEI = [("image", (256, 256)), ("labels", (256, 256))]
EXPECTED = {
    "nuclei_low_noise": NUCLEI,
    "nuclei_medium_noise": NUCLEI,
    "nuclei_high_noise": NUCLEI,
    "nsn2n_volume": [("image", (16, 96, 96)), ("image", (16, 96, 96))],
    "split_demo": [("image", (256, 256))] * 3,
}


def main(repo: Path) -> None:
    installed = Path(napari_duet.__file__).resolve()
    assert repo.resolve() not in installed.parents, f"imported from the source tree: {installed}"
    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-duet")
    python_names = {c.id: c.python_name for c in manifest.contributions.commands}
    samples = {s.key: s.command for s in manifest.contributions.sample_data}
    assert set(samples) == set(EXPECTED), f"samples {sorted(samples)} != {sorted(EXPECTED)}"
    for key, command in samples.items():
        layers = import_python_name(python_names[command])()
        got = [(kind, np.shape(data)) for data, _meta, kind in layers]
        assert got == EXPECTED[key], f"sample {key}: {got} != {EXPECTED[key]}"
        assert all(np.isfinite(np.asarray(d, float)).all() for d, _m, _k in layers), key
        print(f"[package] sample {key}: {got}")

    # The bundled demo model ships as package data and still splits an image.
    from napari_duet.denoisplit import SplitModel

    (model_file,) = [p for p in _walk(files("napari_duet")) if p.name == "split_demo.safetensors"]
    model = SplitModel.load(str(model_file), device="cpu")
    image = import_python_name(python_names[samples["split_demo"]])()[0][0][:64, :64]
    result = model.predict(image)
    channels = np.asarray(result.mean)
    assert channels.shape[-2:] == (64, 64) and np.isfinite(channels).all(), channels.shape
    print(f"[package] demo model {model_file.name}: split into {channels.shape}")


def _walk(folder):
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _walk(entry)
        else:
            yield entry


if __name__ == "__main__":
    main(Path(sys.argv[1]))
