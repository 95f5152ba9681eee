"""conftest.py - fixtures over harness.py; every process a test starts is
stopped at its teardown (perimd's stop() also fails the test on a sanitizer
report or an unclean exit)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Perimd, Sink  # noqa: E402


@pytest.fixture
def perimd_factory(tmp_path):
    """perimd_factory(start=True, **params) -> a started Perimd (or not
    started with start=False; call .start() yourself). Each instance gets
    its own directory under tmp_path. All are stopped at teardown."""
    made = []

    def make(start=True, **params):
        p = Perimd(tmp_path / ("perimd%d" % len(made)), **params)
        made.append(p)
        if start:
            p.start()
        return p

    yield make
    errors = []
    for p in made:
        try:
            p.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def sink_factory(tmp_path):
    """sink_factory(*extra_smtp_sink_args) -> a started Sink; stopped at teardown."""
    made = []

    def make(*extra):
        s = Sink(tmp_path / ("sink%d" % len(made)), extra_args=extra)
        made.append(s)
        return s.start()

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def sink(sink_factory):
    """A started smtp-sink."""
    return sink_factory()


@pytest.fixture
def backend(tmp_path):
    """A started tests/integration/backend.py Backend, stopped at teardown."""
    from backend import Backend
    b = Backend(tmp_path, name="backend")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def backend_factory(tmp_path):
    """backend_factory(**opts) -> a started Backend; all stopped at teardown."""
    from backend import Backend
    made = []

    def make(**opts):
        b = Backend(tmp_path, name="backend%d" % len(made), **opts)
        made.append(b)
        return b.start()

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def hostile():
    """hostile(**settings) -> a started hostile_backend.HostileBackend
    (test_relay_hostile, test_scan_overlap); all stopped at teardown."""
    from hostile_backend import HostileBackend
    made = []

    def make(**kw):
        b = HostileBackend(**kw).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()
