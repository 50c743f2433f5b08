"""Online RL for `lmstack align` (`method: ppo | grpo`): iterations of sample → score → update on one LoRA
policy, whose reference is the same model with its adapters disabled (the starting policy).

One iteration: `rl.prompts_per_iteration` training prompts (a fresh permutation per pass over them, a pure
function of the seed and the iteration), each sampled `samples_per_prompt` times (GRPO: `group_size`) by the
engine at temperature 1 with log-probs, a seed of its own per (iteration, copy, chunk); the texts scored by
the guarded reward; one `ppo_update` (then the KL controller's update) or one `grpo_step`; the engine
refreshed. The policy stays in eval mode throughout (no dropout: the first minibatch's ratio is exactly 1).

Every iteration writes one `metrics.jsonl` record (step = iteration): reward, KL to the reference (mean
per-sequence k1, before the update), the entropy (exact from the logits with ppo.entropy_coef, else the
sampled tokens' mean -log p), clip fraction, value error (PPO), skipped minibatches/groups, reward failures,
with `reward.gold` the mean gold reward of the same samples (`gold_reward`, its failures as `gold/*`), and,
every `eval_every` iterations, greedy validation accuracy (`val_accuracy`, `val_reward`; also at 0).

Checkpoints (`RUN/step-XXXXXXXX`, XXXXXXXX = the iteration, written atomically by `save_checkpoint`) hold the
adapter (and PPO's value head) in model.safetensors, the adapter again in peft's layout with finetune.json,
so that `load_finetuned(RUN)` and `lmstack generate --model RUN` load the policy, and trainer_state.pt with
the optimizer, the KL coefficient, the iteration and the RNG. A run resumes from its newest good one and ends
where an uninterrupted run does.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmstack.align.grpo import GRPOConfig, grpo_step
from lmstack.align.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PPOConfig,
    ValueHead,
    masked_sum,
    ppo_update,
    reference_logprobs,
)
from lmstack.align.reward import pair_indices
from lmstack.align.rewards import GuardedReward, RewardStats, score_batch
from lmstack.align.rollouts import PromptSet, RLConfig, clean, evaluate, sample
from lmstack.config import to_dict
from lmstack.data.instruct_batch import seeded
from lmstack.fileio import write_json
from lmstack.finetune.lora import is_lora_key, lora_parameters
from lmstack.finetune.lora_peft import save_adapter
from lmstack.finetune.recipe import ADAPTER_DIR, FINETUNE_FILE
from lmstack.generate.engine import Completion, Engine
from lmstack.generate.rollout import pad_completions
from lmstack.generate.sampling import GenerationConfig
from lmstack.models.decoder import DecoderLM
from lmstack.tokenizer import Tokenizer
from lmstack.train.loop import progress_bar, rng_state, set_rng_state
from lmstack.train.metrics import MetricsLog
from lmstack.weights.checkpoint import (
    latest_good_checkpoint,
    load_trainer_state,
    load_weights,
    remove_partial_saves,
    save_checkpoint,
)

KeyFilter = Callable[[str], bool]


@dataclass
class OnlineRun:
    """What an online run trains and where (`align.recipe` builds it). `policy` has its LoRA adapter applied
    and sits on its device; `base` is its base's `load_pretrained` spec and `recipe` the recipe as a dict,
    both recorded in the checkpoints' finetune.json. `gold`: a reward scored on every rollout and only logged."""

    policy: DecoderLM
    tokenizer: Tokenizer
    train: PromptSet
    val: PromptSet | None
    reward: GuardedReward
    rl: RLConfig
    algo: PPOConfig | GRPOConfig
    run_dir: Path
    base: str
    recipe: dict[str, Any]
    gold: GuardedReward | None = None


def keep_key(name: str) -> bool:
    """What a checkpoint holds of the policy and value head: the adapter and the head, nothing of the base."""
    return is_lora_key(name) or name.startswith("value_head.")


