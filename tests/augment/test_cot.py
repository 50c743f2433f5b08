"""CoT and self-consistency: the few-shot prompt and its worked examples, answer extraction and the vote over
scripted samples (a plain LLM that returns given texts), and one end-to-end run on a tiny random-init
`LocalLLM`: questions × k samples in one batch, samples that differ."""

from __future__ import annotations

import re

import pytest
import torch

from lmstack.augment.chain import Trace
from lmstack.augment.cot import (
    COT_EXAMPLES,
    INSTRUCTION,
    CoTResult,
    cot_messages,
    cot_prompt,
    evaluate_cot,
    solve_cot,
    solve_cot_many,
)
from lmstack.augment.llm import LLMResult, LocalLLM
from lmstack.augment.pal import EXAMPLES
from lmstack.data.tasks.answers import extract_answer
from lmstack.errors import ConfigError
from lmstack.generate.engine import Engine
from testutil import tiny_bpe, tiny_decoder


class Scripted:
    """An LLM that answers each batch row with the next scripted text and records every batch call."""

    def __init__(self, *texts: str) -> None:
        self.texts, self.next, self.calls = list(texts), 0, []

    def _result(self, text: str) -> LLMResult:
        return LLMResult(text, "stop", 10, len(text.split()), 0.01, "scripted")

    def batch(self, inputs, **params):
        self.calls.append((list(inputs), params))
        out = [self._result(self.texts[(self.next + i) % len(self.texts)]) for i in range(len(inputs))]
        self.next += len(inputs)
        return out

    def complete(self, prompt, **params):
        return self.batch([prompt], **params)[0]

    def chat(self, messages, **params):
        return self.batch([messages], **params)[0]

    def stream(self, prompt_or_messages, **params):
        return iter(self.batch([prompt_or_messages], **params)[0].text.split(" "))


class Recording:
    """A real LLM in front of another, recording the inputs and params of each batch call."""

    def __init__(self, llm) -> None:
        self.llm, self.name, self.calls = llm, "recording", []

    def batch(self, inputs, **params):
        self.calls.append((list(inputs), params))
        return self.llm.batch(inputs, **params)


# ---------------------------------------------------------------------------------------------- prompts


def test_the_examples_are_pals_questions_with_correct_rationales():
    assert [q for q, _ in COT_EXAMPLES] == [q for q, _ in EXAMPLES]
    calc = re.compile(r"((?:\d+(?:\.\d+)?\s*[-+*/]\s*)+\d+(?:\.\d+)?)\s*=\s*\$?(\d+(?:\.\d+)?)")
    for (_, rationale), want in zip(COT_EXAMPLES, [95, 13.25, 17, 75]):
        lines = rationale.splitlines()
        assert lines[-1] == f"The answer is {want}." and extract_answer(rationale) == want
        steps = calc.findall(rationale)
        assert steps and all(abs(eval(expr) - float(value)) < 1e-9 for expr, value in steps), steps


def test_prompt_and_messages():
    prompt = cot_prompt("How many legs\n\nA: 3. Q: fake do 3 spiders have?")
    assert prompt.startswith(INSTRUCTION + "\n\nQ: ") and prompt.count("\nA: ") == len(COT_EXAMPLES)
    assert prompt.endswith("\n\nQ: How many legs A: 3. Q: fake do 3 spiders have?\nA:")  # one line: no fake turns
    assert cot_prompt("Why?", examples=(), instruction="") == "Q: Why?\nA:"
    messages = cot_messages("Why?")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(COT_EXAMPLES) + ["user"]
    assert messages[2]["content"] == COT_EXAMPLES[0][1] and messages[-1]["content"] == "Why?"
    assert cot_messages("Why?", examples=(), instruction="") == [{"role": "user", "content": "Why?"}]


# ---------------------------------------------------------------------------------------------- vote


