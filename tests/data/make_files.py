"""Test data the project makes itself (nothing downloaded): long multi-turn conversations in every
format alignbench reads, and files it must refuse with one clear line.

    python tests/data/make_files.py OUT_DIR                  # the small files of each format + the bad files
    python tests/data/make_files.py OUT_DIR --long-pairs 2300  # also hh_long_2300.jsonl (~2,300 pairs)

Conversations are drawn from a small grammar (topics x questions x follow-ups x answer sentences),
seeded, so the same call writes the same bytes. A conversation has 1 to 7 earlier exchanges, so
prompts run from a few dozen to several hundred tokens. The chosen reply is on topic and helpful;
the rejected one is curt, off topic, dismissive or a vaguer version of the chosen one, so a
reward model has something to learn and a preference method something to move.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

TOPICS = {
    "cooking": (["a risotto", "sourdough bread", "a vegetable curry", "pancakes", "a roast chicken", "lentil soup"],
                ["Stir it often and keep the heat at medium so it does not stick.",
                 "Taste as you go and add salt in small amounts.",
                 "Let the dough rest for at least an hour at room temperature.",
                 "Use a heavy pan, it spreads the heat evenly.",
                 "Toast the spices in a little oil first to bring out their flavour.",
                 "A splash of lemon juice at the end brightens the whole dish."]),
    "gardening": (["tomatoes", "a small herb garden", "roses", "a lawn", "potatoes in bags", "strawberries"],
                  ["Water deeply twice a week rather than a little every day.",
                   "Most vegetables want six or more hours of direct sun.",
                   "Mulch keeps the soil moist and the weeds down.",
                   "Feed them with a balanced fertiliser once a month in summer.",
                   "Pinch off the side shoots so the plant puts its energy into fruit.",
                   "Check the leaves for aphids and wash them off with soapy water."]),
    "travel": (["a week in Portugal", "a train trip across Italy", "a weekend in Edinburgh", "a visit to Kyoto",
                "a road trip in Norway", "a cheap trip to Mexico City"],
               ["Book the long train legs a few weeks ahead, prices rise close to the date.",
                "Carry a small amount of local cash for markets and buses.",
                "Pack light, one carry-on bag makes every transfer easier.",
                "Museums are often free on the first Sunday of the month.",
                "Stay near a main station so day trips are simple.",
                "Check whether you need a visa well before you fly."]),
    "fitness": (["running a first 5k", "building strength at home", "stretching after work", "swimming laps",
                 "cycling to work", "getting back into exercise after an injury"],
                ["Start with three short sessions a week and add ten percent each week.",
                 "Warm up for five minutes before you push the pace.",
                 "Rest days are when the muscles actually adapt, so keep them.",
                 "Bodyweight squats, push-ups and rows cover most of the body.",
                 "Keep most runs easy enough that you could hold a conversation.",
                 "If something hurts sharply, stop and let it recover before trying again."]),
    "money": (["saving for a house", "paying off a credit card", "starting a budget", "an emergency fund",
               "investing for retirement", "cutting monthly bills"],
              ["Write down every expense for one month before you change anything.",
               "Pay the card with the highest interest rate first.",
               "Aim for three to six months of expenses in an easy-access account.",
               "Set up an automatic transfer on payday so saving happens first.",
               "Low-cost index funds spread the risk across many companies.",
               "Call your providers once a year and ask for a better rate."]),
    "home repair": (["a dripping tap", "a squeaky door", "a hole in the plaster", "a running toilet",
                     "a sticking window", "peeling paint in the bathroom"],
                    ["Turn off the water supply under the sink before you open anything.",
                     "A new washer usually costs very little and fixes most drips.",
                     "Fill the hole with filler, let it dry, then sand it smooth.",
                     "A few drops of oil on the hinge pin stops most squeaks.",
                     "Clean the surface and let it dry fully before you repaint.",
                     "Take a photo before you take it apart so you know how it goes back."]),
    "pets": (["a new puppy", "an older cat", "a rabbit", "a dog that pulls on the lead", "a shy rescue dog",
              "a cat that scratches the sofa"],
             ["Short training sessions of five minutes work better than long ones.",
              "Reward the behaviour you want the moment it happens.",
              "Give them a quiet place of their own to retreat to.",
              "A scratching post next to the sofa gives the cat a better option.",
              "Keep a regular routine for meals and walks.",
              "Ask the vet about diet as they get older."]),
    "programming": (["learning Python", "a slow database query", "writing unit tests", "a memory leak",
                     "choosing a first web framework", "reading other people's code"],
                    ["Start with a small project you actually want to finish.",
                     "Measure first, the slow part is rarely where you expect.",
                     "Write one test for each bug you fix so it never comes back.",
                     "Add an index on the column you filter by.",
                     "Read the tests first, they show how the code is meant to be used.",
                     "Keep functions short and give them names that say what they do."]),
    "sleep": (["falling asleep faster", "waking up at night", "a new baby's sleep", "jet lag",
               "napping during the day", "a noisy bedroom"],
              ["Go to bed and get up at the same time every day, weekends included.",
               "Keep the bedroom cool, dark and quiet.",
               "Stop screens about an hour before bed.",
               "Avoid caffeine after lunch.",
               "If you cannot sleep after twenty minutes, get up and read until you are drowsy.",
               "Get daylight in the morning to set your body clock."]),
    "job interviews": (["a first job interview", "a salary negotiation", "a video interview",
                        "explaining a gap in my CV", "a technical interview", "asking for a promotion"],
                       ["Prepare three short stories about problems you solved and what you learned.",
                        "Research the company and mention something specific about their work.",
                        "Practise your answers out loud, not just in your head.",
                        "Ask them a thoughtful question at the end.",
                        "Know the market rate for the role before you name a number.",
                        "Be honest and brief about the gap, then move to what you did."]),
}

ASKS = ["Can you help me with {x}?", "I need some advice about {x}.", "What should I know about {x}?",
        "How do I get started with {x}?", "I have been struggling with {x}. Any ideas?",
        "My friend recommended I ask someone about {x}. Where do I begin?"]
FOLLOW_UPS = ["That makes sense. What is the most common mistake people make?",
              "Okay, and how long does it usually take before I see results?",
              "What if I only have about an hour a week for it?", "Is there anything I should buy first?",
              "I tried something like that before and it did not work. Why might that be?",
              "Could you explain that last part in a bit more detail?",
              "Is that also true for beginners, or only for people with experience?",
              "My partner thinks it is a waste of time. How would you convince them?",
              "What would you do differently if you were starting today?",
              "Are there any good rules of thumb to remember?"]
DETAILS = ["I am on a tight budget.", "I live in a small flat in the city.", "I have two kids at home.",
           "I work long shifts at a hospital.", "I am completely new to this.", "I tried a few times last year.",
           "I would like to keep things simple.", "I get bored quickly if I do not see progress."]
CURT = ["I don't know.", "Look it up.", "No idea, sorry.", "That is not something I can help with.",
        "Why would you want to do that?", "Just figure it out yourself."]
OPENERS = ["Good question.", "Happy to help.", "Sure.", "That is a common worry.", "Here is what usually works."]


def _answer(rng: random.Random, tips: list[str], n: int) -> str:
    return " ".join([rng.choice(OPENERS)] + rng.sample(tips, n))


def _rejected(rng: random.Random, topic: str, chosen_tips: list[str]) -> str:
    style = rng.randrange(4)
    if style == 0:
        return rng.choice(CURT)
    if style == 1:  # off topic: advice from another topic
        other = rng.choice([t for t in TOPICS if t != topic])
        return " ".join(rng.sample(TOPICS[other][1], 2))
    if style == 2:
        return "I guess you could try something. " + rng.choice(CURT) + " It depends."
    return "Maybe. " + chosen_tips[0].split(",")[0].rstrip(".") + ", or not. Hard to say."


def conversation(rng: random.Random) -> tuple[list[dict], str, str]:
    """(earlier messages ending in a user turn, chosen reply, rejected reply) of one conversation."""
    topic = rng.choice(list(TOPICS))
    subjects, tips = TOPICS[topic]
    subject = rng.choice(subjects)
    first = rng.choice(ASKS).format(x=subject) + " " + " ".join(rng.sample(DETAILS, rng.randint(0, 2)))
    messages = [{"role": "user", "content": first.strip()}]
    for question in rng.sample(FOLLOW_UPS, rng.randint(0, 7)):
        messages.append({"role": "assistant", "content": _answer(rng, tips, rng.randint(2, 4))})
        messages.append({"role": "user", "content": question})
    chosen_tips = rng.sample(tips, rng.randint(2, 3))
    chosen = " ".join([rng.choice(OPENERS)] + chosen_tips)
    return messages, chosen, _rejected(rng, topic, chosen_tips)


def hh_transcript(messages: list[dict], reply: str) -> str:
    turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)
    return f"{turns}\n\nAssistant: {reply}"


def hh_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(f"hh-{seed}")
    rows = []
    for _ in range(n):
        messages, chosen, rejected = conversation(rng)
        rows.append({"chosen": hh_transcript(messages, chosen), "rejected": hh_transcript(messages, rejected)})
    return rows


def chat_rows(n: int, seed: int) -> list[dict]:
    """UltraFeedback-binarized style: whole conversations as message lists, plus prompt and scores."""
    rng = random.Random(f"chat-{seed}")
    rows = []
    for i in range(n):
        messages, chosen, rejected = conversation(rng)
        rows.append({"prompt": messages[0]["content"], "prompt_id": f"{i:06d}",
                     "chosen": messages + [{"role": "assistant", "content": chosen}],
                     "rejected": messages + [{"role": "assistant", "content": rejected}],
                     "score_chosen": float(rng.randint(7, 10)), "score_rejected": float(rng.randint(1, 6))})
    return rows


def pair_rows(n: int, seed: int) -> list[dict]:
    """prompt / chosen / rejected strings; the prompt is the conversation in hh's rendering."""
    rng = random.Random(f"pairs-{seed}")
    rows = []
    for _ in range(n):
        messages, chosen, rejected = conversation(rng)
        prompt = hh_transcript(messages, "").rstrip()
        rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return rows