def resume(
    run: OnlineRun, module: nn.Module, optimizer: torch.optim.Optimizer, kl: Any, log: Callable[[str], None]
) -> tuple[int, Path] | None:
    """(iteration, checkpoint) of the run's newest good checkpoint, its state restored; None for a fresh run."""
    for partial in remove_partial_saves(run.run_dir):
        log(f"removed {partial.name}: a save that was interrupted")
    ckpt = latest_good_checkpoint(run.run_dir, warn=log) if run.rl.resume == "auto" else None
    if ckpt is None:
        return None
    load_weights(module, ckpt, state_filter=keep_key)
    state = load_trainer_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    kl.value = float(state["kl_coef"])
    set_rng_state(state["rng"])
    log(f"resumed from {ckpt} at iteration {state['iteration']}")
    return int(state["iteration"]), ckpt


def rollout_kl(policy: DecoderLM, prompts: list[list[int]], completions: list[Completion]) -> float:
    """Mean per-sequence k1 KL(policy‖reference) of a rollout, from the sampler's log-probs and one no-grad
    reference pass: what PPO reports as `kl`, for GRPO (whose own KL term exists only with beta > 0)."""
    rollout = pad_completions(completions, device=policy.embed.tokens.weight.device)
    ref = reference_logprobs(policy, prompts, rollout)
    assert rollout.logprobs is not None
    return float(masked_sum(rollout.logprobs - ref, rollout.mask, 1).mean())


def sampled_entropy(completions: list[Completion]) -> float:
    """The policy's per-token entropy estimated from its own samples: mean -log p of the sampled tokens."""
    logps = [lp for c in completions for lp in (c.logprobs or ())]
    return -sum(logps) / max(len(logps), 1)


def update(
    run: OnlineRun,
    value_head: ValueHead | None,
    optimizer: torch.optim.Optimizer,
    kl: Any,
    prompts: list[list[int]],
    completions: list[Completion],
    scores: list[float],
    sampling: GenerationConfig,
    iteration: int,
) -> dict[str, Any]:
    """One PPO update (and the KL controller's) or one GRPO step; its metrics under the run's key names."""
    algo, n = run.algo, len(completions)
    if isinstance(algo, PPOConfig):
        assert value_head is not None
        seed = seeded(run.rl.seed if algo.seed is None else algo.seed, "align/ppo", iteration).initial_seed()
        stats = ppo_update(
            run.policy,
            value_head,
            optimizer,
            prompts,
            completions,
            scores,
            sampling,
            kl.value,
            replace(algo, seed=seed),
        )
        kl.update(stats["kl"], n)
        stats["loss"] = stats["policy_loss"] + algo.vf_coef * stats["value_loss"]
        stats["reward"] = stats.pop("score_raw")
        stats.setdefault("entropy", sampled_entropy(completions))
        return stats
    before = rollout_kl(run.policy, prompts, completions)
    stats = grpo_step(run.policy, optimizer, prompts, completions, scores, sampling, algo)
    stats["kl_k3"] = stats.pop("kl", float("nan"))  # the loss's own k3 term (kept rows, beta > 0)
    stats |= {"kl": before, "entropy": sampled_entropy(completions)}
    stats["length"] = sum(len(c.sampled_ids) for c in completions) / n
    stats.setdefault("skipped_nonfinite", 0.0)
    return {"loss": math.nan, "clip_frac": math.nan, **stats}  # NaN (null) when every group was skipped


