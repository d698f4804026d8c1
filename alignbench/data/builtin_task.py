"""The built-in task: short reviews on eight topics with a known, several-sided gold reward.

In the spirit of the DPO paper's IMDb experiment (the ground-truth reward is known, so the
reward-vs-KL frontier is computable), but harder to saturate: the gold reward wants positive
sentiment *and* staying on the prompt's topic *and* fluent, non-repetitive text *and* a
reasonable length. A policy that only learns "say nice words" drifts off topic or repeats
itself and gains little; a learned reward model that mostly picked up sentiment can be
over-optimised (its score rises while the gold reward stalls), which is what RLHF does.

The prompt space (8 openers x 40 subjects = 320 strings) is split into three disjoint sets by
construction (`prompt_split`): train (192), validation (64) and test (64). Every opener and every
subject appears in training, but no validation or test string does, so the evaluation measures
generalisation to unseen prompts, never recall of training prompts.

Everything here is pure Python and deterministic given a seed. See docs/builtin_task.md.
"""

from __future__ import annotations

import functools
import math
import random
import re

TOPICS: dict[str, dict[str, list[str]]] = {
    "food": {
        "subjects": ["the pizza place", "the noodle bar", "the bakery", "the new cafe", "the taco stand"],
        "words": ["pizza", "pasta", "sauce", "cheese", "chef", "menu", "flavor", "dessert", "bread", "soup", "spices", "coffee"],
    },
    "movie": {
        "subjects": ["the new film", "the thriller", "the comedy", "the animated movie", "the documentary"],
        "words": ["plot", "actors", "scenes", "director", "script", "ending", "soundtrack", "camera", "cast", "story", "dialogue", "effects"],
    },
    "hotel": {
        "subjects": ["the hotel", "the beach resort", "the guest house", "the hostel", "the mountain lodge"],
        "words": ["room", "bed", "staff", "lobby", "pool", "view", "breakfast", "shower", "balcony", "reception", "pillows", "checkin"],
    },
    "phone": {
        "subjects": ["the new phone", "the smartphone", "the budget phone", "the flip phone", "the tablet"],
        "words": ["screen", "battery", "camera", "apps", "charger", "speaker", "buttons", "case", "signal", "storage", "display", "keyboard"],
    },
    "music": {
        "subjects": ["the concert", "the new album", "the jazz club", "the festival", "the opera"],
        "words": ["songs", "band", "singer", "drums", "guitar", "lyrics", "melody", "crowd", "stage", "rhythm", "chorus", "vocals"],
    },
    "travel": {
        "subjects": ["the train trip", "the flight", "the road trip", "the city tour", "the cruise"],
        "words": ["journey", "guide", "tickets", "route", "seats", "luggage", "station", "schedule", "views", "map", "driver", "harbor"],
    },
    "book": {
        "subjects": ["the novel", "the biography", "the poetry book", "the cookbook", "the mystery book"],
        "words": ["chapters", "author", "pages", "characters", "prose", "cover", "narrator", "plot", "writing", "poems", "recipes", "twist"],
    },
    "sport": {
        "subjects": ["the football match", "the tennis final", "the marathon", "the basketball game", "the swim meet"],
        "words": ["team", "players", "coach", "score", "goal", "fans", "referee", "stadium", "match", "race", "defense", "tactics"],
    },
}

POSITIVE = ["great", "wonderful", "delightful", "superb", "lovely", "excellent", "amazing", "charming",
            "brilliant", "pleasant", "fantastic", "perfect", "friendly", "fresh", "beautiful", "memorable"]
NEGATIVE = ["awful", "terrible", "boring", "bland", "dull", "poor", "rude", "broken",
            "disappointing", "messy", "noisy", "slow", "cheap", "horrible", "weak", "annoying"]
NEUTRAL_ADJ = ["okay", "average", "usual", "typical", "simple", "normal", "standard", "plain"]
FUNCTION = ["the", "a", "was", "is", "and", "but", "very", "really", "quite", "it", "this", "i",
            "we", "felt", "seemed", "were", "overall", "also", "too", "with", "of", "my"]
