"""The composed config turned, once per run, into the frozen settings everything below reads:
`run_settings` builds a run's `RunSettings` (its train, method, data, judge, evaluation and fault
settings, and the `data_source` (data/), `load_settings` (models/), `length_limits`,
`reward_model_settings` and `eval_settings` the stages take). Under training/ only this module and
`run.py` (which builds the settings and hands them down) read the OmegaConf tree.

The values come from the config files (conf/*) and the command line, never from defaults here:
a key every config of its group sets is read as `node.key`; only keys that a config may leave out
(`data.subset`, `model.revision`, `model.sft.max_epochs`, a method's or judge's own keys) are read
with `.get`, None when absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from alignbench.config import CONF_DIR
from alignbench.data.measuring import LengthLimits
from alignbench.data.reading import DataSource
from alignbench.data.records import DataError
from alignbench.evaluation.evaluator import EvalSettings
from alignbench.methods import METHODS, Method
from alignbench.models.reward_model import RewardModelSettings
from alignbench.models.settings import GGUFFile, LoadSettings, LoRASettings, ModelSettings, SFTSettings, TinySizes


def _plain_json(node) -> str:
    """A config block as canonical JSON: what the cache keys hash (`cache.content_key` resolves nodes the same way)."""
    from omegaconf import OmegaConf

    return json.dumps(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node,
                      sort_keys=True, default=str)


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


def data_source(data) -> DataSource:
    """A hub or local `data=` block; a required key left at '???' (`data.path` of data=local) is one line."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(data) and OmegaConf.is_missing(data, "path"):
        raise DataError("data.path is required but not set (data.path=/path/to/file.jsonl)")
    if data.path is None:
        raise DataError("data.path is required but not set")
    return DataSource(source=str(data.source), path=str(data.path), format=str(data.format),
                      split=data.split, eval_split=data.eval_split, subset=data.get("subset"),
                      max_rows=_optional_int(data.max_rows), max_row_chars=_optional_int(data.max_row_chars),
                      validation_fraction=float(data.validation_fraction), test_fraction=float(data.test_fraction))


def model_settings(model) -> ModelSettings:
    """One `model=` block: the built-in model's sizes or a hub model's source, its SFT stage and LoRA."""
    sft = model.sft
    max_epochs = sft.get("max_epochs")
    sft_settings = SFTSettings(enabled=bool(sft.enabled), steps=int(sft.steps), batch_size=int(sft.batch_size),
                               lr=float(sft.lr), n_examples=int(sft.n_examples),
                               max_epochs=None if max_epochs is None else float(max_epochs), config_json=_plain_json(sft))
    lora = model.get("lora")
    tiny = gguf = None
    if model.source == "builtin":
        tiny = TinySizes(vocab_size=int(model.vocab_size), hidden_size=int(model.hidden_size),
                         intermediate_size=int(model.intermediate_size), num_layers=int(model.num_layers),
                         num_heads=int(model.num_heads), context_length=int(model.context_length))
    if model.get("gguf"):
        gguf = GGUFFile(package=str(model.gguf.package), file=str(model.gguf.file), install=str(model.gguf.install))
    return ModelSettings(
        name=str(model.name), source=str(model.source), path=None if model.path is None else str(model.path),
        revision=model.get("revision"), trust_remote_code=bool(model.trust_remote_code), sft=sft_settings,
        lora=None if not lora else LoRASettings(r=int(lora.r), alpha=lora.alpha, dropout=float(lora.dropout),
                                                target_modules=tuple(str(m) for m in lora.target_modules)),
        tiny=tiny, gguf=gguf, config_json=_plain_json(model))


def load_settings(cfg, limits: LengthLimits | None = None) -> LoadSettings:
    """What `models.loading.load_models` reads: the model, device, precision, lengths and cache
    (`limits`: the run's `length_limits`, when its caller has built them already)."""
    limits = limits or length_limits(cfg)
    return LoadSettings(model=model_settings(cfg.model), device=str(cfg.device), precision=str(cfg.precision),
                        task_seed=int(cfg.task_seed), max_length=limits.max_length,
                        max_prompt_length=limits.max_prompt_length, long_prompts=limits.long_prompts,
                        eval_max_new_tokens=int(cfg.eval.max_new_tokens), padding_free=bool(cfg.train.padding_free),
                        share_prompt=bool(cfg.train.share_prompt),
                        cache_dir=str(cfg.cache_dir))


