"""Active selection of what to label next: the items whose label would teach the reward model most.

An item is a prompt with K responses; its label is a ranking, i.e. the outcome of its C(K, 2)
pairs. Under a Bradley-Terry reward model a pair comes out ``i`` above ``j`` with probability
``sigmoid(r_i - r_j)``, so the current model (or an ensemble of M models) says how sure it is
of each outcome. Three criteria, each the mean over the item's pairs (a ranking weighs as one
item in training, :func:`reward_models.train.ranking_loss`, whatever its K):

- ``entropy``: the entropy of the predicted outcome, ``H(mean_m p_m)``: uncertainty sampling
  (Lewis & Gale 1994, "A sequential algorithm for training text classifiers"). Works with one model.
- ``bald``: the mutual information between the outcome and the model, ``H(mean_m p_m) - mean_m H(p_m)``
  (BALD: Houlsby et al. 2011, "Bayesian Active Learning for Classification and Preference Learning",
  arXiv:1112.5745, eq. 2). It needs an ensemble, and unlike entropy it ignores pairs that are a
  coin flip for every member: responses of equal quality, whose label is noise.
- ``variance``: the ensemble's disagreement on the score difference, ``Var_m(r_i - r_j)``
  (query by committee, Seung et al. 1992).

An ensemble is any M reward models: bootstraps of the labels or different seeds (Lakshminarayanan
et al. 2017, "Deep ensembles"; heads on one frozen backbone as in Dwaracherla et al. 2024,
"Efficient Exploration for LLMs", arXiv:2402.00396).

    >>> import numpy as np
    >>> sure, unsure = np.array([[3.0, 0.0]]), np.array([[0.1, 0.0]])
    >>> select_batch([sure, unsure], 1, "entropy")
    [1]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from reward_models.base import RewardModel, checked_scores
from reward_models.labeling.store import Item
from reward_models.preferences import PromptResponses

Criterion = Literal["entropy", "bald", "variance"]
CRITERIA: tuple[Criterion, ...] = ("entropy", "bald", "variance")
ENSEMBLE_CRITERIA: tuple[Criterion, ...] = ("bald", "variance")
"""Criteria that are 0 for a single model: they measure disagreement between members."""


def pair_differences(scores: np.ndarray) -> np.ndarray:
    """``r_i - r_j`` for every pair i < j of an item's responses: ``(M, K)`` scores -> ``(M, C(K, 2))``."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    i, j = np.triu_indices(s.shape[1], k=1)
    return s[:, i] - s[:, j]


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats of a yes/no outcome with probability ``p`` (0 at p = 0 or 1)."""
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return -(q * np.log(q) + (1 - q) * np.log1p(-q))


def informativeness(scores: np.ndarray, criterion: Criterion = "bald") -> float:
    """How much a ranking of one item would teach the model, from its ``(M, K)`` scores (M models, K responses).

    ``(K,)`` is one model. The value is the mean over the C(K, 2) pairs of the criterion (see the module
    docstring); higher means more informative.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion {criterion!r}: choose one of {', '.join(CRITERIA)}.")
    diff = pair_differences(scores)  # (M, P)
    if diff.shape[1] == 0:
        raise ValueError(f"an item needs at least 2 responses to rank, got scores of shape {np.shape(scores)}.")
    if criterion in ENSEMBLE_CRITERIA and diff.shape[0] == 1:
        raise ValueError(f"criterion {criterion!r} measures disagreement and is 0 for one model; score with an "
                         "ensemble (several reward models) or use 'entropy'.")
    if criterion == "variance":
        return float(diff.var(axis=0).mean())
    p = 1.0 / (1.0 + np.exp(-diff))  # (M, P): each model's P(i above j)
    predictive = _binary_entropy(p.mean(axis=0))  # (P,)
    if criterion == "entropy":
        return float(predictive.mean())
    return float((predictive - _binary_entropy(p).mean(axis=0)).mean())


def select_batch(item_scores: Sequence[np.ndarray], n: int, criterion: Criterion = "bald",
                 exclude: Sequence[int] = ()) -> list[int]:
    """Indices of the ``n`` most informative items (most informative first), leaving out ``exclude``.

    ``item_scores[i]`` is item i's ``(M, K)`` score array (:func:`score_items`). Ties keep the
    lower index first, so the choice is deterministic.
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0.")
    return rank_items(item_scores, criterion, exclude)[:n]


def rank_items(item_scores: Sequence[np.ndarray], criterion: Criterion = "bald",
               exclude: Sequence[int] = ()) -> list[int]:
    """Every item index not in ``exclude``, most informative first (ties: lower index first)."""
    skip = set(exclude)
    candidates = [i for i in range(len(item_scores)) if i not in skip]
    values = np.array([informativeness(item_scores[i], criterion) for i in candidates])
    return [candidates[k] for k in np.argsort(-values, kind="stable")]


def score_items(models: Sequence[RewardModel], items: Sequence[PromptResponses]) -> list[np.ndarray]:
    """Each item's ``(M, K)`` scores under the ``M`` reward models, one scoring call per model."""
    if not models:
        raise ValueError("score_items needs at least one reward model.")
    prompts = [it.prompt for it in items for _ in it.responses]
    responses = [r for it in items for r in it.responses]
    flat = np.stack([checked_scores(m, prompts, responses) for m in models])  # (M, sum K)
    bounds = np.cumsum([0] + [len(it.responses) for it in items])
    return [flat[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def default_criterion(n_models: int) -> Criterion:
    """``bald`` for an ensemble, ``entropy`` for one model (BALD and variance are 0 without disagreement)."""
    return "bald" if n_models > 1 else "entropy"


def informative_first(models: Sequence[RewardModel],
                      criterion: Criterion | None = None) -> Callable[[Sequence[Item]], list[int]]:
    """An order for :meth:`~reward_models.labeling.store.LabelStore.order_items`: item ids, most informative first.

    Scores every item's responses under ``models`` (:func:`score_items`) and ranks the items by ``criterion``,
    by default :func:`default_criterion`.
    """
    chosen = criterion or default_criterion(len(models))

    def order(items: Sequence[Item]) -> list[int]:
        scores = score_items(models, [PromptResponses(it.prompt, tuple(it.responses)) for it in items])
        return [items[i].id for i in rank_items(scores, chosen)]

    return order
