"""Program-aided language models (PAL, Gao et al. 2022): the model writes a small Python program for a word
problem, the sandbox runs it, and the host takes the program's value as the answer (a majority vote when
k programs are sampled).

Nothing here knows about a particular model: `solve` takes any generation callable
`generate(prompt, n, temperature) -> list[str]`. Model output is untrusted text: programs are extracted
from it (code fences, stray prose, several candidate blocks) and run only through `lmstack.augment.sandbox`;
the vote happens in the host over the JSON scalars the sandbox returns.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lmstack.augment.sandbox import Limits, SandboxResult, Scalar, run_many
from lmstack.data.tasks.answers import REL_TOL, extract_answer, format_number, is_correct
from lmstack.errors import ConfigError

Generate = Callable[[str, int, float], list[str]]  # (prompt, n, temperature) → n completions
GenerateMany = Callable[[Sequence[str], int, float], list[list[str]]]  # the same for many prompts

INSTRUCTION = (
    "Solve each math word problem by writing a Python function named solution() that returns the final "
    "number. Use one variable per quantity in the question and only plain Python (math, fractions and "
    "datetime may be imported)."
)

# Few-shot examples in PAL's format: the question, then a program whose variable names mirror the text.
EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "A bakery made 240 rolls. It sold 3/8 of them in the morning and 55 in the afternoon. "
        "How many rolls were left?",
        "def solution():\n"
        "    rolls_made = 240\n"
        "    sold_morning = rolls_made * 3 / 8\n"
        "    sold_afternoon = 55\n"
        "    rolls_left = rolls_made - sold_morning - sold_afternoon\n"
        "    result = rolls_left\n"
        "    return result\n",
    ),
    (
        "Tickets cost $12.50 for adults and $7.25 for children. A family buys 2 adult tickets and 3 child "
        "tickets and pays with a $60 bill. How much change do they get?",
        "def solution():\n"
        "    adult_price = 12.50\n"
        "    child_price = 7.25\n"
        "    total = 2 * adult_price + 3 * child_price\n"
        "    paid = 60\n"
        "    change = paid - total\n"
        "    result = change\n"
        "    return result\n",
    ),
    (
        "A project starts on March 3, 2024 and takes 45 days. On which day of the month does it end?",
        "import datetime\n\n\n"
        "def solution():\n"
        "    start = datetime.date(2024, 3, 3)\n"
        "    end = start + datetime.timedelta(days=45)\n"
        "    result = end.day\n"
        "    return result\n",
    ),
    (
        "Sam saves $5 in the first week and each week saves $3 more than the week before. "
        "How much has he saved after 6 weeks?",
        "def solution():\n"
        "    weekly = 5\n"
        "    increase = 3\n"
        "    total = 0\n"
        "    for week in range(6):\n"
        "        total += weekly + increase * week\n"
        "    result = total\n"
        "    return result\n",
    ),
)

_HEADER = "# solution in Python:"
# What a PAL fine-tuned model (recipes/finetune_pal_lora.yaml) was trained on: the question and the header,
# no instruction or examples: build_prompt(question, examples=(), instruction="").
FINETUNED_PROMPT = {"examples": (), "instruction": ""}


def build_prompt(question: str, examples: Sequence[tuple[str, str]] = EXAMPLES, instruction: str = INSTRUCTION) -> str:
    """The few-shot PAL prompt (zero-shot with `examples=()`; `instruction=""` drops the task description,
    as in the fine-tuned model's prompt, `FINETUNED_PROMPT`). The question is collapsed to one line so that
    its text cannot imitate the prompt's structure (a fake example, a fake header); whatever it asks for,
    only extracted programs run."""
    parts = [instruction] if instruction else []
    for q, program in examples:
        parts.append(f"Q: {' '.join(q.split())}\n\n{_HEADER}\n\n{program.strip()}")
    parts.append(f"Q: {' '.join(question.split())}\n\n{_HEADER}\n\n")
    return "\n\n\n".join(parts)


# --------------------------------------------------------------------------------------------------------
# Program extraction from model output.

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_NEXT_EXAMPLE = re.compile(r"^(?:Q:|Question:|" + re.escape(_HEADER) + r")", re.MULTILINE)
_CODE_START = re.compile(
    r"^(?:def |class |import |from \w|@\w|[A-Za-z_]\w*\s*(?:=|\+=|-=|\*=|/=)[^=]|#|if |for |while |print\()"
)


def candidate_programs(text: str) -> list[str]:
    """Every program-looking block in `text`: fenced blocks if there are any (an unterminated last fence
    counts), else the text itself. Leading prose and trailing lines that stop the block from parsing are
    dropped; a bare function body is wrapped in `def solution():`."""
    text = text.replace("\r\n", "\n")
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    if not blocks:
        cut = _NEXT_EXAMPLE.search(text, 1)
        blocks = [text[: cut.start()] if cut else text]
    out = []
    for block in blocks:
        program = _clean_block(block)
        if program and program not in out:
            out.append(program)
    return out


def extract_program(text: str) -> str | None:
    """The program to run from one completion: the first candidate that defines `solution()`, else the
    first one that sets `answer`/`result`, else the first candidate; None if nothing parses."""
    candidates = candidate_programs(text)
    for wanted in (_defines_solution, _sets_answer):
        for program in candidates:
            if wanted(program):
                return program
    return candidates[0] if candidates else None


def _clean_block(block: str) -> str | None:
    lines = block.split("\n")
    start = next((i for i, line in enumerate(lines) if _CODE_START.match(line.lstrip())), None)
    if start is None:
        return None
    lines = lines[start:]
    if lines[0][:1] in (" ", "\t"):  # a bare body (the prompt ended inside `def solution():`)
        body = textwrap.dedent("\n".join(lines))
        lines = ["def solution():"] + textwrap.indent(body, "    ").split("\n")
    while lines:
        source = "\n".join(lines).strip("\n")
        if source and _parses(source):
            return source + "\n"
        lines.pop()
    return None


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _defines_solution(program: str) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == "solution" for n in ast.parse(program).body)


def _sets_answer(program: str) -> bool:
    return any(
        isinstance(t, ast.Name) and t.id in ("answer", "result")
        for n in ast.parse(program).body
        if isinstance(n, ast.Assign)
        for t in n.targets
    )


# --------------------------------------------------------------------------------------------------------
# Answers: normalisation, comparison, vote.


def normalize_answer(value: Scalar) -> float | str | None:
    """A comparable form of a program's value: a finite float for numbers and numeric text ('$1,200',
    'The answer is 7'), trimmed lower-case text for other strings, None for no answer (None, bools, NaN,
    empty text)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        number = extract_answer(value) if len(value) < 10_000 else None
        if number is not None and math.isfinite(number):
            return number
        text = " ".join(value.split()).strip(" .").lower()
        return text or None
    return None


