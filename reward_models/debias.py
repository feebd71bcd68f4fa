"""Removing a named bias while training a reward model (``rlhf-gym train-rm --debias length``).

Length as a covariate: the Bradley-Terry loss sees ``r_theta(x) + c * z(x)``, where ``z`` is the
response's length in characters standardized over the training responses and ``c`` one learned
number, and only ``r_theta`` is kept. Labels that reward length beyond quality are then explained
by ``c`` and need not be learned by the network. A network can still learn length beside ``c``
(position embeddings count tokens), so, as ODIN does for its quality head, the loss also holds
``|corr(r_theta, z)|`` over each batch. This is the disentangled reward of Chen et al. 2024
("ODIN: Disentangled Reward Mitigates Hacking in RLHF", arXiv:2402.07319) with a linear length
head, an answer to the length correlations of Singhal et al. 2023 ("A Long Way to Go",
arXiv:2310.03716) and Shen et al. 2023 ("Loose lips sink ships: Mitigating Length Bias in RLHF",
arXiv:2310.05199). It assumes quality does not depend on length linearly (on the default task the
gold score's correlation with length is -0.01); where it does, that part is removed too.

``c`` starts at its maximum-likelihood value in the length-only Bradley-Terry model (Newton's
method on the training pairs; an underestimate, since leaving quality out attenuates it) and is
then trained jointly with the network, with its own, larger step size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch

from reward_models.preferences import Preference

COEF_LEARNING_RATE = 0.05
"""Adam step size of ``c`` (decayed with the network's): one number, which must outpace the network to
take the length effect before the network does."""


def length_only_coef(z: Sequence[Sequence[float]], iterations: int = 50, bound: float = 20.0) -> float:
    """Maximum-likelihood ``c`` of ``P(i above j) = sigmoid(c * (z_i - z_j))`` over rankings ``z`` (best first).

    Each ranking's pairs weigh ``1 / C(K, 2)``, as in the training loss. Newton's method on a concave
    one-dimensional log-likelihood; ``c`` is kept within ``+-bound`` (labels ordered by length alone have
    no finite maximum).
    """
    diffs, weights = [], []
    for zs in z:
        for i, j in combinations(range(len(zs)), 2):
            diffs.append(zs[i] - zs[j])
            weights.append(1.0 / math.comb(len(zs), 2))
    d, w, c = np.array(diffs), np.array(weights), 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-c * d))
        grad, hess = float((w * d * (1 - p)).sum()), float((w * d * d * p * (1 - p)).sum())
        if hess <= 1e-12:
            break
        c = float(np.clip(c + grad / hess, -bound, bound))
    return c


class LengthCovariate(torch.nn.Module):
    """``c * z(length)``: the length term fitted next to the reward model and dropped after training."""

    def __init__(self, items: Sequence[Preference]) -> None:
        super().__init__()
        lengths = np.array([len(r) for r in dict.fromkeys(r for it in items for r in it.responses)], dtype=np.float64)
        self.mean, self.std = float(lengths.mean()), float(lengths.std()) or 1.0
        start = length_only_coef([[self.z(r) for r in it.responses] for it in items])
        self.initial_coef = start
        self.coef = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))

    def z(self, response: str) -> float:
        """The response's standardized length."""
        return (len(response) - self.mean) / self.std

    def forward(self, responses: Sequence[str]) -> torch.Tensor:
        """``(len(responses),)``: ``c * z`` of each response."""
        z = torch.tensor([self.z(r) for r in responses], dtype=self.coef.dtype, device=self.coef.device)
        return self.coef * z

    def penalty(self, scores: torch.Tensor, responses: Sequence[str]) -> torch.Tensor:
        """``|Pearson correlation|`` of the kept scores with length over a batch (ODIN's loss on its quality head).

        Without it the network learns length beside ``c`` (it can, from position embeddings).
        """
        z = torch.tensor([self.z(r) for r in responses], dtype=scores.dtype, device=scores.device)
        s, z = scores - scores.mean(), z - z.mean()
        return (s * z).sum().abs() / torch.sqrt((s * s).sum() * (z * z).sum() + 1e-8)

    def summary(self) -> dict[str, float]:
        """What ``debias.json`` records: the length standardization and ``c`` at the start and now."""
        return {"length_mean": self.mean, "length_std": self.std, "initial_coef": self.initial_coef,
                "coef": float(self.coef.detach())}


def make_covariate(name: str | None, items: Sequence[Preference]) -> LengthCovariate | None:
    """The covariate that removes bias ``name`` (None: no debiasing)."""
    if name is None:
        return None
    if name == "length":
        return LengthCovariate(items)
    raise ValueError(f"--debias {name!r}: the bias that can be removed is 'length'.")
