"""A run's set-up before its first optimiser step: the models (SFT stage cached), the filtered
train / eval data, the judge and the evaluator with its reference side cached, as `Prepared`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from alignbench import cache
from alignbench.config import ConfigError
from alignbench.data import builtin_task as task
from alignbench.data.builtin_pairs import builtin_pairs
from alignbench.data.parsing import parse_rows
from alignbench.data.preparing import load_preference_data, require_enough
from alignbench.data.reading import read_rows
from alignbench.data.records import PreferenceRecord, UnpairedRecord
from alignbench.evaluation.evaluator import Evaluator
from alignbench.evaluation.judges import GoldJudge, RewardModelJudge
from alignbench.models.loading import Models, load_models
from alignbench.training.reference import cached_tokenize_pairs, reference_pair_logps

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything a run needs before its first optimiser step."""

    models: Models
    train_records: list
    eval_records: list
    eval_prompts: list[str]
    drops: dict
    evaluator: Evaluator
    builtin_task: bool
    timings: dict = field(default_factory=dict)


@dataclass
class LoadedData:
    """The models and the data split of one run, before the judge and evaluator exist."""

    models: Models
    train_records: list
    eval_records: list
    eval_prompts: list[str]
    drops: dict


def make_judge(cfg, models: Models, prepared_records=None):
    if cfg.judge.name == "gold":
        return GoldJudge()
    if cfg.judge.path == "trained":
        from alignbench.models.reward_model import load_or_train_reward_model

        return load_or_train_reward_model(cfg, models, prepared_records)
    return RewardModelJudge.from_pretrained(cfg.judge.path, models.device, cfg.judge.trust_remote_code,
                                            cfg.judge.batch_size)


def load_builtin_task(cfg) -> LoadedData:
    """The built-in model, SFT on the task's corpus, and the task's pairs sampled from it."""
    sft_examples = lambda: task.sft_corpus(cfg.model.sft.n_examples, cfg.seed)  # noqa: E731 (built on a miss only)
    models = load_models(cfg, sft_examples, corpus_id=cache.content_key("task-sft-corpus-v1", cfg.model.sft.n_examples, cfg.seed))
    records = builtin_pairs(cfg, models)
    eval_prompts = task.make_prompts(cfg.data.n_eval_prompts, cfg.seed + 1)[: cfg.eval.n_prompts]
    return LoadedData(models, records[: -cfg.eval.n_pref_pairs], records[-cfg.eval.n_pref_pairs:], eval_prompts, {})


def load_data_set(cfg) -> LoadedData:
    """A hub or local preference data set, and the model (the built-in one SFT on its preferred responses)."""
    if cfg.model.source == "builtin":
        # The built-in model learns its tokenizer and SFT from the data's preferred responses
        # (the DPO paper's recipe), so read the rows first; chat rows use the plain rendering.
        records, parse_drops = parse_rows(read_rows(cfg.data), cfg.data.format)
        require_enough(records, 8, parse_drops)  # a file with nothing usable: a clear error before SFT
        sft_examples = [(r.prompt, r.chosen) if isinstance(r, PreferenceRecord) else (r.prompt, r.completion)
                        for r in records if getattr(r, "desirable", True)][: cfg.model.sft.n_examples]
        models = load_models(cfg, sft_examples, corpus_id=cache.content_key("data-sft-corpus-v1", sft_examples))
    else:
        models = load_models(cfg)
    prepared_data = load_preference_data(
        cfg.data, models.tokenizer, max_length=cfg.train.max_length,
        max_prompt_length=cfg.train.max_prompt_length, seed=cfg.seed, logger=log)
    eval_prompts = list(dict.fromkeys(r.prompt for r in prepared_data.eval))[: cfg.eval.n_prompts]
    return LoadedData(models, prepared_data.train, prepared_data.eval, eval_prompts, prepared_data.drops)


def require_pairs_unless_kto(cfg, train_records: list) -> None:
    """Only KTO trains on unpaired examples; the data's format is known only once it is read."""
    if isinstance(train_records[0], UnpairedRecord) and cfg.method.name != "kto":
        raise ConfigError(f"method={cfg.method.name} needs paired data; data={cfg.data.name} is unpaired (use method=kto)")


def make_evaluator(cfg, loaded: LoadedData, builtin_task: bool) -> Evaluator:
    """The judge and the evaluator, with the held-out pairs' reference log-probs (cached) for pref accuracy."""
    models = loaded.models
    pref_eval = None
    paired_eval = [r for r in loaded.eval_records if isinstance(r, PreferenceRecord)][: cfg.eval.n_pref_pairs]
    if paired_eval:
        tokens = cached_tokenize_pairs(cfg, paired_eval, models.tokenizer, models.key)
        pref_eval = (tokens, reference_pair_logps(cfg, models, tokens))
    judge = make_judge(cfg, models, loaded.train_records)
    return Evaluator(cfg, models, judge, loaded.eval_prompts, pref_eval, builtin_task)


def prepare(cfg) -> Prepared:
    """Models, filtered data, evaluator (its reference side cached): the per-run set-up."""
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    builtin_task = cfg.data.source == "builtin"
    loaded = load_builtin_task(cfg) if builtin_task else load_data_set(cfg)
    require_pairs_unless_kto(cfg, loaded.train_records)
    evaluator = make_evaluator(cfg, loaded, builtin_task)
    return Prepared(loaded.models, loaded.train_records, loaded.eval_records, loaded.eval_prompts, dict(loaded.drops),
                    evaluator, builtin_task, {"setup_seconds": time.time() - t0})