OPENERS = ["Write a review of", "Tell me about", "What did you think of", "Describe", "Give your opinion on",
           "Share your thoughts on", "Write a few words about", "What was your experience with"]

_POS, _NEG = set(POSITIVE), set(NEGATIVE)
_TOPIC_OF: dict[str, set[str]] = {}
for _topic, _spec in TOPICS.items():
    for _w in _spec["words"]:
        _TOPIC_OF.setdefault(_w, set()).add(_topic)
VOCAB = set(POSITIVE) | set(NEGATIVE) | set(NEUTRAL_ADJ) | set(FUNCTION) | set(_TOPIC_OF)
_SUBJECT_TOPIC = {s: t for t, spec in TOPICS.items() for s in spec["subjects"]}
TARGET_WORDS = 14  # the length term is 0 here and falls off on both sides

# Weights of the gold reward's parts; each part is roughly in [-1, 1].
WEIGHTS = {"sentiment": 1.0, "topic": 1.0, "fluency": 1.0, "length": 0.5}


SPLITS = ("train", "validation", "test")
SUBJECTS = [s for topic in sorted(TOPICS) for s in TOPICS[topic]["subjects"]]  # 5 per topic


def prompt_split(opener_index: int, subject_index: int) -> str:
    """The set of one (opener, subject) combination: residues 0-2 of (i + j) mod 5 train, 3
    validation, 4 test. Any 5 consecutive openers or subjects cover every residue, so each
    opener and each subject occurs in all three sets."""
    residue = (opener_index + subject_index) % 5
    return "train" if residue < 3 else "validation" if residue == 3 else "test"


def split_prompts(split: str, openers: list[str] = OPENERS, subjects: list[str] = SUBJECTS) -> list[str]:
    """All distinct prompts of one split, in a fixed order (opener-major); another task's openers and
    subjects split by the same rule."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    return [f"{opener} {subject}.\n" for i, opener in enumerate(openers) for j, subject in enumerate(subjects)
            if prompt_split(i, j) == split]


def draw_prompts(pool: list[str], n: int, rng_key: str) -> list[str]:
    """n prompts drawn uniformly (with replacement) from `pool`, seeded by `rng_key`."""
    rng = random.Random(rng_key)
    return [rng.choice(pool) for _ in range(n)]


def first_prompts(pool: list[str], n: int, rng_key: str) -> list[str]:
    """Up to n distinct prompts of `pool` in an order seeded by `rng_key` (all of them if fewer exist)."""
    pool = list(pool)
    random.Random(rng_key).shuffle(pool)
    return pool[:n]


def make_prompts(n: int, seed: int, split: str = "train") -> list[str]:
    """n prompts drawn uniformly (with replacement) from one split's prompts."""
    return draw_prompts(split_prompts(split), n, f"prompts-{split}-{seed}")


def eval_prompts(split: str, n: int, seed: int) -> list[str]:
    """Up to n distinct prompts of a held-out split, in a seeded order (all of them if fewer exist)."""
    return first_prompts(split_prompts(split), n, f"eval-prompts-{split}-{seed}")


def prompt_topic(prompt: str) -> str | None:
    for subject, topic in _SUBJECT_TOPIC.items():
        if subject in prompt:
            return topic
    return None


def _sentence(rng: random.Random, topic: str) -> list[str]:
    """One clause in the SFT style: mixed sentiment, sometimes off topic, sometimes clumsy."""
    if rng.random() < 0.7:
        noun = rng.choice(TOPICS[topic]["words"])
    else:  # wander to another topic, as noisy human text does
        noun = rng.choice(TOPICS[rng.choice(sorted(TOPICS))]["words"])
    mood = rng.random()
    adj = rng.choice(POSITIVE if mood < 0.35 else NEGATIVE if mood < 0.7 else NEUTRAL_ADJ)
    pattern = rng.randrange(5)
    if pattern == 0:
        words = ["the", noun, rng.choice(["was", "is", "seemed"]), adj]
    elif pattern == 1:
        words = [rng.choice(["i", "we"]), "felt", "the", noun, "was", rng.choice(["very", "really", "quite"]), adj]
    elif pattern == 2:
        words = ["a", adj, noun, "and", "a", rng.choice(POSITIVE + NEGATIVE + NEUTRAL_ADJ), rng.choice(TOPICS[topic]["words"])]
    elif pattern == 3:
        words = ["overall", "it", "was", adj]
    else:
        words = ["the", noun, "was", adj, "but", "the", rng.choice(TOPICS[topic]["words"]), "was", rng.choice(POSITIVE + NEGATIVE)]
    if rng.random() < 0.1:  # clumsy repetition, which the gold reward dislikes
        words.insert(rng.randrange(len(words)), words[rng.randrange(len(words))])
    return words


