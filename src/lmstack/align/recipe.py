"""Alignment recipes (`kind: align`, run by `lmstack align RECIPE.yaml key=value ...`): one `method` each.

    kind: align
    name: grpo-pal
    method: grpo                     # reward_model | dpo | ppo | grpo | rest | rest_em
    base: smollm2                    # any load_pretrained spec, or a fine-tuning run directory
    init_adapter: pal                # optional: a shipped adapter's name or a peft directory, merged into base
    lora: {r: 8, alpha: 16, targets: all-linear}     # null: full fine-tuning (reward_model, dpo, rest*)
    prompts: {task: math_word, n: 2000, n_val: 32, template: "Q: {question}\\n\\n# solution in Python:\\n\\n"}
    reward: {name: execution}        # execution | oracle | reward_model (+ model: RUN) | package.module:fn
                                     # (+ gold: oracle — ppo/grpo log a never-trained judge's gold_reward)
    rl: {iterations: 30, prompts_per_iteration: 4, max_new_tokens: 160, lr: 2e-5, eval_every: 10}
    grpo: {group_size: 4, beta: 0.04}

Which sections a method reads:

- reward_model, dpo: `data` (preference pairs: JSONL `path`/`val_path`, or the `preferences` task generated
  in memory with `n`/`n_val`), `train` (the one training loop's TrainConfig), `rm` / `dpo` (`align.reward`'s
  RewardConfig / `align.dpo`'s DPOConfig, less their lora and base_name: those are the recipe's). They run
  `train_reward_model` / `train_dpo`, so resume, checkpoints, metrics.jsonl and the progress bar are the loop's.
- ppo, grpo: `prompts`, `reward`, `rl` (`align.rollouts.RLConfig`) and `ppo` / `grpo` (PPOConfig /
  GRPOConfig); a LoRA policy whose reference is the starting policy (adapters disabled). See `align.online`.
- rest, rest_em: `prompts`, `reward`, `rl` (Grow sampling, validation), `rest` (`align.rest_loop.RestConfig`)
  and `train` (each Improve step's fine-tune). See `align.rest_loop`.

The starting policy is `base` (+ `init_adapter`), merged into `RUN/base/` when it stacks adapters
(`align.rollouts.starting_policy`). Everything a recipe names (keys, method, files, tasks, rewards, template
fields) is checked before any model loads; errors name the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from lmstack.align.dpo import DPOConfig, train_dpo
from lmstack.align.grpo import GRPOConfig
from lmstack.align.online import OnlineRun, train_online
from lmstack.align.ppo import PPOConfig
from lmstack.align.rest_loop import RestConfig, RestRun, train_rest
from lmstack.align.reward import (
    PreferencePair,
    RewardConfig,
    RewardModel,
    check_preference_row,
    encode_pairs,
    train_reward_model,
)
from lmstack.align.rollouts import (
    PromptData,
    PromptSet,
    RewardSpec,
    RLConfig,
    build_gold,
    build_reward,
    check_reward,
    check_reward_rows,
    check_room,
    encode_prompts,
    init_adapter_path,
    load_policy,
    prompt_rows,
    source_dataset,
    starting_policy,
)
from lmstack.config import apply_overrides, from_dict, load_yaml, to_dict
from lmstack.data.instruct import InstructFormat
from lmstack.data.tasks import GENERATORS
from lmstack.errors import ConfigError, DataError
from lmstack.finetune.lora import LoRAConfig, apply_lora
from lmstack.finetune.recipe import DatasetConfig, dataset_rows
from lmstack.process_group import device_for_rank
from lmstack.tokenizer import Tokenizer
from lmstack.train.loop import TrainConfig

COMMON = {"kind", "name", "method", "base", "init_adapter", "out_dir", "lora"}
SECTIONS = {  # beyond COMMON, the sections each method reads
    "reward_model": {"data", "train", "rm"},
    "dpo": {"data", "train", "dpo"},
    "ppo": {"prompts", "reward", "rl", "ppo"},
    "grpo": {"prompts", "reward", "rl", "grpo"},
    "rest": {"prompts", "reward", "rl", "rest", "train"},
    "rest_em": {"prompts", "reward", "rl", "rest", "train"},
}

RL_ONLINE = {"lr", "weight_decay", "kl_coef", "kl_target", "kl_horizon", "save_every", "keep_checkpoints", "eval_every"}
RL_UNUSED = {"grpo": {"kl_coef", "kl_target", "kl_horizon"}, "rest": RL_ONLINE, "rest_em": RL_ONLINE}
RL_INSTEAD = {
    "grpo": "its KL weight is grpo.beta",
    "rest": "its fine-tunes take train.*; every iteration is validated and kept",
    "rest_em": "its fine-tunes take train.*; every iteration is validated and kept",
}


@dataclass(frozen=True)
class PreferenceData:
    """Preference pairs (rows with `prompt`, `chosen`, `rejected`): JSONL `path` (+ `val_path`), or a `task`
    of the task suite generated in memory (`preferences`: `n` train and `n_val` validation rows, `seed`).
    `max_len`, `format`, `truncation`: how each side renders (`data.instruct.InstructFormat`)."""

    path: str = ""
    val_path: str = ""
    task: str = ""
    n: int = 1000
    n_val: int = 100
    seed: int = 0
    max_rows: int = 0
    max_val_rows: int = 0
    max_len: int = 256
    format: Literal["auto", "chat", "plain"] = "auto"
    truncation: Literal["error", "left"] = "error"

    @property
    def dataset(self) -> DatasetConfig:
        return source_dataset(self)


@dataclass(frozen=True)
class AlignRecipe:
    name: str
    method: Literal["reward_model", "dpo", "ppo", "grpo", "rest", "rest_em"]
    kind: Literal["align"] = "align"
    base: str = "smollm2"
    init_adapter: str = ""
    out_dir: str = ""  # default runs/<name>
    lora: LoRAConfig | None = field(default_factory=LoRAConfig)
    data: PreferenceData = field(default_factory=PreferenceData)
    prompts: PromptData = field(default_factory=PromptData)
    reward: RewardSpec = field(default_factory=RewardSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    rm: RewardConfig = field(default_factory=RewardConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    grpo: GRPOConfig = field(default_factory=lambda: GRPOConfig(group_size=4))
    rest: RestConfig = field(default_factory=RestConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")


def _check_source(section: str, path: str, task: str, val_path: str, kinds: str) -> None:
    """Exactly one of a file and a task; files that exist; a task the suite has."""
    if bool(path) == bool(task):
        raise ConfigError(f"{section}: give either path (a JSONL file of {kinds}) or task (a task of the suite)")
    if task and task not in GENERATORS:
        raise ConfigError(f"{section}.task: unknown task {task!r}; choose one of {', '.join(GENERATORS)}")
    if task and val_path:
        raise ConfigError(f"{section}.val_path: a task generates its validation split; drop val_path")
    for key, value in (("path", path), ("val_path", val_path)):
        if value and not Path(value).is_file():
            raise ConfigError(f"{section}.{key}: file not found: {value}")


def check_recipe(recipe: AlignRecipe, data: dict[str, Any]) -> None:
    """The method-specific checks `from_dict` cannot make; `data` is the recipe as given."""
    m = recipe.method
    unused = sorted(set(data) - COMMON - SECTIONS[m])
    if unused:
        reads = ", ".join(sorted((COMMON | SECTIONS[m]) - {"kind"}))
        raise ConfigError(f"{unused[0]}: method {m} does not use this section (it reads {reads})")
    ignored = sorted(set(data.get("rl") or {}) & RL_UNUSED.get(m, set()))
    if ignored:
        raise ConfigError(f"rl.{ignored[0]}: method {m} does not use it ({RL_INSTEAD[m]})")
    if recipe.init_adapter:
        init_adapter_path(recipe.init_adapter)
    for section in ("rm", "dpo"):
        cfg = getattr(recipe, section)
        if cfg.lora is not None or cfg.base_name:
            raise ConfigError(f"{section}.lora / {section}.base_name: set them as the recipe's lora and base")
    if m in ("reward_model", "dpo"):
        d = recipe.data
        _check_source("data", d.path, d.task, d.val_path, "prompt/chosen/rejected rows")
        return
    p = recipe.prompts
    _check_source("prompts", p.path, p.task, p.val_path, "prompt rows")
    check_reward(recipe.reward)
    if recipe.reward.gold and m not in ("ppo", "grpo"):
        raise ConfigError(f"reward.gold: method {m} logs no gold reward (ppo and grpo score their rollouts with it)")
    rl = recipe.rl
    if m in ("ppo", "grpo"):
        if recipe.lora is None:
            raise ConfigError(f"lora: method {m} trains a LoRA adapter (its reference is the base without it)")
        if rl.temperature != 1.0:
            raise ConfigError(
                f"rl.temperature: {m} samples at temperature 1 (its ratio is of the policy's own probabilities)"
            )
        if rl.prompts_per_iteration < 1:
            raise ConfigError(f"rl.prompts_per_iteration: {m} needs >= 1 prompt per iteration")
        if m == "grpo" and rl.samples_per_prompt != 1:
            raise ConfigError("rl.samples_per_prompt: grpo samples grpo.group_size completions per prompt; drop it")
    needs_val = m in ("rest", "rest_em") or rl.eval_every > 0
    if needs_val and not p.has_val:
        raise ConfigError(
            f"prompts: {m} validates greedily ({'every iteration' if m.startswith('rest') else 'rl.eval_every'}); "
            "give val_path, or a task with n_val > 0"
        )


def recipe_from_dict(data: dict[str, Any]) -> AlignRecipe:
    """Validate a recipe mapping (see the module docstring); every error names its key."""
    data = {"kind": "align", **data}
    recipe = from_dict(AlignRecipe, data, path="")
    check_recipe(recipe, data)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> AlignRecipe:
    """Parse and validate a recipe file; overrides like `rl.iterations=3` win over the file."""
    return recipe_from_dict(apply_overrides(load_yaml(path), overrides or []))


# ----------------------------------------------------------------------------- preference methods


def preference_pairs(recipe: AlignRecipe, tok: Tokenizer) -> tuple[list[PreferencePair], list[PreferencePair] | None]:
    d = recipe.data
    fmt = InstructFormat(max_len=d.max_len, format=d.format, truncation=d.truncation)
    label = d.task or Path(d.path).stem
    train = encode_pairs(dataset_rows(d.dataset), tok, fmt, task=label)
    val = encode_pairs(dataset_rows(d.dataset, val=True), tok, fmt, task=label) if d.dataset.has_val else None
    return train, val


def run_preference(recipe: AlignRecipe, start: str, log: Callable[[str], None]) -> dict[str, Any]:
    """A reward model or DPO on the one training loop, from the starting policy."""
    model, tok = load_policy(start)
    train_pairs, val_pairs = preference_pairs(recipe, tok)
    log(f"data: {len(train_pairs)} train / {len(val_pairs or [])} val preference pairs")
    if recipe.method == "reward_model":
        torch.manual_seed(recipe.train.seed)  # the head's initial weights
        cfg = replace(recipe.rm, lora=recipe.lora, base_name=start)
        _, summary = train_reward_model(
            RewardModel(model), train_pairs, recipe.run_dir, recipe.train, val_pairs, cfg, tok, log
        )
    else:
        dpo = replace(recipe.dpo, lora=recipe.lora, base_name=start)
        _, summary = train_dpo(model, train_pairs, recipe.run_dir, recipe.train, val_pairs, dpo, None, tok, log)
    return summary


# ----------------------------------------------------------------------------- sampling methods


def prompt_sets(recipe: AlignRecipe, tok: Tokenizer, max_len: int) -> tuple[PromptSet, PromptSet | None]:
    """(train, validation or None: its first rl.eval_rows) prompt sets, encoded with the policy's tokenizer."""
    p, cap = recipe.prompts, recipe.rl.eval_rows
    train = encode_prompts(prompt_rows(p), p, tok, max_len)
    val = encode_prompts(prompt_rows(p, val=True)[: cap or None], p, tok, max_len) if p.has_val else None
    for what, prompts in (("training", train), ("validation", val)):
        if prompts is not None:
            check_room(prompts, recipe.rl.max_new_tokens, max_len, what)
    return train, val


