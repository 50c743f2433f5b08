"""ReAct training traces: replayed through the real agent loop (a scripted LLM that writes each row's completion
for its prompt), every prompt is exactly what `run_react_many` sends zero-shot and every observation is the
tools' own output; completions parse to the intended action; queries only name entities the trace already
knows (the bridge of a multi-hop chain); arithmetic goes through the sandbox; finish gives the gold answer; the
files are the same on every run; the CLI writes both splits, and the recipe renders rows as the agent's plain
prompt plus the step."""

from __future__ import annotations

import json
import re

import pytest

from augment.rag.rag_helpers import HashEmbedder, small_kb, tiny_chat_llm_parts
from lmstack.augment.llm import LLMResult
from lmstack.augment.react import EXAMPLES, INSTRUCTION, default_tools, parse_action, run_react_many
from lmstack.augment.react_trajectories import (
    ReActTraceConfig,
    make_react_data,
    react_trace,
    trace_rows,
    write_react_trajectories,
)
from lmstack.cli import main
from lmstack.data.instruct import InstructFormat, encode_row
from lmstack.data.tasks.answers import format_number, normalize_text
from lmstack.errors import ConfigError
from lmstack.finetune.recipe import recipe_from_dict

pytest.importorskip("faiss", reason="the RAG index needs faiss-cpu (make setup installs the rag extra)")

RECIPE = "recipes/finetune_react_lora.yaml"
FACT = re.compile(r"The ([a-z ]+) of (.+?) is (.+?)\.(?= |$)")


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """A small knowledge-base train split, ingested with the hash embedder, its traces and the agent's tools."""
    with small_kb(tmp_path_factory.mktemp("kb")) as (rows, index, embedder):
        tools = default_tools(index, embedder, k=3)  # exactly as `lmstack agent` builds them
        traces = [(row, react_trace(row, tools, index, embedder, ReActTraceConfig())) for row in rows]
        yield traces, tools, index, embedder


def made(traces):
    return [(row, t) for row, t in traces if t.left_out is None]


class Replay:
    """An LLM that writes the recorded completion for each prompt it is sent (a prompt it was not trained on
    is a failure), so the real agent loop runs the traces."""

    def __init__(self, rows: list[dict]) -> None:
        self.script = {r["prompt"]: r["completion"] for r in rows}
        self.sent: list[str] = []
        self.name = "replay"

    def batch(self, inputs, **params):
        assert "\nObservation:" in params["stop"]
        out = []
        for prompt in inputs:
            assert prompt in self.script, f"the agent sent a prompt no row holds:\n{prompt[-600:]}"
            self.sent.append(prompt)
            out.append(LLMResult(self.script[prompt], "stop", 1, 1, 0.0, self.name))
        return out

    def complete(self, prompt, **params):
        return self.batch([prompt], **params)[0]


def test_the_agent_loop_replays_every_trace_with_the_same_prompts_and_observations(kb):
    traces, tools, _, _ = kb
    done = made(traces)
    assert len(done) >= 0.9 * len(traces)  # retrieval surfaces nearly every question's facts
    rows = [r for row, t in done for r in trace_rows(row, t.steps)]
    llm = Replay(rows)
    results = run_react_many(
        [row["question"] for row, _ in done], llm, tools, examples=(), instruction=INSTRUCTION, cot_k=0
    )
    assert sorted(llm.sent) == sorted(r["prompt"] for r in rows)  # each row's prompt, sent once
    for (row, t), result in zip(done, results):
        assert (result.stopped, result.answer, result.answer_source) == ("finish", row["answer"], "react")
        assert [(s.thought, s.action, s.argument, s.observation) for s in result.steps] == [
            (s.thought, s.action, s.argument, s.observation) for s in t.steps
        ]
    prompt = rows[1]["prompt"]
    assert prompt.startswith(INSTRUCTION + "\n\nQuestion: ") and prompt.endswith("\nThought:")
    assert not any(e.split("\n", 1)[0] in prompt for e in EXAMPLES)  # zero-shot, as run with the adapter


def test_each_completion_parses_to_its_action_and_observations_are_never_trained(kb):
    traces, tools, _, _ = kb
    for row, t in made(traces):
        for r, step in zip(trace_rows(row, t.steps), t.steps):
            parsed = parse_action(r["completion"], list(tools))
            assert (parsed.error, parsed.thought, parsed.action, parsed.argument) == (
                None, step.thought, step.action, step.argument
            )  # fmt: skip
            assert r["completion"].startswith(" ") and "\n" in r["completion"]
            assert "Observation" not in r["completion"] and r["completion"].count("\n") == 1
        assert t.steps[-1].action == "finish" and t.steps[-1].argument == row["answer"]
        assert len(t.steps) <= 6  # the agent's step budget


