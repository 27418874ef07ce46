"""A bounded prefetch thread: the loader's work up to decoded views (reading, sampling, feeding and running the
decode graphs) runs on it, so the training thread only takes finished batches and draws their masks.

The thread calls `produce()` of the object it serves and hands each result (or the exception it raised) through a
queue of `depth` items; it ends after the `END` marker or an exception, when `close()` is called, or when the object
it serves is gone (it holds it only through a weak reference while waiting, so an abandoned loader is collected and
its thread ends within a tenth of a second). At exit every thread still running is stopped and joined, also one
whose Feeder is already collected (it may be inside a DALI call, or dropping the loader's last reference)."""

from __future__ import annotations

import atexit
import queue
import threading
import traceback
import weakref

END = object()  # produce() has nothing more (the epoch is over)
_RUNNING: dict[threading.Thread, threading.Event] = {}  # every feeder thread not yet ended, with its stop flag
_RUNNING_LOCK = threading.Lock()
_AT_EXIT: list[bool] = []  # _stop_all registered


class Feeder:
    def __init__(self, owner, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_run, args=(weakref.ref(owner), self._queue, self._stop),
                                        name="tubemae-feeder", daemon=True)
        with _RUNNING_LOCK:
            _RUNNING[self._thread] = self._stop
            if not _AT_EXIT:  # after DALI's exit handlers (the loader built its pipelines), so it runs before them
                atexit.register(_stop_all)
                _AT_EXIT.append(True)
        self._thread.start()

    def get(self):
        """The next result, END, or the exception produce() raised (returned, for the caller to raise)."""
        return self._queue.get()

    def close(self) -> None:
        """Stop the thread after the result it is working on, dropping what it made ahead; returns once it ended,
        so the caller may use what the thread used."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def _run(owner_ref, out: queue.Queue, stop: threading.Event) -> None:
    try:
        _produce_until_stopped(owner_ref, out, stop)
    finally:
        with _RUNNING_LOCK:
            _RUNNING.pop(threading.current_thread(), None)


def _produce_until_stopped(owner_ref, out: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
        owner = owner_ref()
        if owner is None:
            return
        try:
            item = owner.produce()
        except BaseException as error:  # noqa: BLE001 - handed to the training thread, which raises it
            traceback.clear_frames(error.__traceback__)  # keep the lines, not the owner the frames refer to
            item = error
        del owner
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                break
            except queue.Full:
                if owner_ref() is None:
                    return
        if item is END or isinstance(item, BaseException):
            return


def _stop_all() -> None:
    """At exit, before DALI's pipelines are torn down: a thread still inside a pipeline call, or destroying one,
    when the process ends would abort it ('terminate called without an active exception')."""
    with _RUNNING_LOCK:
        running = list(_RUNNING.items())
    for thread, stop in running:
        stop.set()
    for thread, _ in running:
        thread.join()
