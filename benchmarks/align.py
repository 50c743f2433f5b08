"""Alignment of SmolLM2-135M-Instruct (LoRA r=8 on all linear layers throughout): on the task suite's preference
pairs a reward model's held-out pair accuracy, PPO against it with and without its KL leash (proxy and gold
reward, KL), DPO's held-out implicit-reward accuracy, log-prob drift and gold-oracle win rate; on PAL math word
problems from the shipped SFT adapter, ReST-EM, ReST and GRPO's test and hard-split accuracy against the
completions they sampled; one DPO and one GRPO training step timed against TRL's trainers in the same run.

    python -m benchmarks.align --parts reward_model       # (a) trains recipes/align_reward_model.yaml, scores it
    python -m benchmarks.align --parts ppo                # (b) recipes/align_ppo_rm.yaml on (a)'s model, β and 0
    python -m benchmarks.align --parts rest_em,rest       # (c) recipes/align_rest_em.yaml, align_rest.yaml
    python -m benchmarks.align --parts grpo               # (d) recipes/align_grpo.yaml, every checkpoint scored
    python -m benchmarks.align --parts dpo                # (e) trains recipes/align_dpo.yaml, scores it
    python -m benchmarks.align --parts dpo_step,grpo_step # (f) our DPO and GRPO steps vs TRL's
    python -m benchmarks.align --parts dpo --run dpo=runs/align-dpo     # score a run trained before
    python -m benchmarks.align --quick                    # smoke run: 1-2 steps, 4 pairs / problems, nothing written
    python -m benchmarks.align --render                   # redraw the page and plots from docs/results/align.json

Estimated wall times on an otherwise idle 2-core CPU (estimates from the smoke runs' step times, the finetune
benchmark's measured LoRA step and scoring times and the recipes' sizes; not yet measured): (a) 30 min; (b) 25
min (two PPO runs of 40 iterations, ~17 s each; + (a)'s training when its run is missing); (c) ReST-EM 65 min
(3 iterations of 256 samples and a 40-step fine-tune, ~13 min each; 4 policies scored, ~5.5 min each), ReST 50
min; (d) 65 min (20 iterations of 32 samples, ~100 s each; 5 policies scored); (e) 30 min; (f) DPO step 5 min,
GRPO step 10 min.

Training is the shipped recipe run by `lmstack.align.recipe.run_align` (resumed when its run directory holds
a checkpoint, so a finished part rescored costs only its scoring). The preference parts score the `preferences`
task's test split (the recipe's seed), which no recipe trains, validates or selects on; the PAL parts score
`--n` problems of the `math_word` and `math_word_hard` test splits per policy (`benchmarks.finetune`'s scorer),
choosing their policy without them. The sampling parts are `benchmarks.align_rl`'s, GRPO's step
`benchmarks.align_grpo_step`'s. Results accumulate in docs/results/align.json (parts run again replace their
old figures), so parts can be run one at a time; the plots (align_ppo.png, align_rl.png) are drawn from it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import align_grpo_step, align_rl
from benchmarks.align_common import (
    DPO_RECIPE,
    QUICK,
    RM_RECIPE,
    Part,
    device_of,
    interleaved_steps,
    log_for,
    preference_overrides,
    recipe_run,
    step_goal_line,
    step_row,
    step_summary,
    trl_settings,
    verdict,
)
from benchmarks.common import RESULTS, ROOT, markdown_table, rewrite_page, write_results

RM_GOAL = 0.90  # held-out pair accuracy of the reward model
N_PAIRS = 200  # held-out test pairs scored, when --n is not given

# ----------------------------------------------------------------------------- pure helpers (unit-tested)


def win_rate(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, Any]:
    """Pairwise comparison of two models' scores on the same prompts: wins, ties, losses, and the win rate
    with a tie counted as half a win (50% = no better, no worse)."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError(f"need one score per prompt from each model, got {len(ours)} and {len(theirs)}")
    wins = sum(a > b for a, b in zip(ours, theirs))
    ties = sum(a == b for a, b in zip(ours, theirs))
    n = len(ours)
    return {"n": n, "wins": wins, "ties": ties, "losses": n - wins - ties, "win_rate": (wins + ties / 2) / n}


