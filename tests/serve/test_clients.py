"""Clients of the server beyond the plain `openai` calls in test_app.py: a smolagents `CodeAgent` driving
SmolLM2-135M-Instruct through `OpenAIServerModel`, a packed BitNet checkpoint served by name (the engine
runs the model's own modules), and the `lmstack serve` command line.

The agent's system prompt is replaced by a short few-shot one on purpose: a 135M model follows a pattern
of two worked examples, but not smolagents' ~2,000-token default system prompt; with the default prompt
it does not emit the `<code>...</code>` format at all (observed by hand), so the agent never runs code.
"""

import threading

import openai
import pytest

from lmstack.cli import build_parser, main
from lmstack.errors import ConfigError
from lmstack.generate.engine import Engine
from lmstack.generate.fast import ModelForward
from lmstack.generate.sampling import GenerationConfig
from lmstack.models.bitnet import bitnet_state
from lmstack.serve.app import create_app
from lmstack.serve.server import ServerThread, load_model, parse_pairs
from lmstack.weights.load import load_model_for_inference

SMOLLM = "smollm2-135m-instruct"

SYSTEM = """You solve tasks by writing one line of Python between <code> and </code>. Tools: multiply(a, b) \
returns a * b; final_answer(x) gives the answer.

Task: What is 4 times 9?
Thought: I multiply 4 by 9 with the tool and give the result.
<code>
final_answer(multiply(4, 9))
</code>

Task: What is 12 times 7?
Thought: I multiply 12 by 7 with the tool and give the result.
<code>
final_answer(multiply(12, 7))
</code>"""

CALLS: list[tuple[int, int]] = []  # what the agent's code passed to the tool