def sft_response(prompt: str, rng: random.Random) -> str:
    topic = prompt_topic(prompt) or rng.choice(sorted(TOPICS))
    clauses = [" ".join(_sentence(rng, topic)) for _ in range(rng.choice([1, 2, 2, 3, 3, 4]))]
    return ". ".join(clauses) + "."


def sft_prompts(n: int, seed: int) -> list[str]:
    """The SFT corpus's prompts (train split only), drawn on their own stream so they can be
    listed without writing the responses (and apart from the preference pairs' prompts)."""
    return list(_drawn_sft_prompts(n, seed))


@functools.lru_cache(maxsize=8)  # every trial counts the held-out prompts SFT saw: drawn once per process
def _drawn_sft_prompts(n: int, seed: int) -> tuple[str, ...]:
    pool = split_prompts("train")
    rng = random.Random(f"sft-prompts-{seed}")
    return tuple(rng.choice(pool) for _ in range(n))


def sft_corpus(n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs for supervised fine-tuning of the built-in model, on train prompts."""
    rng = random.Random(f"sft-{seed}")
    return [(prompt, sft_response(prompt, rng)) for prompt in sft_prompts(n, seed)]


_WORD = re.compile(r"[a-z]+|[^a-z\s]")


def gold_reward_parts(prompt: str, response: str) -> dict[str, float]:
    """The gold reward's parts (each about [-1, 1]) for any prompt/response text."""
    tokens = _WORD.findall(response.lower())
    words = [t for t in tokens if t.isalpha()]
    n = len(words)
    if n == 0:
        return {"sentiment": -1.0, "topic": -1.0, "fluency": -1.0, "length": -1.0}
    topic = prompt_topic(prompt)
    pos = sum(w in _POS for w in words)
    neg = sum(w in _NEG for w in words)
    # Saturating sentiment: the third positive word is worth far less than the first.
    sentiment = math.tanh(0.6 * (pos - neg))
    on = sum(topic in _TOPIC_OF.get(w, ()) for w in words)
    off = sum(bool(_TOPIC_OF.get(w)) and topic not in _TOPIC_OF[w] for w in words)
    topic_score = math.tanh(0.7 * on) - math.tanh(0.7 * off) if topic else 0.0
    unknown = sum(w not in VOCAB for w in words) + sum(not t.isalpha() and t != "." for t in tokens)
    repeats = sum(a == b for a, b in zip(words, words[1:]))
    overused = sum(max(0, words.count(w) - 2) for w in set(words) if w not in FUNCTION)
    fluency = 1.0 - 2.0 * (unknown + repeats + overused) / n
    length = max(-1.0, 1.0 - abs(n - TARGET_WORDS) / TARGET_WORDS)
    return {"sentiment": sentiment, "topic": topic_score, "fluency": max(-1.0, fluency), "length": length}


def gold_reward(prompt: str, response: str) -> float:
    parts = gold_reward_parts(prompt, response)
    return sum(WEIGHTS[k] * v for k, v in parts.items())


def bradley_terry_label(reward_a: float, reward_b: float, temperature: float, rng: random.Random) -> bool:
    """True when a is preferred: a draw with P(a > b) = sigmoid((r_a - r_b) / temperature)."""
    p_a = 1.0 / (1.0 + math.exp(-(reward_a - reward_b) / temperature))
    return rng.random() < p_a
