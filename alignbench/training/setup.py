"""A run's set-up before its first optimiser step: the models (SFT stage cached), the filtered
train / held-out data (split by prompt before anything is trained; keyed on task_seed), the
judge and the evaluator with its reference side cached, as `Prepared`."""

from __future__ import annotations

import logging
import random
import time
import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import torch

from alignbench import cache
from alignbench.config import ConfigError
from alignbench.data import sentiment_task
from alignbench.training.builtin_pairs import builtin_pairs, task_module
from alignbench.training.distributed import threads_per_process
from alignbench.data.parsing import chat_prompts
from alignbench.data.preparing import (distinct_prompts, load_preference_data, log_drops, read_split_rows,
                                       require_enough, sft_corpus)
from alignbench.data.records import DataError, PreferenceRecord, UnpairedRecord
from alignbench.evaluation.evaluator import Evaluator
from alignbench.evaluation.judges import GoldJudge, RewardModelJudge
from alignbench.evaluation.pairwise_judge import PairwiseJudge
from alignbench.methods import METHODS
from alignbench.models.loading import Models, load_models, pick_dtype
from alignbench.training.reference import cached_tokenize_pairs, reference_pair_logps
from alignbench.training.settings import JudgeSettings, RunSettings

log = logging.getLogger(__name__)


@dataclass
class LoadedData:
    """The models and the data split of one run, before the judge and evaluator exist.

    `eval_records`: held-out preference pairs on validation prompts (for eval/pref_accuracy);
    `eval_prompts`: the distinct prompts of `eval.split` the evaluator samples on;
    `prompts_seen_in_training`: distinct validation + test prompts that are also preference-training
    or SFT-corpus prompts, counted exactly (0 for any split alignbench makes)."""

    models: Models
    train_records: list
    eval_records: list
    eval_prompts: list[str]
    drops: dict
    prompts_seen_in_training: int = 0
    truncated: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class Prepared(LoadedData):
    """Everything a run needs before its first optimiser step: the loaded data and models, and the
    judge's evaluator built on them."""

    evaluator: Evaluator
    builtin_task: bool
    timings: dict = field(default_factory=dict)


def count_seen_in_training(held_out_prompts, training_prompts) -> int:
    return len(set(held_out_prompts) & set(training_prompts))


def make_judge(settings: RunSettings, models: Models, prepared_records=None):
    j: JudgeSettings = settings.judge
    if j.name == "gold":
        builtin = settings.data.builtin  # (`config.validate` allows the gold judge on a built-in task only)
        return GoldJudge(task_module(builtin.task if builtin else "builtin").gold_reward)
    if j.name == "llm_pairwise":
        return PairwiseJudge.from_pretrained(str(j.path), models.device,
                                             pick_dtype(settings.train.precision, models.device), j.gguf_file,
                                             j.trust_remote_code, batch_size=j.batch_size,
                                             max_prompt_tokens=j.max_prompt_tokens,
                                             max_response_tokens=j.max_response_tokens)
    if j.path == "trained":
        from alignbench.models.reward_model import load_or_train_reward_model

        if prepared_records and isinstance(prepared_records[0], UnpairedRecord):
            raise DataError(f"judge.path=trained fits a reward model on preference pairs; data={settings.data.name} "
                            "is unpaired (KTO rows): set judge.path to a sequence-classification model directory")
        return load_or_train_reward_model(settings.reward_model, models, prepared_records)
    return RewardModelJudge.from_pretrained(j.path, models.device, j.trust_remote_code, j.batch_size)


def load_builtin_task(settings: RunSettings) -> LoadedData:
    """The model (the built-in one SFT on the task's corpus, train prompts) and the task's pairs sampled
    from it: training pairs on train prompts, held-out pairs on validation prompts, all keyed on
    task_seed. `data=sentiment`'s pairs with too small a gold gap are dropped, counted and logged."""
    data, e = settings.data.builtin, settings.eval
    task = task_module(data.task)
    if task is sentiment_task:
        sentiment_task.require_lexicon()  # one line before any model is loaded
    n_sft, task_seed = settings.load.model.sft.n_examples, settings.train.task_seed
    sft_examples = lambda: task.sft_corpus(n_sft, task_seed)  # noqa: E731 (built on a miss only)
    corpus_id = (cache.content_key("task-sft-corpus-v2", n_sft, task_seed) if task is not sentiment_task
                 else cache.content_key("sentiment-sft-corpus-v1", n_sft, task_seed))
    models = load_models(settings.load, sft_examples, corpus_id=corpus_id)

    def pairs(split: str, n: int):
        return builtin_pairs(data, settings.limits.max_prompt_length, task_seed, settings.cache_dir, models, split, n)

    train_records, train_dropped = pairs("train", data.n_train_prompts)
    held_out_pairs, held_out_dropped = pairs("validation", data.n_eval_prompts)
    drops = {}
    if task is sentiment_task:
        drops = {"gold_gap_too_small": train_dropped, "held_out_gold_gap_too_small": held_out_dropped}
        log_drops(Counter(gold_gap_too_small=train_dropped), len(train_records) + train_dropped, log, "data/train")
        log_drops(Counter(gold_gap_too_small=held_out_dropped), len(held_out_pairs) + held_out_dropped, log,
                  "data/validation")
        require_enough(train_records, max(2, settings.train.batch_size), Counter(gold_gap_too_small=train_dropped))
    eval_prompts = chat_prompts(task.eval_prompts(e.split, e.n_prompts, task_seed), models.tokenizer)
    held_out = chat_prompts(task.split_prompts("validation") + task.split_prompts("test"), models.tokenizer)
    sft_prompts = chat_prompts(task.sft_prompts(n_sft, task_seed), models.tokenizer)
    seen = count_seen_in_training(held_out, distinct_prompts(train_records) + sft_prompts)
    return LoadedData(models, train_records, held_out_pairs, eval_prompts, drops, seen)


