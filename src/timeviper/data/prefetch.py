"""Making the next micro-batch while the current one trains.

The trainer asks for a micro-batch only after the step before it has synced (the loss is read back), so
whatever the main process spends receiving samples from the loader processes and packing them is time the
GPU sits idle: a quarter of a 0.42 s step of the embedded model on an H200. A background thread takes that
work off the step's critical path; it runs while the main thread waits for the GPU or inside torch
kernels, which release the GIL.

The batches and their order are the stream's own. ``state_dict()`` is the stream's state just after the
batch last handed out, not after the one waiting in the queue, so resuming continues exactly there.
"""

from __future__ import annotations

import queue
import threading

from timeviper.data.records import SkipStats


class Prefetcher:
    """Wraps a stream of batches (``__next__``, ``state_dict``, ``load_state_dict``, ``skips``, plus
    ``start_loading()``, which starts its loader processes so that they are forked from the main thread and
    never from the background one, and ``close()``) and keeps up to ``depth`` batches ready. An error raised
    making a batch is raised by the ``next()`` that would have returned it."""

    def __init__(self, stream, depth: int = 1):
        self.stream, self.depth = stream, depth
        self.skips = _copy(stream.skips)
        self._state = stream.state_dict()
        self._ahead = False  # whether the stream has moved past self._state (batches made, not handed out)
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, self._state, self.skips = item
        return batch

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.stream.load_state_dict(state)
        self._state, self.skips, self._ahead = self.stream.state_dict(), _copy(self.stream.skips), False

    def close(self) -> None:
        """Stop the thread and the stream's loader processes; the batches made ahead are dropped, and a later
        next() goes on from the last batch handed out."""
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():  # empty the queue so that a put() the thread is blocked in returns
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread, self._ahead = None, True
        self.stream.close()

    def _start(self) -> None:
        if self._ahead:  # back to just after the last batch handed out
            self.stream.load_state_dict(self._state)
            self._ahead = False
        self.stream.start_loading()
        self._queue, self._stop = queue.Queue(maxsize=self.depth), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._queue, self._stop), daemon=True,
                                        name="timeviper-prefetch")
        self._thread.start()

    def _run(self, out: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                batch = next(self.stream)
                out.put((batch, self.stream.state_dict(), _copy(self.stream.skips)))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            out.put(e)


def _copy(skips: SkipStats) -> SkipStats:
    return SkipStats(skips.names, skips.counts.clone())
