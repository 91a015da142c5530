"""Long chats, made up here: does routing among a user's messages still find a fact as their history grows,
and what does a user get when they ask about something they never said?

The held-out chats of the harness have 8 messages (4 of the user's), and that is all diagnostic 13 measured;
the service keeps up to 128 of a user's messages as routes. This builds users whose messages are small talk
written here (FILLER: no personal facts) with a few facts stated among them, as the data's builders state them
(hyperadapter.data.facts: the *validation* part of each value pool, never trained on), and asks about them at
several history lengths: the same user, facts and questions, more small talk. It is synthetic, made to probe
this one question, not the harness's held-out data: its numbers say how routing scales, not how well the
service recalls real users' facts.

Per user and length, as the service makes them (generate_served, the service's settings): the chat's one adapter
(`conversation_max_routes` 0) and its routed messages; each question decoded greedily with the chats' served
penalties, 32 new tokens, the question alone in the prompt. For questions about facts the user stated: recall
(the value in the reply, as the harness scores chats) and how often the route is the message that states it.
For questions about facts the user never stated: how many replies loop, and how many name another of the
user's facts (an answer taken from the wrong message), beside the base model's replies.
  python diagnostics/long_chats.py [--users 16] [--lengths 8,32,128] [--facts 4] [--unstated 2] [--embed]

Reading for a fix (`--compare-stop-words`), written on 2026-12-05 before it was built: a chat question's word keys
include "my" and "i" (routed.STOP_WORDS was chosen for documents' questions), so "What is my job?" goes to whichever
message says "my", not to "I work as a florist" (cosine 0.45 against 0.21; a live check). The fix drops pronouns and
contraction fragments from a question's keys when it is routed among a chat's messages; documents are unchanged.
Routing alone (diagnostics/never_stated.py's users, 64, facts alone / inside small talk) found it right for 98.0 /
89.5% at 8 messages against 85.5 / 84.0% as served. It is served if, here, with 16 users, its recall is at least the
served form's minus 1 SE of the paired difference at every length, facts alone and inside small talk (`--embed`),
and higher on the mean of the six. The held-out validation chats (diagnostic 13's configs) are to confirm it once
the data can be prepared again: recall at least 56.8 - 1.0. Result: failed, not served. Facts alone: +10.9 +- 3.2,
+7.8 +- 3.0, +4.7 +- 2.5 at 8, 32, 128 messages; facts inside small talk: -1.6 +- 2.8, -4.7 +- 2.5 (below the bound
at 32), +1.6 +- 2.8. Where a fact sits inside small talk, the question's "my" also points at the message that holds
it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.base import load_base  # noqa: E402
from hyperadapter.config import Settings  # noqa: E402
from hyperadapter.data.facts import SLOTS, sample_facts  # noqa: E402
from hyperadapter.data.prompts import query_prompt  # noqa: E402
from hyperadapter.decoding import PENALTIES  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.evaluation.metrics import fact_recall, looped  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402
from hyperadapter.generator.routed import STOP_WORDS, generate_served, route, unit_embeddings, word_keys  # noqa: E402
from hyperadapter.runtime import GenerationParams, LoraRuntime  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "smollm2-135m-generator"

FILLER = """I watched a documentary about octopuses last night and it was fascinating.
The weather has been grey and drizzly all week.
Do you think it is worth learning to cook with a wok?
I finally finished that long novel about the lighthouse keeper.
My neighbours are repainting their fence again.
I tried a new coffee shop this morning and the croissants were great.
Is it true that honey never goes off?
I have been trying to get up earlier, but it is hard.
The train was late again today, twenty minutes this time.
I am thinking about taking a pottery class in the spring.
Have you heard the new album everyone is talking about?
My phone keeps running out of battery by the afternoon.
I went for a long walk by the river on Sunday.
What is a good way to keep basil alive indoors?
I spent the whole evening sorting out old photos.
The supermarket had run out of oat milk again.
I am not sure whether to buy a new laptop or repair the old one.
There was a lovely sunset over the hills yesterday.
I keep forgetting to water the plants on the balcony.
Do you have any tips for sleeping better?
I started a jigsaw puzzle with a thousand pieces.
The library near me has a book sale this weekend.
I burnt the toast this morning, which set off the alarm.
Someone left a pile of free books on the corner, so I took two.
I have been listening to a podcast about ancient Rome.
It snowed a little overnight but it has already melted.
I am trying to drink more water during the day.
The cinema was nearly empty when I went on Tuesday.
I found an old board game in the attic.
What do you think makes a good cup of tea?
I cleaned the windows and now I can see how dusty the shelves are.
There is a new bakery opening down the street.
I tried meditating for ten minutes and kept thinking about lunch.
My bicycle tyre was flat again this morning.
I read that octopuses have three hearts.
The park was full of people flying kites today.
I am knitting a scarf, but it is taking forever.
I should really sort out my inbox this weekend.
The bus driver today was singing the whole way.
I love the smell of rain on warm pavement.
I spent an hour trying to fix a squeaky door.
Is it better to stretch before or after a run?
I rearranged the furniture in the living room.
There was a street market selling old maps and postcards.
I tried to learn a card trick but I keep dropping the cards.
My tea went cold while I was reading.
The clocks go back next week, I think.
I saw a heron standing completely still by the pond.
I can never decide what to have for breakfast.
The wifi has been slow all evening.""".splitlines()
# the probe's chat stop words: "my", "I" and other pronouns, and the fragments of contractions, dropped as well
PRONOUNS = frozenset("i me my mine myself you your yours we us our m s ve ll re d t".split())
REPLIES = ["That sounds lovely!", "Interesting, tell me more.", "I see.", "Ha, that happens to everyone.",
           "Good question!", "Oh no!", "Nice.", "That must have been fun."]


@dataclasses.dataclass
class User:
    facts: list  # stated, each in its own message
    unstated: list  # slots never stated: (question, the values of the stated facts)
    seed: int


def make_users(n: int, n_facts: int, n_unstated: int, seed: int) -> list[User]:
    users = []
    for u in range(n):
        rng = random.Random(seed * 100_003 + u)
        facts = sample_facts(rng, "validation", n_facts + n_unstated)
        users.append(User(facts[:n_facts], [f.question for f in facts[n_facts:]], seed * 100_003 + u))
    return users


def chat(user: User, length: int, embed: bool = False) -> tuple[list[str], list[int]]:
    """`length` of the user's messages (each followed by a reply): the facts among small talk, at random places;
    with `embed`, each fact inside a message of small talk, before or after it, as the data's builders put them
    into Topical-Chat turns. Returns the chat's lines and, per fact, the index of the user's message that states it."""
    rng = random.Random(user.seed * 7 + length)
    at = sorted(rng.sample(range(length), len(user.facts)))
    fill = iter(rng.sample(FILLER, len(FILLER)) * math.ceil(length / len(FILLER)))
    facts = iter(user.facts)
    lines = []
    for i in range(length):
        if i not in at:
            text = next(fill)
        elif embed:
            text, fact = next(fill), next(facts).statement
            text = f"{text} {fact}" if rng.random() < 0.5 else f"{fact} {text}"
        else:
            text = next(facts).statement
        lines.append(f"user: {text}\n")
        lines.append(f"assistant: {rng.choice(REPLIES)}\n")
    return lines, at


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{100 * statistics.mean(values):.1f}"
    return f"{100 * statistics.mean(values):.1f} +- {100 * statistics.stdev(values) / math.sqrt(len(values)):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--lengths", default="8,32,128", help="the user's messages per chat")
    parser.add_argument("--facts", type=int, default=4, help="facts each user states")
    parser.add_argument("--unstated", type=int, default=2, help="questions about facts each user never states")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed", action="store_true", help="each fact inside a message of small talk")
    parser.add_argument("--compare-stop-words", action="store_true",
                        help="also route with the questions' pronouns dropped from their word keys (the probe)")
    args = parser.parse_args()
    if args.facts + args.unstated > len(SLOTS):
        parser.error(f"--facts + --unstated must be at most {len(SLOTS)}, the fact slots")
    torch.set_num_threads(args.threads)
    base = load_base("default")
    runtime = LoraRuntime(base)
    encoder = SentenceEncoder()
    generator = Generator.from_pretrained(CHECKPOINT, base, encoder, int8=True)
    served = Settings()
    one = dataclasses.replace(served, conversation_max_routes=0)
    frequency, presence = PENALTIES["conversation"]
    params = GenerationParams(max_new_tokens=32, frequency_penalty=frequency, presence_penalty=presence)
    users = make_users(args.users, args.facts, args.unstated, args.seed)
    lengths = [int(x) for x in args.lengths.split(",")]
    base_unstated = [runtime.generate([query_prompt(base, q) for q in u.unstated], None, params) for u in users]
    rows = []
    for length in lengths:
        per_user = {k: [] for k in ("one", "routed", "found", "loop_one", "loop_routed", "leak_one", "leak_routed",
                                    "probe", "found_probe", "loop_probe", "leak_probe")}
        for user in users:
            lines, at = chat(user, length, args.embed)
            whole = generate_served(generator, [("conversation", lines)], one)[0]
            routed = generate_served(generator, [("conversation", lines)], served)[0]
            questions = [f.question for f in user.facts] + user.unstated
            taken = [route(encoder, routed, q, served.route_words) for q in questions]
            prompts = [query_prompt(base, q) for q in questions]
            replies = {"one": runtime.generate(prompts, [whole] * len(prompts), params),
                       "routed": runtime.generate(prompts, [a for a, _ in taken], params)}
            if args.compare_stop_words:  # the probe: as route() does, with the questions' pronouns dropped
                picked = [routed.routes.nearest(v, word_keys(q, STOP_WORDS | PRONOUNS), served.route_words)[0]
                          for q, v in zip(questions, unit_embeddings(encoder, questions))]
                replies["probe"] = runtime.generate(prompts, [routed.routes.adapters[k] for k in picked], params)
                per_user["found_probe"].append(statistics.mean(float(k == i) for k, i in zip(picked, at)))
            stated, values = len(user.facts), [f.value for f in user.facts]
            for name, said in replies.items():
                per_user[name].append(statistics.mean(fact_recall(r, [f.value]) for r, f in zip(said, user.facts)))
                per_user[f"loop_{name}"].append(statistics.mean(looped(r) for r in said[stated:]))
                per_user[f"leak_{name}"].append(statistics.mean(fact_recall(r, values) for r in said[stated:]))
            per_user["found"].append(statistics.mean(float(t.sentence == i) for (_, t), i in zip(taken, at)))
            print(f"length {length} user {len(per_user['one'])}: one {per_user['one'][-1]:.2f} routed "
                  f"{per_user['routed'][-1]:.2f} found {per_user['found'][-1]:.2f}", file=sys.stderr, flush=True)
        diff = [r - o for r, o in zip(per_user["routed"], per_user["one"])]
        rows.append((length, per_user, diff))
    print(f"{args.users} made-up users, {args.facts} facts stated{' inside small talk' if args.embed else ''} and "
          f"{args.unstated} never stated each; the user's messages each followed by a reply; greedy, chat penalties, "
          f"32 new tokens\n")
    print("| user's messages | recall, one adapter | recall, routed (served) | routed - one | routed to the fact's "
          "message | never stated: looped, one / routed / base | never stated: names another fact, one / routed |")
    print("|---|---|---|---|---|---|---|")
    base_loops = [statistics.mean(looped(r) for r in said) for said in base_unstated]
    for length, p, diff in rows:
        print(f"| {length} | {mean_se(p['one'])} | {mean_se(p['routed'])} | {mean_se(diff)} | {mean_se(p['found'])} | "
              f"{mean_se(p['loop_one'])} / {mean_se(p['loop_routed'])} / {mean_se(base_loops)} | "
              f"{mean_se(p['leak_one'])} / {mean_se(p['leak_routed'])} |")
    if args.compare_stop_words:
        print("\n| user's messages | routed (served) | routed, the questions' pronouns dropped (probe) | probe - "
              "served | routed to the fact's message, served / probe | never stated: names another fact, "
              "served / probe |")
        print("|---|---|---|---|---|---|")
        for length, p, _ in rows:
            diff = [a - b for a, b in zip(p["probe"], p["routed"])]
            print(f"| {length} | {mean_se(p['routed'])} | {mean_se(p['probe'])} | {mean_se(diff)} | "
                  f"{mean_se(p['found'])} / {mean_se(p['found_probe'])} | "
                  f"{mean_se(p['leak_routed'])} / {mean_se(p['leak_probe'])} |")


if __name__ == "__main__":
    main()
