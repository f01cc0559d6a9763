"""The engine on a thread of its own, fed by asyncio request handlers.

One thread steps the engine while it has work, and sleeps on an event otherwise. A handler submits its
request and gets an asyncio queue of that request's `Delta`s (handed over with `call_soon_threadsafe`); when
its client goes away it cancels, and the engine frees the request's rows at its next step. Requests join the
running batch between steps: that is the engine's continuous batching.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
import uuid

from qwen25.inference.engine import Delta, Engine
from qwen25.inference.sampling import SamplingParams


class EngineFailed(RuntimeError):
    """The engine's step raised: the server cannot go on serving (a bug; /health says so)."""


class EngineRunner:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._unfinished: dict[str, int] = {}  # samples still running per request: its stream is dropped at 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._loop, name="qwen25-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def submit(self, prompt: list[int], params: SamplingParams) -> tuple[str, asyncio.Queue]:
        """Queue a request from the event loop; raises the engine's `QueueFull` or `ValueError`."""
        if self.failure is not None:
            raise EngineFailed(self.failure)
        request_id = uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:  # registered before the engine can produce its first delta
            self._streams[request_id] = (asyncio.get_running_loop(), queue)
            self._unfinished[request_id] = params.n
        try:
            self.engine.submit(prompt, params, request_id=request_id)
        except BaseException:
            self.release(request_id)
            raise
        self._wake.set()
        return request_id, queue

    def cancel(self, request_id: str) -> None:
        """The client went away: free the request's rows at the next step and stop delivering to it."""
        self.release(request_id)
        self.engine.cancel(request_id)
        self._wake.set()

    def release(self, request_id: str) -> None:
        with self._lock:
            self._release_locked(request_id)

    def _release_locked(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self._unfinished.pop(request_id, None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.engine.has_work:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                deltas = self.engine.step()
            except Exception:
                self._fail(traceback.format_exc())
                return
            self._deliver(deltas)

    def _deliver(self, deltas: list[Delta]) -> None:
        with self._lock:
            targets = [(self._streams.get(d.request_id), d) for d in deltas]
            for d in deltas:  # a finished request's stream goes, even if its handler never reads it
                if d.finish_reason is not None and d.request_id in self._unfinished:
                    self._unfinished[d.request_id] -= 1
                    if self._unfinished[d.request_id] == 0:
                        self._release_locked(d.request_id)
        for target, delta in targets:
            if target is not None:
                _put(*target, delta)

    def _fail(self, trace: str) -> None:
        self.failure = trace.strip().splitlines()[-1]
        print(f"qwen25 serve: the engine failed; no request can be served:\n{trace}", flush=True)
        with self._lock:
            streams, self._streams, self._unfinished = list(self._streams.values()), {}, {}
        for loop, queue in streams:
            _put(loop, queue, EngineFailed(self.failure))


def _put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: object) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:
        pass  # that handler's event loop has closed: nobody is waiting for it