def logged_pair_metrics(records: Sequence[dict[str, Any]], prefix: str) -> dict[str, dict[str, float]]:
    """The first and last `<prefix>/*` records a preference run logged (its `PairMetrics` on the recipe's
    validation pairs: before the first step and at the last evaluation), keys without the prefix."""
    found = [
        {"step": r["step"], **{k.split("/", 1)[1]: v for k, v in r.items() if k.startswith(f"{prefix}/")}}
        for r in records
        if f"{prefix}/accuracy" in r
    ]
    return {"first": found[0], "last": found[-1]} if found else {}


def scores_summary(scores: Sequence[float], correct: float = 1.0) -> dict[str, float]:
    """Mean oracle score (0 … 1.5) and the share with a correct answer (score >= 1: the answer weighs 1.0)."""
    return {"mean": sum(scores) / len(scores), "correct": sum(s >= correct for s in scores) / len(scores)}


# ----------------------------------------------------------------------------- shared by the parts


def held_out_rows(recipe: Any, n: int) -> list[tuple[str, dict[str, Any]]]:
    """(origin, row) of `n` rows of the `preferences` task's test split, with the recipe's seed: the recipe
    trains on the train split and validates on the validation split, both disjoint from it."""
    from lmstack.data.tasks import generate

    task = recipe.data.task
    if task != "preferences":
        raise SystemExit(f"{recipe.name}: this benchmark scores the preferences task; the recipe reads {task!r}")
    items = generate(task, n, recipe.data.seed, "test")["items"]
    return [(f"{task}/test#{i}", row) for i, row in enumerate(items)]


