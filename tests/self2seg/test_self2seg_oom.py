"""Running out of memory: ``duet`` exits 2 with one line, never a traceback."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from napari_duet.cli import main
from napari_duet.core.errors import is_out_of_memory, out_of_memory_message


def _numpy_oom():
    np.empty((2**60,), np.float32)  # 4 EiB: more than any address space


def _torch_cpu_oom():
    import torch

    torch.empty((2**60,), dtype=torch.float32)  # "DefaultCPUAllocator: can't allocate memory"


def _torch_device_oom():
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0)")


def _mps_oom():
    raise RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)")


@pytest.fixture
def small_tif(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    return path


@pytest.mark.parametrize("raiser", [_numpy_oom, _torch_cpu_oom, _torch_device_oom, _mps_oom])
@pytest.mark.parametrize("stack", [False, True])
def test_oom_exits_2_with_one_line(raiser, stack, small_tif, tmp_path, capsys, monkeypatch):
    import napari_duet.self2seg._engine as engine
    import napari_duet.self2seg._stack as stack_mod

    def boom(*args, **kwargs):
        raiser()

    monkeypatch.setattr(engine, "iter_self2seg", boom)
    monkeypatch.setattr(stack_mod, "iter_self2seg_stack", boom)
    if stack:
        tifffile.imwrite(small_tif, np.zeros((2, 32, 32), np.uint8), photometric="minisblack")
    code = main(["self2seg", str(small_tif), "-o", str(tmp_path / "o"), "--quiet"])
    out = capsys.readouterr()
    assert code == 2
    err = out.err.strip()
    assert err.startswith("duet self2seg: error: out of memory")
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "smaller image" in err and "--device" in err


def test_other_runtime_errors_are_not_hidden(small_tif, tmp_path, monkeypatch):
    import napari_duet.self2seg._engine as engine

    def boom(*args, **kwargs):
        raise RuntimeError("shape mismatch in a bug")

    monkeypatch.setattr(engine, "iter_self2seg", boom)
    with pytest.raises(RuntimeError, match="bug"):
        main(["self2seg", str(small_tif), "-o", str(tmp_path / "o"), "--quiet"])


def test_oom_classification():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    assert not is_out_of_memory(ValueError("out of memory"))
    msg = out_of_memory_message(MemoryError("Unable to allocate 1 TiB\nsecond line"))
    assert "\n" not in msg and "Unable to allocate 1 TiB" in msg


_CHILD = textwrap.dedent(
    """
    import resource, sys
    # Import everything the run needs first, then cap the address space 400 MiB above it.
    import numpy, scipy.ndimage, skimage.filters, tifffile
    import napari_duet.self2seg, napari_duet.cli._self2seg
    from napari_duet.cli import main
    size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    limit = size + 400 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_AS and /proc")
def test_real_run_under_a_memory_limit(tmp_path):
    """A 6000 x 6000 image with 400 MiB to spare: exit 2 and one line (or success)."""
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (6000, 6000),
                                                             dtype=np.uint8))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "self2seg", str(path), "-o", str(tmp_path / "o"),
         "--experts", "constant", "--max-alternations", "1", "--quiet"],
        capture_output=True, text=True, timeout=600,
        env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
             # the package under test, also when it is run from a source tree
             "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert "Traceback" not in proc.stderr
    assert proc.returncode in (0, 2), proc.stderr
    if proc.returncode == 2:
        err = proc.stderr.strip()
        assert err.startswith("duet self2seg: error: out of memory") and err.count("\n") == 0
    else:
        assert tifffile.imread(tmp_path / "o" / "mask.tif").shape == (6000, 6000)
