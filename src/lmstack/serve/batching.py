"""Continuous batching: requests that arrive at any time share one copy of the model.

One scheduler thread owns the model and a KV cache of `slots` rows × `max_len` positions. At every step
boundary it
- admits waiting requests while slots are free: a prefill of the prompt into the request's own slot, whose
  logits give its first token (the request joins the running batch from the next step);
- runs one decode step for every active row in one forward pass (`decode_at`: row i writes its new
  key/value at its own position and attends to its own keys only, so rows of different lengths and ages
  share the pass);
- retires finished and cancelled rows at once, moving the last active row into the freed slot, so the
  active rows are always the cache's first n rows (a view, no gather).

A row's tokens depend only on its own prompt and settings: its sampling state (generator seeded with the
request's seed, repetition/presence/frequency penalties, stop ids and strings) is its own, and the
masked keys of other rows contribute exact zeros. Greedy rows therefore get the tokens they get alone,
up to the float rounding of a batched matmul (the tests check token identity).

Results come back as `Event`s, through a callback (the HTTP server's event loop) or a queue
(`Handle.events()`, `Handle.result()`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmstack.errors import ConfigError, DataError, LMStackError
from lmstack.generate.engine import Engine, RowState
from lmstack.generate.sampling import GenerationConfig, apply_repetition_penalty, sample_next
from lmstack.models.blocks import KVCache

log = logging.getLogger(__name__)


class QueueFull(LMStackError):
    """Every slot is busy and the waiting queue is at its limit: retry later (HTTP 429)."""


class SchedulerClosed(LMStackError):
    """The scheduler is shutting down and takes no new requests."""


@dataclass
class Request:
    """One generation: prompt token ids, sampling settings, and (by name) the LoRA adapter to use.
    `presence_penalty` / `frequency_penalty` are OpenAI's: logits minus presence·[count > 0] minus
    frequency·count over the tokens this request generated. `top_logprobs`: that many alternatives per
    token (needs `config.logprobs`)."""

    prompt_ids: Sequence[int]
    config: GenerationConfig = field(default_factory=GenerationConfig)
    adapter: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int = 0


@dataclass
class Event:
    """What one step released for one request. `token_ids` / `logprobs` / `top_logprobs` cover the tokens
    behind `text` (never the stop token). The last event has `finish_reason` ("stop", "length",
    "cancelled" or "error", with `error`) and the usage counts."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Result:
    """A whole generation, gathered from its events (`Handle.result`)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    error: str | None = None


class Handle:
    """A submitted request: `cancel()` frees its slot at the next step boundary; without a callback, its
    events queue up for `events()` / `result()`."""

    def __init__(self, request: Request, on_event: Callable[[Event], None] | None) -> None:
        self.request = request
        self._queue: queue.SimpleQueue[Event] | None = None if on_event is not None else queue.SimpleQueue()
        self._on_event = on_event if on_event is not None else self._queue.put
        self._cancelled = threading.Event()
        self.finished = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:  # a consumer's failure (e.g. a closed event loop) must not stop the scheduler
            log.exception("event callback failed; cancelling the request")
            self._cancelled.set()
        if event.finish_reason is not None:
            self.finished.set()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """The request's events until its last one (only for handles made without a callback)."""
        if self._queue is None:
            raise ConfigError("this handle delivers its events to a callback")
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if event.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> Result:
        text, ids, lps, tops, last = [], [], [], [], Event()
        for event in self.events(timeout):
            text.append(event.text)
            ids += event.token_ids
            lps += event.logprobs or []
            tops += event.top_logprobs or []
            last = event
        want = self.request.config.logprobs
        return Result(
            "".join(text),
            ids,
            last.finish_reason or "error",
            last.prompt_tokens,
            last.completion_tokens,
            lps if want else None,
            tops if want and self.request.top_logprobs else None,
            last.error,
        )


class _Active:
    """A request in the running batch: its slot's cached length, last token and sampling state."""

    def __init__(self, handle: Handle, engine: Engine, adapter_index: int, vocab: int, device: torch.device) -> None:
        request, config = handle.request, handle.request.config
        self.handle, self.adapter_index = handle, adapter_index
        self.state = RowState(engine.tokenizer, config.stop, len(request.prompt_ids), config.logprobs)
        self.stop_ids = engine.stop_ids(config)
        self.position = len(request.prompt_ids)  # where the next token's key/value goes
        self.last = -1
        self.generator = None if config.seed is None else torch.Generator(device=device).manual_seed(config.seed)
        self.seen: Tensor | None = None
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
            self.seen[0, list(request.prompt_ids)] = True
        penalised = request.presence_penalty or request.frequency_penalty
        self.counts = torch.zeros(1, vocab, device=device) if penalised else None


