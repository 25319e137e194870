"""The worker wrapper used by all widgets: errors always surface, cancel closes the engine."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.gui


def _start(qtbot, gen_fn, events):
    from napari_duet._napari._common import start_engine_worker

    return start_engine_worker(
        gen_fn, desc="test", total=None,
        on_yield=lambda v: events.append(("yield", v)),
        on_return=lambda v: events.append(("return", v)),
        on_error=lambda e: events.append(("error", e)),
        on_finish=lambda: events.append(("finish", None)),
    )


def test_runtime_error_is_reported_and_finishes(qtbot):
    events = []

    def failing():
        yield 1
        raise RuntimeError("CUDA out of memory (simulated)")

    worker = _start(qtbot, failing, events)
    qtbot.waitUntil(lambda: ("finish", None) in events, timeout=10_000)
    errors = [e for kind, e in events if kind == "error"]
    assert errors and "out of memory" in str(errors[0])
    from napari_duet._napari._common import error_message

    # Running out of memory says what to change (one line), not just the exception type.
    msg = error_message(errors[0])
    assert msg.startswith("out of memory (CUDA out of memory (simulated)): use a smaller image")
    assert "\n" not in msg and "device setting" in msg
    assert not worker.is_running


def test_cancel_closes_generator_in_worker_thread(qtbot):
    import torch

    events, closed_in = [], []

    def endless():
        worker_thread = threading.get_ident()
        try:
            with torch.no_grad():  # thread-local state that must not leak to the pool thread
                while True:
                    time.sleep(0.01)
                    yield worker_thread
        finally:
            closed_in.append((threading.get_ident(), torch.is_grad_enabled()))

    worker = _start(qtbot, endless, events)
    qtbot.waitUntil(lambda: any(k == "yield" for k, _ in events), timeout=10_000)
    worker.quit()
    qtbot.waitUntil(lambda: ("finish", None) in events, timeout=10_000)
    worker_thread = next(v for k, v in events if k == "yield")
    assert closed_in and closed_in[0][0] == worker_thread
    # The next job on the pool gets grad mode back.
    seen = []

    def probe():
        seen.append(torch.is_grad_enabled())
        yield 0

    events2 = []
    _start(qtbot, probe, events2)
    qtbot.waitUntil(lambda: ("finish", None) in events2, timeout=10_000)
    assert seen == [True]


def test_existing_objects_leave_the_garbage_collector_only_while_a_run_lasts(qtbot):
    import gc

    events, frozen_during = [], []

    def short():
        for i in range(3):
            time.sleep(0.01)
            yield i

    def longer():
        for i in range(30):
            time.sleep(0.01)
            yield i

    assert gc.get_freeze_count() == 0
    _start(qtbot, longer, [])  # two runs at once: unfrozen only after both
    worker = _start(qtbot, short, events)
    worker.yielded.connect(lambda _: frozen_during.append(gc.get_freeze_count()))
    qtbot.waitUntil(lambda: ("finish", None) in events, timeout=10_000)
    qtbot.waitUntil(lambda: gc.get_freeze_count() == 0, timeout=10_000)
    assert frozen_during and min(frozen_during) > 1000