def length_limits(cfg) -> LengthLimits:
    """The token and character limits of a run: train.max_length / max_prompt_length,
    data.long_prompts / max_row_chars (every data config sets both; the defaults are conf/data/*.yaml's)."""
    return LengthLimits(int(cfg.train.max_length), int(cfg.train.max_prompt_length), str(cfg.data.long_prompts),
                        cfg.data.max_row_chars)


def reward_model_settings(cfg) -> RewardModelSettings:
    """The reward-model stage's settings: the method's `reward_model` block (PPO, RLOO). A method
    without one (`judge.path=trained` with DPO, say) gets the reward model PPO would train on this
    model: PPO's block (conf/method/ppo.yaml) under the PPO file of the model's CPU budget
    (conf/budget/<model.budget_name>/method/ppo.yaml: a few steps, not 150 of 32 pairs), under whatever
    `+method.reward_model.*` the user added."""
    from omegaconf import OmegaConf

    ppo_block = OmegaConf.load(CONF_DIR / "method" / "ppo.yaml").reward_model
    budget = OmegaConf.select(cfg, "model.budget_name", default=None)
    ppo_budget = CONF_DIR / "budget" / str(budget) / "method" / "ppo.yaml"
    if budget is not None and ppo_budget.is_file():
        ppo_block = OmegaConf.merge(ppo_block, OmegaConf.select(OmegaConf.load(ppo_budget), "method.reward_model",
                                                                default=None) or {})
    # PPO's and RLOO's own blocks are complete (their budget already composed in), so the merge changes nothing for them.
    block = OmegaConf.merge(ppo_block, cfg.method.get("reward_model") or {})
    t = cfg.train
    return RewardModelSettings(steps=int(block.steps), lr=float(block.lr), batch_size=int(block.batch_size),
                               heldout_fraction=float(block.heldout_fraction), max_length=int(t.max_length),
                               max_prompt_length=int(t.max_prompt_length),
                               adam_betas=tuple(float(b) for b in t.adam_betas), weight_decay=float(t.weight_decay),
                               max_grad_norm=float(t.max_grad_norm), seed=int(cfg.task_seed),
                               score_batch_size=int(cfg.eval.batch_size), cache_dir=cfg.cache_dir)


def eval_settings(cfg) -> EvalSettings:
    """The evaluation's settings. The sampling seed comes from task_seed, not seed: fixed across the
    evaluations of a run (curves compare like with like) and across the training seeds of a sweep
    (every run faces the same reference samples)."""
    e, path = cfg.eval, cfg.judge.get("path")
    return EvalSettings(max_new_tokens=int(e.max_new_tokens), temperature=float(e.temperature),
                        batch_size=int(e.batch_size), max_prompt_length=int(cfg.train.max_prompt_length),
                        samples_per_prompt=int(e.samples_per_prompt), seed=int(cfg.task_seed) + 10_007,
                        judge_path=None if path is None else str(path),
                        implicit_reward=METHODS[cfg.method.name].implicit_reward, cache_dir=cfg.cache_dir)


# --- A run's settings, built once (`run_settings`) and handed down by `training.run` ---------------

@dataclass(frozen=True)
class TrainSettings:
    """What every method shares (`train.*`, the seeds, precision and threads): batch, optimiser,
    schedule, budget, and when to log and checkpoint."""

    seed: int               # training randomness: data order, dropout, rollout sampling, new heads
    task_seed: int          # the task: prompts, pairs, splits, evaluation sampling
    batch_size: int
    max_steps: int
    warmup_steps: int
    weight_decay: float
    adam_betas: tuple[float, ...]
    max_grad_norm: float
    log_every: int
    save_policy: bool
    checkpoint_every: int   # 0: never
    compile: bool
    precision: str          # auto | fp32 | bf16
    threads: int | None     # the trial's CPU threads; None: torch's default


