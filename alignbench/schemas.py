"""The config's schemas: one dataclass per kind of config file, registered with Hydra's ConfigStore
(`register`), so OmegaConf refuses a value of the wrong type while the config is composed.

The schemas say only types: every field is MISSING here and takes its value from the YAML files of
conf/ and sweeps/, the one place defaults live. `conf/config.yaml` starts from `config_schema`
(the shared settings; `sweep` is typed there for every sweep file); a group file takes its kind's
schema in its own defaults list, e.g. conf/method/dpo.yaml:

    defaults:
      - /schema/method@_here_: dpo
      - _self_

A group file without such a line composes untyped (docs/configs.md: how a new file passes). Ranges and
rules across keys are `alignbench.config`'s (`validate`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


# --- The shared settings (conf/config.yaml) ----------------------------------------------------------

@dataclass
class Train:
    batch_size: int = MISSING
    max_steps: int = MISSING
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    adam_betas: List[float] = MISSING
    max_grad_norm: float = MISSING
    max_length: int = MISSING
    max_prompt_length: int = MISSING
    padding_free: bool = MISSING
    share_prompt: bool = MISSING
    log_every: int = MISSING
    save_policy: bool = MISSING
    checkpoint_every: int = MISSING
    compile: bool = MISSING


@dataclass
class Eval:
    split: str = MISSING
    n_prompts: int = MISSING
    samples_per_prompt: int = MISSING
    every_n_steps: int = MISSING
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    batch_size: int = MISSING
    n_pref_pairs: int = MISSING
    diverged_kl: float = MISSING


@dataclass
class Tracking:
    enabled: bool = MISSING
    uri: Optional[str] = MISSING
    experiment: str = MISSING
    run_name: Optional[str] = MISSING
    async_logging: bool = MISSING


@dataclass
class Fault:
    nan_loss_at_step: Optional[int] = MISSING
    raise_at_step: Optional[int] = MISSING
    sleep_per_step: float = MISSING


@dataclass
class Report:
    sweep: Optional[str] = MISSING
    out_dir: str = MISSING
    n_examples: int = MISSING


@dataclass
class UI:
    host: str = MISSING
    port: int = MISSING


@dataclass
class Pruner:
    type: str = MISSING
    n_startup_trials: int = MISSING
    n_warmup_steps: int = MISSING


@dataclass
class Race:
    min_seeds: int = MISSING
    min_effect: float = MISSING
    spending: str = MISSING
    futility: float = MISSING


@dataclass
class Sweep:
    """A file of sweeps/ (conf/sweep)."""
    name: str = MISSING
    methods: List[str] = MISSING
    n_trials: int = MISSING
    objective: str = MISSING
    seed: int = MISSING
    sampler: Dict[str, Any] = MISSING  # its keys depend on the sampler (`type: grid` has its own)
    pruner: Pruner = MISSING
    storage: Optional[str] = MISSING
    heartbeat_interval: int = MISSING
    grace_period: Optional[float] = MISSING
    n_workers: Any = MISSING  # a number or "auto" (sweep/plan.py)
    batch_trials: Optional[int] = MISSING
    max_failures: int = MISSING
    confirm_seeds: int = MISSING
    confirm: str = MISSING
    confirm_seeds_max: Optional[int] = MISSING
    race: Race = MISSING
    confirm_overrides: List[str] = MISSING
    keep_policies: str = MISSING
    experiment: Optional[str] = MISSING
    search_space: Dict[str, Any] = MISSING  # method -> keys of its search space, or a space itself
    overrides: List[str] = MISSING
    method_overrides: Dict[str, List[str]] = MISSING


@dataclass
class Config:
    """conf/config.yaml. The groups are typed by their own files' schemas (`Any` here), except the
    sweep, which has one kind."""
    seed: int = MISSING
    task_seed: int = MISSING
    cache_dir: str = MISSING
    device: str = MISSING
    precision: str = MISSING
    threads: Optional[int] = MISSING
    resume: Optional[str] = MISSING
    train: Train = MISSING
    eval: Eval = MISSING
    tracking: Tracking = MISSING
    fault: Fault = MISSING
    report: Report = MISSING
    ui: UI = MISSING
    method: Any = MISSING
    model: Any = MISSING
    data: Any = MISSING
    judge: Any = MISSING
    sweep: Optional[Sweep] = None  # no sweep chosen (`alignbench train`)


# --- Methods (conf/method) ------------------------------------------------------------------------

@dataclass
class DPO:
    name: str = MISSING
    beta: float = MISSING
    lr: float = MISSING
    label_smoothing: float = MISSING


@dataclass
class IPO:
    name: str = MISSING
    tau: float = MISSING
    lr: float = MISSING
    length_normalize: bool = MISSING


@dataclass
class KTO:
    name: str = MISSING
    beta: float = MISSING
    lr: float = MISSING
    desirable_weight: float = MISSING
    undesirable_weight: float = MISSING


@dataclass
class SimPO:
    name: str = MISSING
    beta: float = MISSING
    gamma_beta_ratio: float = MISSING
    gamma_convention: str = MISSING
    lr: float = MISSING


@dataclass
class RewardModel:
    steps: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    heldout_fraction: float = MISSING


@dataclass
class Online:
    """What PPO and RLOO share: the rollout, the clipped update, the KL control, the reward model."""
    name: str = MISSING
    lr: float = MISSING
    reward: str = MISSING
    kl_coef: float = MISSING
    clip_ratio: float = MISSING
    rollout_batch_size: int = MISSING
    max_new_tokens: int = MISSING
    ppo_epochs: int = MISSING
    n_minibatches: int = MISSING
    whiten_advantages: bool = MISSING
    whiten_rewards: bool = MISSING
    adaptive_kl: bool = MISSING
    adaptive_kl_target: float = MISSING
    adaptive_kl_horizon: int = MISSING
    target_kl: Optional[float] = MISSING
    reward_model: RewardModel = MISSING


@dataclass
class PPO(Online):
    value_clip: float = MISSING
    vf_coef: float = MISSING
    gamma: float = MISSING
    lam: float = MISSING


@dataclass
class RLOO(Online):
    rloo_k: int = MISSING


# --- Models (conf/model) --------------------------------------------------------------------------

@dataclass
class SFT:
    enabled: bool = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    n_examples: int = MISSING


@dataclass
class BuiltinSFT(SFT):
    max_epochs: int = MISSING


@dataclass
class HubModel:
    name: str = MISSING
    source: str = MISSING
    path: Optional[str] = MISSING
    trust_remote_code: bool = MISSING
    lora: Any = MISSING  # null or {r, alpha, dropout, target_modules}; untyped: OmegaConf cannot set a block
                         # over a typed null one (`model.lora={...}` on model=tiny); config.py checks its kind
    sft: SFT = MISSING


@dataclass
class GGUF:
    package: str = MISSING
    file: str = MISSING
    install: str = MISSING


@dataclass
class GGUFModel(HubModel):
    """A hub architecture whose weights come from a GGUF file in an installed package; `budget_name`
    names the CPU budget composed in (conf/budget/<name>.yaml sets it), None when there is none."""
    gguf: GGUF = MISSING
    budget_name: Optional[str] = MISSING


@dataclass
class BuiltinModel:
    name: str = MISSING
    source: str = MISSING
    path: Optional[str] = MISSING
    vocab_size: int = MISSING
    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    context_length: int = MISSING
    trust_remote_code: bool = MISSING
    lora: Any = MISSING  # as HubModel.lora
    sft: BuiltinSFT = MISSING


# --- Data (conf/data) ----------------------------------------------------------------------------

@dataclass
class Lengths:
    max_length: int = MISSING
    max_prompt_length: int = MISSING
    long_prompts: str = MISSING
    max_row_chars: Optional[int] = MISSING


@dataclass
class BuiltinTaskData(Lengths):
    """What both built-in tasks' data files set: prompts and pairs come from alignbench itself."""
    name: str = MISSING
    source: str = MISSING
    task: str = MISSING
    n_train_prompts: int = MISSING
    n_eval_prompts: int = MISSING
    sample_max_new_tokens: int = MISSING


