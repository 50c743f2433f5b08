"""`lmstack align` with method ppo / grpo on a tiny random-init model: every iteration logged, checkpoints that
hold the adapter, value head, optimizer and KL coefficient, exact resume after a stop or a kill, a seed per
sampled copy and iteration, a learned reward model as the reward, and the starting policy as the reference."""

import shutil

import pytest
import torch

from align.align_helpers import assert_same_tensors, final_tensors, save_base, without_timings, write_recipe
from lmstack.align.rollouts import load_policy, sample
from lmstack.cli import main
from lmstack.finetune.load import load_finetuned
from lmstack.finetune.lora import lora_layers
from lmstack.generate.engine import Engine
from lmstack.generate.sampling import GenerationConfig
from lmstack.train.metrics import read_metrics
from lmstack.weights.checkpoint import latest_good_checkpoint, list_checkpoints, load_trainer_state

PPO_KEYS = {"reward", "reward_std", "kl", "kl_coef", "entropy", "clip_frac", "value_loss", "loss", "approx_kl",
            "skipped_kl", "skipped_nonfinite", "sampler_logprob_gap", "reward/errors", "reward/timeouts"}  # fmt: skip
GRPO_KEYS = {"reward", "reward_std", "kl", "entropy", "clip_frac", "loss", "skipped_groups", "skipped_nonfinite",
             "kept_rows", "reward/errors"}  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_base(tmp_path_factory.mktemp("base"))


def iterations(run) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if "reward" in r]