@dataclass(frozen=True)
class OnlineSettings:
    """PPO's and RLOO's `method.*` keys (conf/method/ppo.yaml, rloo.yaml); `value_clip`, `vf_coef`
    are PPO's (None for RLOO), `rloo_k` RLOO's (None for PPO)."""

    reward: str             # model | gold
    kl_coef: float
    clip_ratio: float
    rollout_batch_size: int
    max_new_tokens: int
    ppo_epochs: int
    n_minibatches: int
    whiten_advantages: bool
    whiten_rewards: bool
    adaptive_kl: bool
    adaptive_kl_target: float
    adaptive_kl_horizon: int
    target_kl: float | None
    value_clip: float | None = None
    vf_coef: float | None = None
    rloo_k: int | None = None


@dataclass(frozen=True)
class MethodSettings:
    """The method: its row of `METHODS`, its learning rate, the objective its loop calls (built from
    its `method.*` keys by the row's `objective`) and the conventions logged with the run's params."""

    name: str
    lr: float
    row: Method
    objective: Callable
    params: dict = field(default_factory=dict, hash=False)
    online: OnlineSettings | None = None  # PPO, RLOO
    reward: str | None = None  # `method.reward` where the method has one (model | gold)


@dataclass(frozen=True)
class BuiltinTaskSettings:
    """A built-in task's `data.*` (data=builtin, data=sentiment): its pairs are sampled here."""

    task: str               # builtin | sentiment
    n_train_prompts: int
    n_eval_prompts: int
    sample_max_new_tokens: int
    bt_temperature: float | None  # data=builtin's Bradley-Terry labels
    min_gold_gap: float | None    # data=sentiment's kept pairs


@dataclass(frozen=True)
class DataSettings:
    """The `data=` config: a built-in task (`builtin` set) or a data set read from files (`source` set)."""

    name: str
    builtin: BuiltinTaskSettings | None
    source: DataSource | None


@dataclass(frozen=True)
class JudgeSettings:
    """The `judge=` config; the keys a judge does not have are None."""

    name: str               # gold | reward_model | llm_pairwise
    path: str | None
    trust_remote_code: bool = False
    batch_size: int | None = None
    gguf_file: str | None = None
    max_prompt_tokens: int | None = None
    max_response_tokens: int | None = None


@dataclass(frozen=True)
class EvalPlan:
    """When and on what the loops evaluate (the evaluator's own settings are `EvalSettings`)."""

    split: str
    n_prompts: int
    n_pref_pairs: int
    every_n_steps: int      # 0: only at the end
    diverged_kl: float


@dataclass(frozen=True)
class FaultDrills:
    """`fault.*`: test and drill hooks, all off by default."""

    nan_loss_at_step: int | None
    raise_at_step: int | None
    sleep_per_step: float


@dataclass(frozen=True)
class RunSettings:
    """Everything one run reads, built once from its composed config (`run_settings`). `config` is
    the resolved config as plain containers (the run's params, its config.yaml artifact, what a
    resume compares), `config_yaml` the same as the checkpoint writes it."""

    train: TrainSettings
    method: MethodSettings
    data: DataSettings
    judge: JudgeSettings
    eval: EvalPlan
    evaluator: EvalSettings
    limits: LengthLimits
    load: LoadSettings
    reward_model: RewardModelSettings | None  # the method's reward model or a trained judge's; None: neither
    faults: FaultDrills
    cache_dir: str
    resume: str | None
    config: dict = field(hash=False)
    config_yaml: str


def train_settings(cfg) -> TrainSettings:
    t = cfg.train
    return TrainSettings(seed=int(cfg.seed), task_seed=int(cfg.task_seed), batch_size=int(t.batch_size),
                         max_steps=int(t.max_steps), warmup_steps=int(t.warmup_steps),
                         weight_decay=float(t.weight_decay), adam_betas=tuple(float(b) for b in t.adam_betas),
                         max_grad_norm=float(t.max_grad_norm), log_every=int(t.log_every),
                         save_policy=bool(t.save_policy), checkpoint_every=int(t.get("checkpoint_every") or 0),
                         compile=bool(t.get("compile")), precision=str(cfg.precision),
                         threads=_optional_int(cfg.get("threads")))


