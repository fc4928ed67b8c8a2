"""The semantic cache benchmark's report: hits and wrong hits per threshold, the close pairs, the
opposite pairs, and the threshold (if any) the default may use."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from benchkit.machine import load_average
from semantic_cache_bench.claims import Claim
from semantic_cache_bench.fresh import FreshAnswer
from semantic_cache_bench.opposites import OppositePair, served_in
from semantic_cache_bench.replay import WINDOW, Pairs, Tally

# The guarded replays at and above this threshold have their wrong hits listed.
LIST_WRONG_HITS_FROM = 0.97


@dataclass(frozen=True)
class Result:
    machine: str
    load_at_start: str
    documents: int
    namespace: str
    claims: list[Claim]
    answers: list[FreshAnswer]
    tallies: list[Tally]
    pairs: list[Pairs]
    opposites: list[OppositePair]
    # Thresholds at which the gateway's own AnswerCache made other hits than the replay (guard on).
    disagreements: list[float]
    seconds: float


def safe_threshold(tallies: Sequence[Tally]) -> float | None:
    """The lowest threshold whose guarded replay made hits, none of them wrong; None if there is none."""
    safe = [t.replay.threshold for t in tallies if t.replay.guard and t.hits and not t.wrong]
    return min(safe) if safe else None


def report(r: Result) -> None:
    outcomes = Counter(a.outcome for a in r.answers)
    print(
        f"The semantic answer cache on SciFact's train claims ({time.strftime('%Y-%m-%d')})\n"
        f"machine: {r.machine}, load average {r.load_at_start} at the start, {load_average()} at the end\n"
        f"data: {len(r.claims)} train claims asked in qrels order into one namespace ({r.namespace},"
        f" {r.documents:,} documents);\n  fresh answers by Ask with the extractive generator, the cache"
        f" skipped: {', '.join(f'{n} {o}' for o, n in outcomes.most_common())}\n"
        f"cache: the gateway's defaults, {WINDOW} questions kept per settings key; a hit is wrong when the"
        " served answer differs from\n  the claim's own in outcome or cited documents (answer), or the two"
        " claims differ in the guard's words (meaning)"
    )
    exact = r.tallies[0].replay.exact
    print(
        f"\n{exact} claims repeat an earlier one word for word: exact hits at every threshold, not counted.\n"
    )
    print(
        "| threshold | guard | hits | hit rate | wrong (answer) | wrong (meaning) | wrong | wrong-hit rate"
        " | opposite pairs served |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for t in r.tallies:
        rate = f"{t.wrong / t.hits:.1%}" if t.hits else "-"
        cells = (
            f"{t.replay.threshold:.2f}",
            "on" if t.replay.guard else "off",
            str(t.hits),
            f"{t.hits / t.claims:.1%}",
            str(t.wrong_answer),
            str(t.wrong_meaning),
            str(t.wrong),
            rate,
            str(served_in(t.replay, r.opposites)),
        )
        print(f"| {' | '.join(cells)} |")
    agreement = (
        "made the same hits at every threshold"
        if not r.disagreements
        else "made other hits at " + ", ".join(f"{x:.2f}" for x in r.disagreements)
    )
    print(f"\nThe gateway's own AnswerCache, replaying the guarded runs, {agreement}.")

    print("\nEvery (earlier, later) pair of different claims, whatever was cached:\n")
    print("| threshold | pairs at or above | guard's words differ | answers differ |")
    print("|---|---|---|---|")
    for p in r.pairs:
        print(f"| {p.threshold:.2f} | {p.close} | {p.markers_differ} | {p.answers_differ} |")

    report_wrong_hits(r)
    report_opposites(r)
    chosen = safe_threshold(r.tallies)
    print(
        "\nverdict: "
        + (
            "no threshold measured made hits with no wrong one: keep the semantic cache off by default"
            if chosen is None
            else f"{chosen:.2f} is the lowest threshold whose hits (guard on) were all right"
        )
    )
    print(f"\n{r.seconds / 60:.1f} minutes in all")


def report_wrong_hits(r: Result) -> None:
    """The wrong hits the guard let through at the highest thresholds: what it does not catch."""
    for t in r.tallies:
        if not t.replay.guard or t.replay.threshold < LIST_WRONG_HITS_FROM:
            continue
        wrong = [h for h in t.replay.hits if r.answers[h.cached] != r.answers[h.asked]]
        print(f"\nwrong hits at {t.replay.threshold:.2f}, guard on (served claim -> asking claim):")
        for hit in wrong:
            served, asking = r.answers[hit.cached], r.answers[hit.asked]
            print(
                f"  {hit.similarity:.3f}  {r.claims[hit.cached].text!r} -> {r.claims[hit.asked].text!r}\n"
                f"         {served.outcome} {sorted(served.cited)} / {asking.outcome} {sorted(asking.cited)}"
            )


def report_opposites(r: Result) -> None:
    pairs = r.opposites
    by_kind = Counter(p.kind for p in pairs)
    print(
        f"\n{len(pairs)} opposite pairs: the same claim but for the guard's words"
        f" ({', '.join(f'{n} {k}' for k, n in by_kind.most_common())}); {sum(p.same_answer for p in pairs)}"
        " of them get the same fresh answer.\nWithout the guard a threshold serves one's answer for the"
        " other when their similarity is at or above it; with the guard never.\n"
    )
    print("| similarity | what differs | words apart | same answer | served without the guard at |")
    print("|---|---|---|---|---|")
    thresholds = sorted({t.replay.threshold for t in r.tallies})
    for p in pairs:
        at = [x for x in thresholds if p.similarity >= x]
        where = f"<= {max(at):.2f}" if at else "none"
        print(f"| {p.similarity:.3f} | {p.kind} | {p.apart} | {'yes' if p.same_answer else 'no'} | {where} |")
