"""Grounded-answer training conversations: every cited passage really holds the fact it is cited for, the first
turn is exactly the prompt `rag ask` sends, a follow-up search names the bridge of a multi-hop chain, the
unanswerable ones hold none of their evidence, and the files are the same on every run."""

from __future__ import annotations

import json
import re

import pytest

from augment.rag.rag_helpers import HashEmbedder, small_kb
from lmstack.augment.rag.answer import SEARCH_INSTRUCTION, grounded_messages, search_query
from lmstack.augment.rag.retrieve import search
from lmstack.augment.rag.trajectories import (
    IDK,
    TrajectoryConfig,
    make_grounded_data,
    trajectory,
    write_trajectories,
)
from lmstack.cli import main
from lmstack.data.tasks.answers import normalize_text
from lmstack.errors import ConfigError
from lmstack.finetune.recipe import recipe_from_dict

pytest.importorskip("faiss", reason="the RAG index needs faiss-cpu (make setup installs the rag extra)")

PASSAGE = re.compile(r"<<<passage \[(\d+)\] [^\n]*>>>\n(.*?)\n<<<end passage \[\1\]>>>", re.DOTALL)


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """A small knowledge-base train split, ingested with the hash embedder."""
    with small_kb(tmp_path_factory.mktemp("kb")) as kb:
        yield kb


def passages(messages: list[dict]) -> dict[int, str]:
    found: dict[int, str] = {}
    for m in messages:
        if m["role"] == "user":
            found.update((int(n), text) for n, text in PASSAGE.findall(m["content"]))
    return found


def test_every_citation_points_at_a_passage_that_states_the_fact(kb):
    rows, index, embedder = kb
    cfg = TrajectoryConfig()
    made = 0
    for row in rows:
        messages = trajectory(row, index, embedder, cfg)
        if messages is None:
            continue
        made += 1
        text = passages(messages)
        final = messages[-1]["content"]
        lines = final.split("\n")
        assert lines[-1].startswith("Answer: ") and lines[-1].endswith(row["answer"]), final
        cited = [int(n) for n in re.findall(r"\[(\d+)\]", lines[0])]
        assert len(cited) == len(row["evidence"]), final
        for n, ev in zip(cited, row["evidence"]):
            assert normalize_text(ev["value"]) in normalize_text(text[n]), (ev, text[n])
    assert made >= 0.9 * len(rows)  # retrieval finds nearly every question's facts within three searches


def test_the_first_turn_is_the_prompt_rag_ask_sends_and_searches_follow_the_chain(kb):
    rows, index, embedder = kb
    cfg = TrajectoryConfig(k=2)
    bridged = 0
    for row in rows:
        messages = trajectory(row, index, embedder, cfg)
        if messages is None:
            continue
        hits = search(index, row["question"], embedder, k=2)
        assert messages[:2] == grounded_messages(row["question"], hits, SEARCH_INSTRUCTION)
        queries = [search_query(m["content"]) for m in messages if m["role"] == "assistant"][:-1]
        assert None not in queries and len(queries) <= cfg.searches and len(set(queries)) == len(queries)
        numbers = sorted(passages(messages))
        assert numbers == list(range(1, len(numbers) + 1))  # follow-up passages are numbered on, no repeats
        if row["type"] == "multi_hop" and queries:
            bridged += queries[0] == row["evidence"][0]["value"]
    assert bridged > 0  # some multi-hop question's first search names the bridge entity


def test_unanswerable_conversations_hold_none_of_their_evidence(kb):
    rows, index, embedder = kb
    for row in rows[:15]:
        messages = trajectory(row, index, embedder, TrajectoryConfig(), hide=True)
        assert messages[-1] == {"role": "assistant", "content": IDK}
        assert search_query(messages[2]["content"]) == row["evidence"][0]["entity"]
        for text in passages(messages).values():
            for ev in row["evidence"]:
                both = all(normalize_text(s) in normalize_text(text) for s in (ev["entity"], ev["value"]))
                assert not both, (ev, text)


def test_the_files_are_the_same_on_every_run_and_bad_settings_are_refused(kb, tmp_path):
    rows, index, embedder = kb
    cfg = TrajectoryConfig(unanswerable=0.25, seed=1)
    first = write_trajectories(rows, index, embedder, tmp_path / "a.jsonl", cfg)
    write_trajectories(rows, index, embedder, tmp_path / "b.jsonl", cfg)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert first.written + first.left_out == len(rows) and 0 < first.unanswerable < first.written
    got = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert sum(r["answer"] == IDK for r in got) == first.unanswerable
    with pytest.raises(ConfigError, match="unanswerable"):
        write_trajectories(rows, index, embedder, tmp_path / "c.jsonl", TrajectoryConfig(unanswerable=1.0))


def test_the_cli_writes_both_splits_that_the_recipe_trains_on(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.setattr("lmstack.augment.rag.embed.SentenceEmbedder.from_pretrained", lambda *a, **k: HashEmbedder())
    assert main(["rag", "trajectories", "--out", str(tmp_path / "d"), "--n", "24", "--n-val", "8"]) == 0
    assert "validation.jsonl" in capsys.readouterr().out
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert {s: v["written"] + v["left_out"] for s, v in report["splits"].items()} == {"train": 24, "validation": 8}
    assert report == make_grounded_data(tmp_path / "e", HashEmbedder(), n=24, n_val=8)
    recipe = recipe_from_dict(yaml.safe_load(open("recipes/finetune_rag_lora.yaml", encoding="utf-8")))
    (dataset,) = recipe.data.datasets
    assert (dataset.path, dataset.val_path) == ("runs/rag-data/train.jsonl", "runs/rag-data/validation.jsonl")
