"""What the models stage reads of a run's config, as frozen dataclasses built once per run by
`training/settings.py` (`model_settings`, `load_settings`): the built-in model's sizes, a hub model's
source, the SFT stage, LoRA, and the run's device, precision and lengths.

The values come from the composed config (conf/model/*.yaml and the command line); nothing here
sets a default. Fields that a model config may leave out (`revision`, `sft.max_epochs`) are None
when absent. The SFT cache keys hash the config blocks as they were composed (`config_json`), so a
key is the same whether a run builds it from these records or from the config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class TinySizes:
    """The built-in Llama's sizes (conf/model/tiny.yaml)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    context_length: int  # positions the model holds: prompt + response


@dataclass(frozen=True)
class SFTSettings:
    """The SFT stage (`model.sft`): on the task corpus (built-in model) or the preferred responses."""

    enabled: bool
    steps: int
    batch_size: int
    lr: float
    n_examples: int
    max_epochs: float | None  # at most this many passes over the corpus; None: `steps` whatever the corpus
    config_json: str  # the block as composed: what the hub SFT cache key hashes


@dataclass(frozen=True)
class LoRASettings:
    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]


@dataclass(frozen=True)
class GGUFFile:
    """A GGUF file inside an installed package (`model.gguf`), found with find_spec, never imported."""

    package: str
    file: str
    install: str  # the command a missing or broken file's error names


@dataclass(frozen=True)
class ModelSettings:
    """One `model=` config: the built-in model (`tiny` set) or a hub model (`path` or `gguf` set)."""

    name: str
    source: str  # builtin | hub
    path: str | None
    revision: str | None
    trust_remote_code: bool
    sft: SFTSettings
    lora: LoRASettings | None  # None: full fine-tuning and a frozen copy as the reference
    tiny: TinySizes | None = None
    gguf: GGUFFile | None = None
    config_json: str = "{}"  # the whole block as composed: what the built-in SFT cache key hashes

    def config(self) -> dict:
        return json.loads(self.config_json)


@dataclass(frozen=True)
class LoadSettings:
    """Everything `load_models` reads: the model, where and at what precision it runs, the lengths
    the SFT stage and the context check need, and the cache."""

    model: ModelSettings
    device: str  # auto | cpu | cuda
    precision: str  # auto | fp32 | bf16
    task_seed: int  # seeds the built-in model's weights and the SFT stage
    max_length: int
    max_prompt_length: int
    long_prompts: str  # drop | truncate_left (the SFT stage's prompts too)
    eval_max_new_tokens: int  # a prompt plus a sampled reply must fit the model's context
    padding_free: bool
    share_prompt: bool  # score a pair's two sides in one row holding the prompt once (`models.pairs`)
    cache_dir: str
