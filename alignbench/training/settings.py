"""The composed config turned, once per run, into the frozen settings the stages below read:
`data_source` (data/), `load_settings` (models/), `length_limits`, `reward_model_settings` and
`eval_settings`. Below training/ nothing reads the OmegaConf tree; this is the one place that does.

The values come from the config files (conf/*) and the command line, never from defaults here:
a key every config of its group sets is read as `node.key`; only keys that a config may leave out
(`data.subset`, `model.revision`, `model.sft.max_epochs`) are read with `.get`, None when absent.
"""

from __future__ import annotations

import json

from alignbench.config import CONF_DIR
from alignbench.data.measuring import LengthLimits
from alignbench.data.reading import DataSource
from alignbench.data.records import DataError
from alignbench.evaluation.evaluator import EvalSettings
from alignbench.methods import METHODS
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


def load_settings(cfg) -> LoadSettings:
    """What `models.loading.load_models` reads: the model, device, precision, lengths and cache."""
    limits = length_limits(cfg)
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
    model: PPO's block (conf/method/ppo.yaml) under the model budget's `method=ppo` reward-model keys
    (a real model's CPU budget: a few steps, not 150 of 32 pairs), under whatever
    `+method.reward_model.*` the user added."""
    from omegaconf import OmegaConf

    ppo_block = OmegaConf.load(CONF_DIR / "method" / "ppo.yaml").reward_model
    budget = OmegaConf.select(cfg, "model.budget", default=None) or {}
    for key, value in (budget.get("method=ppo") or {}).items():
        if key.startswith("method.reward_model."):
            ppo_block[key.removeprefix("method.reward_model.")] = value
    # PPO's and RLOO's own blocks are complete (their budget already applied), so the merge changes nothing for them.
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
