"""Fact guards on the LLM's words: a summary or reasoning that contradicts the batch's facts.

The grammar makes the answer well-formed; it does not make it true. A small model calls
pedestrians at 11:25 "people at night", names a dog that is not there, or reasons from
"scene changes" nobody reported. Each check here compares the words with what the batch
says: the local time, the object classes present and their counts, and the context lines
the prompt carried. The checks look for claims, so a negated mention ("no vehicles", "not
at night") is no claim; they err towards silence, because a false contradiction costs a
second generation, while a missed one costs a household's trust.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from hsid.analysis.assessment import BatchContext

# Words for a time of day, and the local hours [start, end) in which each may be said.
# Generous at the edges: 06:30 may be "night" or "morning", 19:00 "evening" or "daytime".
TIME_WORDS: dict[str, tuple[tuple[int, int], ...]] = {
    r"(?:to)?night(?:time)?|overnight|midnight|after dark|in the dark(?:ness)?": ((18, 24), (0, 8)),
    r"day ?time|daylight|by day|during the day|in the day": ((5, 21),),
    r"morning": ((0, 12),),
    r"afternoon|midday|noon": ((11, 19),),
    r"evening": ((16, 24),),
}

# Words naming an object class (COCO, as the detector reports it), and the classes each
# may stand for. "vehicle" is any vehicle; "animal" any animal.
VEHICLES = ("car", "truck", "bus", "motorcycle", "bicycle", "train", "boat", "airplane")
ANIMALS = ("dog", "cat", "bird", "horse", "sheep", "cow", "bear", "elephant", "zebra", "giraffe")
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    r"persons?|people|pedestrians?|m[ae]n|wom[ae]n|individuals?|intruders?|child(?:ren)?"
    r"|kids?|burglars?|trespassers?": ("person",),
    r"cars?|sedans?|suvs?": ("car",),
    r"vans?": ("car", "truck", "bus"),
    r"trucks?|pickups?|lorry|lorries": ("truck",),
    r"bus(?:es)?": ("bus",),
    r"motorcycles?|motorbikes?|scooters?": ("motorcycle",),
    r"bicycles?|bikes?|cyclists?": ("bicycle",),
    r"vehicles?": VEHICLES,
    r"dogs?|pupp(?:y|ies)": ("dog",),
    r"cats?|kittens?": ("cat",),
    r"birds?": ("bird",),
    r"horses?": ("horse",),
    r"animals?|pets?|wildlife": ANIMALS,
    r"knife|knives|weapons?|guns?": ("knife",),
    r"backpacks?": ("backpack",),
    r"suitcases?": ("suitcase",),
}
NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10, "several": 2, "multiple": 2, "many": 3, "numerous": 3,
                "a group of": 2, "a crowd of": 3, "a pair of": 2}

# Context the model may only mention when a line of that kind was given, with how to tell
# such a line. Entity lines come from entities/context.py, baselines from
# analysis/baselines.py, scene changes (tamper) from cameras/tamper.py.
CONTEXT_CLAIMS: dict[str, tuple[str, str]] = {
    "scene change": (
        r"scene changes?|tamper(?:ed|ing)?|obstruct(?:ed|ion)?|camera (?:was |has been )?"
        r"(?:moved|covered|blocked|knocked)|view (?:was |has )?(?:changed|blocked)",
        r"scene change|tamper"),
    "baseline": (
        r"baselines?|usually sees|than usual|unusually busy|(?:weeks|days) of history"
        r"|rare (?:here|at this)|usual (?:activity|pattern|traffic|level)",
        r"usually|history|rare here"),
    "known entity": (
        r"(?:un)?trusted|recogni[sz]ed|seen (?:before|earlier|\d+ times|several times)"
        r"|known (?:person|people|resident|vehicle|visitor|entity|car)|familiar",
        r"\((?:trusted|untrusted|unknown)|seen .* today"),
}

NEGATION = re.compile(r"\b(?:no|not|without|nor|never|nothing|neither|any|absence of)\b|n't\b")
NEGATION_WINDOW = 3  # words before a claim that may negate it


@dataclass(frozen=True, slots=True)
class Contradiction:
    """One claim that the facts deny; `kind` is a metric label."""

    kind: str  # time_of_day, object_class, object_count, context
    message: str


def check_facts(ctx: BatchContext, *texts: str) -> list[Contradiction]:
    """The contradictions between `texts` (a summary, a reasoning) and the batch's facts;
    empty when there are none. Pure and cheap: no model, no I/O."""
    found: list[Contradiction] = []
    for text in texts:
        lowered = " ".join(text.lower().split())
        found += _time_claims(ctx, lowered) + _class_claims(ctx, lowered)
        found += _context_claims(ctx, lowered)
    unique: dict[str, Contradiction] = {c.message: c for c in found}
    return list(unique.values())


def correction_note(contradictions: list[Contradiction]) -> str:
    """The line that names the contradictions for a second try."""
    named = "; ".join(c.message for c in contradictions)
    return (f"Your previous answer contradicted the facts above: {named}. "
            "Answer again, using only the facts given.")


def _claims(text: str, pattern: str) -> list[re.Match[str]]:
    """Matches of `pattern` as whole words that are not negated just before."""
    claims = []
    for match in re.finditer(rf"\b(?:{pattern})\b", text):
        before = text[: match.start()].split()[-NEGATION_WINDOW:]
        if not NEGATION.search(" ".join(before)):
            claims.append(match)
    return claims


def _time_claims(ctx: BatchContext, text: str) -> list[Contradiction]:
    hour = ctx.local_time.hour
    found = []
    for pattern, spans in TIME_WORDS.items():
        if any(start <= hour < end for start, end in spans):
            continue
        for match in _claims(text, pattern):
            found.append(Contradiction(
                "time_of_day", f'it says "{match.group(0)}" but the local time is '
                               f"{ctx.local_time:%H:%M}"))
    return found


def _class_claims(ctx: BatchContext, text: str) -> list[Contradiction]:
    counts = Counter(d.object_type for d in ctx.detections)
    numbers = "|".join(sorted(map(re.escape, NUMBER_WORDS), key=len, reverse=True))
    found = []
    for pattern, classes in CLASS_WORDS.items():
        present = sum(counts[name] for name in classes)
        kind = classes[0] if len(classes) == 1 else "such object"
        for match in _claims(text, pattern):
            if not present:
                found.append(Contradiction(
                    "object_class", f'it names "{match.group(0)}" but no {kind} was '
                                    f"detected (detected: {_counted(counts)})"))
        for match in re.finditer(rf"\b({numbers}|\d+) (?:\w+ )?(?:{pattern})\b", text):
            claimed = NUMBER_WORDS.get(match.group(1)) or int(match.group(1))
            if present and claimed > present:
                found.append(Contradiction(
                    "object_count", f'it says "{match.group(0)}" but the batch has '
                                    f"{present} {kind} detection"
                                    f"{'s' if present > 1 else ''}"))
    return found


def _context_claims(ctx: BatchContext, text: str) -> list[Contradiction]:
    given = "\n".join(ctx.extra_context).lower()
    found = []
    for kind, (claim, evidence) in CONTEXT_CLAIMS.items():
        if re.search(evidence, given):
            continue
        for match in _claims(text, claim):
            found.append(Contradiction(
                "context", f'it mentions "{match.group(0)}" but no {kind} context was given'))
    return found


def _counted(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.most_common()) or "nothing"
