"""The sampling parts of the alignment benchmark (`benchmarks.align` runs them; see its docstring for the
commands): (b) PPO against the learned reward model with and without its KL leash, its proxy (reward model)
and gold (oracle) reward and KL per iteration; (c) ReST-EM and the threshold-schedule ReST, (d) GRPO, each on
PAL from the shipped SFT adapter and scored on the test and hard splits per iteration, against the number of
completions it sampled. Training is the shipped recipe run by `run_align`; scoring is the finetune benchmark's
(`benchmarks.finetune.score_model`: greedy PAL programs run in the sandbox)."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.align_common import RM_RECIPE, Part, log_for, preference_overrides, recipe_run, run_dir, verdict
from benchmarks.common import ROOT, repo_relative

PPO_RECIPE = ROOT / "recipes" / "align_ppo_rm.yaml"
REST_EM_RECIPE = ROOT / "recipes" / "align_rest_em.yaml"
REST_RECIPE = ROOT / "recipes" / "align_rest.yaml"
GRPO_RECIPE = ROOT / "recipes" / "align_grpo.yaml"
N_PROBLEMS = 100  # per split, when --n is not given
GAIN_GOAL = 5.0  # accuracy points over the SFT start
WITHIN = 3  # ... within this many ReST iterations
KL_BOUND = 6.0  # nats per sequence: Ziegler et al.'s KL target, the leash's "bounded"
SPLITS = ("math_word", "math_word_hard")
QUICK_RL = {  # smoke-run overrides of each sampling recipe: a few prompts, short completions, 1-2 iterations
    "ppo": ["prompts.n=8", "rl.iterations=2", "rl.prompts_per_iteration=2", "rl.batch_size=2", "rl.max_new_tokens=16"],
    "grpo": [
        "prompts.n=8",
        "prompts.n_val=2",
        "rl.iterations=2",
        "rl.prompts_per_iteration=1",
        "rl.max_new_tokens=48",
        "rl.eval_every=0",
        "rl.save_every=1",
        "grpo.minibatch_size=4",
    ],  # fmt: skip
    "rest": [
        "prompts.n=8",
        "prompts.n_val=2",
        "rl.iterations=1",
        "rl.prompts_per_iteration=2",
        "rl.samples_per_prompt=2",
        "rl.max_new_tokens=128",
        "train.steps=2",
        "train.batch_size=2",
        "train.warmup_steps=0",
        "train.save_every=0",
    ],  # fmt: skip
}

# ----------------------------------------------------------------------------- pure helpers (unit-tested)


def quarter_means(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter of a curve (at least one point each): a trend that one noisy
    iteration of 8 rollouts cannot flip."""
    if not values:
        raise ValueError("an empty curve has no trend")
    k = max(1, len(values) // 4)
    return statistics.fmean(values[:k]), statistics.fmean(values[-k:])


def ppo_curve(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Per iteration of an online run's metrics.jsonl: the proxy reward the policy was trained on (`reward`,
    before the missing-EOS penalty), the gold reward of the same samples and the KL to the reference."""
    rows = [r for r in records if "reward" in r and "gold_reward" in r]
    return {
        "step": [r["step"] for r in rows],
        "proxy": [round(r["reward"], 4) for r in rows],
        "gold": [round(r["gold_reward"], 4) for r in rows],
        "kl": [round(r["kl"], 4) for r in rows],
    }


def ppo_goal(leashed: dict[str, list[float]], free: dict[str, list[float]]) -> dict[str, Any]:
    """(b)'s goal from the two runs' curves, first quarter → last quarter: with the leash the gold reward rises
    and the KL ends at most KL_BOUND nats; with β = 0 the proxy rises while the gold reward falls."""
    g, k = quarter_means(leashed["gold"]), quarter_means(leashed["kl"])
    p, f = quarter_means(free["proxy"]), quarter_means(free["gold"])
    out = {"leashed_gold": g, "leashed_kl": k, "free_proxy": p, "free_gold": f, "free_kl": quarter_means(free["kl"])}
    out |= {"gold_rises": g[1] > g[0], "kl_bounded": k[1] <= KL_BOUND, "proxy_rises": p[1] > p[0]}
    out["gold_falls"] = f[1] < f[0]
    out["met"] = all(out[c] for c in ("gold_rises", "kl_bounded", "proxy_rises", "gold_falls"))
    return out


def cumulative(counts: Sequence[float]) -> list[int]:
    """Running totals: completions sampled up to and including each iteration."""
    out, total = [], 0
    for c in counts:
        total += int(c)
        out.append(total)
    return out


def accuracy_curve(record: dict[str, Any], split: str = "math_word") -> list[tuple[int, float]]:
    """(completions sampled, accuracy in points) of every scored policy of a ReST or GRPO part, in order."""
    return [(p["samples"], 100 * p[split]["accuracy"]) for p in record["points"]]


def accuracy_at(curve: Sequence[tuple[int, float]], samples: float) -> float:
    """The accuracy a curve reaches at `samples` completions, linear between its points (its last point's
    beyond them): what two methods are compared at, at a budget both sampled."""
    if not curve:
        raise ValueError("an empty curve")
    if samples <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= samples <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (samples - x0) / (x1 - x0)
    return curve[-1][1]


def sample_efficiency(rest_em: dict[str, Any], grpo: dict[str, Any]) -> dict[str, Any]:
    """Which of ReST-EM and GRPO is more sample-efficient here: their test accuracy gains over their start at
    the largest number of completions both sampled (a tie within a point names neither)."""
    a, b = accuracy_curve(rest_em), accuracy_curve(grpo)
    budget = min(a[-1][0], b[-1][0])
    gains = {"rest_em": accuracy_at(a, budget) - a[0][1], "grpo": accuracy_at(b, budget) - b[0][1]}
    diff = gains["rest_em"] - gains["grpo"]
    winner = "neither" if abs(diff) < 1 else "ReST-EM" if diff > 0 else "GRPO"
    return {"budget": budget, "gain_rest_em": gains["rest_em"], "gain_grpo": gains["grpo"], "winner": winner}


def chosen_point(record: dict[str, Any]) -> dict[str, Any]:
    """The policy a part stands by, chosen without the test split: ReST's best validation iteration among
    1 … WITHIN (the start excluded: the question is whether the method improves it), GRPO's last checkpoint."""
    points = record["points"]
    if record.get("method") == "grpo":
        return points[-1]
    later = [p for p in points if 1 <= p["iteration"] <= WITHIN]
    return max(later, key=lambda p: (p["val_accuracy"], -p["iteration"])) if later else points[0]


def gain(record: dict[str, Any], split: str = "math_word") -> float:
    """Accuracy points of the chosen policy over the SFT start (the first point)."""
    return 100 * (chosen_point(record)[split]["accuracy"] - record["points"][0][split]["accuracy"])


# ----------------------------------------------------------------------------- shared by the parts


def rl_overrides(args: argparse.Namespace, method: str) -> list[str]:
    """No progress bars (the fine-tunes of ReST have their own), and the smoke run's sizes."""
    off = ["rl.progress=false"] + (["train.progress=false"] if method == "rest" else [])
    return off + (QUICK_RL[method] if args.quick else [])


def problems_n(args: argparse.Namespace) -> int:
    return args.n or N_PROBLEMS


def score_policy(spec: str, label: str, args: argparse.Namespace) -> dict[str, Any]:
    """Test and hard-split PAL accuracy of a policy (a run's checkpoint or a model directory), greedy."""
    from benchmarks.finetune import score_model
    from lmstack.align.rollouts import load_policy

    model, tok = load_policy(spec)
    scores = score_model(label, model, tok, problems_n(args), args.batch_size)
    return {split: {k: scores[split][k] for k in ("n", "accuracy", "wall_s")} for split in SPLITS}


def start_of(recipe: Any, log: Any) -> tuple[str, str]:
    """(spec, name) of a sampling recipe's starting policy: its base with `init_adapter` merged, in the run."""
    from lmstack.align.rollouts import starting_policy

    spec = starting_policy(recipe.base, recipe.init_adapter, recipe.run_dir / "base", log)
    return spec, recipe.base + (f" + {recipe.init_adapter}" if recipe.init_adapter else "")


def baseline(args: argparse.Namespace, spec: str, name: str, part: str) -> dict[str, Any]:
    """The SFT start's scores: those another part recorded for the same start and problem count (every PAL part
    starts from the shipped adapter), else scored now."""
    n = problems_n(args)
    for other in getattr(args, "previous", {}).values():
        first = (other.get("points") or [{}])[0]
        if other.get("start") == name and first.get("math_word", {}).get("n") == n:
            return {split: first[split] for split in SPLITS}
    return score_policy(spec, f"{part} start", args)


def scored_points(
    args: argparse.Namespace, part: str, start: tuple[str, str], points: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`points` (iteration, samples, policy, …) with each policy's scores; the start's from `baseline`, a
    policy met twice (a ReST iteration that selected nothing keeps the one before) scored once."""
    seen: dict[str, dict[str, Any]] = {start[0]: baseline(args, *start, part)}
    out = []
    for p in points:
        policy = p["policy"]
        if policy not in seen:
            seen[policy] = score_policy(policy, f"{part} iteration {p['iteration']}", args)
        out.append({**p, "policy": repo_relative(policy), **seen[policy]})
    return out


# ----------------------------------------------------------------------------- (b) PPO against the reward model


def reward_model_dir(args: argparse.Namespace) -> Path:
    """The (a) part's reward model run; trained here first when it holds no checkpoint yet (PPO needs it)."""
    from lmstack.weights.checkpoint import latest_good_checkpoint

    out = run_dir(args, "reward_model")
    if latest_good_checkpoint(out, warn=log_for("ppo")) is None:
        log_for("ppo")(f"no reward model in {out}: training recipes/align_reward_model.yaml there first")
        recipe_run("reward_model", RM_RECIPE, args, preference_overrides(args))
    return out


def part_ppo(args: argparse.Namespace) -> dict[str, Any]:
    """The PPO recipe against the reward model twice: with its KL coefficient, and with β = 0."""
    from lmstack.train.metrics import read_metrics

    rm = reward_model_dir(args)
    record: dict[str, Any] = {"reward_model": repo_relative(str(rm)), "runs": {}}
    for name, extra in (("ppo", []), ("ppo_beta0", ["rl.kl_coef=0.0"])):
        overrides = [f"reward.model={rm}", *extra, *rl_overrides(args, "ppo")]
        recipe, run = recipe_run(name, PPO_RECIPE, args, overrides)
        records = read_metrics(recipe.run_dir / "metrics.jsonl")
        steps = [r for r in records if "rollout_s" in r]
        run |= {"beta": recipe.rl.kl_coef, "kl_target": recipe.rl.kl_target, "curve": ppo_curve(records)}
        run["iteration_s"] = round(statistics.median(r["rollout_s"] + r["update_s"] for r in steps), 2)
        run["rollouts"] = recipe.rl.prompts_per_iteration * recipe.rl.samples_per_prompt
        run["max_new_tokens"] = recipe.rl.max_new_tokens
        record["runs"][name] = run
        c = run["curve"]
        log_for(name)(f"{len(c['step'])} iterations: proxy {c['proxy'][-1]:+.3f}, gold {c['gold'][-1]:.3f}")
    record["goal"] = ppo_goal(record["runs"]["ppo"]["curve"], record["runs"]["ppo_beta0"]["curve"])
    return record


# ----------------------------------------------------------------------------- (c) ReST-EM and ReST, (d) GRPO


def rest_part(part: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A ReST recipe's every iteration (0: the SFT start) scored, with the completions sampled up to it."""
    from lmstack.align.rest_loop import completed

    recipe, record = recipe_run(part, path, args, rl_overrides(args, "rest"))
    start = start_of(recipe, log_for(part))
    done = completed(recipe.run_dir / "iterations")
    samples = cumulative([d.get("reward/calls", 0) for d in done])
    points = [
        {
            "iteration": d["iteration"],
            "samples": n,
            "policy": d["policy"],
            "val_accuracy": d["val_accuracy"],
            "selected": sum(v for k, v in d.items() if k.split("/")[0] == "selected"),
            "grow_correct": d.get("grow/correct"),
        }
        for d, n in zip(done, samples)
    ]
    best = json.loads((recipe.run_dir / "rest.json").read_text())["best_iteration"]
    rl = recipe.rl
    per_iteration = rl.prompts_per_iteration * rl.samples_per_prompt
    return record | {
        "method": recipe.method,
        "start": start[1],
        "points": scored_points(args, part, start, points),
        "best_iteration": best,
        "sampling": f"{rl.prompts_per_iteration} problems × {rl.samples_per_prompt} at T={rl.temperature}",
        "per_iteration": per_iteration,
        "finetune_steps": recipe.train.steps,
    }


def part_rest_em(args: argparse.Namespace) -> dict[str, Any]:
    return rest_part("rest_em", REST_EM_RECIPE, args)


def part_rest(args: argparse.Namespace) -> dict[str, Any]:
    return rest_part("rest", REST_RECIPE, args)


def part_grpo(args: argparse.Namespace) -> dict[str, Any]:
    """The GRPO recipe with every checkpoint kept; each one (and the SFT start) scored."""
    from lmstack.train.metrics import read_metrics
    from lmstack.weights.checkpoint import list_checkpoints

    overrides = ["rl.keep_checkpoints=0", *rl_overrides(args, "grpo")]  # the curve needs each checkpoint
    recipe, record = recipe_run("grpo", GRPO_RECIPE, args, overrides)
    start = start_of(recipe, log_for("grpo"))
    logged = read_metrics(recipe.run_dir / "metrics.jsonl")
    records = [r for r in logged if "reward" in r]
    samples = dict(zip((r["step"] for r in records), cumulative([r["reward/calls"] for r in records])))
    val = {r["step"]: r["val_accuracy"] for r in logged if "val_accuracy" in r}
    points = [{"iteration": 0, "samples": 0, "policy": start[0], "val_accuracy": val.get(0)}]
    for ckpt in list_checkpoints(recipe.run_dir):
        it = int(ckpt.name.split("-")[-1])
        points.append({"iteration": it, "samples": samples[it], "policy": str(ckpt), "val_accuracy": val.get(it)})
    rl, g = recipe.rl, recipe.grpo
    return record | {
        "method": "grpo",
        "start": start[1],
        "points": scored_points(args, "grpo", start, points),
        "sampling": f"{rl.prompts_per_iteration} problems × {g.group_size} at T=1, β = {g.beta}",
        "per_iteration": rl.prompts_per_iteration * g.group_size,
        "train_curve": {k: [r.get(k) for r in records] for k in ("step", "reward", "kl", "skipped_groups")},
        "iteration_s": round(statistics.median(r["rollout_s"] + r["update_s"] for r in records), 2),
    }


# ----------------------------------------------------------------------------- the page


def rows_ppo(r: dict[str, Any]) -> list[list[Any]]:
    g, kl, free = r["goal"], r["runs"]["ppo"]["beta"], r["runs"]["ppo_beta0"]["beta"]
    leashed = (
        f"gold {g['leashed_gold'][0]:.2f} → {g['leashed_gold'][1]:.2f}, "
        f"KL {g['leashed_kl'][0]:.1f} → {g['leashed_kl'][1]:.1f} nats"
    )
    hacked = (
        f"proxy {g['free_proxy'][0]:+.2f} → {g['free_proxy'][1]:+.2f}, "
        f"gold {g['free_gold'][0]:.2f} → {g['free_gold'][1]:.2f}"
    )
    return [
        [
            f"(b) PPO on the reward model, β = {kl}: first → last quarter",
            leashed,
            f"gold rises, KL ≤ {KL_BOUND:g}",
            verdict(g["gold_rises"] and g["kl_bounded"]),
        ],
        [f"(b) the same, β = {free}", hacked, "proxy rises, gold falls", verdict(g["proxy_rises"] and g["gold_falls"])],
    ]


def notes_ppo(r: dict[str, Any]) -> str:
    a, b = r["runs"]["ppo"], r["runs"]["ppo_beta0"]
    return (
        f"**(b) PPO against the reward model.** `{a['recipe']}` (LoRA r=8 on SmolLM2-135M-Instruct, the "
        f"`preferences` task's prompts, {a['rollouts']} rollouts of up to {a['max_new_tokens']} tokens an "
        f"iteration) with the reward model of (a) (`{r['reward_model']}`) as its reward: β = {a['beta']} in "
        f"`{a['run_dir']}` ({len(a['curve']['step'])} iterations, median {a['iteration_s']} s each), β = 0 in "
        f"`{b['run_dir']}` ({len(b['curve']['step'])} iterations, {b['iteration_s']} s). Per iteration: proxy = "
        "the reward model's mean score of the rollouts (what PPO maximises), gold = the task's oracle on the same "
        "samples (`reward.gold: oracle`: 1 for the right answer + 0.5 for the style constraint; never trained "
        "on), KL = mean per-sequence KL to the starting model. Each iteration draws prompts not seen before, so "
        "the gold reward is of fresh prompts. A trend is the mean of the last quarter of the iterations against "
        f"the first quarter's; the leash's KL counts as bounded at ≤ {KL_BOUND:g} nats (Ziegler et al.'s target)."
    )


def point_rows(r: dict[str, Any], label: str) -> list[list[Any]]:
    chosen = chosen_point(r)
    rows = []
    for p in r["points"]:
        name = "SFT start" if p["iteration"] == 0 else f"iteration {p['iteration']}"
        mark = " (chosen)" if p is chosen and p["iteration"] else ""
        rows.append(
            [
                f"{label}: {name}{mark}, {p['samples']:,} completions sampled",
                f"{p['math_word']['accuracy']:.1%} test / {p['math_word_hard']['accuracy']:.1%} hard",
            ]
        )
    test, hard = gain(r), gain(r, "math_word_hard")
    rows.append(
        [
            f"{label}: chosen policy − SFT, test / hard",
            f"{test:+.0f} / {hard:+.0f} points",
            f"≥ +{GAIN_GOAL:g} points",
            verdict(test >= GAIN_GOAL),
        ]
    )
    return rows


def rows_rest_em(r: dict[str, Any]) -> list[list[Any]]:
    return point_rows(r, "(c) ReST-EM")


def rows_rest(r: dict[str, Any]) -> list[list[Any]]:
    return point_rows(r, "(c) ReST")


def rows_grpo(r: dict[str, Any]) -> list[list[Any]]:
    return point_rows(r, "(d) GRPO")


def notes_points(r: dict[str, Any], label: str, how: str) -> str:
    n = r["points"][0]["math_word"]["n"]
    wall = f", {r['train_wall_s']} s of training" if "train_wall_s" in r else ""
    return (
        f"**{label}.** `{r['recipe']}` from {r['start']} (trained by `run_align` in `{r['run_dir']}`{wall}): "
        f"{how}; {r['sampling']}, {r['per_iteration']} completions an iteration. Each policy is scored greedily "
        f"on {n} problems of the `math_word` and `math_word_hard` test splits (PAL programs run in the sandbox, as "
        f"in the finetune benchmark); the chosen policy is picked without the test split ({chosen_rule(r)})."
    )


def chosen_rule(r: dict[str, Any]) -> str:
    if r["method"] == "grpo":
        return "the last checkpoint"
    return f"the best validation accuracy of iterations 1 … {WITHIN}; rest.json's best: {r['best_iteration']}"


def notes_rest_em(r: dict[str, Any]) -> str:
    how = f"each iteration fine-tunes the start afresh ({r['finetune_steps']} steps) on its correct, distinct samples"
    return notes_points(r, "(c) ReST-EM", how)


def notes_rest(r: dict[str, Any]) -> str:
    steps = r["finetune_steps"]
    how = f"Improve steps at the recipe's threshold schedule, each continuing the model before ({steps} steps)"
    return notes_points(r, "(c) ReST", how)


def notes_grpo(r: dict[str, Any]) -> str:
    how = f"a checkpoint every few iterations, all kept (median iteration {r['iteration_s']} s)"
    return notes_points(r, "(d) GRPO", how)


def goal_lines(parts: dict[str, Any]) -> list[str]:
    """(b), (c), (d)'s goals against whatever parts have been run."""
    out = []
    ppo = parts.get("ppo")
    if ppo:
        g = ppo["goal"]
        out.append(
            f"- PPO with the KL leash: gold reward {g['leashed_gold'][0]:.2f} → {g['leashed_gold'][1]:.2f}, KL "
            f"{g['leashed_kl'][1]:.1f} nats at the end; with β = 0: proxy {g['free_proxy'][0]:+.2f} → "
            f"{g['free_proxy'][1]:+.2f} while gold {g['free_gold'][0]:.2f} → {g['free_gold'][1]:.2f} (the leash "
            f"holds and reward hacking shows: {verdict(g['met'])})."
        )
    else:
        out.append("- PPO, gold vs proxy reward with and without the KL leash: the ppo part was not run.")
    for part, label in (("rest_em", "ReST-EM"), ("rest", "ReST (threshold schedule)"), ("grpo", "GRPO")):
        r = parts.get(part)
        if r:
            within = f" within {WITHIN} iterations" if part != "grpo" else ""
            out.append(
                f"- {label}: {gain(r):+.0f} points test, {gain(r, 'math_word_hard'):+.0f} hard over SFT{within} "
                f"(≥ +{GAIN_GOAL:g}: {verdict(gain(r) >= GAIN_GOAL)})."
            )
        else:
            out.append(f"- {label} over SFT (≥ +{GAIN_GOAL:g} points): the {part} part was not run.")
    if parts.get("rest_em") and parts.get("grpo"):
        e = sample_efficiency(parts["rest_em"], parts["grpo"])
        out.append(
            f"- More sample-efficient here: **{e['winner']}** (test gain at {e['budget']:,} completions, the "
            f"most both sampled: ReST-EM {e['gain_rest_em']:+.1f}, GRPO {e['gain_grpo']:+.1f} points)."
        )
    return out


def figure_lines(parts: dict[str, Any]) -> list[str]:
    """The plots drawn from these parts (by `draw_plots`), as the page links them."""
    out = []
    if "ppo" in parts:
        out.append("![PPO: proxy and gold reward and KL per iteration, β > 0 and β = 0](align_ppo.png)")
    if any(p in parts for p in ("rest_em", "rest", "grpo")):
        out.append("![PAL accuracy vs completions sampled: ReST-EM, ReST, GRPO](align_rl.png)")
    return out


def draw_plots(parts: dict[str, Any], results: Path) -> list[Path]:
    """align_ppo.png and align_rl.png from the recorded curves (nothing when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    if "ppo" in parts:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for run, color in zip(parts["ppo"]["runs"].values(), ("C0", "C3")):
            c = run["curve"]
            for ax, key in zip(axes, ("proxy", "gold", "kl")):
                ax.plot(c["step"], c[key], color=color, label=f"β = {run['beta']}")
        for ax, title in zip(axes, ("proxy reward (reward model)", "gold reward (oracle)", "KL to the start (nats)")):
            ax.set(title=title, xlabel="PPO iteration")
        written.append(save_figure(fig, axes, results / "align_ppo.png"))
    methods = [(p, lbl) for p, lbl in (("rest_em", "ReST-EM"), ("rest", "ReST"), ("grpo", "GRPO")) if p in parts]
    if methods:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
        for ax, split, title in zip(axes, SPLITS, ("test split", "hard split")):
            for i, (part, label) in enumerate(methods):
                ax.plot(*zip(*accuracy_curve(parts[part], split)), "o-", color=f"C{i}", label=label)
            ax.set(title=f"PAL accuracy, {title}", xlabel="completions sampled", ylabel="accuracy (%)")
        written.append(save_figure(fig, axes, results / "align_rl.png"))
    return written


def save_figure(fig: Any, axes: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.title.set_fontsize(10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PARTS: dict[str, Part] = {
    "ppo": Part("(b) PPO against the reward model", part_ppo, rows_ppo, notes_ppo),
    "rest_em": Part("(c) ReST-EM", part_rest_em, rows_rest_em, notes_rest_em),
    "rest": Part("(c) ReST, threshold schedule", part_rest, rows_rest, notes_rest),
    "grpo": Part("(d) GRPO", part_grpo, rows_grpo, notes_grpo),
}
