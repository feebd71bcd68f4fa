"""Inter-labeler agreement: how often two people order the same two responses the same way."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any


@dataclass(frozen=True)
class PairAgreement:
    """Agreement counts between two labelers, or summed over all pairs (``labelers=("*", "*")``)."""

    labelers: tuple[str, str]
    items: int
    """Items both labelers labeled (overall: summed over labeler pairs)."""
    compared: int
    """Response pairs that both labelers ordered, summed over those items."""
    agreed: int
    """Of those, the pairs both ordered the same way."""
    identical: int
    """Items where both gave exactly the same label (same full ranking, or same best)."""

    @property
    def rate(self) -> float | None:
        """``agreed / compared``; ``None`` when nothing could be compared."""
        return self.agreed / self.compared if self.compared else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the rate included."""
        return {**asdict(self), "labelers": list(self.labelers), "rate": self.rate}


@dataclass(frozen=True)
class AgreementReport:
    """Per labeler pair (sorted by names) and overall agreement."""

    pairs: list[PairAgreement]
    overall: PairAgreement

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"pairs": [p.to_dict() for p in self.pairs], "overall": self.overall.to_dict()}


def implied_preferences(ranking: Sequence[int], k: int) -> set[tuple[int, int]]:
    """``(winner, loser)`` response pairs a label states.

    A full ranking (best first) orders every pair; a single best index orders
    only best-vs-other pairs and says nothing about the others among themselves.
    """
    if len(ranking) == 1:
        return {(ranking[0], j) for j in range(k) if j != ranking[0]}
    return {(ranking[a], ranking[b]) for a, b in combinations(range(len(ranking)), 2)}


def pairwise_agreement(labels: Iterable[tuple[int, str, Sequence[int], int]]) -> AgreementReport:
    """Agreement over ``(item_id, labeler, ranking, k)`` labels.

    For every item labeled by two or more labelers, each labeler pair and each
    response pair that *both* labelers ordered counts once; it agrees when both
    put the same response first. Full rankings of K responses share all
    K(K-1)/2 pairs (random rankings agree on half of them). Best-only labels
    share K-1 pairs when the two pick the same best, else the single pair of
    their two picks, so in best mode also read ``identical`` (same pick).
    """
    by_item: dict[int, dict[str, tuple[tuple[int, ...], int]]] = defaultdict(dict)
    for item_id, labeler, ranking, k in labels:
        by_item[item_id][labeler] = (tuple(ranking), k)

    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for per_labeler in by_item.values():
        for a, b in combinations(sorted(per_labeler), 2):
            (rank_a, k), (rank_b, _) = per_labeler[a], per_labeler[b]
            prefs_a, prefs_b = implied_preferences(rank_a, k), implied_preferences(rank_b, k)
            compared = sum(1 for w, loser in prefs_a if (w, loser) in prefs_b or (loser, w) in prefs_b)
            row = counts[(a, b)]
            row[0] += 1
            row[1] += compared
            row[2] += len(prefs_a & prefs_b)
            row[3] += rank_a == rank_b
    pairs = [PairAgreement(key, *row) for key, row in sorted(counts.items())]
    totals = [sum(row[i] for row in counts.values()) for i in range(4)]
    return AgreementReport(pairs, PairAgreement(("*", "*"), *totals))