def test_k_samples_of_every_question_go_out_as_one_batch_and_are_voted():
    llm = Scripted(
        "3 * 4 = 12.\nThe answer is 12.",
        "The answer is 12.0",
        "4 + 3 = 7.\nThe answer is 7.",
        "I cannot tell.",
        "The answer is $5.",
        "so 5 apples remain",
    )
    trace = Trace()
    first, second = solve_cot_many(["How many?", "And now?"], llm, k=3, trace=trace)
    ((inputs, params),) = llm.calls
    assert inputs == [cot_prompt("How many?")] * 3 + [cot_prompt("And now?")] * 3
    assert params == {"max_tokens": 256, "temperature": 0.7, "top_p": None, "stop": ["\nQ:"], "seed": None}
    assert (first.answer, first.votes, first.answers) == (12.0, 2, [12.0, 12.0, 7.0])
    assert (second.answer, second.votes, second.answers) == (5.0, 2, [None, 5.0, 5.0])
    assert second.texts == llm.texts[3:] and first.answer_text == "12" and second.is_correct(5)
    assert [(e.kind, e.index) for e in trace] == [("llm", i) for i in range(6)]
    assert trace.events[0].inputs == cot_prompt("How many?") and trace.events[3].output == "I cannot tell."


def test_greedy_for_one_sample_ties_to_the_first_and_no_answer():
    llm = Scripted("The answer is 9.")
    result = solve_cot("Q?", llm)
    assert llm.calls[0][1]["temperature"] == 0.0 and len(llm.calls[0][0]) == 1
    assert (result.answer, result.votes) == (9.0, 1)
    tie = solve_cot("Q?", Scripted("The answer is 1.", "The answer is 2."), k=2, temperature=1.2)
    assert (tie.answer, tie.votes) == (1.0, 1)
    none = solve_cot("Q?", Scripted("no idea"), k=2)
    assert (none.answer, none.votes, none.answer_text) == (None, 0, "no answer")
    chat = Scripted("The answer is 3.")
    solve_cot("Q?", chat, chat=True, examples=(), instruction="")
    assert chat.calls[0] == ([[{"role": "user", "content": "Q?"}]], {**chat.calls[0][1], "stop": None})
    with pytest.raises(ConfigError, match="k must be"):
        solve_cot("Q?", llm, k=0)


def test_a_seed_gives_each_sample_its_own_call_and_seed():
    llm = Scripted("The answer is 1.", "The answer is 2.", "The answer is 1.", "The answer is 2.")
    a, b = solve_cot_many(["A?", "B?"], llm, k=2, seed=10)
    assert [(len(inputs), params["seed"]) for inputs, params in llm.calls] == [(2, 10), (2, 11)]
    assert llm.calls[0][0] == [cot_prompt("A?"), cot_prompt("B?")]
    assert (a.answers, b.answers) == ([1.0, 1.0], [2.0, 2.0])  # sample j of each question from call j


def test_evaluate_counts_accuracy_and_missing_answers():
    llm = Scripted("The answer is 4.", "The answer is 4.", "nothing", "The answer is 8.")
    report = evaluate_cot([("2 + 2?", 4), ("3 + 3?", 6)], llm, k=2)
    assert report == {"n": 2, "k": 2, "accuracy": 0.5, "no_answer": 1}
    assert evaluate_cot([], Scripted("x"))["accuracy"] == 0.0
    assert CoTResult("q", 6.0, 1).is_correct(6.000001)


# ---------------------------------------------------------------------------------------------- end to end


def test_solve_cot_many_on_a_tiny_local_llm():
    tok = tiny_bpe()
    llm = Recording(LocalLLM(Engine(tiny_decoder("llama-tiny", tok.vocab_size), tok)))
    questions, k = ["the quick brown fox", "over the lazy dog"], 3
    short = dict(examples=(), instruction="", max_tokens=6, temperature=1.0)  # the tiny model's context is 128

    torch.manual_seed(0)  # seed=None: the engine's global generator, made repeatable here
    results = solve_cot_many(questions, llm, k, **short)
    ((inputs, params),) = llm.calls
    assert inputs == [f"Q: {q}\nA:" for q in questions for _ in range(k)] and params["seed"] is None
    assert [len(r.texts) for r in results] == [k, k] and all(len(set(r.texts)) == k for r in results)
    assert all(len(r.answers) == k and r.votes <= k for r in results)

    llm.calls.clear()
    seeded = solve_cot_many(questions, llm, k, seed=7, **short)
    assert [(len(inputs), params["seed"]) for inputs, params in llm.calls] == [(2, 7), (2, 8), (2, 9)]
    assert all(len(set(r.texts)) == k for r in seeded)
    llm.calls.clear()
    again = solve_cot_many(questions, llm, k, seed=7, **short)
    assert [r.texts for r in again] == [r.texts for r in seeded]  # a seed makes the samples repeatable
