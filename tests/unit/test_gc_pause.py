import gc
import threading

import pytest

from hostkvm import _gc


@pytest.fixture
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_pause_restores_an_enabled_collector(collector_on):
    with _gc.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_pause_leaves_a_disabled_collector_off():
    was = gc.isenabled()
    gc.disable()
    try:
        with _gc.paused():
            pass
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()


def test_nested_pauses_end_with_the_outermost(collector_on):
    with _gc.paused():
        with _gc.paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_overlapping_pauses_in_two_threads(collector_on):
    # Thread A pauses first and ends first; the collector must stay off until B ends too.
    b_in, a_out = threading.Event(), threading.Event()
    seen = []

    def b():
        with _gc.paused():
            b_in.set()
            a_out.wait(5)
            seen.append(gc.isenabled())

    with _gc.paused():
        t = threading.Thread(target=b)
        t.start()
        assert b_in.wait(5)
    a_out.set()
    t.join(5)
    assert seen == [False]
    assert gc.isenabled()


def test_pause_ends_on_an_exception(collector_on):
    with pytest.raises(RuntimeError):
        with _gc.paused():
            raise RuntimeError("boom")
    assert gc.isenabled()
