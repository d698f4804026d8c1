"""The sentiment task (`data=sentiment`): real English prompts and a programmatic gold reward on real
text, as in the DPO paper's controlled experiment (Rafailov et al. 2023, section 6.1): the gold reward
is positive sentiment, so a method's gold reward can be plotted against its KL from the reference.

Prompts: 10 openers x 32 everyday subjects (320 strings, some of them occasions people complain
about), split into train (192), validation (64) and test (64) by the built-in task's residue rule
(`builtin_task.prompt_split`), so every opener and subject is trained on and no held-out string is.

The gold reward (`gold_reward`) is VADER's compound sentiment score (Hutto & Gilbert 2014; the
`vaderSentiment` package ships its lexicon, so it runs offline) in [-1, 1], scaled by a quality
factor q in [0, 1] that guards against the cheap ways to look positive:

    gold = q * (1 + compound) - 1          (in [-1, 1]; q = 0 gives -1, the worst score)

    q = min(1, words / 6)                    a one-word "Great!" is not a reply
      * min(1, 2 * distinct / words)         "great great great great" repeats itself
      * min(1, 5 * function_words / words)   English has function words; a bag of adjectives or
                                             non-English junk has none
      * ascii_letters / letters              scripts VADER cannot read

Because d gold / d q = 1 + compound >= 0, a guard can only lower a reply's score, never lift a
negative reply towards 0. It can still be gamed: it has no notion of the prompt, so an off-topic
gushing reply ("I love it, it is the best day of my life") beats a fair on-topic one, and a reply
that strings distinct positive words together with "and the" passes every guard
(`tests/test_sentiment_task.py` pins both; docs/sentiment_task.md).
"""

from __future__ import annotations

import functools
import random
import re

from alignbench.data import builtin_task
from alignbench.data.builtin_task import SPLITS  # noqa: F401  (the splits the task shares)
from alignbench.data.records import DataError

OPENERS = ["Write a short review of", "Tell me what you thought of", "Describe your experience with",
           "Write two sentences about", "Give your honest opinion of", "Write a short story about",
           "Share your thoughts on", "Write a diary entry about", "Write a message to a friend about",
           "Describe"]
SUBJECTS = ["the hotel you stayed in last summer", "a rainy Monday morning", "the traffic on your way to work",
            "your first day at a new job", "the dentist appointment", "the delayed flight",
            "the old bookshop on the corner", "the neighbours' loud party", "your new phone", "the school play",
            "the camping trip", "a long train ride", "the cooking class", "the final exam",
            "the broken washing machine", "the city park", "the football match", "the museum visit",
            "the jazz concert", "moving house", "the job interview", "the hospital waiting room",
            "the winter storm", "the family dinner", "the online course", "the budget airline",
            "the noisy cafe", "the hiking trail", "the power cut", "the birthday party",
            "the used car you bought", "the customer service call"]

MIN_WORDS = 6  # below this a reply is cut short, however nice its words
# English's commonest function words: real sentences are full of them, word salad and junk are not.
FUNCTION_WORDS = frozenset(
    "the a an and or but of to in on at for with from by as is are was were be been am it its this that "
    "these those i me my we our you your he she his her they them their there here not no so very too "
    "had has have do did does will would can could just all".split())
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def split_prompts(split: str) -> list[str]:
    """All distinct prompts of one split, in a fixed order (opener-major), split as the built-in task's."""
    return builtin_task.split_prompts(split, OPENERS, SUBJECTS)


def make_prompts(n: int, seed: int, split: str = "train") -> list[str]:
    """n prompts drawn uniformly (with replacement) from one split's prompts."""
    pool = split_prompts(split)
    if not pool:
        raise DataError(f"data=sentiment: no {split} prompts")
    return builtin_task.draw_prompts(pool, n, f"sentiment-prompts-{split}-{seed}")


def eval_prompts(split: str, n: int, seed: int) -> list[str]:
    """Up to n distinct prompts of a held-out split, in a seeded order (all of them if fewer exist)."""
    return builtin_task.first_prompts(split_prompts(split), n, f"sentiment-eval-prompts-{split}-{seed}")


def sft_prompts(n: int, seed: int) -> list[str]:
    """The SFT corpus's prompts (train split only; the built-in tiny model needs an SFT stage)."""
    rng = random.Random(f"sentiment-sft-prompts-{seed}")
    pool = split_prompts("train")
    return [rng.choice(pool) for _ in range(n)]


_MOODS = ["great", "lovely", "fine", "okay", "boring", "awful", "terrible", "wonderful", "slow", "pleasant"]


def sft_corpus(n: int, seed: int) -> list[tuple[str, str]]:
    """Short English replies of mixed mood, for the built-in tiny model's SFT stage (a real model skips it)."""
    rng = random.Random(f"sentiment-sft-{seed}")
    corpus = []
    for prompt in sft_prompts(n, seed):
        clauses = [f"it was {rng.choice(_MOODS)}", f"the people were {rng.choice(_MOODS)}",
                   f"i felt {rng.choice(_MOODS)} and the day was {rng.choice(_MOODS)}"]
        corpus.append((prompt, ". ".join(rng.sample(clauses, rng.choice([1, 2, 3]))).capitalize() + "."))
    return corpus


@functools.lru_cache(maxsize=1)
def _analyzer():
    """VADER's analyser, built once (it reads its lexicon file); one line when the package is missing."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise DataError("data=sentiment: its gold reward needs the lexicon package vaderSentiment; install it with "
                        "`pip install vaderSentiment==3.3.2`") from None
    return SentimentIntensityAnalyzer()


def require_lexicon() -> None:
    """DataError (one line) unless vaderSentiment can be imported: checked before any model is loaded."""
    _analyzer()


def quality(response: str) -> float:
    """The guards' factor q in [0, 1] (module docstring): 0 for a reply with no words."""
    words = [w.lower() for w in _WORD.findall(response)]
    if not words:
        return 0.0
    n = len(words)
    letters = [c for c in response if c.isalpha()]
    ascii_share = sum(c.isascii() for c in letters) / len(letters)
    function_share = sum(w in FUNCTION_WORDS for w in words) / n
    return (min(1.0, n / MIN_WORDS) * min(1.0, 2 * len(set(words)) / n) * min(1.0, 5 * function_share)
            * ascii_share)


def sentiment(response: str) -> float:
    """VADER's compound score of the reply in [-1, 1] (0 for no text)."""
    return _analyzer().polarity_scores(response)["compound"] if response.strip() else 0.0


def gold_reward(prompt: str, response: str) -> float:
    """Positive sentiment under the guards: q * (1 + compound) - 1, in [-1, 1]. The prompt is unused
    (the reward cannot tell on-topic from off-topic: one of the ways it can be gamed)."""
    del prompt
    return quality(response) * (1.0 + sentiment(response)) - 1.0


def label_by_gold(prompts: list[str], first: list[str], second: list[str], min_gap: float
                  ) -> tuple[list[dict], int]:
    """Pairs labelled by the gold reward: the higher-scoring reply is chosen; a pair whose two
    replies' gold rewards differ by less than `min_gap` carries no reliable preference and is
    dropped. Returns the kept rows ({prompt, chosen, rejected}) and the number dropped."""
    rows, dropped = [], 0
    for p, a, b in zip(prompts, first, second):
        ga, gb = gold_reward(p, a), gold_reward(p, b)
        if abs(ga - gb) < min_gap:
            dropped += 1
            continue
        rows.append({"prompt": p, "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
    return rows, dropped
