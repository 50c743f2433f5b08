"""Per-task task metrics of `kind: finetune` recipes: the scorers on known texts, the prompt they decode
from (the training prompt itself), `val_metric/<task>` records of a short run, and bad metric keys."""

import pytest
import torch
import yaml

from finetune.test_recipe import WORDS, base, quiet, write_recipe  # noqa: F401 (base is a fixture)
from lmstack.data.instruct import InstructFormat, Sample, encode_row
from lmstack.errors import ConfigError
from lmstack.finetune.prompt_tuning import PromptTuned, PromptTuningConfig
from lmstack.finetune.recipe import build_job, recipe_from_dict
from lmstack.finetune.task_metrics import engine_generate, score_rows, split_sample, stop_ids
from lmstack.models import DecoderLM
from lmstack.tokenizer import Tokenizer
from lmstack.train.metrics import read_metrics
from lmstack.train.recipe import run_recipe
from testutil import tiny_config


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_bpe([WORDS] * 30, vocab_size=300, min_frequency=1)


def samples_of(tok: Tokenizer, rows: list[dict], fmt: str = "chat") -> list[Sample]:
    out = []
    for row in rows:
        ids, trained = encode_row(tok, row, InstructFormat(max_len=64, format=fmt))
        out.append(Sample(ids, trained, "t"))
    return out


def replay(texts: list[str], seen: list):
    """A generate function that records its prompts and returns known texts in order."""
    queue = iter(texts)

    def generate(prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        seen.append((prompts, max_new_tokens))
        return [next(queue) for _ in prompts]

    return generate


ROWS = [
    {"prompt": "what is one plus two ?", "completion": "the answer is 3 .", "answer": 3},
    {"prompt": "what is two plus two ?", "completion": "the answer is 4 .", "answer": 4},
]


def test_exact_and_answer_score_known_texts_from_the_training_prompt(tok):
    samples = samples_of(tok, ROWS)
    seen: list = []
    right = ["  the answer is 3 .\n", "the answer is 4 ."]
    assert score_rows("exact", samples, ROWS, replay(right, seen), tok, batch_size=1) == 1.0
    assert score_rows("exact", samples, ROWS, replay(["the answer is 3", "4"], []), tok) == 0.0
    assert score_rows("answer", samples, ROWS, replay(["so 1 + 2 = 3", "The answer is: 4"], []), tok) == 1.0
    assert score_rows("answer", samples, ROWS, replay(["the answer is 4 .", "no idea"], []), tok) == 0.0
    assert score_rows("answer", samples, ROWS, replay(["3", "5"], []), tok) == 0.5
    # two batches of one; the prompt is the chat prompt up to the assistant turn, exactly as at inference
    assert [len(p) for p, _ in seen] == [1, 1]
    for (prompts, max_new), row, sample in zip(seen, ROWS, samples):
        chat = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True)
        assert prompts[0] == tok.encode(chat) == split_sample(sample)[0]
        assert max_new == max(len(split_sample(s)[1]) for s in samples) + 16
    assert tok.decode(split_sample(samples[0])[1]) == "the answer is 3 ."  # the reference, end of turn dropped
    assert stop_ids(samples, tok) == (tok.token_to_id("<|im_end|>"),)


def test_pal_runs_the_extracted_program(tok):
    rows = [{"prompt": "what is one plus two ?", "completion": "def solution():\n    return 3\n", "answer": 3}] * 2
    samples = samples_of(tok, rows, fmt="plain")
    texts = ["def solution():\n    a = 1\n    return a + 2\n", "def solution():\n    return 1 / 0\n"]
    assert score_rows("pal", samples, rows, replay(texts, []), tok) == 0.5


def test_engine_generate_decodes_greedily_for_plain_and_prompt_tuned_models(tok):
    torch.manual_seed(0)
    model = DecoderLM(tiny_config("llama-tiny", vocab_size=tok.vocab_size, max_seq_len=48)).eval()
    prompts = [split_sample(s)[0] for s in samples_of(tok, ROWS)]
    texts = engine_generate(model, tok)(prompts, 100)  # cut to what the context leaves
    assert len(texts) == 2 and texts == engine_generate(model, tok)(prompts, 100)
    tuned = PromptTuned(model, PromptTuningConfig(n_tokens=4, init="sample_vocab"), tok).eval()
    assert len(engine_generate(tuned, tok)(prompts, 100)) == 2


def test_a_short_run_logs_val_metric_at_every_eval_point_for_a_single_dataset(tmp_path, base):  # noqa: F811
    path = write_recipe(tmp_path, base, steps=4, eval_every=2, save_every=4)
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["datasets"][0].update(metric="exact", metric_rows=3)
    path.write_text(yaml.safe_dump(recipe))
    lines: list[str] = []
    run_recipe(path, log=lines.append)
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_metric/add" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert all(0.0 <= r["val_metric/add"] <= 1.0 for r in records)
    assert any(line.startswith("step 4: val_metric add (exact) ") for line in lines)


def test_bad_metric_keys_name_the_key(tmp_path, base):  # noqa: F811
    data = {"name": "x", "data": {"datasets": [{"path": "a.jsonl", "val_path": "b.jsonl", "metric": "bleu"}]}}
    with pytest.raises(ConfigError, match=r"data\.datasets\[0\]\.metric must be one of pal, answer, exact"):
        recipe_from_dict(data)
    data["data"]["datasets"][0].update(metric="exact", metric_rows=0)
    with pytest.raises(ConfigError, match=r"data\.datasets\[0\]\.metric_rows"):
        recipe_from_dict(data)
    with pytest.raises(ConfigError, match=r"data\.datasets\[0\]\.metric needs a validation split"):
        recipe_from_dict({"name": "x", "data": {"datasets": [{"path": "a.jsonl", "metric": "answer"}]}})
    assert recipe_from_dict({**data, "data": {"datasets": [{"path": "a.jsonl", "val_path": "b.jsonl"}]}})
    recipe = yaml.safe_load(write_recipe(tmp_path, base).read_text())
    recipe["data"]["datasets"][0]["metric"] = "answer"  # its answers are text: "the answer is one two ."
    with pytest.raises(ConfigError, match=r"data\.datasets\[0\]\.metric: answer compares numbers; .*add_val\.jsonl:1"):
        build_job(recipe_from_dict(recipe), tmp_path / "run", log=quiet)
