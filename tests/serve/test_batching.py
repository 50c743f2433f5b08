"""Continuous batching: requests joining and leaving a running batch get exactly the tokens they get alone."""

import copy
import shutil
import threading
import time

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.finetune.lora import LoRAConfig, apply_lora, lora_layers, unload_lora
from lmstack.finetune.lora_peft import load_adapter, save_adapter
from lmstack.generate.engine import Engine
from lmstack.generate.sampling import GenerationConfig
from lmstack.serve.adapters import adapter_bank
from lmstack.serve.batching import QueueFull, Request, Scheduler

PROMPTS = [[5, 9, 2], [7] * 11, [3, 4, 5, 6, 7, 8], [12], [40, 41, 42, 43, 44, 45, 46, 47, 48], [100, 3]]


def alone(engine: Engine, prompt: list[int], config: GenerationConfig) -> list[int]:
    return engine.generate_ids([prompt], config)[0].token_ids


def staggered(scheduler: Scheduler, requests: list[Request], every_steps: int = 2) -> list:
    """Submit the requests a few decode steps apart, so each joins a batch already running."""
    handles = []
    for request in requests:
        target = scheduler.steps + every_steps
        handles.append(scheduler.submit(request))
        deadline = time.monotonic() + 10
        while scheduler.steps < target and any(not h.finished.is_set() for h in handles):
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)
    return [h.result(timeout=60) for h in handles]


@pytest.mark.parametrize("mode", ["fp32", "live"])
def test_greedy_rows_joining_a_running_batch_get_the_tokens_they_get_alone(llama, tokenizer, mode):
    engine = Engine(llama, tokenizer, mode=mode)
    scheduler = Scheduler(engine, slots=4, max_queue=8).start()
    try:
        configs = [GenerationConfig(max_new_tokens=n, ignore_eos=True) for n in (20, 7, 15, 3, 25, 11)]
        results = staggered(scheduler, [Request(p, c) for p, c in zip(PROMPTS, configs)])
    finally:
        scheduler.stop()
    assert scheduler.peak_batch > 1  # they did share decode steps
    for prompt, config, result in zip(PROMPTS, configs, results):
        assert result.token_ids == alone(engine, prompt, config)
        assert result.finish_reason == "length"
        assert (result.prompt_tokens, result.completion_tokens) == (len(prompt), config.max_new_tokens)


def test_seeded_sampling_penalties_and_stops_are_per_row(llama, tokenizer):
    engine = Engine(llama, tokenizer)
    configs = [
        GenerationConfig(max_new_tokens=18, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True),
        GenerationConfig(max_new_tokens=18, temperature=1.2, top_k=20, seed=3, ignore_eos=True),
        GenerationConfig(max_new_tokens=18, repetition_penalty=1.3, ignore_eos=True),
        GenerationConfig(max_new_tokens=30, ignore_eos=True, stop=["e"]),
    ]
    scheduler = Scheduler(engine, slots=3).start()
    try:
        results = staggered(scheduler, [Request(PROMPTS[i], c) for i, c in enumerate(configs)], every_steps=1)
    finally:
        scheduler.stop()
    for i, (config, result) in enumerate(zip(configs, results)):
        expected = engine.generate_ids([PROMPTS[i]], config)[0]
        assert result.token_ids == expected.token_ids
        assert result.text == expected.text
        assert result.finish_reason == expected.finish_reason


def test_stream_events_add_up_to_the_result_with_logprobs(llama, tokenizer):
    engine = Engine(llama, tokenizer)
    config = GenerationConfig(max_new_tokens=12, ignore_eos=True, logprobs=True)
    scheduler = Scheduler(engine, slots=2).start()
    try:
        events = list(scheduler.submit(Request(PROMPTS[0], config, top_logprobs=3)).events(timeout=60))
    finally:
        scheduler.stop()
    expected = engine.generate_ids([PROMPTS[0]], config)[0]
    assert [t for e in events for t in e.token_ids] == expected.token_ids
    assert "".join(e.text for e in events) == expected.text
    logprobs = [lp for e in events for lp in e.logprobs]
    assert logprobs == pytest.approx(expected.logprobs, abs=1e-5)
    tops = [t for e in events for t in e.top_logprobs]
    assert all(len(t) == 3 and t[0][1] >= t[1][1] >= t[2][1] for t in tops)
    assert [t[0][1] for t in tops] == pytest.approx([max(lp, t[0][1]) for lp, t in zip(logprobs, tops)])
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 12


def test_presence_and_frequency_penalties_follow_openai_formula(llama, tokenizer):
    """A huge presence penalty forbids repeating any generated token: all tokens distinct."""
    engine = Engine(llama, tokenizer)
    scheduler = Scheduler(engine, slots=2).start()
    try:
        config = GenerationConfig(max_new_tokens=40, ignore_eos=True)
        plain = scheduler.submit(Request(PROMPTS[1], config)).result(timeout=60)
        penalised = scheduler.submit(Request(PROMPTS[1], config, presence_penalty=1e4)).result(timeout=60)
    finally:
        scheduler.stop()
    assert len(set(plain.token_ids)) < len(plain.token_ids)  # the sharp tiny model repeats itself
    assert len(set(penalised.token_ids)) == len(penalised.token_ids)


