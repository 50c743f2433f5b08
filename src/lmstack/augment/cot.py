"""Chain-of-thought (Wei et al. 2022) and self-consistency (Wang et al. 2022) for math word problems.

The model writes its reasoning one calculation per line and ends with "The answer is N." (the task suite's
rationale style, so a model fine-tuned on `math_word` rationales answers in the same form); the final answer
is read with `answers.extract_answer` and, over k samples, voted with `pal.majority_vote`, the same vote
PAL uses, so the two methods are compared on equal terms.

All questions × k samples go to the model in one `llm.batch` call (one engine batch for `LocalLLM`), through
an `llm_step`, so a `Trace` records every prompt, completion, token count and latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lmstack.augment.chain import Trace, llm_step
from lmstack.augment.llm import LLM, Message
from lmstack.augment.pal import EXAMPLES, answers_match, majority_vote
from lmstack.augment.sandbox import Scalar
from lmstack.data.tasks.answers import FINAL_ANSWER_PREFIX, extract_answer, format_number
from lmstack.errors import ConfigError

INSTRUCTION = (
    "Solve each math word problem step by step: one calculation per line, then a last line "
    f'"{FINAL_ANSWER_PREFIX} N." with the final number.'
)

# PAL's few-shot questions (hand-written, none from the task suite), with rationales in the suite's style:
# the same shots for both methods.
COT_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        EXAMPLES[0][0],
        "In the morning it sold 240 * 3 / 8 = 90 rolls.\n"
        "In all it sold 90 + 55 = 145 rolls.\n"
        "Left: 240 - 145 = 95 rolls.\n"
        "The answer is 95.",
    ),
    (
        EXAMPLES[1][0],
        "The adult tickets cost 2 * 12.50 = $25.\n"
        "The child tickets cost 3 * 7.25 = $21.75.\n"
        "Together that is 25 + 21.75 = $46.75.\n"
        "The change is 60 - 46.75 = $13.25.\n"
        "The answer is 13.25.",
    ),
    (
        EXAMPLES[2][0],
        "March has 31 days, so 31 - 3 = 28 days take it to March 31.\n"
        "That leaves 45 - 28 = 17 days in April.\n"
        "It ends on April 17.\n"
        "The answer is 17.",
    ),
    (
        EXAMPLES[3][0],
        "He saves 5, 5 + 3 = 8, 8 + 3 = 11, 11 + 3 = 14, 14 + 3 = 17 and 17 + 3 = 20 dollars.\n"
        "In all: 5 + 8 + 11 + 14 + 17 + 20 = $75.\n"
        "The answer is 75.",
    ),
)

STOP = ("\nQ:",)  # a completion that goes on to invent the next example stops there


def _one_line(text: str) -> str:
    """A question on one line, so its text cannot imitate the prompt's structure (a fake `A:` or example)."""
    return " ".join(text.split())


def cot_prompt(
    question: str, examples: Sequence[tuple[str, str]] = COT_EXAMPLES, instruction: str = INSTRUCTION
) -> str:
    """The few-shot CoT completion prompt: the instruction, `Q: … / A: …` examples, and the question with
    an open `A:` (zero-shot with `examples=()`)."""
    parts = [instruction] if instruction else []
    parts += [f"Q: {_one_line(q)}\nA: {rationale.strip()}" for q, rationale in examples]
    parts.append(f"Q: {_one_line(question)}\nA:")
    return "\n\n".join(parts)


def cot_messages(
    question: str, examples: Sequence[tuple[str, str]] = COT_EXAMPLES, instruction: str = INSTRUCTION
) -> list[Message]:
    """The same prompt as chat turns: the instruction as the system message, each example as a user /
    assistant pair, then the question. `examples=(), instruction=""` leaves the question alone as the user
    turn: what a model fine-tuned on the suite's `messages` saw."""
    messages = [{"role": "system", "content": instruction}] if instruction else []
    for q, rationale in examples:
        messages += [{"role": "user", "content": _one_line(q)}, {"role": "assistant", "content": rationale.strip()}]
    return messages + [{"role": "user", "content": _one_line(question)}]


@dataclass
class CoTResult:
    """One question: the voted answer, its vote count, and every sample's text and extracted answer."""

    question: str
    answer: float | str | None
    votes: int
    texts: list[str] = field(default_factory=list)
    answers: list[float | None] = field(default_factory=list)

    @property
    def answer_text(self) -> str:
        if self.answer is None:
            return "no answer"
        return format_number(self.answer) if isinstance(self.answer, float) else self.answer

    def is_correct(self, gold: Scalar) -> bool:
        return answers_match(self.answer, gold)


def solve_cot_many(
    questions: Sequence[str],
    llm: LLM,
    k: int = 1,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    max_tokens: int = 256,
    examples: Sequence[tuple[str, str]] = COT_EXAMPLES,
    instruction: str = INSTRUCTION,
    chat: bool = False,
    trace: Trace | None = None,
) -> list[CoTResult]:
    """Answer every question with k CoT samples and a majority vote (greedy when k == 1, temperature 0.7
    otherwise, unless `temperature` is given).

    With `seed=None` all questions × k samples go out as ONE `llm.batch` call (rows question-major); the
    rows sample independently (the engine's generator, or the server's). A `seed` makes the samples
    reproducible, but the protocol takes one seed per call and rows with the same prompt and seed sample the
    same tokens, so then sample j of every question is one `llm.batch` call with seed + j (k calls, each a
    batch of all questions)."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    questions = [str(q) for q in questions]
    temperature = (0.0 if k == 1 else 0.7) if temperature is None else temperature
    build = cot_messages if chat else cot_prompt
    prompts = [build(q, examples, instruction) for q in questions]
    stop = None if chat else list(STOP)
    params = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop}
    if seed is None or k == 1 or temperature == 0:
        texts = llm_step(llm, "cot", seed=seed, **params).batch([p for p in prompts for _ in range(k)], trace)
        samples = [texts[i * k : (i + 1) * k] for i in range(len(questions))]
    else:
        by_seed = [llm_step(llm, "cot", seed=seed + j, **params).batch(prompts, trace) for j in range(k)]
        samples = [[by_seed[j][i] for j in range(k)] for i in range(len(questions))]
    out = []
    for question, texts in zip(questions, samples):
        answers = [extract_answer(t) for t in texts]
        vote = majority_vote(answers)
        out.append(CoTResult(question, vote.answer, vote.count, list(texts), answers))
    return out


def solve_cot(question: str, llm: LLM, k: int = 1, **options) -> CoTResult:
    """`solve_cot_many` for one question (its k samples still decode as one batch)."""
    return solve_cot_many([question], llm, k, **options)[0]


def evaluate_cot(problems: Sequence[tuple[str, Scalar]], llm: LLM, k: int = 1, **options) -> dict:
    """Accuracy of CoT (self-consistency when k > 1) on (question, gold answer) pairs, plus how many samples
    had no answer to extract; the same keys as `pal.evaluate` where they mean the same."""
    results = solve_cot_many([q for q, _ in problems], llm, k, **options)
    correct = sum(r.is_correct(gold) for r, (_, gold) in zip(results, problems))
    no_answer = sum(a is None for r in results for a in r.answers)
    n = len(problems)
    return {"n": n, "k": k, "accuracy": correct / n if n else 0.0, "no_answer": no_answer}


__all__ = [
    "COT_EXAMPLES",
    "INSTRUCTION",
    "STOP",
    "CoTResult",
    "cot_messages",
    "cot_prompt",
    "evaluate_cot",
    "solve_cot",
    "solve_cot_many",
]