@dataclass
class BuiltinData(BuiltinTaskData):
    """`data=builtin`: pairs labelled by a Bradley-Terry draw on the gold reward."""
    bt_temperature: float = MISSING


@dataclass
class SentimentData(BuiltinTaskData):
    """`data=sentiment`: pairs kept only where the gold gap is at least `min_gold_gap`."""
    min_gold_gap: float = MISSING


@dataclass
class FileData(Lengths):
    """A preference data set read from files: a local file (`source: local`) or the hub's."""
    name: str = MISSING
    source: str = MISSING
    path: str = MISSING
    format: str = MISSING
    split: Optional[str] = MISSING
    eval_split: Optional[str] = MISSING
    validation_fraction: float = MISSING
    test_fraction: float = MISSING
    max_rows: Optional[int] = MISSING


@dataclass
class HubData(FileData):
    subset: Optional[str] = MISSING


# --- Judges (conf/judge) -------------------------------------------------------------------------

@dataclass
class GoldJudge:
    name: str = MISSING


@dataclass
class RewardModelJudge:
    name: str = MISSING
    path: str = MISSING
    trust_remote_code: bool = MISSING
    batch_size: int = MISSING


@dataclass
class PairwiseJudge:
    name: str = MISSING
    path: Optional[str] = MISSING
    gguf_file: Optional[str] = MISSING
    trust_remote_code: bool = MISSING
    batch_size: int = MISSING
    max_prompt_tokens: int = MISSING
    max_response_tokens: int = MISSING


SCHEMAS = {  # (group, name) -> schema; a group file names one as `/schema/<group>@_here_: <name>`
    ("method", "dpo"): DPO, ("method", "ipo"): IPO, ("method", "kto"): KTO, ("method", "simpo"): SimPO,
    ("method", "ppo"): PPO, ("method", "rloo"): RLOO,
    ("model", "builtin"): BuiltinModel, ("model", "hub"): HubModel, ("model", "gguf"): GGUFModel,
    ("data", "builtin"): BuiltinData, ("data", "sentiment"): SentimentData, ("data", "hub"): HubData, ("data", "file"): FileData,
    ("judge", "gold"): GoldJudge, ("judge", "reward_model"): RewardModelJudge, ("judge", "llm_pairwise"): PairwiseJudge,
}


@functools.lru_cache(maxsize=None)
def register() -> None:
    """Put the schemas in Hydra's ConfigStore, once per process: `config_schema` and `schema/<group>/<name>`."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for (group, name), schema in SCHEMAS.items():
        store.store(group=f"schema/{group}", name=name, node=schema)


def shown(value):
    """`value` as a user would have typed it: a float field holds `method.beta=0` as 0.0, shown as 0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
