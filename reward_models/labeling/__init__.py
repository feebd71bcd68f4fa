"""A web page where people rank model responses; labels go to SQLite and export as preferences.

Step 2 of RLHF for humans: ``python -m reward_models.labeling serve --items collection.jsonl
--db labels.sqlite`` serves the page; ``export`` writes the preference JSONL the reward-model
trainer reads; ``agreement`` reports how often labelers agree.
"""

from reward_models.labeling.agreement import AgreementReport, PairAgreement, pairwise_agreement
from reward_models.labeling.server import LabelingServer
from reward_models.labeling.store import Item, LabelError, LabelStore, UnknownItemError

__all__ = [
    "AgreementReport",
    "Item",
    "LabelError",
    "LabelStore",
    "LabelingServer",
    "PairAgreement",
    "UnknownItemError",
    "pairwise_agreement",
]
