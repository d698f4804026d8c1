"""The built-in task's preference pairs: two samples of the SFT model per prompt, labelled by a
Bradley-Terry draw on the gold reward, cached on disk under everything that determines them.

Training pairs are drawn on train prompts; the held-out pairs behind `eval/pref_accuracy` on
validation prompts. Both are keyed on `task_seed`, so every training seed sees the same pairs."""

from __future__ import annotations

import json
import random

from alignbench import cache
from alignbench.data import builtin_task as task
from alignbench.data.parsing import chat_prompts
from alignbench.data.records import PreferenceRecord
from alignbench.models.generation import sample


def builtin_pairs(cfg, models, split: str, n: int) -> list[PreferenceRecord]:
    """n preference pairs on `split`'s prompts: two SFT samples per prompt, Bradley-Terry labelled."""
    d, task_seed = cfg.data, cfg.task_seed
    key = cache.content_key("builtin-pairs-v3", models.key, split, n, d.bt_temperature, d.sample_max_new_tokens,
                            task_seed, cfg.train.max_prompt_length)

    def write(path):
        prompts = chat_prompts(task.make_prompts(n, task_seed, split), models.tokenizer)  # a chat model: its template
        with models.reference_model() as sft:
            kw = dict(max_new_tokens=d.sample_max_new_tokens, temperature=1.0,
                      max_prompt_length=cfg.train.max_prompt_length, batch_size=256, device=models.device)
            a = sample(sft, models.tokenizer, prompts, seed=task_seed * 2 + 1, **kw).responses
            b = sample(sft, models.tokenizer, prompts, seed=task_seed * 2 + 2, **kw).responses
        rng = random.Random(f"bt-{split}-{task_seed}")
        rows = []
        for p, ra, rb in zip(prompts, a, b):
            a_wins = task.bradley_terry_label(task.gold_reward(p, ra), task.gold_reward(p, rb), d.bt_temperature, rng)
            rows.append({"prompt": p, "chosen": ra if a_wins else rb, "rejected": rb if a_wins else ra})
        (path / "pairs.json").write_text(json.dumps(rows))

    def read(path):
        return [PreferenceRecord(**r) for r in json.loads((path / "pairs.json").read_text())]
    return cache.load_cached(cfg.cache_dir, "builtin_pairs", key, write, read)[0]