def test_searches_name_known_entities_and_follow_the_bridge(kb):
    traces, _, _, _ = kb
    bridged = 0
    for row, t in made(traces):
        known = row["question"]
        for i, step in enumerate(t.steps):
            stated = FACT.findall(step.thought)
            for _, _, value in stated:  # every stated fact is in an observation before it
                seen = " ".join(s.observation or "" for s in t.steps[:i])
                assert normalize_text(value) in normalize_text(seen), (value, step.thought)
            known += " " + " ".join(value for _, _, value in stated)
            if step.action == "search":  # the question's entity or one a stated fact gave: never a gold-only name
                entity = next(ev["entity"] for ev in row["evidence"] if step.argument.startswith(ev["entity"]))
                assert entity in known, (entity, row["question"])
        if row["type"] == "multi_hop":
            bridge = row["evidence"][0]["value"]
            bridged += bridge in t.queries
            assert t.queries[0] == row["evidence"][0]["entity"]
    assert bridged >= 5  # the second search names the entity the first passage gave


def test_arithmetic_traces_compute_in_the_sandbox(kb):
    traces, tools, _, _ = kb
    arithmetic = [(row, t) for row, t in made(traces) if row.get("operation") == "subtract"]
    assert arithmetic
    for row, t in arithmetic:
        a, b = (format_number(x) for x in row["operands"])
        python = t.steps[-2]
        assert (python.action, python.argument) == ("python", f"answer = {a} - {b}")
        assert python.observation == tools["python"](python.argument) == f"result: {row['answer']}"
        assert t.steps[-1].thought == f"The answer is {row['answer']}."
        assert all(s.action == "search" for s in t.steps[:-2])


def test_the_files_are_the_same_on_every_run_and_bad_settings_are_refused(kb, tmp_path):
    traces, _, index, embedder = kb
    rows = [row for row, _ in traces]
    first = write_react_trajectories(rows, index, embedder, tmp_path / "a.jsonl", ReActTraceConfig())
    write_react_trajectories(rows, index, embedder, tmp_path / "b.jsonl", ReActTraceConfig())
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert first.written + sum(first.left_out.values()) == len(rows)
    got = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(got) == first.rows == sum(first.actions.values()) and first.actions["finish"] == first.written
    assert {"id", "type", "step", "action", "prompt", "completion"} <= set(got[0])
    # a budget too small for a second hop leaves multi-hop questions out instead of writing a partial trace
    one = write_react_trajectories(rows, index, embedder, tmp_path / "c.jsonl", ReActTraceConfig(searches=1))
    assert one.left_out["not_found"] > 0 and set(one.searches) == {1}
    with pytest.raises(ConfigError, match="searches"):
        write_react_trajectories(rows, index, embedder, tmp_path / "d.jsonl", ReActTraceConfig(searches=0))


def test_the_cli_writes_both_splits_that_the_recipe_trains_on_as_the_agent_prompts(tmp_path, monkeypatch, capsys):
    import yaml

    from lmstack.generate.engine import Engine

    monkeypatch.setattr("lmstack.augment.rag.embed.SentenceEmbedder.from_pretrained", lambda *a, **k: HashEmbedder())
    assert main(["rag", "react-trajectories", "--out", str(tmp_path / "d"), "--n", "24", "--n-val", "8"]) == 0
    printed = capsys.readouterr().out
    assert "train.jsonl" in printed and "validation.jsonl" in printed
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert {s: v["written"] + v["left_out"] for s, v in report["splits"].items()} == {"train": 24, "validation": 8}
    assert report == make_react_data(tmp_path / "e", HashEmbedder(), n=24, n_val=8)

    recipe = recipe_from_dict(yaml.safe_load(open(RECIPE, encoding="utf-8")))
    (dataset,) = recipe.data.datasets
    assert (dataset.path, dataset.val_path) == ("runs/react-data/train.jsonl", "runs/react-data/validation.jsonl")
    data = recipe.data
    assert (recipe.method, recipe.lora.r, recipe.lora.targets, data.format) == ("lora", 8, "all-linear", "plain")
    # plain rendering with no separator: the tokens LocalLLM.complete sends for the prompt, then the step + EOS
    model, tok = tiny_chat_llm_parts()
    engine = Engine(model, tok)
    fmt = InstructFormat(max_len=100_000, format=data.format, truncation=data.truncation, separator=data.separator)
    rows = [json.loads(line) for line in (tmp_path / "d" / "train.jsonl").read_text().splitlines()]
    for row in rows[:12]:
        ids, trained = encode_row(tok, row, fmt)
        sent = engine.encode_prompt(row["prompt"])
        assert list(ids[: len(sent)]) == sent and not trained[: len(sent)].any() and trained[len(sent) :].all()
        assert tok.decode(ids[len(sent) :]) == row["completion"] and ids[-1] == tok.eos_id
    longest = max(len(r["prompt"]) + len(r["completion"]) for r in rows)
    assert longest == report["splits"]["train"]["max_chars"] < 4 * data.seq_len  # ~4 characters per token