def run_sampling(recipe: AlignRecipe, start: str, log: Callable[[str], None]) -> dict[str, Any]:
    """PPO / GRPO (online) or ReST / ReST-EM (offline) from the starting policy."""
    device = device_for_rank(recipe.rl.device, 0)
    model, tok = load_policy(start)
    train, val = prompt_sets(recipe, tok, model.cfg.max_seq_len)
    log(f"prompts: {len(train)} train / {len(val) if val is not None else 0} validation")
    reward = build_reward(recipe.reward, device)
    if recipe.method in ("rest", "rest_em"):
        assert val is not None
        del model  # each iteration loads its own policy
        run = RestRun(
            recipe.method,
            recipe.name,
            start,
            recipe.prompts,
            train,
            val,
            reward,
            recipe.rl,
            recipe.rest,
            recipe.train,
            recipe.lora,
            recipe.run_dir,
        )
        return train_rest(run, log)
    assert recipe.lora is not None
    torch.manual_seed(recipe.rl.seed)  # the adapter's A matrices
    apply_lora(model, recipe.lora)
    algo = recipe.ppo if recipe.method == "ppo" else recipe.grpo
    online = OnlineRun(
        model.to(device),
        tok,
        train,
        val,
        reward,
        recipe.rl,
        algo,
        recipe.run_dir,
        start,
        to_dict(recipe),
        build_gold(recipe.reward),
    )
    return train_online(online, log)


def check_data(recipe: AlignRecipe) -> None:
    """Read every row the recipe names and check its templates and reward fields, before any model loads."""
    if recipe.method in ("reward_model", "dpo"):
        d = recipe.data.dataset
        for origin, row in dataset_rows(d) + (dataset_rows(d, val=True) if d.has_val else []):
            try:
                check_preference_row(row)
            except DataError as exc:
                raise DataError(f"{origin}: {exc}") from exc
        return
    rows = prompt_rows(recipe.prompts)
    check_reward_rows(recipe.reward, rows)
    if recipe.prompts.has_val:
        check_reward_rows(recipe.reward, prompt_rows(recipe.prompts, val=True))


def run_align(recipe: AlignRecipe, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) an alignment recipe in its run directory; returns the method's summary."""
    check_data(recipe)
    run_dir = recipe.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    start = starting_policy(recipe.base, recipe.init_adapter, run_dir / "base", log)
    if recipe.method in ("reward_model", "dpo"):
        return run_preference(recipe, start, log)
    return run_sampling(recipe, start, log)


__all__ = [
    "AlignRecipe",
    "PreferenceData",
    "load_recipe",
    "recipe_from_dict",
    "run_align",
]