def online_settings(method) -> OnlineSettings:
    """PPO's or RLOO's keys, each read as the loop read it (PPO's own ones absent on RLOO and back)."""
    get = lambda key, kind: None if method.get(key) is None else kind(method[key])  # noqa: E731
    return OnlineSettings(
        reward=str(method.reward), kl_coef=float(method.kl_coef), clip_ratio=float(method.clip_ratio),
        rollout_batch_size=int(method.rollout_batch_size), max_new_tokens=int(method.max_new_tokens),
        ppo_epochs=int(method.ppo_epochs), n_minibatches=int(method.n_minibatches),
        whiten_advantages=bool(method.whiten_advantages), whiten_rewards=bool(method.whiten_rewards),
        adaptive_kl=bool(method.adaptive_kl), adaptive_kl_target=float(method.adaptive_kl_target),
        adaptive_kl_horizon=int(method.adaptive_kl_horizon), target_kl=get("target_kl", float),
        value_clip=get("value_clip", float), vf_coef=get("vf_coef", float), rloo_k=get("rloo_k", int))


def method_settings(method) -> MethodSettings:
    """The `method=` block: its row, objective and logged conventions, and an online method's keys."""
    row = METHODS[method.name]
    return MethodSettings(name=str(method.name), lr=float(method.lr), row=row, objective=row.objective(method),
                          params=row.params(method) if row.params else {},
                          online=online_settings(method) if row.loop == "online" else None,
                          reward=None if method.get("reward") is None else str(method.reward))


def data_settings(data) -> DataSettings:
    """A built-in task's keys, or the files' `data_source`."""
    if data.source != "builtin":
        return DataSettings(name=str(data.name), builtin=None, source=data_source(data))
    bt, gap = data.get("bt_temperature"), data.get("min_gold_gap")
    task = BuiltinTaskSettings(task=str(data.get("task", "builtin")), n_train_prompts=int(data.n_train_prompts),
                               n_eval_prompts=int(data.n_eval_prompts),
                               sample_max_new_tokens=int(data.sample_max_new_tokens),
                               bt_temperature=None if bt is None else float(bt),
                               min_gold_gap=None if gap is None else float(gap))
    return DataSettings(name=str(data.name), builtin=task, source=None)


def judge_settings(judge) -> JudgeSettings:
    get = lambda key, kind: None if judge.get(key) is None else kind(judge[key])  # noqa: E731
    return JudgeSettings(name=str(judge.name), path=get("path", str),
                         trust_remote_code=bool(judge.get("trust_remote_code", False)),
                         batch_size=get("batch_size", int), gguf_file=get("gguf_file", str),
                         max_prompt_tokens=get("max_prompt_tokens", int),
                         max_response_tokens=get("max_response_tokens", int))


def run_settings(cfg) -> RunSettings:
    """A run's settings from its composed (validated) config: built once, by `training.run.train`
    (or by whoever runs a stage on its own: a sweep's warm-up, the benches, the tests)."""
    from omegaconf import OmegaConf

    limits, e, f = length_limits(cfg), cfg.eval, cfg.fault
    needs_reward_model = cfg.method.get("reward") == "model" or cfg.judge.get("path") == "trained"
    return RunSettings(
        train=train_settings(cfg), method=method_settings(cfg.method), data=data_settings(cfg.data),
        judge=judge_settings(cfg.judge),
        eval=EvalPlan(split=str(e.split), n_prompts=int(e.n_prompts), n_pref_pairs=int(e.n_pref_pairs),
                      every_n_steps=int(e.every_n_steps), diverged_kl=float(e.diverged_kl)),
        evaluator=eval_settings(cfg), limits=limits, load=load_settings(cfg, limits),
        reward_model=reward_model_settings(cfg) if needs_reward_model else None,
        faults=FaultDrills(nan_loss_at_step=_optional_int(f.nan_loss_at_step),
                           raise_at_step=_optional_int(f.raise_at_step), sleep_per_step=float(f.sleep_per_step)),
        cache_dir=str(cfg.cache_dir), resume=None if cfg.get("resume") is None else str(cfg.resume),
        config=OmegaConf.to_container(cfg, resolve=True), config_yaml=OmegaConf.to_yaml(cfg, resolve=True))


def saved_config(path) -> dict:
    """A checkpoint's `config.yaml` (written from `RunSettings.config_yaml`) as plain containers."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