def load_data_set(settings: RunSettings) -> LoadedData:
    """A hub or local preference data set split by prompt first, then the model (the built-in one,
    or a hub model whose `model.sft.enabled`, SFT on the train rows' preferred responses), then
    each set parsed for that model."""
    task_seed, limits, model = settings.train.task_seed, settings.limits, settings.load.model
    split = settings.eval.split
    rows = read_split_rows(settings.data.source, task_seed, logger=log)
    corpus = []
    if model.source == "builtin" or model.sft.enabled:  # a hub model too when its config says SFT first
        # the preferred responses of the TRAIN rows, bounded like the preference data
        corpus = sft_corpus(rows, limits, model.sft.n_examples)
    models = load_models(settings.load, corpus, corpus_id=cache.content_key("data-sft-corpus-v3", corpus, limits))
    data = load_preference_data(rows, models.tokenizer, max_length=limits.max_length,
                                max_prompt_length=limits.max_prompt_length, long_prompts=limits.long_prompts,
                                logger=log)
    eval_prompts = distinct_prompts(data.held_out(split))
    random.Random(f"eval-prompts-{split}-{task_seed}").shuffle(eval_prompts)
    training = distinct_prompts(data.train) + [p for p, _ in corpus]
    seen = count_seen_in_training(distinct_prompts(data.validation + data.test), training)
    return LoadedData(models, data.train, data.validation, eval_prompts[: settings.eval.n_prompts], data.drops, seen,
                      dict(data.truncated))


def require_pairs_unless_kto(settings: RunSettings, train_records: list) -> None:
    """Only an unpaired method (KTO) trains on unpaired examples; the data's format is known only once it is read."""
    if isinstance(train_records[0], UnpairedRecord) and not settings.method.row.unpaired:
        unpaired = ", ".join(f"method={name}" for name, method in METHODS.items() if method.unpaired)
        raise ConfigError(f"method={settings.method.name} needs paired data; data={settings.data.name} is unpaired "
                          f"(use {unpaired})")


def make_evaluator(settings: RunSettings, loaded: LoadedData, builtin_task: bool) -> Evaluator:
    """The judge and the evaluator, with the held-out pairs' reference log-probs (cached) for pref accuracy."""
    models = loaded.models
    pref_eval = None
    paired_eval = [r for r in loaded.eval_records if isinstance(r, PreferenceRecord)][: settings.eval.n_pref_pairs]
    if paired_eval:
        tokens = cached_tokenize_pairs(paired_eval, models.tokenizer, models.key, settings.limits, settings.cache_dir)
        pref_eval = (tokens, reference_pair_logps(models, tokens, settings.evaluator.batch_size, settings.cache_dir))
    judge = make_judge(settings, models, loaded.train_records)
    gold_reward = task_module(settings.data.builtin.task).gold_reward if builtin_task else None
    return Evaluator(settings.evaluator, models, judge, loaded.eval_prompts, pref_eval, builtin_task,
                     loaded.prompts_seen_in_training, held_out_pairs=paired_eval,
                     gold_reward=gold_reward)


def prepare(settings: RunSettings) -> Prepared:
    """Models, filtered data, evaluator (its reference side cached): the per-run set-up."""
    t0 = time.time()
    torch.manual_seed(settings.train.seed)
    threads = threads_per_process(settings.train.threads)  # the trial's threads, shared by its processes
    if threads:
        torch.set_num_threads(threads)
    builtin_task = settings.data.builtin is not None
    loaded = load_builtin_task(settings) if builtin_task else load_data_set(settings)
    require_pairs_unless_kto(settings, loaded.train_records)
    evaluator = make_evaluator(settings, loaded, builtin_task)
    return Prepared(**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(LoadedData)},
                    evaluator=evaluator, builtin_task=builtin_task, timings={"setup_seconds": time.time() - t0})
