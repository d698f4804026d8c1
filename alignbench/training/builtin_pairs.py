"""The built-in tasks' preference pairs: two samples of the starting model per prompt, labelled by
the task's gold reward, cached on disk under everything that determines them.

`data=builtin`: a Bradley-Terry draw on the gold reward (noisy, like human raters).
`data=sentiment`: the higher gold reward is chosen, and a pair whose gold gap is under
`data.min_gold_gap` is dropped and counted (`sentiment_task.label_by_gold`).

Training pairs are drawn on train prompts; the held-out pairs behind `eval/pref_accuracy` on
validation prompts. Both are keyed on `task_seed`, so every training seed sees the same pairs."""

from __future__ import annotations

import json
import random

from alignbench import cache
from alignbench.data import builtin_task, sentiment_task
from alignbench.data.parsing import chat_prompts
from alignbench.data.records import PreferenceRecord
from alignbench.models.generation import sample
from alignbench.training.settings import BuiltinTaskSettings


def task_module(task: str):
    """The module of a built-in task (`data.task`: its prompts, SFT corpus and gold reward)."""
    return sentiment_task if task == "sentiment" else builtin_task


def _two_samples(data: BuiltinTaskSettings, max_prompt_length: int, task_seed: int, models,
                 prompts: list[str]) -> tuple[list[str], list[str]]:
    with models.reference_model() as sft:
        kw = dict(max_new_tokens=data.sample_max_new_tokens, temperature=1.0,
                  max_prompt_length=max_prompt_length, batch_size=256, device=models.device)
        a = sample(sft, models.tokenizer, prompts, seed=task_seed * 2 + 1, **kw).responses
        b = sample(sft, models.tokenizer, prompts, seed=task_seed * 2 + 2, **kw).responses
    return a, b


def builtin_pairs(data: BuiltinTaskSettings, max_prompt_length: int, task_seed: int, cache_dir: str, models,
                  split: str, n: int) -> tuple[list[PreferenceRecord], int]:
    """Up to n preference pairs on `split`'s prompts, two samples per prompt, labelled by the task's
    gold reward; returns the pairs and how many were dropped for too small a gold gap (0 on data=builtin)."""
    task = task_module(data.task)
    if task is sentiment_task:
        key = cache.content_key("sentiment-pairs-v1", models.key, split, n, data.min_gold_gap,
                                data.sample_max_new_tokens, task_seed, max_prompt_length)
    else:
        key = cache.content_key("builtin-pairs-v3", models.key, split, n, data.bt_temperature,
                                data.sample_max_new_tokens, task_seed, max_prompt_length)

    def write(path):
        prompts = chat_prompts(task.make_prompts(n, task_seed, split), models.tokenizer)  # a chat model: its template
        a, b = _two_samples(data, max_prompt_length, task_seed, models, prompts)
        if task is sentiment_task:
            rows, dropped = sentiment_task.label_by_gold(prompts, a, b, data.min_gold_gap)
        else:
            rng, rows, dropped = random.Random(f"bt-{split}-{task_seed}"), [], 0
            for p, ra, rb in zip(prompts, a, b):
                a_wins = task.bradley_terry_label(task.gold_reward(p, ra), task.gold_reward(p, rb),
                                                  data.bt_temperature, rng)
                rows.append({"prompt": p, "chosen": ra if a_wins else rb, "rejected": rb if a_wins else ra})
        stored = {"rows": rows, "dropped": dropped} if task is sentiment_task else rows  # builtin-pairs-v3's format
        (path / "pairs.json").write_text(json.dumps(stored))

    def read(path):
        stored = json.loads((path / "pairs.json").read_text())
        if isinstance(stored, list):  # data=builtin: nothing is dropped
            stored = {"rows": stored, "dropped": 0}
        return [PreferenceRecord(**r) for r in stored["rows"]], int(stored["dropped"])
    return cache.load_cached(cache_dir, "builtin_pairs", key, write, read)[0]
