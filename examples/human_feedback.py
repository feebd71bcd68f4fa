"""Human feedback end to end: sample responses, rank them in the labeling page, train a reward model, run PPOKL.

Run: .venv/bin/python examples/human_feedback.py --out runs/hf              # you rank in the browser
     .venv/bin/python examples/human_feedback.py --out runs/hf --simulate   # a simulated labeler ranks; ~2 minutes
     .venv/bin/python examples/human_feedback.py --out runs/hf --simulate --n-prompts 8 --timesteps 256  # tiny

1. collect: 4 responses of the SFT policy to each of N prompts (``rlhf-gym collect``);
2. label: the labeling page serves them (open the printed URL and rank each item; the
   script goes on when every item has a label, or on Ctrl-C), then exports the rankings;
   with ``--simulate`` a noisy simulated labeler ranks them instead;
3. train a Bradley-Terry reward model from the policy's backbone on the rankings
   (``rlhf-gym train-rm``) and report its held-out accuracy;
4. run PPOKL against the new reward model with a KL penalty to the SFT policy.

Every file lands in ``--out``: collection.jsonl, labels.sqlite, preferences.jsonl,
reward_model/, ppo_kl/ (TensorBoard and progress.csv).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from agents import PPOKL, PPOKLConfig
from reward_models import HFRewardModel, SimulatedLabeler, label_jsonl
from reward_models.labeling.server import LabelingServer
from reward_models.labeling.store import LabelStore
from reward_models.train import RewardTrainConfig, train_reward_model
from rlhf_common.training import set_torch_threads
from rlhf_gym.collect import CollectConfig, collect
from text_env.defaults import default_policy_path, default_task


def label_in_browser(collection: Path, db: Path, out: Path, port: int) -> int:
    """Serve the labeling page until every item is ranked (or Ctrl-C); export the rankings; return their count."""
    with LabelStore(db) as store:
        store.import_items(collection)
        server = LabelingServer(store, "rank", "127.0.0.1", port)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        total = store.count_items()
        print(f"Open {server.page_url('me')} and rank the {total} items (best first); Ctrl-C stops early.")
        try:
            while max(store.progress().values(), default=0) < total:
                time.sleep(2)
        except KeyboardInterrupt:
            print("\nstopped labeling early")
        finally:
            server.shutdown()
            server.server_close()
        return store.export_jsonl(out)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/human_feedback", help="folder for every file (default %(default)s)")
    parser.add_argument("--simulate", action="store_true", help="rank with a simulated labeler instead of you")
    parser.add_argument("--n-prompts", type=int, default=200, help="prompts to sample for labeling (default 200)")
    parser.add_argument("--num-generations", type=int, default=4, help="responses per prompt (default 4)")
    parser.add_argument("--timesteps", type=int, default=8192, help="PPOKL budget in generated tokens (default 8192)")
    parser.add_argument("--port", type=int, default=8000, help="labeling page port; 0 picks a free one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    set_torch_threads()  # 1 thread on a busy machine: contended threads are far slower
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. Sample responses per prompt from the SFT policy.
    collection, prefs = out / "collection.jsonl", out / "preferences.jsonl"
    collect(CollectConfig(out=str(collection), num_generations=args.num_generations, n_prompts=args.n_prompts,
                          seed=args.seed))

    # 2. Rank them: you in the browser, or a simulated labeler (gold scorer + Bradley-Terry noise).
    if args.simulate:
        n = label_jsonl(SimulatedLabeler(seed=args.seed), collection, prefs)
    else:
        n = label_in_browser(collection, out / "labels.sqlite", prefs, args.port)
    print(f"{n} rankings in {prefs}")

    # 3. A Bradley-Terry reward model from the SFT policy's backbone; 20% of the rankings held out.
    result = train_reward_model(RewardTrainConfig(
        model=str(default_policy_path()), data=str(prefs), out=str(out / "reward_model"), val_fraction=0.2,
        reference_data=str(collection), learning_rate=3e-4, seed=args.seed, resume=False,
    ))
    accuracy = result.val.accuracy if result.val else float("nan")
    print(f"reward model: {result.steps} steps, held-out pairwise accuracy {accuracy:.3f}")

    # 4. PPOKL against the new reward model; the gold score tells whether it learned what you meant.
    task = default_task(reward_model=HFRewardModel(result.out))
    agent = PPOKL(task, config=PPOKLConfig(batch_size=64, num_mini_batches=4, learning_rate=3e-4, beta=0.05,
                                           seed=args.seed, log_dir=str(out / "ppo_kl"), save_steps=0))
    agent.learn(args.timesteps)
    agent.save(out / "ppo_kl" / "model")
    first, last = _first_last(out / "ppo_kl" / "progress.csv")
    print(f"PPOKL: proxy score {first['score']:+.3f} -> {last['score']:+.3f}, "
          f"gold {first['gold_score']:+.3f} -> {last['gold_score']:+.3f}, KL {last['kl']:.2f} nats")
    return {"rm_accuracy": accuracy, "score": last["score"], "gold_score": last["gold_score"], "kl": last["kl"]}


def _first_last(progress: Path) -> tuple[dict[str, float], dict[str, float]]:
    import csv

    with progress.open(newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]
    return rows[0], rows[-1]


if __name__ == "__main__":
    main()
