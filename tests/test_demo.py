"""The demo's tour, step by step, on a random 2-layer llama and the hash embedder (the real run is `make demo`):
step selection, the rows each step measures, the note for an adapter that is not installed, an adapter merged
for its step and taken out again, the incremental index of the KB sample (with or without docs/)."""

import io
import json

import pytest
import torch
from rich.console import Console

from augment.rag.rag_helpers import HashEmbedder, tiny_chat_llm_parts
from lmstack import demo
from lmstack.augment.llm import LocalLLM
from lmstack.cli import build_parser
from lmstack.data.tasks.knowledge_base import sample_dir
from lmstack.generate.engine import Engine


def make_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None), out


def tiny_llm() -> LocalLLM:
    model, tok = tiny_chat_llm_parts(max_seq_len=8192)  # long enough for ReAct's few-shot prompt and two steps
    return LocalLLM(Engine(model, tok), name="tiny")


@pytest.fixture(scope="module")
def llm() -> LocalLLM:
    return tiny_llm()


@pytest.fixture(scope="module")
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture(scope="module")
def index(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("demo")
    docs = root / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# Guide\n\nlmstack ingests folders and answers with citations.\n")
    console, out = make_console()
    opened = demo.build_index(console, root / "work", embedder, docs)
    assert "1 docs pages" in out.getvalue()
    yield opened
    opened.close()


def tiny_adapter(llm: LocalLLM, path):
    """A peft adapter for the tiny model with non-zero B (so that merging it changes the weights)."""
    from lmstack.finetune.lora import LoRAConfig, apply_lora, lora_parameters, unload_lora
    from lmstack.finetune.lora_peft import save_adapter

    model = llm.engine.model
    apply_lora(model, LoRAConfig(r=2, targets="all-linear"))
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.5)
    save_adapter(model, path)
    unload_lora(model)
    return path


def test_step_selection_and_the_parser():
    assert demo.steps_for("all") == ["rag", "math", "react"]
    assert demo.steps_for("react") == ["react"]
    with pytest.raises(ValueError, match="unknown step"):
        demo.steps_for("pretrain")
    parser = build_parser()
    args = parser.parse_args(["demo"])
    assert args.step == "all" and args.workdir is None and args.func is demo._cmd_demo
    assert parser.parse_args(["demo", "--step", "math"]).step == "math"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--step", "pretrain"])


def test_questions_are_the_first_of_their_type_in_the_shipped_sample():
    rows = [json.loads(line) for line in (sample_dir() / "test.jsonl").read_text().splitlines()]
    assert demo.sample_questions("single_hop") == next(r for r in rows if r["type"] == "single_hop")
    assert demo.sample_questions("multi_hop")["type"] == "multi_hop"
    assert demo.math_problem()["question"]


def test_rag_step_without_its_adapter(llm, index, embedder):
    console, out = make_console()
    rows = demo.rag_step(console, llm, index, embedder, adapter=None)
    text = out.getvalue()
    assert [r.method for r in rows] == ["closed book, bare", f"RAG hybrid top-{demo.K}, bare"]
    gold = demo.sample_questions(demo.RAG_TYPE)["answer"]
    assert all(r.step == "rag" and r.gold == gold and isinstance(r.right, bool) and r.seconds >= 0 for r in rows)
    assert "'rag' adapter is not installed" in text and "closed book" in text
    assert "kb/" in text  # citations or the retrieved passages, as file:start-end


def test_math_step_without_its_adapter(llm):
    console, out = make_console()
    rows = demo.math_step(console, llm, adapter=None, max_tokens=24)
    assert [r.method for r in rows] == [
        "direct, bare",
        "CoT 4-shot, bare",
        "PAL 4-shot, bare",
        "sandbox: a hostile program",
    ]
    assert rows[-1].right is True and rows[-1].answer.startswith("refused")
    assert "'pal' adapter is not installed" in out.getvalue()


def test_an_adapter_is_merged_for_its_step_and_taken_out_after(llm, index, embedder, tmp_path):
    adapter = tiny_adapter(llm, tmp_path / "adapter")
    model = llm.engine.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    with demo.adapter_on(llm, adapter, "pal"):
        seen.append({k: v.clone() for k, v in model.state_dict().items() if k in before})
        console, out = make_console()
        rows = demo.math_step(console, llm, adapter=None, max_tokens=8)  # the merged weights decode
    assert any(not torch.equal(before[k], v) for k, v in seen[0].items())
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    console, out = make_console()
    rows = demo.math_step(console, llm, adapter=adapter, max_tokens=8)
    rows += demo.rag_step(console, llm, index, embedder, adapter=adapter)
    rows += demo.react_step(console, llm, index, embedder, adapter=adapter, max_steps=1, max_tokens=8)
    methods = [r.method for r in rows]
    assert "PAL + pal adapter" in methods and f"RAG hybrid top-{demo.K} + rag adapter (≤ 3 searches)" in methods
    assert rows[-1].method.startswith("ReAct + react adapter") and "not installed" not in out.getvalue()
    assert all(torch.allclose(before[k], v, atol=1e-6) for k, v in model.state_dict().items())


def test_react_step_without_its_adapter(llm, index, embedder):
    console, out = make_console()
    rows = demo.react_step(console, llm, index, embedder, adapter=None, max_steps=2, max_tokens=24)
    (row,) = rows
    assert row.step == "react" and row.method.startswith("ReAct few-shot, bare")
    assert row.gold == demo.sample_questions(demo.REACT_TYPE)["answer"] and isinstance(row.right, bool)
    text = out.getvalue()
    assert "'react' adapter is not installed" in text and "Thought:" in text and "stopped:" in text


def test_observations_are_shortened_to_their_sources():
    obs = '<<<passage [1] source="kb/a.txt" chars=0-50>>> Quenda Works was founded by Ilsa Maro. <<<end passage [1]>>>'
    assert demo.short_observation(obs) == "[1] kb/a.txt:0-50 “Quenda Works was founded by Ilsa Maro.”"
    assert len(demo.short_observation("word " * 200, limit=50)) == 50


def test_the_index_is_incremental_and_works_without_docs(tmp_path, embedder):
    console, out = make_console()
    demo.build_index(console, tmp_path, embedder, None).close()
    assert "docs/ folder was not found" in out.getvalue() and "0 docs pages" in out.getvalue()
    console, out = make_console()
    demo.build_index(console, tmp_path, embedder, None).close()
    assert "0 chunks embedded" in out.getvalue()


def test_the_whole_tour_with_missing_adapters(tmp_path, monkeypatch):
    """`run_demo` end to end with the tiny model and the hash embedder standing in for SmolLM2 and MiniLM."""
    from lmstack.augment import llm as llm_module
    from lmstack.augment.rag.embed import SentenceEmbedder

    monkeypatch.setattr(llm_module, "local_llm", lambda spec: tiny_llm())
    monkeypatch.setattr(SentenceEmbedder, "from_pretrained", classmethod(lambda cls, *a, **k: HashEmbedder()))
    monkeypatch.setattr(demo, "find_adapter", lambda name: None)
    console, out = make_console()
    assert demo.run_demo("all", tmp_path, console) == 0
    text = out.getvalue()
    for heading in ("1/3 rag", "2/3 math", "3/3 react", "what each step measured", "right?", "total wall time"):
        assert heading in text
    assert "recipes/pretrain_gpt_tiny.yaml" in text and (tmp_path / "index").is_dir()
    assert text.count("adapter is not installed") == 3