class Scheduler:
    """Continuous batching over one `Engine` (its packed weights or, for models it cannot pack, the model's
    own modules). `adapters`: name → index into `engine.fast.adapters` (`serve.adapters.adapter_bank`)."""

    def __init__(
        self,
        engine: Engine,
        *,
        slots: int = 16,
        max_len: int | None = None,
        max_queue: int = 64,
        adapters: dict[str, int] | None = None,
    ) -> None:
        if slots < 1 or max_queue < 0:
            raise ConfigError(f"slots must be >= 1 and max_queue >= 0, got {slots} and {max_queue}")
        self.engine, self.slots, self.max_queue = engine, slots, max_queue
        self.max_len = min(max_len or engine.model.cfg.max_seq_len, engine.model.cfg.max_seq_len)
        self.adapters = dict(adapters or {})
        if self.adapters and not engine.fast.packs_weights:
            raise ConfigError("adapters by name need a packed weight mode (fp32, bf16, int8, int4)")
        self.vocab = engine.model.cfg.vocab_size
        self.cache: KVCache = engine.fast.new_cache(slots, self.max_len)
        self._waiting: deque[Handle] = deque()
        self._active: list[_Active] = []
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and metrics)
        self.peak_batch = 0
        self.cancelled = 0  # rows that left the batch unfinished (a client went away, or shutdown)

    # ------------------------------------------------------------------ public side (any thread)

    def start(self) -> Scheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmstack-scheduler", daemon=True)
            self._thread.start()
        return self

    def submit(self, request: Request, on_event: Callable[[Event], None] | None = None) -> Handle:
        """Queue a request; raises ConfigError/DataError for a request that can never run, QueueFull past
        the queue limit, SchedulerClosed while shutting down."""
        self._check(request)
        handle = Handle(request, on_event)
        with self._cv:
            if self._closing:
                raise SchedulerClosed("the server is shutting down")
            busy = len(self._active) + len(self._waiting)
            if busy >= self.slots + self.max_queue:
                raise QueueFull(f"{busy} requests running or waiting (limit {self.slots + self.max_queue})")
            self._waiting.append(handle)
            self._cv.notify()
        return handle

    def load(self) -> dict[str, int]:
        with self._cv:
            return {
                "running": len(self._active),
                "waiting": len(self._waiting),
                "slots": self.slots,
                "cancelled": self.cancelled,
            }

    def stop(self, drain: bool = False, timeout: float | None = 30.0) -> None:
        """Stop taking requests; `drain` finishes the running and waiting ones, otherwise they end now
        with finish_reason "cancelled". Returns when the scheduler thread has ended."""
        with self._cv:
            self._closing = True
            if not drain:
                for handle in list(self._waiting) + [a.handle for a in self._active]:
                    handle.cancel()
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ checks

    def _check(self, request: Request) -> None:
        ids, config = list(request.prompt_ids), request.config
        if not ids:
            raise DataError("the prompt has no tokens")
        if any(not 0 <= int(t) < self.vocab for t in ids):
            raise DataError(f"prompt token ids must be in [0, {self.vocab})")
        if len(ids) + config.max_new_tokens > self.max_len:
            raise ConfigError(
                f"prompt ({len(ids)} tokens) + max_tokens ({config.max_new_tokens}) exceeds the context of "
                f"{self.max_len} tokens"
            )
        if config.stop and self.engine.tokenizer is None:
            raise ConfigError("stop strings need a tokenizer")
        if request.adapter is not None and request.adapter not in self.adapters:
            known = ", ".join(sorted(self.adapters)) or "none loaded"
            raise ConfigError(f"unknown adapter {request.adapter!r} (adapters: {known})")
        if request.top_logprobs < 0 or (request.top_logprobs and not config.logprobs):
            raise ConfigError("top_logprobs must be >= 0 and needs logprobs")

    # ------------------------------------------------------------------ the scheduler thread

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._active and not self._closing:
                    self._cv.wait()
                if self._closing and not self._waiting and not self._active:
                    return
                admit = []
                while self._waiting and len(self._active) + len(admit) < self.slots:
                    admit.append(self._waiting.popleft())
            for handle in admit:
                if handle.cancelled:
                    handle.emit(Event(finish_reason="cancelled", prompt_tokens=len(handle.request.prompt_ids)))
                    continue
                try:
                    self._prefill(handle)
                except Exception as exc:  # noqa: BLE001 (one bad request must not stop the others)
                    log.exception("prefill failed")
                    handle.emit(Event(finish_reason="error", error=str(exc)))
            self._retire([i for i, a in enumerate(self._active) if a.handle.cancelled], "cancelled")
            if self._active:
                try:
                    self._decode()
                except Exception as exc:  # noqa: BLE001
                    log.exception("decode step failed")
                    for row in self._active:
                        row.handle.emit(Event(finish_reason="error", error=str(exc)))
                    self._active.clear()

    def _slot(self, index: int) -> KVCache:
        """A cache whose tensors are views of one slot (prefill writes there through them)."""
        view = KVCache.__new__(KVCache)
        view.k, view.v = self.cache.k[:, index : index + 1], self.cache.v[:, index : index + 1]
        view.max_len, view.length = self.max_len, 0
        return view

    def _prefill(self, handle: Handle) -> None:
        request, fast = handle.request, self.engine.fast
        device = self.engine.device
        row = _Active(handle, self.engine, self.adapters.get(request.adapter or "", 0), self.vocab, device)
        if request.config.max_new_tokens == 0:
            handle.emit(Event(finish_reason="length", prompt_tokens=row.state.prompt_tokens))
            return
        ids = torch.tensor([list(request.prompt_ids)], dtype=torch.long, device=device)
        positions = torch.arange(ids.shape[1], device=device)[None]
        view = self._slot(len(self._active))
        if fast.packs_weights:
            index = torch.tensor([row.adapter_index], device=device) if self.adapters else None
            logits = fast(ids, positions, view, None, ids.shape[1] > 1, adapter_index=index)
        else:
            logits = fast(ids, positions, view)
        self._active.append(row)
        if not self._sample(row, logits):
            self._retire([len(self._active) - 1], None)

    def _decode(self) -> None:
        rows, device = self._active, self.engine.device
        ids = torch.tensor([r.last for r in rows], dtype=torch.long, device=device)
        positions = torch.tensor([r.position for r in rows], dtype=torch.long, device=device)
        index = torch.tensor([r.adapter_index for r in rows], device=device) if self.adapters else None
        logits = self.engine.fast.decode_at(ids, positions, self.cache, adapter_index=index)
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(rows))
        for r in rows:
            r.position += 1
        done = [i for i, r in enumerate(rows) if not self._sample(r, logits[i : i + 1])]
        self._retire(done, None)

    def _sample(self, row: _Active, raw: Tensor) -> bool:
        """Pick row's next token from its (1, V) logits and emit what it releases; False when it is done."""
        request, config = row.handle.request, row.handle.request.config
        logits = raw
        if row.seen is not None:
            logits = apply_repetition_penalty(logits, row.seen, config.repetition_penalty)
        if row.counts is not None:
            logits = logits - request.frequency_penalty * row.counts - request.presence_penalty * (row.counts > 0)
        token = int(sample_next(logits, config.temperature, config.top_k, config.top_p, row.generator)[0])
        if row.seen is not None:
            row.seen[0, token] = True
        if row.counts is not None:
            row.counts[0, token] += 1
        logprob, top = None, None
        if config.logprobs:
            lsm = torch.log_softmax(raw.float(), dim=-1)[0]
            logprob = float(lsm[token])
            if request.top_logprobs:
                values, indices = torch.topk(lsm, min(request.top_logprobs, self.vocab))
                top = [(int(i), float(v)) for i, v in zip(indices, values)]
        state = row.state
        kept = len(state.ids)
        piece = state.add(token, row.stop_ids, logprob)
        row.last = token
        new_ids = state.ids[kept:]
        finished = state.done or len(state.sampled) >= config.max_new_tokens
        if finished:
            piece += state.close()
        event = Event(piece, new_ids)
        if config.logprobs:
            event.logprobs = [logprob] if new_ids else []
            event.top_logprobs = [top] if new_ids and top is not None else ([] if request.top_logprobs else None)
        if finished:
            event.finish_reason = state.finish_reason
            event.prompt_tokens, event.completion_tokens = state.prompt_tokens, len(state.sampled)
        row.handle.emit(event)
        return not finished

    def _retire(self, indices: list[int], reason: str | None) -> None:
        """Drop rows (highest index first), moving the last active row into each freed slot. `reason`:
        the finish_reason to send (rows that finished normally have sent theirs)."""
        for i in sorted(indices, reverse=True):
            row = self._active[i]
            if reason == "cancelled":
                self.cancelled += 1
            if reason is not None:
                state = row.state
                row.handle.emit(
                    Event(
                        finish_reason=reason,
                        prompt_tokens=state.prompt_tokens,
                        completion_tokens=len(state.sampled),
                    )
                )
            last = len(self._active) - 1
            if i != last:
                moved = self._active[last]
                n = moved.position
                self.cache.k[:, i, :, :n] = self.cache.k[:, last, :, :n]
                self.cache.v[:, i, :, :n] = self.cache.v[:, last, :, :n]
                self._active[i] = moved
            self._active.pop()


__all__ = ["Event", "Handle", "QueueFull", "Request", "Result", "Scheduler", "SchedulerClosed"]