def _multiply_tool():
    from smolagents import tool

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: the first integer
            b: the second integer
        """
        CALLS.append((a, b))
        return a * b

    return multiply


@pytest.mark.real_model
def test_a_smolagents_code_agent_solves_a_task_with_a_tool_through_the_server():
    pytest.importorskip("smolagents")
    from smolagents import ActionStep, CodeAgent, OpenAIServerModel

    served = load_model(SMOLLM, adapters=None, slots=2, max_len=2048)
    CALLS.clear()
    with ServerThread(create_app([served])) as url:  # no embedder: /v1/embeddings is off
        model = OpenAIServerModel(model_id=SMOLLM, api_base=url, api_key="unused", max_tokens=60, temperature=0)
        agent = CodeAgent(tools=[_multiply_tool()], model=model, max_steps=2, verbosity_level=0)
        agent.prompt_templates["system_prompt"] = SYSTEM
        out = agent.run("What is 17 times 23?")
    assert out == 391
    assert CALLS == [(17, 23)]  # the tool really ran, with the task's numbers
    steps = [s for s in agent.memory.steps if isinstance(s, ActionStep)]
    final = steps[-1]
    assert final.is_final_answer and "multiply(17, 23)" in final.code_action
    for step in steps:  # every model call was answered by our server, which counted the tokens
        assert step.model_output_message.raw.model == SMOLLM
        assert step.token_usage.input_tokens > 0 and step.token_usage.output_tokens > 0
    assert served.scheduler.steps > 0


# a 2-layer BitNet trained for 4 steps on the `text_corpus` fixture (as in tests/weights/test_bitnet_export.py)
TINY_BITNET = [
    "data.source=files",
    "data.seq_len=32",
    "data.val_fraction=0.2",
    "tokenizer.vocab_size=300",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.d_ff=64",
    "model.bitnet=true",
    "train.steps=4",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.eval_every=0",
    "train.eval_batches=1",
    "train.progress=false",
]


@pytest.fixture
def bitnet_packed(text_corpus, tmp_path):
    """(the training run, its packed checkpoint written by `lmstack quantize --bitnet`)."""
    from lmstack.train.loop import train
    from lmstack.train.recipe import build_job, load_recipe

    run = tmp_path / "run"
    overrides = [*TINY_BITNET, f"out_dir={run}", f"data.paths=[{text_corpus}]"]
    recipe = load_recipe("recipes/pretrain_bitnet_tiny.yaml", overrides)
    job, _ = build_job(recipe, run, log=lambda m: None)
    train(job, recipe.train, run, log=lambda m: None)
    out = tmp_path / "packed"
    assert main(["quantize", "--bitnet", str(run), str(out)]) == 0
    return run, out


def _adapter_for(run, out_dir):
    """A real peft adapter directory for the BitNet architecture (LoRA over the unpacked BitLinear run)."""
    from lmstack.finetune.lora import LoRAConfig, apply_lora
    from lmstack.finetune.lora_peft import save_adapter

    model, _ = load_model_for_inference(run)
    apply_lora(model, LoRAConfig(r=2, alpha=4, targets="all-linear"), name="x")
    save_adapter(model, out_dir, adapter="x")
    return out_dir


def test_a_packed_bitnet_checkpoint_is_served_by_name_and_answers_as_alone(bitnet_packed, tmp_path):
    run, packed = bitnet_packed
    model, tok = load_model_for_inference(packed)
    context = model.cfg.max_seq_len
    served = load_model(str(packed), name="bitnet-tiny", slots=4, max_len=context)
    engine = served.scheduler.engine
    assert not engine.fast.packs_weights and isinstance(engine.fast, ModelForward)
    assert bitnet_state(engine.model)["packed"] == 8 and served.context == context

    prompts = ["alpha beta gamma", "delta epsilon zeta eta", "record 3 says"]
    # greedy, as asked, and sampled with a seed: four training steps leave a model whose greedy pick is
    # mostly the same token, so the sampled rows are what makes "the same text" a strong check
    settings = [dict(temperature=0)] * 3 + [dict(temperature=1.0, seed=i) for i in range(3)]
    asks = [(prompts[i % 3], settings[i]) for i in range(6)]
    alone = Engine(model, tok)
    expected = [alone.generate_ids([tok.encode(p)], GenerationConfig(max_new_tokens=8, **kw))[0] for p, kw in asks]
    results: dict[int, object] = {}
    with ServerThread(create_app([served])) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["bitnet-tiny"]
        start = threading.Barrier(len(asks))

        def ask(i):
            start.wait(10)
            prompt, kw = asks[i]
            results[i] = client.completions.create(model="bitnet-tiny", prompt=prompt, max_tokens=8, **kw)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]  # 6 requests, 4 slots
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len({want.text for want in expected[3:]}) == 3  # the sampled texts differ
    for i, want in enumerate(expected):
        reply = results[i]
        assert reply.model == "bitnet-tiny"
        assert reply.choices[0].text == want.text, asks[i]
        assert reply.usage.completion_tokens == len(want.token_ids) and reply.usage.prompt_tokens == want.prompt_tokens
    assert served.scheduler.steps > 0  # decode steps ran (through ModelForward.decode_at)

    adapter = _adapter_for(run, tmp_path / "x")
    with pytest.raises(ConfigError, match="adapters by name need a packed model"):
        load_model(str(packed), adapters={"x": adapter})


def test_serve_command_line_and_name_value_pairs():
    args = build_parser().parse_args(["serve", "--model", "a=x.gguf", "--adapter", "pal", "--port", "9"])
    assert args.command == "serve" and args.model == ["a=x.gguf"] and args.adapter == ["pal"] and args.port == 9
    assert args.host == "127.0.0.1" and args.slots == 16 and args.max_len == 2048 and args.mode == "fp32"
    assert args.embeddings == "all-minilm-l6-v2" and args.api_key is None and callable(args.func)
    defaults = build_parser().parse_args(["serve"])
    assert defaults.model is None and defaults.adapter == [] and defaults.port == 8000

    assert parse_pairs(["a=b", "c"], "--model") == {"a": "b", "c": "c"}
    assert parse_pairs(["pal"], "--adapter") == {"pal": "pal"}
    with pytest.raises(ConfigError, match="given twice"):
        parse_pairs(["a=b", "a=c"], "--model")
    with pytest.raises(ConfigError, match="given twice"):
        parse_pairs(["a", "a=c"], "--model")
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_pairs(["=x"], "--model")
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_pairs(["a="], "--adapter")