def train_online(run: OnlineRun, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the iterations of `run`; returns a summary (last iteration, checkpoint, metrics)."""
    policy, rl, algo = run.policy, run.rl, run.algo
    run.run_dir.mkdir(parents=True, exist_ok=True)
    policy.eval()
    value_head = ValueHead.for_model(policy) if isinstance(algo, PPOConfig) else None
    params = lora_parameters(policy) + (list(value_head.parameters()) if value_head is not None else [])
    optimizer = torch.optim.AdamW(params, lr=rl.lr, weight_decay=rl.weight_decay)
    kl: Any = (
        AdaptiveKLController(rl.kl_coef, rl.kl_target, rl.kl_horizon) if rl.kl_target else FixedKLController(rl.kl_coef)
    )
    module = nn.ModuleDict({"policy": policy, **({"value_head": value_head} if value_head is not None else {})})
    resumed = resume(run, module, optimizer, kl, log)
    if resumed is None:
        torch.manual_seed(rl.seed)
        random.seed(rl.seed)
    start = resumed[0] if resumed else 0
    metrics = MetricsLog(run.run_dir / "metrics.jsonl", resume_step=start if resumed else None)
    engine = Engine(policy, run.tokenizer, mode="live")  # LoRA layers: the live modules (refresh is a no-op)
    stop = run.train.stop
    sampling = GenerationConfig(max_new_tokens=rl.max_new_tokens, temperature=1.0, logprobs=True, stop_token_ids=stop)
    copies = algo.group_size if isinstance(algo, GRPOConfig) else rl.samples_per_prompt
    per_iteration = rl.prompts_per_iteration or len(run.train)
    val = run.val

    def validate() -> dict[str, float]:
        if val is None:
            return {}
        return evaluate(engine, val, run.reward, rl.max_new_tokens, rl.correct, rl.batch_size)

    def write_extras(directory: Path) -> None:
        write_json(directory / "config.json", {"model": to_dict(policy.cfg)})
        write_json(directory / FINETUNE_FILE, {"base": run.base, "method": "lora", "recipe": run.recipe})
        run.tokenizer.save(directory)
        save_adapter(policy, directory / ADAPTER_DIR, base_name=run.base)

    summary: dict[str, Any] = {"iteration": start, "checkpoint": str(resumed[1]) if resumed else None}
    run_start = time.perf_counter()
    if start == 0 and val is not None:
        metrics.log(clean({"step": 0, **validate()}))
    with progress_bar(rl.progress) as bar:
        task = bar.add_task("train", total=rl.iterations, completed=start, info="")
        for it in range(start + 1, rl.iterations + 1):
            t0 = time.perf_counter()
            batch = run.train.subset(pair_indices(len(run.train), per_iteration, it - 1, rl.seed))
            groups = sample(engine, batch.ids, copies, sampling, rl.seed, it, rl.batch_size)
            prompts = [list(p) for p, g in zip(batch.ids, groups) for _ in g]
            rows = [r for r, g in zip(batch.rows, groups) for _ in g]
            completions = [c for g in groups for c in g]
            texts = [c.text for c in completions]
            run.reward.stats = RewardStats()
            scores = score_batch(run.reward, texts, rows)
            record: dict[str, Any] = {"step": it, **run.reward.stats.metrics()}
            if run.gold is not None:  # before the update: the gold worth of the samples the proxy scored
                run.gold.stats = RewardStats()
                gold = score_batch(run.gold, texts, rows)
                record |= {"gold_reward": sum(gold) / len(gold), **run.gold.stats.metrics("gold/")}
            t1 = time.perf_counter()
            record |= update(run, value_head, optimizer, kl, prompts, completions, scores, sampling, it)
            record["reward_std"] = float(torch.tensor(scores).std()) if len(scores) > 1 else 0.0
            engine.refresh()  # sample the next rollout from the updated weights
            t2 = time.perf_counter()
            if (rl.eval_every and it % rl.eval_every == 0) or it == rl.iterations:
                record |= validate()
            record |= {"rollout_s": t1 - t0, "update_s": t2 - t1, "elapsed_s": time.perf_counter() - run_start}
            metrics.log(clean(record))
            summary.update(iteration=it, reward=record["reward"], kl=record["kl"])
            if "val_accuracy" in record:
                summary["val_accuracy"] = record["val_accuracy"]
            if (rl.save_every and it % rl.save_every == 0) or it == rl.iterations:
                state = {"iteration": it, "step": it, "optimizer": optimizer.state_dict(), "kl_coef": float(kl.value)}
                path = save_checkpoint(
                    run.run_dir, it, module, {**state, "rng": rng_state()}, write_extras, rl.keep_checkpoints, keep_key
                )
                summary["checkpoint"] = str(path)
            info = f"reward {record['reward']:.3f} kl {record['kl']:.3f}"
            bar.update(task, completed=it, info=info)
            if not rl.progress:
                log(
                    f"iteration {it}: {info}"
                    + (f" val_accuracy {record['val_accuracy']:.3f}" if "val_accuracy" in record else "")
                )
    if start >= rl.iterations:
        log(f"nothing to do: the run in {run.run_dir} already reached iteration {start}")
    summary["elapsed_s"] = time.perf_counter() - run_start
    return summary
