"""Command line for the labeling page: ``serve``, ``export``, ``agreement``, ``reliability``.

Examples::

    python -m reward_models.labeling serve --items collection.jsonl --db labels.sqlite --mode rank
    python -m reward_models.labeling serve --db labels.sqlite --order active --reward-model runs/rm
    python -m reward_models.labeling export --db labels.sqlite --out preferences.jsonl
    python -m reward_models.labeling agreement --db labels.sqlite
    python -m reward_models.labeling reliability --db labels.sqlite --out weighted.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from reward_models.labeling.agreement import AgreementReport
from reward_models.labeling.server import LabelingServer
from reward_models.labeling.store import MODES, LabelStore
from reward_models.reliability import (
    estimate_reliability,
    file_judgements,
    format_reliability,
    row_judgements,
    weighted_rows,
)
from rlhf_common.config_cli import run_command
from rlhf_common.io import write_jsonl_atomic

TOKEN_ENV = "RLHF_GYM_LABEL_TOKEN"


def cli(argv: list[str] | None = None) -> int:
    """Run one labeling subcommand; the exit code follows :func:`~rlhf_common.config_cli.run_command`."""
    parser = argparse.ArgumentParser(
        prog="python -m reward_models.labeling",
        description="Label model responses in the browser; export preferences for reward-model training.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the labeling page for a database")
    serve.add_argument(
        "--items",
        type=Path,
        help="collection JSONL, one {'prompt', 'responses': [K >= 2 texts], 'id'?} per line (e.g. from "
        "`rlhf-gym collect`), imported before serving; importing the same file again adds nothing",
    )
    serve.add_argument("--db", type=Path, required=True, help="SQLite file holding items and labels")
    serve.add_argument(
        "--mode",
        choices=MODES,
        help="rank: order all K responses; best: pick the best one (default: the database's mode, else rank)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default 8000)")
    serve.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV), help=f"access token required on API calls (default: ${TOKEN_ENV})"
    )
    serve.add_argument("--order", choices=("import", "active"), default="import", help="import: items in import "
                       "order (default); active: the item a label would teach --reward-model most first")
    serve.add_argument("--reward-model", type=Path, nargs="+", help="reward model folder(s) scoring the items for "
                       "--order active: one is ordered by Bradley-Terry entropy, several (an ensemble) by BALD")

    export = sub.add_parser("export", help="write the labels as preference JSONL")
    export.add_argument("--db", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True, help="JSONL to write (atomically)")

    agreement = sub.add_parser("agreement", help="print inter-labeler agreement")
    agreement.add_argument("--db", type=Path, required=True)
    agreement.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _reliability_parser(sub)

    args = parser.parse_args(argv)
    return run_command("rlhf-gym label", lambda: {"serve": _serve, "reliability": _reliability}.get(
        args.command, _read)(args))


def _reliability_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reliability", help="estimate each labeler's flip rate; write reliability-weighted labels")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", type=Path, help="labeling database")
    source.add_argument("--labels", type=Path, help="preference JSONL whose rows carry 'labeler' (e.g. an export)")
    p.add_argument("--tokenizer", help="tokenizer to render conversational rows of --labels (the reward model's)")
    p.add_argument("--out", type=Path, help="write the labels as preference JSONL with each row's 'weight' set to "
                   "its labeler's weight (times any weight it had), for `rlhf-gym train-rm`")
    p.add_argument("--reverse-adversarial", action="store_true", help="reverse the labels of labelers with a flip "
                   "rate above 0.5 (with --per-label: labels whose posterior is below 0.5) and weight them by "
                   "|1 - 2f| (|2P - 1|), instead of dropping them (weight 0)")
    p.add_argument("--per-label", action="store_true", help="weight each label by the posterior probability that its "
                   "order is right (its labeler's reliability against the other labels of the same pairs), "
                   "2 P - 1, instead of by its labeler's weight")
    p.add_argument("--bootstrap", type=int, default=100, help="item resamples for the standard errors (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seeds the bootstrap")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _reliability(args: argparse.Namespace) -> None:
    """``reliability``: Dawid-Skene flip rates of a database's or a file's labelers, and weighted labels."""
    if args.db is not None:
        with LabelStore(args.db, create=False) as store:
            rows = text_rows = store.export_rows()
    else:
        from reward_models.hf import load_tokenizer

        text_rows, rows = file_judgements(args.labels, load_tokenizer(args.tokenizer) if args.tokenizer else None)
    report = estimate_reliability(row_judgements(text_rows), args.bootstrap, args.seed, args.reverse_adversarial)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_reliability(report))
    if args.out is not None:
        write_jsonl_atomic(args.out, weighted_rows(rows, report, args.per_label, text_rows))
        print(f"wrote {len(rows)} reliability-weighted preference rows to {args.out}", file=sys.stderr)


def _read(args: argparse.Namespace) -> None:
    """``export`` and ``agreement``: read an existing database."""
    with LabelStore(args.db, create=False) as store:
        if args.command == "export":
            n, mode = store.export_jsonl(args.out), store.mode()
            print(f"wrote {n} preference rows to {args.out} ({f'{mode} mode' if mode else 'no labels yet'})")
        elif args.json:
            print(json.dumps({**store.agreement().to_dict(), "reliability": store.reliability().to_dict()}, indent=2))
        else:
            print(format_agreement(store.agreement()) + "\n\n" + format_reliability(store.reliability()))


def _serve(args: argparse.Namespace) -> None:
    if (args.order == "active") != bool(args.reward_model):
        raise ValueError("--order active needs --reward-model PATH [PATH ...] (a folder saved by `rlhf-gym train-rm`), "
                         "and --reward-model is only read with --order active; pass both or neither.")
    for path in args.reward_model or ():
        if not path.is_dir():
            raise FileNotFoundError(f"--reward-model {path}: no such folder; pass one saved by `rlhf-gym train-rm`.")
    with LabelStore(args.db) as store:
        if args.items is not None:
            result = store.import_items(args.items)
            print(f"{args.items}: {result.added} new items, {result.already_present} already in {args.db}")
            if result.too_few:
                print(
                    f"skipped {len(result.too_few)} rows with fewer than 2 distinct responses: "
                    + ", ".join(result.too_few[:5])
                    + (", ..." if len(result.too_few) > 5 else "")
                )
        if args.order == "active":
            from reward_models.active import default_criterion, informative_first
            from reward_models.hf_model import HFRewardModel

            store.order_items(informative_first([HFRewardModel(path) for path in args.reward_model]))
            print(f"serving the most informative items first ({default_criterion(len(args.reward_model))} under "
                  f"{len(args.reward_model)} reward model(s)); restart with a retrained model to reorder")
        mode = args.mode or store.mode() or "rank"
        try:
            server = LabelingServer(store, mode, args.host, args.port, args.token)
        except OSError as e:
            raise OSError(
                f"cannot listen on {args.host}:{args.port} ({e.strerror}); pass --port 0 for a free port or "
                "another --host."
            ) from e
        if not server.loopback:
            print(
                f"warning: --host {args.host} is reachable from other machines; anyone who can "
                "connect can read the prompts and submit labels" + ("" if args.token else "; set --token"),
                file=sys.stderr,
            )

        def stop(signum: int, frame: object) -> None:
            # shutdown() waits for serve_forever() to return, so it must run in another thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        print(
            f"Labeling {store.count_items()} items in {mode} mode. Open {server.page_url()} "
            f"(add ?labeler=NAME per person); Ctrl-C stops.",
            flush=True,
        )
        try:
            server.serve_forever()
        finally:
            server.server_close()  # waits for requests in flight
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print(f"stopped; every submitted label is in {args.db}", flush=True)


def format_agreement(report: AgreementReport) -> str:
    """A plain-text table of :class:`AgreementReport`."""
    if not report.pairs:
        return "no item has labels from two or more labelers yet."
    rows = [(" ~ ".join(p.labelers), p) for p in report.pairs]
    rows.append(("overall", report.overall))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'labelers':<{width}}  items  pairs  agreed   rate  identical"]
    for name, p in rows:
        rate = "-" if p.rate is None else f"{p.rate:.3f}"
        lines.append(f"{name:<{width}}  {p.items:>5}  {p.compared:>5}  {p.agreed:>6}  {rate:>5}  {p.identical:>9}")
    lines.append("rate = agreed / pairs of responses both ordered; random full rankings agree on 0.5.")
    return "\n".join(lines)
