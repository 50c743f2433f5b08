"""What the sampling methods of `lmstack align` (PPO, GRPO, ReST, ReST-EM) share: the policy training starts
from, the prompts, the reward, sampling with a seed of its own per row, and greedy validation.

- The starting policy is a `load_pretrained` spec. A base plus an `init_adapter` (e.g. the shipped PAL
  adapter), or a LoRA fine-tuning run, is merged once into a model directory inside the run, so that every
  later step (the LoRA policy of PPO/GRPO, whose reference is that model with the adapters disabled; each
  ReST fine-tune, which `finetune.recipe.build_job` loads by spec; `lmstack generate --model RUN`) loads one
  plain model.
- A prompt is a task row rendered by a template into one user turn; the policy is conditioned on the tokens
  before the first trained token of that turn's encoding (`finetune.task_metrics.split_sample`), which is
  exactly what a fine-tuned model saw before its completion in training.
- `Engine` seeds every row of a call with `GenerationConfig.seed`, so identical prompts in one call would be
  identical samples: `sample` gives every (iteration, copy, chunk of distinct prompts) its own seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from lmstack.align.reward import RewardModel, load_reward_model, pad_right
from lmstack.align.rewards import BUILTIN, GuardedReward, Reward, load_reward, score_batch
from lmstack.data.instruct import InstructFormat, Sample, encode_row
from lmstack.data.instruct_batch import seeded
from lmstack.errors import CheckpointError, ConfigError, DataError
from lmstack.fileio import write_json
from lmstack.finetune.load import SHIPPED, finetune_checkpoint, load_finetuned, shipped_adapter
from lmstack.finetune.lora import unload_lora
from lmstack.finetune.lora_peft import load_adapter
from lmstack.finetune.recipe import ADAPTER_DIR, DatasetConfig, dataset_rows
from lmstack.finetune.task_metrics import split_sample, stop_ids
from lmstack.generate.engine import Completion, Engine
from lmstack.generate.sampling import GenerationConfig
from lmstack.models.decoder import DecoderLM
from lmstack.tokenizer import Tokenizer
from lmstack.weights.checkpoint import is_filtered_checkpoint, resolve_checkpoint
from lmstack.weights.export import export_safetensors_model

SOURCE_FILE = "align_source.json"  # beside a merged starting policy: what it was merged from
PLACEHOLDER = "x"  # a completion to encode a prompt with: only the tokens before it are kept
ROW_FIELDS = {"execution": ("answer",), "oracle": ("answer", "constraint"), "reward_model": ("prompt",)}


def source_dataset(d: Any) -> DatasetConfig:
    """A prompt or preference source (path/task, n, n_val, seed, row caps) as the finetune `DatasetConfig` that
    `finetune.recipe.dataset_rows` reads, so that every align method loads its rows the way finetune does."""
    return DatasetConfig(
        path=d.path,
        task=d.task,
        n=d.n,
        n_val=d.n_val,
        seed=d.seed,
        val_path=d.val_path,
        max_rows=d.max_rows,
        max_val_rows=d.max_val_rows,
    )


@dataclass(frozen=True)
class PromptData:
    """The prompts a policy is sampled on: a task of the task suite generated in memory (`task`: math_word,
    preferences, ...; `n` train and `n_val` validation rows, `seed`) or JSONL files (`path`, `val_path`).
    `template` renders a row's fields into the user turn (`str.format`; PAL: "Q: {question}\\n\\n# solution
    in Python:\\n\\n"). `reference` (ReST, optional) renders a validation row's reference completion, which each
    fine-tune reports its validation loss on."""

    task: str = ""
    path: str = ""
    val_path: str = ""
    n: int = 1000
    n_val: int = 32
    seed: int = 0
    max_rows: int = 0
    max_val_rows: int = 0
    template: str = "{prompt}"
    reference: str = ""
    format: Literal["auto", "chat", "plain"] = "auto"

    @property
    def dataset(self) -> DatasetConfig:
        """The same rows as a fine-tuning dataset (`finetune.recipe.dataset_rows` reads both)."""
        return source_dataset(self)

    @property
    def has_val(self) -> bool:
        return self.dataset.has_val


@dataclass(frozen=True)
class RewardSpec:
    """`name`: execution | oracle | reward_model | package.module:function (see `align.rewards`). With
    `reward_model`, `model` is a reward-model run (`method: reward_model`) or export, `base` the base of a LoRA
    reward model (default: the one its adapter names) and `format` how it rendered its rows. `timeout_s` and
    `max_hung` are `GuardedReward`'s; `batch_size` rows per reward-model forward. `gold` (PPO, GRPO): a second
    reward (a built-in's name or package.module:function), never trained on, scored on every rollout and logged
    as `gold_reward`: what the samples are worth to the judge a learned reward stands in for (the preference
    task's `oracle`), so that over-optimising the proxy shows as the gold reward falling while it rises."""

    name: str = ""
    model: str = ""
    gold: str = ""
    base: str = ""
    format: Literal["auto", "chat", "plain"] = "auto"
    timeout_s: float | None = 30.0
    max_hung: int = 4
    batch_size: int = 8


@dataclass(frozen=True)
class RLConfig:
    """The sampling loop (`rl:`). Per iteration `prompts_per_iteration` training prompts (0 = all; a fresh
    permutation per pass, a pure function of seed and iteration), `samples_per_prompt` samples of each (PPO;
    ReST's N; GRPO uses grpo.group_size), generated `batch_size` rows per engine call. PPO/GRPO sample at
    temperature 1 (the ratio needs the policy's own distribution); ReST's Grow at `temperature`. `lr`,
    `weight_decay`: AdamW on the adapters (and the value head). `kl_coef`: PPO's β, adaptive towards
    `kl_target` nats per sequence over `kl_horizon` samples when a target is set. Validation: greedy on the
    validation prompts (`eval_rows`, 0 = all) every `eval_every` iterations and at the end; a sample counts as
    correct when its reward is >= `correct`. Checkpoints every `save_every` iterations and at the end.
    ReST/ReST-EM validate and save every iteration and fine-tune with `train.*`: the optimizer, KL and
    schedule keys are PPO/GRPO's (GRPO's KL weight is grpo.beta), and recipes refuse them elsewhere."""

    iterations: int = 20
    prompts_per_iteration: int = 8
    samples_per_prompt: int = 1
    batch_size: int = 16
    max_new_tokens: int = 128
    temperature: float = 1.0
    lr: float = 1e-5
    weight_decay: float = 0.0
    kl_coef: float = 0.05
    kl_target: float | None = None
    kl_horizon: int = 10_000
    correct: float = 1.0
    eval_every: int = 10
    eval_rows: int = 0
    save_every: int = 5
    keep_checkpoints: int = 2
    resume: Literal["auto", "never"] = "auto"
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("iterations", "samples_per_prompt", "batch_size", "max_new_tokens", "kl_horizon"):
            if getattr(self, name) < 1:
                raise ConfigError(f"rl.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prompts_per_iteration", "eval_every", "eval_rows", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"rl.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.kl_coef < 0 or self.temperature < 0:
            raise ConfigError("rl.lr must be > 0 and rl.weight_decay, rl.kl_coef, rl.temperature >= 0")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ConfigError(f"rl.kl_target must be > 0 nats (or null for a fixed kl_coef), got {self.kl_target}")


# ----------------------------------------------------------------------------- the starting policy


def init_adapter_path(spec: str) -> Path:
    """The peft directory of an `init_adapter`: a shipped adapter's name (`pal`) or a directory."""
    if spec in SHIPPED:
        return shipped_adapter(spec)
    path = Path(spec)
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(
            f"init_adapter: {spec!r} is neither a shipped adapter ({', '.join(SHIPPED)}) nor a peft adapter "
            "directory (no adapter_config.json)"
        )
    return path


def starting_policy(base: str, init_adapter: str, directory: Path, log: Callable[[str], None] = print) -> str:
    """The `load_pretrained` spec of the policy training starts from: `base` itself, or (when `init_adapter`
    adds an adapter, or `base` is a LoRA fine-tuning run) that model with the adapters merged, written once
    to `directory` (kept while it was made from the same base and adapter)."""
    ckpt = finetune_checkpoint(base)
    if not init_adapter and (ckpt is None or not is_filtered_checkpoint(ckpt)):
        return base
    source = {"base": str(base), "init_adapter": init_adapter}
    try:
        if json.loads((directory / SOURCE_FILE).read_text()) == source:
            return str(directory)
    except (OSError, json.JSONDecodeError):
        pass
    model, tok = load_finetuned(base, merge=True)
    if not isinstance(model, DecoderLM):
        raise ConfigError(f"base: {base} is not a decoder LM (a prompt-tuning run?); align trains decoders")
    if init_adapter:
        load_adapter(model, init_adapter_path(init_adapter), name="init")
        unload_lora(model, merge=True)
    export_safetensors_model(model, tok, directory)  # appears whole or not at all
    write_json(directory / SOURCE_FILE, source)
    log(f"starting policy: {base}" + (f" + adapter {init_adapter}" if init_adapter else "") + f" merged in {directory}")
    return str(directory)


def load_policy(spec: str | Path) -> tuple[DecoderLM, Tokenizer]:
    """(decoder in eval mode, tokenizer) of a starting policy or a fine-tuning run, LoRA adapters merged."""
    model, tok = load_finetuned(spec, merge=True)
    if not isinstance(model, DecoderLM) or tok is None:
        raise ConfigError(f"{spec} is not a decoder LM with a tokenizer; align samples text from one")
    return model, tok


# ----------------------------------------------------------------------------- prompts


@dataclass
class PromptSet:
    """Rendered prompts: the user turns (`texts`, what fine-tuning rows hold), the token ids the policy is
    conditioned on, and the task rows the reward scores against."""

    texts: list[str]
    ids: list[list[int]]
    rows: list[dict[str, Any]]
    stop: tuple[int, ...] = ()  # the end-of-turn ids generation stops at

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int]) -> PromptSet:
        return PromptSet(
            [self.texts[i] for i in index], [self.ids[i] for i in index], [self.rows[i] for i in index], self.stop
        )


def render(template: str, row: dict[str, Any], key: str, origin: str) -> str:
    try:
        return template.format_map(row)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{key}: {template!r} cannot be filled from {origin} ({exc!r})") from exc


def prompt_rows(data: PromptData, val: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(origin, row) of the train (or validation) prompts; templates are checked against every row here,
    before any model loads."""
    rows = dataset_rows(data.dataset, val)
    for origin, row in rows:
        render(data.template, row, "prompts.template", origin)
        if val and data.reference:
            render(data.reference, row, "prompts.reference", origin)
    return rows


def check_reward_rows(spec: RewardSpec, rows: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """The fields the built-in rewards score against must be in every prompt row (ConfigError, not a run
    of zeros: `GuardedReward` lets misconfigurations through, but only once the first batch is scored)."""
    for key, name in (("reward.name", spec.name), ("reward.gold", spec.gold)):
        for field in ROW_FIELDS.get(name, ()):
            missing = next((origin for origin, row in rows if field not in row), None)
            if missing is not None:
                raise ConfigError(f"{key}: {name} scores against the row's {field!r}; {missing} has none")


def encode_prompts(
    rows: Sequence[tuple[str, dict[str, Any]]], data: PromptData, tok: Tokenizer, max_len: int
) -> PromptSet:
    """Each row's prompt as the tokens a fine-tuned model saw before its completion (see the module doc)."""
    fmt = InstructFormat(max_len=max_len, format=data.format)
    mode = fmt.resolve(tok)
    texts, samples = [], []
    for origin, row in rows:
        text = render(data.template, row, "prompts.template", origin)
        try:
            ids, trained = encode_row(tok, {"prompt": text, "completion": PLACEHOLDER}, fmt, mode)
        except DataError as exc:
            raise DataError(f"{origin}: {exc}") from exc
        texts.append(text)
        samples.append(Sample(ids, trained, "prompts", origin))
    ids = [split_sample(s)[0] for s in samples]
    return PromptSet(texts, ids, [dict(r) for _, r in rows], stop_ids(samples, tok))


def check_room(prompts: PromptSet, max_new_tokens: int, max_seq_len: int, what: str) -> None:
    longest = max((len(p) for p in prompts.ids), default=0)
    if longest + max_new_tokens > max_seq_len:
        raise ConfigError(
            f"rl.max_new_tokens: the longest {what} prompt ({longest} tokens) + {max_new_tokens} new tokens exceed "
            f"the model's context of {max_seq_len}"
        )


# ----------------------------------------------------------------------------- rewards


def reward_model_of(path: str | Path, base: str = "", device: str = "cpu") -> tuple[RewardModel, Tokenizer]:
    """A reward model run's (or export's) model in eval mode and its tokenizer; a LoRA run's base is `base`,
    else the one its adapter names (`method: reward_model` records the starting policy there)."""
    found: str | None = base or None
    try:
        ckpt: Path | None = resolve_checkpoint(path)
    except CheckpointError:  # an export (save_reward_model), not a run
        ckpt = None
    if found is None and ckpt is not None and is_filtered_checkpoint(ckpt):
        found = json.loads((ckpt / ADAPTER_DIR / "adapter_config.json").read_text()).get("base_model_name_or_path")
    model, tok = load_reward_model(path, base=found, device=device)
    if tok is None:
        raise ConfigError(f"reward.model: {path} has no tokenizer.json; the reward model needs its tokenizer")
    return model, tok


def learned_reward(spec: RewardSpec, device: torch.device) -> Reward:
    """A reward model trained by `method: reward_model`, scoring each completion after its row's `prompt`
    rendered as in its training (`encode_row`: the chat template), not as concatenated text."""
    model, tok = reward_model_of(spec.model, spec.base, str(device))
    fmt = InstructFormat(max_len=model.cfg.max_seq_len, format=spec.format, truncation="left")
    mode = fmt.resolve(tok)

    @torch.no_grad()
    def batch(texts: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[float]:
        seqs = [encode_row(tok, {"prompt": r["prompt"], "completion": t}, fmt, mode)[0] for t, r in zip(texts, rows)]
        out: list[float] = []
        for i in range(0, len(seqs), spec.batch_size):
            ids, mask = pad_right(seqs[i : i + spec.batch_size], model.cfg.pad_token_id)
            out += model(ids.to(device), mask.to(device)).tolist()
        return out

    return Reward("reward_model", lambda text, row: batch([text], [row])[0], batch)


def check_reward(spec: RewardSpec) -> None:
    """ConfigError (naming the key) for a reward (or gold reward) that cannot be built, before any model loads."""
    if not spec.name:
        raise ConfigError(f"reward.name: required; one of {', '.join([*BUILTIN, 'reward_model'])} or package.module:fn")
    if spec.name == "reward_model" and (not spec.model or not Path(spec.model).exists()):
        raise ConfigError(f"reward.model: the reward model's run or export directory is required ({spec.model!r})")
    if spec.gold == "reward_model":
        raise ConfigError(
            "reward.gold: a gold reward is a fixed judge (oracle, package.module:fn), not a learned model"
        )
    for key, name in (("reward.name", spec.name), ("reward.gold", spec.gold)):
        if name and name != "reward_model":
            try:
                load_reward(name)
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc}") from exc


def build_reward(spec: RewardSpec, device: torch.device) -> GuardedReward:
    reward = learned_reward(spec, device) if spec.name == "reward_model" else load_reward(spec.name)
    return GuardedReward(reward, spec.timeout_s, max_hung=spec.max_hung)


def build_gold(spec: RewardSpec) -> GuardedReward | None:
    """The guarded gold reward of `reward.gold` (None without one): guarded like the trained reward, so that
    a sample the judge cannot score costs its own gold score, not the run."""
    return GuardedReward(load_reward(spec.gold), spec.timeout_s, max_hung=spec.max_hung) if spec.gold else None


# ----------------------------------------------------------------------------- sampling and validation


def sample_seed(seed: int, iteration: int, copy: int, chunk: int) -> int:
    """The engine seed of one call: distinct for every iteration, copy of a prompt and chunk of prompts."""
    return seeded(seed, f"align/rollout/{iteration}/{copy}", chunk).initial_seed()


def sample(
    engine: Engine,
    prompts: Sequence[Sequence[int]],
    copies: int,
    config: GenerationConfig,
    seed: int,
    iteration: int,
    batch_size: int,
    on_chunk: Callable[[int], None] | None = None,
) -> list[list[Completion]]:
    """`copies` samples of every prompt: out[i][k] is prompt i's copy k. A call holds one copy of up to
    `batch_size` prompts, so the rows that share its seed condition on different prompts."""
    out: list[list[Completion]] = [[] for _ in prompts]
    for k in range(copies):
        for start in range(0, len(prompts), batch_size):
            cfg = replace(config, seed=sample_seed(seed, iteration, k, start // batch_size))
            for i, done in enumerate(engine.generate_ids(prompts[start : start + batch_size], cfg), start):
                out[i].append(done)
            if on_chunk is not None:
                on_chunk(min(batch_size, len(prompts) - start))
    return out


def evaluate(
    engine: Engine, prompts: PromptSet, reward: GuardedReward, max_new_tokens: int, correct: float, batch_size: int
) -> dict[str, float]:
    """Greedy completions of the validation prompts, scored: `val_accuracy` (the fraction whose reward is
    >= `correct`; for `execution`, PAL accuracy) and `val_reward` (the mean reward)."""
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_token_ids=prompts.stop)
    texts = []
    for start in range(0, len(prompts), batch_size):
        texts += [c.text for c in engine.generate_ids(prompts.ids[start : start + batch_size], cfg)]
    scores = score_batch(reward, texts, prompts.rows)
    n = max(len(scores), 1)
    return {"val_accuracy": sum(s >= correct for s in scores) / n, "val_reward": sum(scores) / n}


def clean(record: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    """A metrics record with floats rounded and NaN/inf as null (strict JSON)."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, float):
            v = round(v, digits) if v == v and abs(v) != float("inf") else None
        out[k] = v
    return out