def test_ppo_logs_every_iteration_and_checkpoints_the_adapter_value_head_and_optimizer(tmp_path, base):
    path = write_recipe(tmp_path, "ppo", base, rl={"kl_target": 0.001, "kl_horizon": 10})
    assert main(["align", str(path)]) == 0
    run = tmp_path / "run"
    records = read_metrics(run / "metrics.jsonl")
    rows = iterations(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(PPO_KEYS <= r.keys() for r in rows), PPO_KEYS - rows[0].keys()
    assert [r["step"] for r in records if "val_accuracy" in r] == [0, 2, 3]  # the baseline, eval_every, the end
    assert rows[0]["sampler_logprob_gap"] < 1e-4  # the engine samples from the weights being trained
    # adaptive β: iteration 1's KL is 0 (the policy is its reference) and lowers it, later KL above target raises it
    assert rows[0]["kl"] == 0 and rows[0]["kl_coef"] == 0.05
    assert rows[1]["kl_coef"] < 0.05 and rows[1]["kl"] > 0.001 and rows[2]["kl_coef"] > rows[1]["kl_coef"]
    assert [c.name for c in list_checkpoints(run)] == [f"step-0000000{i}" for i in (1, 2, 3)]
    ckpt = latest_good_checkpoint(run)
    state = load_trainer_state(ckpt)
    assert state["iteration"] == 3 and state["optimizer"]["state"] and state["kl_coef"] > rows[2]["kl_coef"]
    tensors = final_tensors(run)
    assert any(k.startswith("value_head.") for k in tensors)
    assert all(".lora." in k or k.startswith("value_head.") for k in tensors)  # nothing of the base
    assert tensors["value_head.proj.weight"].abs().sum() > 0  # the zero-initialised critic learned
    policy, tok = load_finetuned(run)  # what `lmstack generate --model RUN` loads
    plain, _ = load_finetuned(base)
    assert lora_layers(policy)
    ids = torch.tensor([tok.encode("Convert 3 hours to minutes.")])
    with torch.no_grad():
        assert not torch.equal(policy(ids), plain(ids))  # the adapter moved the policy
    assert main(["plot", str(run)]) == 0 and (run / "loss.png").is_file()


def test_a_run_stopped_after_one_iteration_resumes_to_the_uninterrupted_result(tmp_path, base):
    straight = write_recipe(tmp_path / "a", "ppo", base, rl={"kl_target": 0.001, "eval_every": 1})
    assert main(["align", str(straight)]) == 0
    stopped = write_recipe(tmp_path / "b", "ppo", base, rl={"kl_target": 0.001, "eval_every": 1})
    assert main(["align", str(stopped), "rl.iterations=1"]) == 0
    assert [c.name for c in list_checkpoints(tmp_path / "b" / "run")] == ["step-00000001"]
    assert main(["align", str(stopped)]) == 0  # resumes at iteration 1
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert_same_tensors(final_tensors(a), final_tensors(b))
    assert (
        load_trainer_state(latest_good_checkpoint(b))["kl_coef"]
        == load_trainer_state(latest_good_checkpoint(a))["kl_coef"]
    )
    assert without_timings(read_metrics(a / "metrics.jsonl")) == without_timings(read_metrics(b / "metrics.jsonl"))


def test_a_grpo_run_killed_after_iteration_one_resumes_exactly(tmp_path, base, capsys):
    straight = write_recipe(tmp_path / "a", "grpo", base)
    assert main(["align", str(straight)]) == 0
    killed = write_recipe(tmp_path / "b", "grpo", base)
    assert main(["align", str(killed)]) == 0
    run = tmp_path / "b" / "run"
    for later in list_checkpoints(run)[1:]:
        shutil.rmtree(later)
    (run / ".tmp-step-00000002-123").mkdir()  # a save the kill interrupted
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "reward": 0.')  # and a torn last record
    assert main(["align", str(killed)]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert not (run / ".tmp-step-00000002-123").exists()
    assert_same_tensors(final_tensors(tmp_path / "a" / "run"), final_tensors(run))
    a = without_timings(read_metrics(tmp_path / "a" / "run" / "metrics.jsonl"))
    assert a == without_timings(read_metrics(run / "metrics.jsonl"))
    rows = iterations(run)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(GRPO_KEYS <= r.keys() for r in rows)
    assert all(r["reward/calls"] == 12 for r in rows)  # 4 prompts × group_size 3, every one scored


def test_every_copy_chunk_and_iteration_samples_with_its_own_seed(base):
    model, tok = load_policy(base)
    engine = Engine(model, tok, mode="live")
    prompt = tok.encode("the quick brown fox")
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0)

    def texts(iteration: int, batch_size: int = 1):
        return [
            [c.sampled_ids for c in copies] for copies in sample(engine, [prompt] * 2, 2, cfg, 0, iteration, batch_size)
        ]

    first = texts(1)
    assert first == texts(1)  # a pure function of (seed, iteration, copy, chunk)
    drawn = [tuple(ids) for copies in first for ids in copies]
    assert len(set(drawn)) == 4  # two copies × two chunks of one identical prompt: four different samples
    assert first != texts(2)


def test_ppo_on_a_learned_reward_model(tmp_path, base):
    rm = write_recipe(tmp_path / "rm", "reward_model", base, train={"steps": 2, "eval_every": 0})
    assert main(["align", str(rm)]) == 0
    path = write_recipe(tmp_path, "ppo", base, reward={"name": "reward_model", "model": str(tmp_path / "rm" / "run"),
                        "gold": "oracle"}, rl={"iterations": 2})  # fmt: skip
    assert main(["align", str(path)]) == 0
    rows = iterations(tmp_path / "run")
    assert len(rows) == 2 and all(r["reward/errors"] == 0 and r["reward/failed_frac"] == 0 for r in rows)
    assert all(r["reward_std"] > 0 for r in rows)  # a learned score, not a constant
    # the gold judge scores the same samples beside the proxy: the oracle's 0 … 1.5, its own failure counters
    assert all(0 <= r["gold_reward"] <= 1.5 and r["gold/calls"] == 8 and r["gold/failed_frac"] == 0 for r in rows)


def test_a_gold_reward_is_logged_for_the_samples_the_trained_reward_scored(tmp_path, base):
    path = write_recipe(tmp_path, "grpo", base, reward={"name": "oracle", "gold": "oracle"}, rl={"iterations": 2})
    assert main(["align", str(path)]) == 0
    rows = iterations(tmp_path / "run")
    assert [r["gold_reward"] for r in rows] == pytest.approx([r["reward"] for r in rows])  # the same judge
    plain = write_recipe(tmp_path / "plain", "grpo", base, reward={"name": "oracle"}, rl={"iterations": 2})
    assert main(["align", str(plain)]) == 0
    other = iterations(tmp_path / "plain" / "run")
    assert not any("gold_reward" in r for r in other)
    assert without_timings(other) == without_timings([{k: v for k, v in r.items() if "gold" not in k} for r in rows])


def test_the_init_adapter_is_merged_into_the_reference(tmp_path, base):
    from lmstack.finetune.lora import LoRAConfig, apply_lora
    from lmstack.finetune.lora_peft import save_adapter

    sft, _ = load_finetuned(base)
    torch.manual_seed(1)
    apply_lora(sft, LoRAConfig(r=2, targets="all-linear"))
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if ".lora." in name:
                p.normal_(0, 0.3)  # B too: an adapter that changes the model
    save_adapter(sft, tmp_path / "sft-adapter")
    path = write_recipe(tmp_path, "grpo", base, init_adapter=str(tmp_path / "sft-adapter"), rl={"iterations": 1})
    assert main(["align", str(path)]) == 0
    rows = iterations(tmp_path / "run")
    # the policy starts as the reference (a fresh adapter adds 0), and the reference is base + init adapter
    assert abs(rows[0]["kl"]) < 1e-5
    merged, tok = load_policy(tmp_path / "run" / "base")
    ids = torch.tensor([tok.encode("the lazy dog")])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), sft.eval()(ids), rtol=0, atol=1e-4)
