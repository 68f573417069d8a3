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


def _average(args: argparse.Namespace) -> None:
    from vitzoo_hf.averaging_report import run

    result = run(args.source, args.method, args.out, models=args.models, window=args.window, factors=args.factors,
                 save_model=args.save_model, batch_size=args.batch_size, seed=args.seed)
    print(result["summary"])
    print(f"wrote {len(result['files'])} files to {args.out}")


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

    p = sub.add_parser("average", help="weight averaging: epochs, model soups, greedy soups, Git Re-Basin")
    p.add_argument("source", help="a zoo folder (vitzoo generate --out) or a published zoo's metadata repo id")
    p.add_argument("--method", required=True, choices=["epochs", "soup", "greedy-soup", "rebasin"])
    p.add_argument("--out", required=True, help="folder for tables (Markdown, CSV), figures (PNG) and models")
    p.add_argument("--models", nargs="+", metavar="NAME", help="only these models (default: every classifier)")
    p.add_argument("--window", type=int, default=5, help="epochs: checkpoints per average (default 5)")
    p.add_argument("--factors", nargs="+", choices=["head_seed", "lr", "optimizer", "head"],
                   help="soup: the factors to vary, one at a time (default: all four)")
    p.add_argument("--save-model", metavar="NAME",
                   help="save the best averaged model as OUT/NAME (save_pretrained, safetensors, provenance)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--seed", type=int, default=0, help="rebasin: seed of the coordinate-descent order")
    p.set_defaults(func=_average)

    add_hub_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("vitzoo", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
