"""A guard against a data race in Beam's Fn API data plane that loses records.

The portable runner behind the DirectRunner's multi-processing mode sends each bundle's
input to a worker process through a time-buffered stream
(`data_plane.TimeBasedBufferingClosableOutputStream`, flushed every second by a
background thread). The runner's thread writes the bundle's buffered chunks into that
stream without the lock that the flush holds, and a flush first takes the buffer, then
hands it to the gRPC send queue, then clears the buffer. When the send queue is full (it
holds 100 MB), the hand-off blocks, and every chunk written meanwhile is cleared without
having been sent: the worker never sees those records, and the bundle still succeeds.

Small inputs are written within the first flush interval and are safe. On the large
world (13.5M events) unguarded runs lost 0.6% to 24% of the events (78% in one slowed by
logging), varying from run to run: whole chunks of a bundle's input, from the first shuffle whose input outgrows the
send queue on (docs/benchmarks.md, "Records lost inside the runner"). The in-memory mode
has no data plane and loses nothing.

`install()` makes a write wait for a flush in progress (the flush lock), so that the
runner's writes and the periodic flush no longer interleave. It changes one method of
one class in the running interpreter, only where the runner lives (the driver process;
the worker processes' streams are size-buffered and flushed by their own thread), and it
is idempotent. `preprocess.run`, and the benchmarks that run the job's shape on Beam,
install it before they run."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_MARK = "_ebr_guarded_write"


def _stream_class():
    from apache_beam.runners.worker import data_plane

    return getattr(data_plane, "TimeBasedBufferingClosableOutputStream", None)


def installed() -> bool:
    cls = _stream_class()
    return cls is not None and getattr(cls.write, _MARK, False)


def install() -> bool:
    """Makes the time-buffered data stream's writes wait for a flush in progress.
    Returns True if the guard is in place (now or already), False when this Beam has no
    such stream or no periodic flush (then there is nothing this guard can do; the job's
    reconciliation still reports any loss). A stream without a flush lock writes as before."""
    cls = _stream_class()
    if cls is None or not hasattr(cls, "_schedule_periodic_flush"):
        return False
    if installed():
        return True
    unguarded = cls.write

    def write(self, b, *args, **kwargs):
        lock = getattr(self, "_flush_lock", None)
        if lock is None:
            return unguarded(self, b, *args, **kwargs)
        with lock:
            return unguarded(self, b, *args, **kwargs)

    setattr(write, _MARK, True)
    write.unguarded = unguarded
    cls.write = write
    log.debug("guarded %s.write against the periodic flush", cls.__name__)
    return True


def uninstall() -> None:
    """Restores Beam's own write (for the reproduction's unguarded runs and for tests)."""
    cls = _stream_class()
    if cls is not None and installed():
        cls.write = cls.write.unguarded