def answers_match(a: Scalar, b: Scalar, rel_tol: float = REL_TOL) -> bool:
    """True when two answers agree: numbers within `rel_tol` (relative), text exactly after normalisation."""
    x, y = normalize_answer(a), normalize_answer(b)
    if x is None or y is None:
        return False
    if isinstance(x, float) and isinstance(y, float):
        return is_correct(x, y, rel_tol=rel_tol) or is_correct(y, x, rel_tol=rel_tol)
    return x == y


@dataclass(frozen=True)
class Vote:
    answer: float | str | None
    count: int
    total: int


def majority_vote(values: Sequence[Scalar], rel_tol: float = REL_TOL) -> Vote:
    """The most common answer among `values` (numbers within `rel_tol` count as equal; invalid values are
    ignored). Ties go to the answer seen first, so k=1 and greedy decoding are deterministic."""
    clusters: list[list] = []  # [representative, count]
    total = 0
    for value in values:
        norm = normalize_answer(value)
        if norm is None:
            continue
        total += 1
        for cluster in clusters:
            if answers_match(cluster[0], norm, rel_tol):
                cluster[1] += 1
                break
        else:
            clusters.append([norm, 1])
    if not clusters:
        return Vote(None, 0, 0)
    best = max(clusters, key=lambda c: c[1])  # max keeps the first of equal counts
    return Vote(best[0], best[1], total)


# --------------------------------------------------------------------------------------------------------
# Solving.


@dataclass
class PALResult:
    """One question: the voted answer and everything that led to it (completions, programs, runs)."""

    question: str
    answer: float | str | None
    votes: int
    completions: list[str] = field(default_factory=list)
    programs: list[str | None] = field(default_factory=list)
    runs: list[SandboxResult | None] = field(default_factory=list)

    @property
    def answer_text(self) -> str:
        if self.answer is None:
            return "no answer"
        return format_number(self.answer) if isinstance(self.answer, float) else self.answer

    def is_correct(self, gold: Scalar) -> bool:
        return answers_match(self.answer, gold)


def run_value(run: SandboxResult | None) -> Scalar:
    """A run's answer: its returned value, else (a program that only printed) the last number it printed."""
    if run is None or not run.ok:
        return None
    if run.value is not None:
        return run.value
    return extract_answer(run.stdout) if run.stdout else None


