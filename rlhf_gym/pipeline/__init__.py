"""``rlhf-gym pipeline``: the four steps of RLHF end to end, agents compared, a report written.

One module per step, read top to bottom by :func:`run_pipeline` (``run.py``):

* step 0, ``prepare.py``: the embedded default policy, prompts and reward model; with
  ``--from-scratch`` rebuilt into the run folder (about 15 minutes); with ``--model PATH``
  your Hugging Face causal LM;
* step 1, ``sft.py``: the policy's SFT metrics (its model card) and its samples on held-out
  evaluation prompts;
* step 2, ``feedback.py``: the default reward model, or with ``--train-reward-model`` one
  trained on simulated rankings; either way its pairwise accuracy on freshly labeled
  held-out samples against the ceiling, the agreement of two independent simulated labelers;
  agents that learn from the rankings themselves (DPO, IPO) get the simulated training rankings;
* step 3, ``rl.py``: every agent of ``--agents`` from ``agents.registry`` (PPOKL, RLOO and
  stable-baselines3 PPO through the KL reward wrapper by default) on the same prompts, seed
  and beta, best-of-n for n = 1..64 from the SFT policy, and every policy evaluated on the
  held-out prompts (``evaluate.py``): gold score, proxy score, KL to the reference, and the
  gold gain against best-of-n's at the same KL;
* the report, ``report.py``: ``report.md``, plots and CSVs, from the files of ``layout.py``;
* ``leaderboard.py``: the pipeline once per seed, every agent pooled (mean ± standard error).

    rlhf-gym pipeline --out runs/demo --agents ppo_kl   # make demo: about 5 minutes on 2 idle cores
    rlhf-gym pipeline --out runs/demo-full              # make demo-full: three agents, about 9.5 minutes
    rlhf-gym report --out runs/demo              # re-render the report
    rlhf-gym leaderboard --out runs/leaderboard  # every registered agent, 3 seeds
"""

from rlhf_gym.pipeline.config import PipelineConfig
from rlhf_gym.pipeline.evaluate import best_of_n_curve, evaluate_policy
from rlhf_gym.pipeline.leaderboard import LeaderboardConfig, run_leaderboard
from rlhf_gym.pipeline.run import cli, run_pipeline

__all__ = ["LeaderboardConfig", "PipelineConfig", "best_of_n_curve", "cli", "evaluate_policy", "run_leaderboard",
           "run_pipeline"]
