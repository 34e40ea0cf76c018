"""``uenn-geo train``: train a force model on a file or a built-in data set."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    import json

    from uenn_geo.train import TrainJob, run_training

    model_kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if args.cutoff is not None:
        model_kwargs["cutoff"] = args.cutoff
    job = TrainJob(
        data=args.data,
        out=args.out,
        root=args.root,
        model=args.model,
        model_kwargs=model_kwargs,
        time_limit=args.time_limit,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        resume=not args.restart,
        progress=not args.no_progress,
    )
    metrics = run_training(job)
    print(f"\nmodel: {args.out}/model.pt   metrics: {args.out}/metrics.json")
    print(f"best validation force RMSE: {metrics['best_val_force_rmse']:.3e} eV/A")
    if "test" in metrics:
        print(f"test force RMSE: {metrics['test']['force_rmse']:.3e} eV/A")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from uenn_geo.models import MODELS
    from uenn_geo.train import DATASET_NAMES

    p = sub.add_parser(
        "train",
        help="train a force model on an extended-XYZ file or a built-in data set",
        description="Train on forces; writes model.pt (loadable with uenn_geo.load_model), "
        "checkpoint.pt (resumable), log.csv and metrics.json into --out.",
    )
    p.add_argument(
        "--data",
        required=True,
        help=f"extended-XYZ (or ASE-readable) file with forces, or one of {list(DATASET_NAMES)}",
    )
    p.add_argument("--out", default="runs/train", help="output directory (default: runs/train)")
    p.add_argument("--root", default="datasets", help="processed-data cache (default: datasets)")
    p.add_argument("--model", choices=sorted(MODELS), default="graph", help="(default: graph)")
    p.add_argument("--cutoff", type=float, default=None, help="graph model cutoff in Angstrom")
    p.add_argument("--model-kwargs", default=None, help="JSON, e.g. '{\"num_blocks\": 3}'")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds (default: 600)")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16, help="structures per step (default: 16)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: 2e-3)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
