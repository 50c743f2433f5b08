"""(f) of the alignment benchmark, GRPO's half: one GRPO update of the GRPO recipe timed against TRL's
`GRPOTrainer` on the same model, batch and settings (`benchmarks.align --parts grpo_step`)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import torch

from benchmarks.align_common import Part, interleaved_steps, log_for, step_row, step_summary, trl_settings
from benchmarks.align_rl import GRPO_RECIPE, QUICK_RL


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of prompts left-padded to the longest: TRL's layout of `prompt_ids` / `prompt_mask`."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def part_grpo_step(args: argparse.Namespace) -> dict[str, Any]:
    """One LoRA GRPO update (the recipe's group size, β, clip, grad clip and AdamW; fp32) on the rollout of
    the recipe's first iteration, sampled once by our engine from the SFT start and scored by the execution
    reward. Ours: `grpo_step` as the online loop calls it (the reference pass with the adapter disabled, then
    minibatches of `grpo.minibatch_size` rows with gradients accumulated, one optimizer step). TRL's: the
    reference log-probs `GRPOTrainer` computes after generating (adapter disabled), then `training_step` on
    each minibatch of the same token ids and advantages (gradient accumulation over them), then the same clip
    and AdamW step. Every group is kept on both sides (TRL does not skip groups whose rewards are equal).
    Same weights and thread count; median seconds over `--step-repeats` interleaved steps after a warm-up."""
    import os
    import tempfile
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import transformers
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from lmstack.align.grpo import group_advantages, grpo_step
    from lmstack.align.ppo import reference_logprobs
    from lmstack.align.recipe import load_recipe, prompt_sets
    from lmstack.align.reward import pair_indices
    from lmstack.align.rewards import score_batch
    from lmstack.align.rollouts import build_reward, init_adapter_path, load_policy, sample, starting_policy
    from lmstack.finetune.lora import apply_lora, lora_parameters
    from lmstack.generate.engine import Engine
    from lmstack.generate.rollout import pad_completions
    from lmstack.generate.sampling import GenerationConfig
    from lmstack.process_group import device_for_rank
    from lmstack.weights.load import smollm_gguf_path

    tmp = tempfile.TemporaryDirectory()  # the merged start, TRL's output_dir (nothing saved), our tokenizer
    recipe = load_recipe(GRPO_RECIPE, [f"out_dir={tmp.name}", *(QUICK_RL["grpo"] if args.quick else [])])
    lora, cfg, rl = recipe.lora, recipe.grpo, recipe.rl
    if (
        recipe.base != "smollm2"
        or lora is None
        or lora.targets != "all-linear"
        or cfg.aggregation
        or cfg.iterations > 1
    ):
        raise SystemExit("grpo_step: SmolLM2 with LoRA all-linear, the default aggregation and one pass (μ = 1)")
    device = device_for_rank(rl.device, 0)
    start = starting_policy(recipe.base, recipe.init_adapter, Path(tmp.name) / "base", log_for("grpo_step"))
    policy, tok = load_policy(start)
    train, _ = prompt_sets(recipe, tok, policy.cfg.max_seq_len)
    batch = train.subset(pair_indices(len(train), rl.prompts_per_iteration, 0, rl.seed))  # iteration 1's problems
    torch.manual_seed(rl.seed)
    apply_lora(policy, lora)
    policy.to(device).eval()
    sampling = GenerationConfig(
        max_new_tokens=rl.max_new_tokens, temperature=1.0, logprobs=True, stop_token_ids=train.stop
    )
    groups = sample(Engine(policy, tok, mode="live"), batch.ids, cfg.group_size, sampling, rl.seed, 1, rl.batch_size)
    prompts = [list(p) for p, g in zip(batch.ids, groups) for _ in g]
    completions = [c for g in groups for c in g]
    rows = [r for r, g in zip(batch.rows, groups) for _ in g]
    rewards = score_batch(build_reward(recipe.reward, device), [c.text for c in completions], rows)
    algo = replace(cfg, skip_equal=False)
    ours = lora_parameters(policy)
    opt = torch.optim.AdamW(ours, lr=rl.lr, weight_decay=rl.weight_decay)

    def our_step() -> float:
        return grpo_step(policy, opt, prompts, completions, rewards, sampling, algo)["loss"]

    # TRL's side: the same merged weights in transformers, its own LoRA of the same shape
    path = smollm_gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
    if recipe.init_adapter:
        hf = PeftModel.from_pretrained(hf, str(init_adapter_path(recipe.init_adapter))).merge_and_unload()
    tok.save(tmp.name)
    rows_n, size = len(completions), cfg.minibatch_size or len(completions)
    targs = TRLConfig(
        **trl_settings(device, tmp.name),
        beta=cfg.beta,
        epsilon=cfg.clip,
        loss_type="dr_grpo" if cfg.dr_grpo else "grpo",
        scale_rewards="none" if cfg.dr_grpo else "group",
        num_generations=cfg.group_size,
        max_completion_length=rl.max_new_tokens,
        per_device_train_batch_size=size,
        gradient_accumulation_steps=rows_n // size,
        learning_rate=rl.lr,
        weight_decay=rl.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
    )

    def unused_reward(completions: list[Any], **_: Any) -> list[float]:  # generation is not timed
        return [0.0] * len(completions)

    trainer = GRPOTrainer(
        model=hf,
        reward_funcs=unused_reward,
        args=targs,
        train_dataset=Dataset.from_list([{"prompt": t} for t in batch.texts]),
        processing_class=transformers.AutoTokenizer.from_pretrained(tmp.name),
        peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules="all-linear"),
    )
    trainer.current_gradient_accumulation_steps = rows_n // size
    trainer._prepare_inputs = lambda inputs: inputs  # the batch below is what generation would have prepared
    theirs = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.optimizer = topt = torch.optim.AdamW(theirs, lr=rl.lr, weight_decay=rl.weight_decay)
    rollout = pad_completions(completions, policy.cfg.pad_token_id)
    prompt_ids, prompt_mask = left_padded(prompts, policy.cfg.pad_token_id)
    ids = torch.cat([prompt_ids, rollout.tokens], 1).to(trainer.args.device)
    attention = torch.cat([prompt_mask, rollout.mask.long()], 1).to(trainer.args.device)
    advantages = group_advantages(rewards, cfg.group_size, scale_by_std=not cfg.dr_grpo, eps=cfg.eps).advantages
    width = rollout.tokens.shape[1]

    def trl_reference() -> torch.Tensor:
        with torch.no_grad(), trainer.model.disable_adapter():
            return trainer._get_per_token_logps_and_entropies(trainer.model, ids, attention, width, batch_size=size)[0]

    def trl_step() -> float:
        ref, loss = trl_reference(), 0.0
        for s in range(0, rows_n, size):
            inputs = {
                "prompt_ids": prompt_ids[s : s + size],
                "prompt_mask": prompt_mask[s : s + size],
                "completion_ids": rollout.tokens[s : s + size],
                "completion_mask": rollout.mask[s : s + size].long(),
                "advantages": advantages[s : s + size],
                "ref_per_token_logps": ref[s : s + size],
            }
            inputs = {k: v.to(trainer.args.device) for k, v in inputs.items()}
            n_tokens = inputs["completion_mask"].sum()
            loss += float(trainer.training_step(trainer.model, inputs, n_tokens))
        torch.nn.utils.clip_grad_norm_(theirs, targs.max_grad_norm)
        topt.step()
        topt.zero_grad(set_to_none=True)
        return loss

    policy.to(device)
    with torch.no_grad():
        our_ref = reference_logprobs(policy, prompts, pad_completions(completions, device=device)).cpu()
    ref_diff = float(torch.where(rollout.mask, trl_reference().cpu() - our_ref, 0.0).abs().max())  # padding: NaN
    med, first = interleaved_steps({"lmstack": our_step, "trl": trl_step}, args.step_repeats, device)
    tmp.cleanup()
    spread = sum(max(g) > min(g) for g in (rewards[j : j + cfg.group_size] for j in range(0, rows_n, cfg.group_size)))
    return {
        "rows": rows_n,
        "group_size": cfg.group_size,
        "minibatch": size,
        "groups_with_spread": spread,
        "completion_tokens": int(rollout.mask.sum()),
        "width": [prompt_ids.shape[1], width],
        "beta": cfg.beta,
        "device": str(device),
        "trl_device": str(trainer.args.device),
        "repeats": args.step_repeats,
        **step_summary(med, first, ours, theirs, ref_diff),
    }


def rows_grpo_step(r: dict[str, Any]) -> list[list[Any]]:
    return [step_row("(f) GRPO step", r)]


def notes_grpo_step(r: dict[str, Any]) -> str:
    return (
        f"**(f) GRPO step.** One LoRA update (r=8, all linear layers, AdamW, grad clip, fp32, {r['device']}) of "
        f"`recipes/align_grpo.yaml` on its first iteration's rollout ({r['rows']} completions in groups of "
        f"{r['group_size']}, {r['completion_tokens']} completion tokens, {r['groups_with_spread']} groups with a "
        f"reward spread; prompt × completion width {r['width'][0]} × {r['width'][1]}), β = {r['beta']} (a "
        f"reference pass with the adapter disabled on both sides), minibatches of {r['minibatch']} rows "
        f"accumulated into one optimizer step; median of {r['repeats']} interleaved steps after a warm-up: "
        f"lmstack {r['lmstack_s']} s (`grpo_step`), TRL {r['trl_s']} s (`GRPOTrainer`'s reference log-probs and "
        f"`training_step` per minibatch on the same token ids and advantages, then the same clip and AdamW "
        f"step) — **{r['speedup']}×**. Generation is not timed (each library samples its own way). Checks: "
        f"first-step loss {r['first_loss_lmstack']} vs {r['first_loss_trl']}, per-token reference log-probs agree "
        f"within {r['ref_logp_max_abs_diff']:.2g} nats, trainable parameters {r['trainable_lmstack']:,} vs "
        f"{r['trainable_trl']:,}."
    )


PARTS = {"grpo_step": Part("(f) GRPO step vs TRL", part_grpo_step, rows_grpo_step, notes_grpo_step)}