def held_out_pairs(recipe: Any, tok: Any, rows: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """The rows as pairs rendered exactly as the recipe renders its training pairs."""
    from lmstack.align.reward import encode_pairs
    from lmstack.data.instruct import InstructFormat

    d = recipe.data
    fmt = InstructFormat(max_len=d.max_len, format=d.format, truncation=d.truncation)
    return encode_pairs(rows, tok, fmt, task=d.task)


def preference_run(part: str, path: Path, prefix: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(recipe, record): a preference recipe run (or resumed) by `run_align`, or the run `--run` names, and
    what its training logged (wall and step times, the recipe's own validation metrics, `prefix`/*)."""
    from benchmarks.finetune import run_metrics
    from lmstack.train.metrics import read_metrics

    recipe, record = recipe_run(part, path, args, preference_overrides(args))
    record["run"] = run_metrics(recipe.run_dir)
    record["recipe_val"] = logged_pair_metrics(read_metrics(recipe.run_dir / "metrics.jsonl"), prefix)
    return recipe, record


# ----------------------------------------------------------------------------- (a) reward model


def pair_kind(row: dict[str, Any]) -> str:
    """What decides a preference pair: `answer` (one response has the right number, the other not) or
    `constraint` (both equally right; only the style constraint tells them apart), from the oracle's scores
    (1.0 for the answer + 0.5 for the constraint)."""
    return "answer" if (row["chosen_score"] >= 1) != (row["rejected_score"] >= 1) else "constraint"


def accuracy_by_kind(rows: Sequence[dict[str, Any]], chosen: Sequence[float], rejected: Sequence[float]) -> dict:
    """Held-out pair accuracy split by `pair_kind`, and the accuracy of a judge that checks the constraint
    perfectly and guesses the answer (a coin flip when the constraint does not separate the pair): what a
    reward model reaches without verifying any arithmetic."""
    out: dict[str, Any] = {}
    for kind in ("answer", "constraint"):
        hits = [c > r for row, c, r in zip(rows, chosen, rejected) if pair_kind(row) == kind]
        out[kind] = {"n": len(hits), "accuracy": sum(hits) / len(hits) if hits else None}
    sat = [(row["chosen_score"] % 1 == 0.5, row["rejected_score"] % 1 == 0.5) for row in rows]
    out["constraint_only_judge"] = sum(1.0 if a and not b else 0.0 if b and not a else 0.5 for a, b in sat) / len(sat)
    return out


def part_reward_model(args: argparse.Namespace) -> dict[str, Any]:
    from lmstack.align.reward import reward_metrics, score_pairs
    from lmstack.align.rollouts import clean, reward_model_of

    recipe, record = preference_run("reward_model", RM_RECIPE, "reward", args)
    start = time.perf_counter()
    rm, tok = reward_model_of(recipe.run_dir, device=str(device_of(recipe)))
    rows = held_out_rows(recipe, args.n or N_PAIRS)
    pairs = held_out_pairs(recipe, tok, rows)
    chosen, rejected = score_pairs(rm, pairs, recipe.rm.metrics_batch_size)
    record["held_out"] = {"split": "test", "n": len(pairs), **clean(reward_metrics(chosen, rejected))}
    record["by_kind"] = accuracy_by_kind([row for _, row in rows], chosen.tolist(), rejected.tolist())
    record["eval_wall_s"] = round(time.perf_counter() - start, 1)
    log_for("reward_model")(f"held-out pair accuracy {record['held_out']['accuracy']:.1%} of {len(pairs)}")
    return record


# ----------------------------------------------------------------------------- (e) DPO


def greedy_texts(model: Any, tok: Any, prompts: Any, max_new_tokens: int, batch_size: int) -> list[str]:
    """One greedy completion per prompt of a `PromptSet`, stopping at its end-of-turn ids."""
    from lmstack.align.rollouts import sample
    from lmstack.generate.engine import Engine
    from lmstack.generate.sampling import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_token_ids=prompts.stop)
    done = sample(Engine(model, tok, mode="fp32"), prompts.ids, 1, cfg, 0, 0, batch_size)
    return [c[0].text.strip() for c in done]


def part_dpo(args: argparse.Namespace) -> dict[str, Any]:
    from lmstack.align.dpo import dpo_metrics, reference_logprobs
    from lmstack.align.rewards import oracle
    from lmstack.align.rollouts import PromptData, clean, encode_prompts, load_policy, starting_policy
    from lmstack.finetune.load import load_finetuned
    from lmstack.finetune.lora import unload_lora

    recipe, record = preference_run("dpo", DPO_RECIPE, "dpo", args)
    if recipe.lora is None:
        raise SystemExit("dpo: this part scores a LoRA run (its reference is the base with the adapter disabled)")
    start, log, device = time.perf_counter(), log_for("dpo"), device_of(recipe)
    policy, tok = load_finetuned(recipe.run_dir)  # the trained adapter on its base, not merged
    policy.to(device)
    n = args.n or N_PAIRS
    rows = held_out_rows(recipe, max(n, args.n_gen))
    pairs = held_out_pairs(recipe, tok, rows[:n])
    bs, beta = recipe.dpo.ref_batch_size, recipe.dpo.beta
    ref = reference_logprobs(policy, pairs, bs)  # adapter disabled: the base, DPO's reference
    now = reference_logprobs(policy, pairs, bs, ref_model=policy)  # the policy as it is: adapter on

    def side(ps: list[Any], name: str) -> torch.Tensor:
        return torch.tensor([getattr(p, name) for p in ps])

    metrics = dpo_metrics(
        side(now, "ref_chosen"), side(now, "ref_rejected"), side(ref, "ref_chosen"), side(ref, "ref_rejected"), beta
    )
    record["held_out"] = {"split": "test", "n": len(pairs), "beta": beta, **clean(metrics)}
    log(f"held-out implicit-reward accuracy {metrics['accuracy']:.1%} of {len(pairs)}")
    # greedy generations of the policy and of the model DPO started from, on held-out prompts, judged by the oracle
    gen_rows = rows[: args.n_gen]
    prompts = encode_prompts(gen_rows, PromptData(format=recipe.data.format), tok, policy.cfg.max_seq_len)
    unload_lora(policy, merge=True)
    texts = greedy_texts(policy, tok, prompts, args.max_new_tokens, args.batch_size)
    del policy
    start_model, _ = load_policy(starting_policy(recipe.base, recipe.init_adapter, recipe.run_dir / "base", log))
    start_texts = greedy_texts(start_model.to(device), tok, prompts, args.max_new_tokens, args.batch_size)
    items = [row for _, row in gen_rows]
    ours, theirs = [oracle(t, r) for t, r in zip(texts, items)], [oracle(t, r) for t, r in zip(start_texts, items)]
    record["generation"] = {
        "split": "test",
        "max_new_tokens": args.max_new_tokens,
        **clean(win_rate(ours, theirs)),
        "dpo": clean(scores_summary(ours)),
        "start": clean(scores_summary(theirs)),
        "examples": [{"prompt": r["prompt"], "dpo": a, "start": b} for r, a, b in zip(items[:3], texts, start_texts)],
    }
    record["eval_wall_s"] = round(time.perf_counter() - start, 1)
    g = record["generation"]
    log(f"oracle win rate vs the starting model {g['win_rate']:.1%} ({g['wins']}/{g['ties']}/{g['losses']})")
    return record


# ----------------------------------------------------------------------------- (f) DPO step vs TRL


def part_dpo_step(args: argparse.Namespace) -> dict[str, Any]:
    """One LoRA DPO step (AdamW, grad clip, fp32, reference log-probs cached) of the DPO recipe's first batch,
    ours (`dpo_loss_fn` on `dpo_batch`, as the loop runs it) against TRL's `DPOTrainer.training_step` (its
    `compute_loss` through the fused LM head, backward via accelerate) on a batch from TRL's own collator with
    the same token ids, + the same clip and AdamW step. Same weights, β and thread count; median seconds over
    `--step-repeats` interleaved steps after one warm-up. TRL is also timed on its default path, which runs
    the reference (adapter disabled) forward in every step instead of reading cached log-probs."""
    import os
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    from lmstack.align.dpo import dpo_batch, dpo_loss_fn, reference_logprobs, split_sample
    from lmstack.align.recipe import load_recipe, preference_pairs
    from lmstack.align.reward import pair_indices
    from lmstack.align.rollouts import load_policy
    from lmstack.finetune.lora import apply_lora, lora_parameters
    from lmstack.finetune.recipe import dataset_rows
    from lmstack.weights.load import smollm_gguf_path

    recipe = load_recipe(DPO_RECIPE, QUICK if args.quick else [])
    lora, cfg, tc = recipe.lora, recipe.dpo, recipe.train
    if recipe.base != "smollm2" or recipe.init_adapter or lora is None or lora.targets != "all-linear":
        raise SystemExit("dpo_step: TRL loads SmolLM2 from its GGUF; the recipe must train LoRA all-linear on it")
    if cfg.label_smoothing or cfg.rpo_alpha:
        raise SystemExit("dpo_step compares the plain sigmoid DPO loss; the recipe sets label_smoothing/rpo_alpha")
    device = device_of(recipe)
    policy, tok = load_policy(recipe.base)
    train_pairs, _ = preference_pairs(recipe, tok)
    index = pair_indices(len(train_pairs), tc.batch_size, 0, tc.seed)  # the recipe's first batch
    torch.manual_seed(tc.seed)
    apply_lora(policy, lora)
    policy.to(device)
    pairs = reference_logprobs(policy, [train_pairs[i] for i in index], cfg.ref_batch_size)
    batch, loss_fn, ours = dpo_batch(pairs, policy.cfg.pad_token_id), dpo_loss_fn(cfg), lora_parameters(policy)
    opt = torch.optim.AdamW(ours, lr=tc.lr, weight_decay=0.0)
    policy.train()

    def our_step() -> float:
        loss = loss_fn(policy, {k: v.to(device) for k, v in batch.items()})
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours, tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    sides = [(split_sample(p.chosen), split_sample(p.rejected)) for p in pairs]
    examples = [{"prompt_ids": c[0], "chosen_ids": c[1], "rejected_ids": r[1]} for c, r in sides]
    chosen = set(index)
    raw = [row for i, (_, row) in enumerate(dataset_rows(recipe.data.dataset)) if i in chosen]
    texts = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in raw])
    path = smollm_gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
    tmp = tempfile.TemporaryDirectory()  # TRL's output_dir (nothing is saved) and our tokenizer in HF's layout
    tok.save(tmp.name)
    targs = TRLConfig(
        **trl_settings(device, tmp.name),
        beta=cfg.beta,
        learning_rate=tc.lr,
        weight_decay=0.0,
        max_grad_norm=tc.grad_clip,
        per_device_train_batch_size=len(pairs),
        max_length=None,
    )
    trainer = DPOTrainer(
        model=hf,
        args=targs,
        train_dataset=texts,  # its rows, tokenised by TRL at construction; the timed batch is built below
        processing_class=transformers.AutoTokenizer.from_pretrained(tmp.name),
        peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules="all-linear"),
    )
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before a step (no accumulation)
    theirs = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.optimizer = topt = torch.optim.AdamW(theirs, lr=tc.lr, weight_decay=0.0)
    collated = trainer.data_collator(examples)
    on_device = {k: v.to(trainer.args.device) for k, v in collated.items()}
    ref_c, ref_r = (x.detach().cpu() for x in trainer.compute_ref_log_probs(trainer.model, on_device))
    trl_batch = {**collated, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    ours_ref = torch.tensor([[p.ref_chosen for p in pairs], [p.ref_rejected for p in pairs]])

    def trl_step(cached: bool) -> float:
        trainer.precompute_ref_logps = cached  # the flag `_compute_loss` reads: cached log-probs or a ref forward
        loss = trainer.training_step(trainer.model, trl_batch)
        torch.nn.utils.clip_grad_norm_(theirs, targs.max_grad_norm)
        topt.step()
        topt.zero_grad(set_to_none=True)
        return float(loss)

    steps = {"lmstack": our_step, "trl": lambda: trl_step(True), "trl_ref_forward": lambda: trl_step(False)}
    med, first = interleaved_steps(steps, args.step_repeats, device)
    tmp.cleanup()
    return {
        "pairs": len(pairs),
        "lmstack_widths": [batch["chosen_prompt"].shape[1], batch["chosen_response"].shape[1]],
        "trl_input": list(collated["input_ids"].shape),
        "response_tokens": int(collated["completion_mask"].sum()),
        "beta": cfg.beta,
        "device": str(device),
        "trl_device": str(trainer.args.device),
        "repeats": args.step_repeats,
        "trl_ref_forward_s": round(med["trl_ref_forward"], 3),
        **step_summary(med, first, ours, theirs, float((torch.stack([ref_c, ref_r]) - ours_ref).abs().max())),
    }


# ----------------------------------------------------------------------------- the page


def rows_reward_model(r: dict[str, Any]) -> list[list[Any]]:
    h = r["held_out"]
    measured = f"{h['accuracy']:.1%} of {h['n']} (margin {h['margin']:+.2f})"
    return [["(a) reward model: held-out pair accuracy", measured, "≥ 90%", verdict(h["accuracy"] >= RM_GOAL)]]


def rows_dpo(r: dict[str, Any]) -> list[list[Any]]:
    h, g = r["held_out"], r["generation"]
    drift = f"{h['chosen_logp_drift']:+.2f} / {h['rejected_logp_drift']:+.2f} nats"
    return [
        ["(e) DPO: held-out implicit-reward accuracy", f"{h['accuracy']:.1%} of {h['n']} (margin {h['margin']:+.3f})"],
        [
            "(e) DPO greedy vs the starting model: oracle win rate",
            f"{g['win_rate']:.1%} ({g['wins']} won / {g['ties']} tied / {g['losses']} lost of {g['n']})",
        ],
        ["(e) DPO: mean log-prob drift from the reference, chosen / rejected", drift],
    ]


def rows_dpo_step(r: dict[str, Any]) -> list[list[Any]]:
    return [step_row("(f) DPO step", r)]


def notes_reward_model(r: dict[str, Any]) -> str:
    val = r.get("recipe_val", {})
    first, last = val.get("first", {}), val.get("last", {})
    logged = (
        f" The run's own validation pairs (`reward/accuracy`): {first['accuracy']:.1%} before training, "
        f"{last['accuracy']:.1%} at step {last['step']}."
        if first and last
        else ""
    )
    return (
        f"**(a) Reward model.** `{r['recipe']}` (trained by `run_align` in `{r['run_dir']}`; "
        f"{r['run'].get('steps')} steps, {r['run'].get('train_wall_s')} s of training), scored on "
        f"{r['held_out']['n']} pairs of the `preferences` test split: a pair counts when the chosen response's "
        f"reward is strictly above the rejected one's. Mean rewards: chosen {r['held_out']['chosen']:+.2f}, "
        f"rejected {r['held_out']['rejected']:+.2f}.{logged}{kinds_note(r.get('by_kind'))}"
    )


def kinds_note(k: dict[str, Any] | None) -> str:
    if not k:
        return ""
    a, c = k["answer"], k["constraint"]
    return (
        f" By what decides the pair: the answer ({a['n']} pairs, one response has the right number) "
        f"{a['accuracy']:.0%}, the style constraint only ({c['n']} pairs) {c['accuracy']:.0%}. A judge that "
        f"checks the constraint perfectly and guesses the answer would score {k['constraint_only_judge']:.1%} "
        "on these pairs: above that, a reward model must verify the arithmetic of the response."
    )


def notes_dpo(r: dict[str, Any]) -> str:
    h, g = r["held_out"], r["generation"]
    return (
        f"**(e) DPO.** `{r['recipe']}` (trained by `run_align` in `{r['run_dir']}`; {r['run'].get('steps')} "
        f"steps, {r['run'].get('train_wall_s')} s of training). On {h['n']} pairs of the `preferences` test split: "
        f"implicit reward β·(log π − log π_ref) with β = {h['beta']}, the reference being the base with the adapter "
        f"disabled (as in training); a pair counts when the chosen response's reward is strictly higher. Drift = "
        f"mean change of the summed response log-prob from the reference (nats): chosen "
        f"{h['chosen_logp_drift']:+.2f}, rejected {h['rejected_logp_drift']:+.2f} (DPO can widen the margin while "
        f"both fall). Win rate: greedy completions (at most {g['max_new_tokens']} new tokens, chat template) of the "
        f"DPO policy and of the model it started from on {g['n']} test prompts, each scored by the task's gold "
        f"oracle (`align.rewards.oracle`: 1 for the right answer + 0.5 for the style constraint); a tie counts "
        f"half. Mean oracle score {g['dpo']['mean']:.2f} vs {g['start']['mean']:.2f}; right answer "
        f"{g['dpo']['correct']:.0%} vs {g['start']['correct']:.0%}."
    )


def notes_dpo_step(r: dict[str, Any]) -> str:
    return (
        f"**(f) DPO step.** One LoRA step (r=8, all linear layers, AdamW, grad clip, fp32, {r['device']}) of "
        f"`recipes/align_dpo.yaml`'s first batch ({r['pairs']} pairs, {r['response_tokens']} response tokens; "
        f"TRL's input {r['trl_input'][0]} × {r['trl_input'][1]}), reference log-probs cached on both sides, median "
        f"of {r['repeats']} interleaved steps after a warm-up: lmstack {r['lmstack_s']} s (`dpo_loss_fn` on a "
        f"`dpo_batch`, then the optimizer step), TRL {r['trl_s']} s (`DPOTrainer.training_step` on its collator's "
        f"batch of the same token ids, then the same clip and AdamW step) — **{r['speedup']}×**. TRL's default "
        f"path, a reference forward in every step: {r['trl_ref_forward_s']} s. Checks: first-step loss "
        f"{r['first_loss_lmstack']} vs {r['first_loss_trl']} (log 2 while the adapters are zero), reference "
        f"log-probs agree within {r['ref_logp_max_abs_diff']} nats, trainable parameters "
        f"{r['trainable_lmstack']:,} vs {r['trainable_trl']:,}."
    )


PARTS: dict[str, Part] = {  # in the order; the sampling parts are benchmarks.align_rl's
    "reward_model": Part("(a) reward model", part_reward_model, rows_reward_model, notes_reward_model),
    **align_rl.PARTS,
    "dpo": Part("(e) DPO", part_dpo, rows_dpo, notes_dpo),
    "dpo_step": Part("(f) DPO step vs TRL", part_dpo_step, rows_dpo_step, notes_dpo_step),
    **align_grpo_step.PARTS,
}
HEADER = ["measurement", "result", "goal", "verdict", "part wall (s)"]


def goal_lines(parts: dict[str, Any]) -> list[str]:
    """The goals against whatever parts have been run (a goal whose part is missing says so)."""
    out = ["**Against the issue's goals:**"]
    rm = parts.get("reward_model")
    if rm:
        acc = rm["held_out"]["accuracy"]
        out.append(f"- Reward model, held-out pair accuracy: {acc:.1%} (≥ 90%: {verdict(acc >= RM_GOAL)}).")
    else:
        out.append("- Reward model accuracy (≥ 90%): the reward_model part was not run.")
    out += align_rl.goal_lines(parts)
    out.append(step_goal_line("DPO step", "DPOTrainer", "dpo_step", parts.get("dpo_step")))
    out.append(step_goal_line("GRPO step", "GRPOTrainer", "grpo_step", parts.get("grpo_step")))
    missing = [PARTS[p].label for p in PARTS if p not in parts]
    if missing:
        out.append("- Not run: " + "; ".join(missing) + ".")
    return out


def render(data: dict[str, Any]) -> tuple[str, str]:
    parts = data["parts"]
    table, notes = [], []
    for name, part in PARTS.items():
        if name not in parts:
            continue
        rows = [row + ["—"] * (4 - len(row)) for row in part.rows(parts[name])]
        table += [row + [parts[name].get("wall_s", "—") if i == 0 else ""] for i, row in enumerate(rows)]
        notes.append(part.notes(parts[name]))
    conditions = [f"- {PARTS[p].label}: {parts[p]['conditions']}" for p in PARTS if parts.get(p, {}).get("conditions")]
    if conditions:
        notes.append("**Conditions** (as recorded with each part):\n" + "\n".join(conditions))
    notes.append("\n".join(goal_lines(parts)))
    notes += align_rl.figure_lines(parts)
    return markdown_table(HEADER, table), "\n\n".join(notes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    p.add_argument("--run", action="append", default=[], help="PART=RUN_DIR: score a run trained before")
    p.add_argument("--conditions", default="", help="how the machine was during these parts (shown on the page)")
    p.add_argument(
        "--n", type=int, help=f"held-out test pairs ({N_PAIRS}) or PAL problems per split ({align_rl.N_PROBLEMS})"
    )
    p.add_argument("--n-gen", type=int, default=100, help="held-out test prompts generated for the win rate")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generation call")
    p.add_argument("--step-repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "align"), help="where the training runs go")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1-2 steps or iterations, 4 pairs / problems, nothing written"
    )
    p.add_argument("--render", action="store_true", help="only redraw the page and plots from the JSON")
    args = p.parse_args()
    if args.render:
        data = json.loads((RESULTS / "align.json").read_text())
        align_rl.draw_plots(data["parts"], RESULTS)
        rewrite_page("align", *render(data))
        return
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.quick:
        args.n, args.n_gen, args.max_new_tokens, args.step_repeats = 4, 4, 24, 1
    wanted = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in PARTS]
    if unknown:
        raise SystemExit(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    previous = RESULTS / "align.json"
    data: dict[str, Any] = {"parts": {}}
    if previous.is_file() and not args.quick:
        data["parts"] = json.loads(previous.read_text()).get("parts", {})
    args.previous = data["parts"]  # what parts recorded before (the PAL parts share their SFT baseline)
    for name in wanted:
        start = time.perf_counter()
        record = PARTS[name].run(args)
        record["wall_s"] = round(time.perf_counter() - start, 1)
        if args.conditions:
            record["conditions"] = args.conditions
        data["parts"][name] = record
        if not args.quick:  # after every part, so a long run that stops keeps what it measured
            align_rl.draw_plots(data["parts"], RESULTS)
            write_results("align", data, *render(data))
    table, notes = render(data)
    print(table)
    print(notes)


if __name__ == "__main__":
    main()