def kto_rows(n: int, seed: int) -> list[dict]:
    """TRL's unpaired format: prompt, completion, label (about as many desirable as not)."""
    rng = random.Random(f"kto-{seed}")
    rows = []
    for _ in range(n):
        messages, chosen, rejected = conversation(rng)
        prompt = hh_transcript(messages, "").rstrip()
        good = rng.random() < 0.5
        rows.append({"prompt": prompt, "completion": " " + (chosen if good else rejected), "label": good})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_format_files(out: Path, n: int = 120, seed: int = 0) -> dict[str, Path]:
    """One small file per supported format: {name: path}."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    files = {"hh": write_jsonl(out / "hh_long.jsonl", hh_rows(n, seed)),
             "chat": write_jsonl(out / "chat_ultrafeedback.jsonl", chat_rows(n, seed)),
             "kto": write_jsonl(out / "kto_unpaired.jsonl", kto_rows(2 * n, seed)),
             "csv": out / "pairs.csv", "parquet": out / "chat.parquet"}
    pd.DataFrame(pair_rows(n, seed)).to_csv(files["csv"], index=False)
    pd.DataFrame(chat_rows(n, seed + 1)).to_parquet(files["parquet"])
    return files


def write_bad_files(out: Path) -> dict[str, Path]:
    """Files alignbench must refuse with one line: {what is wrong: path}."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    good = "".join(json.dumps(r) + "\n" for r in pair_rows(5, 0))
    files = {"latin-1": out / "latin1.jsonl", "binary": out / "binary.jsonl", "gzip": out / "gzipped.jsonl",
             "json array": out / "array.jsonl", "parquet schema": out / "wrong_schema.parquet"}
    latin = good + json.dumps({"prompt": "Caf\u00e9 review:", "chosen": " Tr\u00e8s bon.", "rejected": " Bof."},
                              ensure_ascii=False) + "\n"
    files["latin-1"].write_bytes(latin.encode("latin-1"))
    noise = random.Random(0)
    files["binary"].write_bytes(bytes(noise.randrange(256) for _ in range(4096)))
    files["gzip"].write_bytes(gzip.compress(good.encode(), mtime=0))
    files["json array"].write_text(json.dumps(pair_rows(5, 0), indent=2), encoding="utf-8")
    pd.DataFrame({"question": ["a", "b"], "answer": ["c", "d"]}).to_parquet(files["parquet schema"])
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--long-pairs", type=int, default=0, help="also write hh_long_<N>.jsonl with N pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in [*write_format_files(args.out, seed=args.seed).values(), *write_bad_files(args.out).values()]:
        print(path)
    if args.long_pairs:
        print(write_jsonl(args.out / f"hh_long_{args.long_pairs}.jsonl", hh_rows(args.long_pairs, args.seed + 100)))


if __name__ == "__main__":
    main()
