"""The npe2 manifest is valid, single-sourced, and napari sees its contributions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_single_source():
    """One manifest: the packaged file the entry point names (no copy or link elsewhere)."""
    import npe2

    pkg = ROOT / "src" / "napari_duet" / "napari.yaml"
    assert pkg.is_file() and not pkg.is_symlink()
    assert not (ROOT / "napari.yaml").exists()
    manifest = npe2.PluginManifest.from_file(pkg)
    assert manifest.name == "napari-duet"


def test_manifest_validates_and_lists_contributions():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-duet")
    npe2.PluginManifest.model_validate(manifest.model_dump())
    widgets = {w.display_name for w in manifest.contributions.widgets}
    samples = {s.key for s in manifest.contributions.sample_data}
    assert "Self2Seg" in widgets
    assert {"nuclei_low_noise", "nuclei_medium_noise", "nuclei_high_noise", "nsn2n_volume",
            "split_demo"} <= samples
    # Every command resolves to an importable object.
    for cmd in manifest.contributions.commands:
        mod, _, attr = cmd.python_name.partition(":")
        module = __import__(mod, fromlist=[attr])
        assert callable(getattr(module, attr)), cmd.python_name


def test_napari_lists_plugin_widgets_and_samples():
    from napari.plugins import _npe2

    widgets = dict(_npe2.widget_iterator())
    # widget_iterator yields ("dock", (plugin_name, [widget names])) pairs
    names = [n for kind, (plugin, ws) in _npe2.widget_iterator() if plugin == "napari-duet"
             for n in ws]
    assert "Self2Seg" in names, widgets
    samples = {p: s for p, s in _npe2.sample_iterator()}
    assert "nuclei_medium_noise" in samples["napari-duet"]


@pytest.mark.parametrize("key", ["nuclei_low_noise", "nuclei_medium_noise", "nuclei_high_noise"])
def test_sample_data_has_noise_and_truth(key):
    from napari_duet._napari import _sample_data

    layers = getattr(_sample_data, key)()
    (img, meta, kind), (mask, _, mkind) = layers
    assert kind == "image" and mkind == "labels"
    assert img.dtype == np.uint8 and img.shape == mask.shape == (256, 256)
    clean = meta["metadata"]["clean"]
    sigma = meta["metadata"]["noise_sigma"]
    residual = img.astype(float) - clean
    # Noise of the advertised level (clipping at 0/255 shrinks it a little).
    assert 0.75 * sigma < residual.std() < 1.1 * sigma
    assert 0.05 < mask.mean() < 0.5