def test_cancelled_row_frees_its_slot_and_others_are_unaffected(llama, tokenizer):
    engine = Engine(llama, tokenizer)
    config = GenerationConfig(max_new_tokens=60, ignore_eos=True)
    scheduler = Scheduler(engine, slots=2, max_queue=4).start()
    try:
        doomed = scheduler.submit(Request(PROMPTS[1], config))
        keep = scheduler.submit(Request(PROMPTS[2], config))
        waiting = scheduler.submit(Request(PROMPTS[4], GenerationConfig(max_new_tokens=10, ignore_eos=True)))
        for _ in doomed.events(timeout=60):
            doomed.cancel()  # after its first event: mid-stream
        kept, waited = keep.result(timeout=60), waiting.result(timeout=60)
    finally:
        scheduler.stop()
    assert doomed.finished.is_set()
    assert kept.token_ids == alone(engine, PROMPTS[2], config)
    assert waited.token_ids == alone(engine, PROMPTS[4], GenerationConfig(max_new_tokens=10, ignore_eos=True))


def test_queue_limit_and_requests_that_can_never_run(llama, tokenizer):
    engine = Engine(llama, tokenizer)
    scheduler = Scheduler(engine, slots=1, max_queue=1)  # not started: nothing leaves the queue
    config = GenerationConfig(max_new_tokens=4)
    scheduler.submit(Request([1, 2], config))
    scheduler.submit(Request([1, 2], config))
    with pytest.raises(QueueFull):
        scheduler.submit(Request([1, 2], config))
    with pytest.raises(ConfigError, match="exceeds the context"):
        scheduler.submit(Request([1] * 100, GenerationConfig(max_new_tokens=50)))
    with pytest.raises(ConfigError, match="unknown adapter"):
        scheduler.submit(Request([1], config, adapter="nope"))


def test_stop_without_drain_ends_requests_in_flight(llama, tokenizer):
    engine = Engine(llama, tokenizer)
    scheduler = Scheduler(engine, slots=2, max_queue=4).start()
    handles = [scheduler.submit(Request(p, GenerationConfig(max_new_tokens=100, ignore_eos=True))) for p in PROMPTS]
    next(handles[0].events(timeout=60))
    scheduler.stop(drain=False)
    assert not scheduler._thread.is_alive()
    assert all(h.finished.is_set() for h in handles)
    assert {h.result(timeout=1).finish_reason for h in handles} <= {"cancelled", "length"}


def random_adapter(model, directory, seed: int, r: int) -> None:
    apply_lora(model, LoRAConfig(r=r, alpha=2 * r, targets="all-linear"), name="tmp")
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for part in layer.lora["tmp"].values():
                part.B.normal_(0, 0.3)
    save_adapter(model, directory, adapter="tmp")
    unload_lora(model)


def test_adapters_by_name_mix_in_one_batch_and_match_their_merged_models(llama, tokenizer, tmp_path):
    random_adapter(llama, tmp_path / "a", seed=1, r=4)
    random_adapter(llama, tmp_path / "b", seed=2, r=8)
    merged = {name: Engine(merged_copy(llama, tmp_path / name), tokenizer) for name in ("a", "b")}
    names, bank = adapter_bank(llama, {"a": tmp_path / "a", "b": tmp_path / "b"})
    engine = Engine(llama, tokenizer)
    engine.fast.adapters = bank
    scheduler = Scheduler(engine, slots=4, adapters=names).start()
    config = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    which = ["a", None, "b", "a", "b", None]
    try:
        results = staggered(scheduler, [Request(p, config, adapter=w) for p, w in zip(PROMPTS, which)], 1)
    finally:
        scheduler.stop()
    base = Engine(llama, tokenizer)
    for prompt, name, result in zip(PROMPTS, which, results):
        reference = merged[name] if name else base
        assert result.token_ids == alone(reference, prompt, config), name
    assert results[0].token_ids != alone(base, PROMPTS[0], config)  # the adapters do change the output


def merged_copy(base, directory):
    """A copy of the base with one adapter merged in (what a single-adapter engine runs)."""
    model = copy.deepcopy(base)
    load_adapter(model, directory, name="x")
    return unload_lora(model, merge=True).eval()


def test_many_concurrent_submitters(llama, tokenizer):
    engine = Engine(llama, tokenizer)
    scheduler = Scheduler(engine, slots=4, max_queue=32).start()
    config = GenerationConfig(max_new_tokens=9, ignore_eos=True)
    out = {}

    def client(i):
        out[i] = scheduler.submit(Request(PROMPTS[i % len(PROMPTS)], config)).result(timeout=60).token_ids

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        scheduler.stop()
    for i in range(16):
        assert out[i] == alone(engine, PROMPTS[i % len(PROMPTS)], config)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile needs a C++ compiler"
)
def test_compiled_decode_step_keeps_rows_of_a_running_batch_on_their_eager_tokens(llama, tokenizer):
    compiled = Engine(llama, tokenizer, compile=True)
    eager = Engine(llama, tokenizer)
    scheduler = Scheduler(compiled, slots=4).start()
    configs = [GenerationConfig(max_new_tokens=n, ignore_eos=True) for n in (12, 5, 9, 14)]
    try:
        results = staggered(scheduler, [Request(p, c) for p, c in zip(PROMPTS, configs)], every_steps=1)
    finally:
        scheduler.stop()
    assert scheduler.peak_batch > 1
    for prompt, config, result in zip(PROMPTS, configs, results):
        assert result.token_ids == alone(eager, prompt, config)
