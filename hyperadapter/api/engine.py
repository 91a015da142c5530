"""The batching engine: concurrent requests, each with its own adapter, share decode steps.

One thread owns the model's decode loop (a `runtime.DecodeBatch`). Request threads submit a
`Job` and read its events; between steps the loop admits waiting jobs (their prompts are prefilled
together and merged into the running batch) and drops finished or cancelled ones. The wait queue
is bounded: when it is full, `submit` raises `QueueFull` (HTTP 429). A job whose client has gone
is cancelled and leaves the batch at the next step.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from hyperadapter.adapter import Adapter
from hyperadapter.runtime import DecodeBatch, GenerationParams, LoraRuntime, Row


class QueueFull(RuntimeError):
    pass


class EngineStopped(RuntimeError):
    pass


@dataclass
class Job:
    prompt_ids: list[int]
    adapter: Adapter | None
    params: GenerationParams
    events: "queue.Queue[tuple[str, str]]" = field(default_factory=queue.Queue)  # ("text", s) | ("done", reason) | ("error", msg)
    cancelled: threading.Event = field(default_factory=threading.Event)
    row: Row | None = None
    submitted: float = field(default_factory=time.monotonic)
    _held: int = 0  # characters already sent

    @property
    def completion_tokens(self) -> int:
        return len(self.row.output_ids) if self.row else 0

    def cancel(self) -> None:
        self.cancelled.set()

    def stream(self, timeout: float):
        """Yield text pieces until done; raises TimeoutError if nothing arrives for `timeout` s."""
        while True:
            try:
                kind, value = self.events.get(timeout=timeout)
            except queue.Empty:
                self.cancel()
                raise TimeoutError("generation timed out") from None
            if kind == "text":
                yield value
            elif kind == "done":
                return
            else:
                raise RuntimeError(value)

    @property
    def finish_reason(self) -> str | None:
        return self.row.finish_reason if self.row else None


class Engine:
    def __init__(self, runtime: LoraRuntime, max_batch: int = 16, max_queue: int = 64, metrics=None):
        self.runtime = runtime
        self.max_batch = max_batch
        self.waiting: "queue.Queue[Job]" = queue.Queue(maxsize=max_queue)
        self.metrics = metrics
        self.active: list[Job] = []
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="decode-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ request side
    def submit(self, prompt_ids: list[int], adapter: Adapter | None, params: GenerationParams) -> Job:
        if self._draining.is_set() or self._stop.is_set():
            raise EngineStopped("the server is shutting down")
        job = Job(prompt_ids, adapter, params)
        try:
            self.waiting.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"too many requests waiting ({self.waiting.maxsize}); retry later") from None
        self._gauge()
        return job

    def queue_depth(self) -> int:
        return self.waiting.qsize()

    def busy(self) -> bool:
        return bool(self.active) or not self.waiting.empty()

    def drain(self, timeout: float = 60.0) -> bool:
        """Stop taking work, let in-flight jobs finish; True if everything finished in time."""
        self._draining.set()
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.busy()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------ decode loop
    def _loop(self) -> None:
        batch = DecodeBatch(self.runtime)
        while not self._stop.is_set():
            try:
                self._admit(batch)
                if not batch.rows:
                    continue
                for job in self.active:
                    if job.cancelled.is_set():
                        batch.finish(job.row, "cancelled")
                batch.step()
                self._publish()
            except Exception as exc:  # a failure fails the jobs in flight, never the engine
                for job in self.active:
                    job.events.put(("error", f"{type(exc).__name__}: {exc}"))
                self.active = []
                batch = DecodeBatch(self.runtime)
            self._gauge()

    def _admit(self, batch: DecodeBatch) -> None:
        new: list[Job] = []
        block = not batch.rows
        while len(self.active) + len(new) < self.max_batch:
            try:
                job = self.waiting.get(timeout=0.05) if block and not new else self.waiting.get_nowait()
            except queue.Empty:
                break
            if job.cancelled.is_set():
                job.events.put(("done", "cancelled"))
                continue
            job.row = Row(job.prompt_ids, job.adapter, job.params)
            new.append(job)
        if not new:
            return
        try:
            batch.add([j.row for j in new])
        except Exception as exc:
            for job in new:
                job.events.put(("error", f"{type(exc).__name__}: {exc}"))
            return
        self.active += new
        self._publish()

    def _publish(self) -> None:
        """Send each job its new text (holding back what could still become a stop string)."""
        still = []
        for job in self.active:
            row = job.row
            hold = 0 if row.finished else max((len(s) - 1 for s in row.params.stop), default=0)
            upto = max(job._held, len(row.text) - hold)
            if upto > job._held:
                job.events.put(("text", row.text[job._held:upto]))
                job._held = upto
            if row.finished:
                if self.metrics is not None:
                    self.metrics.tokens.inc(len(row.output_ids))
                job.events.put(("done", row.finish_reason or "stop"))
            else:
                still.append(job)
        self.active = still

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.waiting.qsize())
            self.metrics.batch_size.set(len(self.active))
