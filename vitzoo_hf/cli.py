"""The `vitzoo` command: plan a zoo, generate it, serve a local Hub.

User mistakes (a `ZooError`, a bad path, a damaged file) are printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from vitzoo_hf.errors import run_cli
from vitzoo_hf.hub.cli import add_hub_parser


def _plan(args: argparse.Namespace) -> None:
    from vitzoo_hf.blueprint import expand, load_blueprint

    bp = load_blueprint(args.blueprint)
    models = expand(bp)
    if args.slurm:
        from vitzoo_hf.runner import write_slurm_script

        path = write_slurm_script(bp, models, args.slurm, args.out)
        print(f"wrote {path}: submit with `bash {path}`")
        return
    if args.json:
        for m in models:
            print(json.dumps(m.to_record()))
        return
    width = max(len(m.name) for m in models)
    print(f"blueprint {bp.name} ({bp.source}): {len(models)} models")
    for m in models:
        factors = " ".join(f"{k}={v}" for k, v in m.factors().items())
        print(f"{m.name:<{width}}  {m.stage:<11}  parent={m.parent or '-'}  {factors}")


def _generate(args: argparse.Namespace) -> None:
    from vitzoo_hf.runner import generate

    generate(args.blueprint, args.out, only=args.only, num_processes=args.num_processes, log_with=args.log_with,
             mixed_precision=args.mixed_precision)


def _lineage(args: argparse.Namespace) -> None:
    from vitzoo_hf.lineage.report import run_table3

    result = run_table3(args.source, args.out, draws=args.draws, seed=args.seed, methods=args.methods,
                        settings=args.settings, n_pretrained=args.pretrained, n_children=args.children,
                        truth=args.truth, trees=args.trees)
    print(result["markdown"], end="")
    if result["skipped"]:
        print(f"skipped (no fine-tunes varying by that factor alone): {', '.join(result['skipped'])}")
    print(f"wrote {result['out']}/table3.md, table3.csv, table3_draws.csv and {len(result['pngs'])} tree PNGs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitzoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plan", help="validate a blueprint and list every model of its zoo")
    p.add_argument("blueprint", help="a shipped blueprint name (paper, mini, smoke) or a YAML path")
    p.add_argument("--json", action="store_true", help="one JSON record per model")
    p.add_argument("--slurm", metavar="SCRIPT", help="write an sbatch job-array script instead of listing")
    p.add_argument("--out", default="zoo", help="zoo directory the SLURM jobs write to (default: zoo)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("generate", help="train every model of a blueprint that is not complete yet")
    p.add_argument("blueprint", help="a shipped blueprint name or a YAML path")
    p.add_argument("--out", required=True, help="zoo directory (created if missing)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="train only these models (parents are required)")
    p.add_argument("--num-processes", type=int, default=1,
                   help="processes per model via `accelerate launch` (default 1: in this process)")
    p.add_argument("--log-with", default=None, help="Accelerate tracker for metrics (tensorboard, wandb, ...)")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default=None,
                   help="training precision (default: the blueprint's mixed_precision, itself 'auto': bf16 on a "
                        "CUDA GPU that supports it, else fp32); recorded, and a resume must use the same")
    p.set_defaults(func=_generate)

    p = sub.add_parser("lineage", help="lineage recovery (MoTHeR and ours) with the paper's Table 3 protocol")
    p.add_argument("source", help="a zoo folder (vitzoo generate --out) or a published zoo's metadata repo id")
    p.add_argument("--experiment", choices=("table3",), default="table3", help="what to run (default: table3)")
    p.add_argument("--out", required=True, help="folder for table3.md/.csv, per-draw CSV and tree PNGs")
    p.add_argument("--draws", type=int, default=5, help="random sub-zoos per setting (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--methods", nargs="+", default=["mother", "ours"],
                   help="mother, mother-official, mother-modeltree, ours (default: mother ours)")
    p.add_argument("--settings", nargs="+", default=["epochs", "seed", "lr", "head", "optimizer"],
                   help="Table 3 columns to run (default: all five)")
    p.add_argument("--pretrained", type=int, default=10, help="pre-trained models per sub-zoo (default 10, or all)")
    p.add_argument("--children", type=int, default=12, help="checkpoints per pre-trained model (default 12)")
    p.add_argument("--truth", choices=("lineage", "backbone"), default="lineage",
                   help="true parent of a branch's later epochs: its previous epoch (lineage, default) or the "
                        "pre-trained model (backbone)")
    p.add_argument("--trees", choices=("given", "estimated"), default="given",
                   help="tell the methods how many pre-trained models the sub-zoo holds (default) or not")
    p.set_defaults(func=_lineage)

    add_hub_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("vitzoo", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