def solve(
    question: str,
    generate: Generate,
    *,
    k: int = 1,
    temperature: float | None = None,
    limits: Limits | None = None,
    workers: int = 2,
    examples: Sequence[tuple[str, str]] = EXAMPLES,
    instruction: str = INSTRUCTION,
) -> PALResult:
    """Answer `question` with PAL: sample `k` programs (greedy when k=1 unless `temperature` is given),
    run each in the sandbox, vote over their values."""

    def generate_many(prompts: Sequence[str], n: int, t: float) -> list[list[str]]:
        return [generate(p, n, t) for p in prompts]

    (result,) = solve_many(
        [question],
        generate_many,
        k=k,
        temperature=temperature,
        limits=limits,
        workers=workers,
        examples=examples,
        instruction=instruction,
    )
    return result


def solve_many(
    questions: Sequence[str],
    generate_many: GenerateMany,
    *,
    k: int = 1,
    temperature: float | None = None,
    limits: Limits | None = None,
    workers: int = 2,
    examples: Sequence[tuple[str, str]] = EXAMPLES,
    instruction: str = INSTRUCTION,
) -> list[PALResult]:
    """`solve` for many questions at once: one `generate_many` call (the engine decodes them in batches),
    then every extracted program through the sandbox pool together. Bad arguments raise ConfigError before
    anything is generated; after that nothing raises for a program's sake: `run_many` turns every sandbox
    failure (the host's own included) into a run with an error kind."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    temperature = (0.0 if k == 1 else 0.7) if temperature is None else temperature
    prompts = [build_prompt(q, examples, instruction) for q in questions]
    outputs = generate_many(prompts, k, temperature)
    completions = [[str(c) for c in out][:k] for out in outputs]
    programs = [[extract_program(c) for c in cs] for cs in completions]
    runnable = [p for ps in programs for p in ps if p is not None]
    results = iter(run_many(runnable, workers=workers, limits=limits or Limits()))
    out = []
    for question, cs, ps in zip(questions, completions, programs):
        runs = [next(results) if p is not None else None for p in ps]
        vote = majority_vote([run_value(r) for r in runs])
        out.append(PALResult(question, vote.answer, vote.count, cs, ps, runs))
    return out


def evaluate(
    problems: Sequence[tuple[str, Scalar]],
    generate_many: GenerateMany,
    *,
    k: int = 1,
    temperature: float | None = None,
    limits: Limits | None = None,
    workers: int = 2,
    examples: Sequence[tuple[str, str]] = EXAMPLES,
    instruction: str = INSTRUCTION,
) -> dict:
    """Accuracy of PAL on (question, gold answer) pairs, plus how often programs failed and why."""
    results = solve_many(
        [q for q, _ in problems],
        generate_many,
        k=k,
        temperature=temperature,
        limits=limits,
        workers=workers,
        examples=examples,
        instruction=instruction,
    )
    correct, errors, no_program = 0, {}, 0
    for result, (_, gold) in zip(results, problems):
        correct += result.is_correct(gold)
        no_program += sum(p is None for p in result.programs)
        for run in result.runs:
            if run is not None and not run.ok:
                errors[run.error] = errors.get(run.error, 0) + 1
    n = len(problems)
    return {"n": n, "k": k, "accuracy": correct / n if n else 0.0, "errors": errors, "no_program": no_program}


def engine_generate_many(engine, config=None, *, chat: bool = False, batch_size: int = 16) -> GenerateMany:
    """Adapt an `lmstack.generate.engine.Engine` to `generate_many(prompts, n, temperature)`: every prompt's
    n samples, decoded `batch_size` rows at a time; completions stop at the next few-shot question. With
    `chat=True` each prompt is sent as one user turn through the model's chat template."""
    from dataclasses import replace

    from lmstack.generate.sampling import GenerationConfig

    base = config or GenerationConfig(max_new_tokens=256)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")

    def generate_many(prompts: Sequence[str], n: int, temperature: float) -> list[list[str]]:
        cfg = replace(
            base,
            temperature=temperature,
            top_p=base.top_p if temperature == 0 or base.top_p < 1.0 else 0.95,
            stop=tuple(base.stop) + ("\nQ:",),
        )
        items = [[{"role": "user", "content": p}] if chat else p for p in prompts for _ in range(n)]
        texts = []
        for i in range(0, len(items), batch_size):
            texts += [c.text for c in engine.generate(items[i : i + batch_size], cfg)]
        return [texts[j * n : (j + 1) * n] for j in range(len(prompts))]

    return generate_many


def engine_generate(engine, config=None, *, chat: bool = False) -> Generate:
    """`engine_generate_many` for one prompt: `generate(prompt, n, temperature)`, the n samples as one batch."""
    many = engine_generate_many(engine, config, chat=chat, batch_size=1 << 30)

    def generate(prompt: str, n: int, temperature: float) -> list[str]:
        return many([prompt], n, temperature)[0]

    return generate
