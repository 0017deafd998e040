"""The guard against Beam's data-plane race (pipeline.runner_guard): a write made while a
periodic flush is handing the buffer to a full send queue must not be cleared unsent."""
from __future__ import annotations

import threading

import pytest

from pipeline import runner_guard


def write_during_blocked_flush() -> bytes:
    """Writes b"a" * 100, lets the periodic flush take it and block (as on a full gRPC
    send queue), writes b"b" * 100 meanwhile, unblocks, closes; returns every byte the
    stream sent, in order."""
    from apache_beam.runners.worker.data_plane import TimeBasedBufferingClosableOutputStream

    sent = []
    flushing, release = threading.Event(), threading.Event()

    def on_flush(data):
        sent.append(data)
        flushing.set()
        release.wait(10)

    stream = TimeBasedBufferingClosableOutputStream(sent.append, flush_callback=on_flush, time_flush_threshold_ms=10)
    stream.write(b"a" * 100)
    assert flushing.wait(10), "the periodic flush never ran"
    writer = threading.Thread(target=stream.write, args=(b"b" * 100,))
    writer.start()
    writer.join(0.3)  # unguarded, the write lands in the buffer the blocked flush will clear
    release.set()
    writer.join(10)
    stream.close()
    return b"".join(sent)


@pytest.fixture
def unguarded():
    was = runner_guard.installed()
    runner_guard.uninstall()
    yield
    if was:
        runner_guard.install()


def test_beam_loses_a_write_made_during_a_blocked_flush(unguarded):
    # If this fails, Beam no longer has the race and pipeline.runner_guard can go.
    assert write_during_blocked_flush() == b"a" * 100


def test_the_guard_sends_every_write_in_order(unguarded):
    assert runner_guard.install()
    assert runner_guard.installed()
    assert write_during_blocked_flush() == b"a" * 100 + b"b" * 100


def test_install_is_idempotent_and_uninstall_restores_beams_write(unguarded):
    from apache_beam.runners.worker.data_plane import TimeBasedBufferingClosableOutputStream as Stream

    beams = Stream.write
    assert runner_guard.install() and runner_guard.install()
    assert Stream.write.unguarded is beams
    runner_guard.uninstall()
    assert Stream.write is beams and not runner_guard.installed()
