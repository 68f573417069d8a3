"""The `vitzoo` command: plan a zoo, generate it, analyse it, serve a local Hub.

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

    devices = args.devices.split(",") if args.devices is not None else None
    generate(args.blueprint, args.out, only=args.only, num_processes=args.num_processes, log_with=args.log_with,
             mixed_precision=args.mixed_precision, num_workers=args.num_workers, jobs=args.jobs, devices=devices)


def _check(args: argparse.Namespace) -> int:
    from vitzoo_hf.blueprint import expand, load_blueprint
    from vitzoo_hf.checkpoints import is_complete
    from vitzoo_hf.checks import preflight, print_report
    from vitzoo_hf.errors import ZooError

    bp = load_blueprint(args.blueprint)
    models = [m for m in expand(bp) if not args.only or m.name in set(args.only)]
    if args.only and len(models) < len(set(args.only)):
        raise ZooError(f"--only names models not in blueprint '{bp.name}'; list them with `vitzoo plan {bp.source}`")
    todo = [m for m in models if not is_complete(args.out, m)]
    devices = args.devices.split(",") if args.devices is not None else None
    problems, notes = preflight(bp, todo, args.out, mixed_precision=args.mixed_precision,
                                num_processes=args.num_processes, jobs=args.jobs, devices=devices)
    print(f"vitzoo check {bp.name}: {len(todo)} of {len(models)} model(s) to train into {args.out}")
    return print_report(problems, notes)


def _publish(args: argparse.Namespace) -> None:
    from vitzoo_hf.publish import run

    run(args)


def _add_publish_parser(sub) -> None:
    p = sub.add_parser("publish", help="publish a zoo folder to the Hub (a repo per model, a branch per epoch, "
                                       "cards, metadata dataset, collection)")
    p.add_argument("zoo_dir", help="zoo folder (the --out of `vitzoo generate`); read only")
    p.add_argument("--namespace", required=True, help="Hub user or organisation that will own the repos")
    p.add_argument("--endpoint", default=None,
                   help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co), e.g. a `vitzoo hub serve` URL")
    p.add_argument("--private", action="store_true", help="create the repos (and the collection) private")
    p.add_argument("--epochs", default="all", help="which checkpoints get a branch: all (default), final, or every:K "
                                                "(epochs 0, K, 2K, ... and the final one)")
    p.add_argument("--verify", action="store_true",
                   help="upload nothing: compare every branch on the Hub with the zoo folder, report differences")
    p.add_argument("--verbose", action="store_true", help="log every commit and branch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_publish)


def _analyze(args: argparse.Namespace) -> None:
    from vitzoo_hf.analysis.run import analyze

    written = analyze(args.source, args.out, threshold=args.threshold, update_metadata=args.update_metadata,
                      distances=args.distances, averaging=args.averaging, lineage=args.lineage,
                      statistics=args.statistics)
    print(f"wrote {len(written)} files to {args.out}: findings.md (the paper's findings, checked), tables.md, "
          f"table{{1,2,6,7,8}}.{{md,csv,tex}}, checkpoint_stats.csv, distance_matrix.csv, *.png")
    if args.cka:
        from pathlib import Path

        from vitzoo_hf.weightspace.cka import run_cka

        files = run_cka(args.source, Path(args.out) / "cka", images=args.cka_images)
        print(f"wrote {len(files)} files to {Path(args.out) / 'cka'}: CKA and debiased CKA per layer (CSV), heat maps")


def _lineage(args: argparse.Namespace) -> None:
    from vitzoo_hf.lineage.report import run_table3

    result = run_table3(args.source, args.out, draws=args.draws, seed=args.seed, methods=args.methods,
                        settings=args.settings, n_pretrained=args.pretrained, n_children=args.children,
                        truth=args.truth, trees=args.trees)
    print(result["markdown"], end="")
    if result["skipped"]:
        print(f"skipped (no fine-tunes varying by that factor alone): {', '.join(result['skipped'])}")
    print(f"wrote {result['out']}/table3.md, table3.csv, table3_draws.csv and {len(result['pngs'])} tree PNGs")


def _average(args: argparse.Namespace) -> None:
    from vitzoo_hf.averaging.report import run

    result = run(args.source, args.method, args.out, models=args.models, window=args.window, factors=args.factors,
                 save_model=args.save_model, batch_size=args.batch_size, seed=args.seed)
    print(result["summary"])
    print(f"wrote {len(result['files'])} files to {args.out}")


def _predict(args: argparse.Namespace) -> None:
    from vitzoo_hf.weightspace.predict import cli

    cli(args)


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict accuracy, generalisation gap or a factor from weights (held-out "
                                       "lineages, against shuffled-target and trivial controls)")
    p.add_argument("source", help="a zoo folder or a published zoo's metadata dataset repo (ORG/NAME-metadata)")
    p.add_argument("--target", nargs="+", default=["all"], metavar="TARGET",
                   help="accuracy, final_accuracy, ggap, final_ggap, epoch, or a factor (task, head, optimizer, lr, "
                        "head_seed, weight_decay, momentum, batch_size, seed, dataset, stage, backbone); default "
                        "all: the five numeric ones and head, optimizer, lr, head_seed")
    p.add_argument("--out", required=True, help="folder for results.md/.csv, predictions.csv, folds.json, PNGs")
    p.add_argument("--methods", nargs="+", default=["ridge", "gbt", "transformer"],
                   choices=("ridge", "gbt", "transformer"),
                   help="ridge and gbt run on stats and sketches, transformer on tokens (default: all three)")
    p.add_argument("--where", nargs="+", metavar="COLUMN=VALUE",
                   help="select checkpoints (default: stage=finetuning), e.g. --where head=mlp")
    p.add_argument("--epochs", default="all", choices=("all", "final"), help="every checkpoint or final ones only")
    p.add_argument("--level", default="lineage", choices=("lineage", "run"),
                   help="split unit: a backbone's whole tree (default) or one training run")
    p.add_argument("--folds", type=int, default=None, help="cross-validation folds (default: groups, at most 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds, controls and models (default 0)")
    p.add_argument("--transformer-epochs", type=int, default=30, help="training epochs of the token transformer")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_predict)


def _demo(args: argparse.Namespace) -> None:
    from vitzoo_hf.demo import run_demo

    run_demo(args.out, args.blueprint, progress=not args.no_progress, jobs=args.jobs)


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
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many models at once, one subprocess each, on its own device (--devices) or its "
                        "share of the CPU cores; a failed model skips only its children (default 1)")
    p.add_argument("--devices", default=None, metavar="LIST",
                   help="comma-separated GPU ids for the jobs (CUDA_VISIBLE_DEVICES per job, round robin), e.g. "
                        "0,1,2,3 (default: the visible GPUs)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader worker processes per model (default: the blueprint's num_workers, else from the "
                        "CPU count and --jobs); results do not depend on it")
    p.add_argument("--log-with", default=None, help="Accelerate tracker for metrics (tensorboard, wandb, ...)")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default=None,
                   help="training precision (default: the blueprint's mixed_precision, itself 'auto': bf16 on a "
                        "CUDA GPU that supports it, else fp32); recorded, and a resume must use the same")
    p.set_defaults(func=_generate)

    p = sub.add_parser("check", help="before a long run: data sets reachable and readable, precision supported, "
                                     "free disk for every checkpoint, processes and devices (exit 2 on problems)")
    p.add_argument("blueprint", help="a shipped blueprint name or a YAML path")
    p.add_argument("--out", required=True, help="the zoo directory `vitzoo generate` will write")
    p.add_argument("--only", nargs="+", metavar="NAME", help="check for these models only")
    p.add_argument("--num-processes", type=int, default=1, help="as for `vitzoo generate`")
    p.add_argument("--jobs", type=int, default=1, help="as for `vitzoo generate`")
    p.add_argument("--devices", default=None, metavar="LIST", help="as for `vitzoo generate`")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default=None,
                   help="as for `vitzoo generate` (default: the blueprint's mixed_precision)")
    p.set_defaults(func=_check)

    _add_publish_parser(sub)
    p = sub.add_parser("analyze", help="the paper's tables, weight statistics and figures for a zoo")
    p.add_argument("source", help="a zoo folder or a published zoo's metadata dataset repo (ORG/NAME-metadata)")
    p.add_argument("--out", required=True, help="folder for the tables, checkpoint_stats.csv and figures")
    p.add_argument("--threshold", type=float, default=0.65,
                   help="refined zoo (Table 2): final validation accuracy above this fraction (default 0.65)")
    p.add_argument("--update-metadata", action="store_true",
                   help="push statistics missing from a published zoo's metadata back to its repo")
    p.add_argument("--distances", choices=("auto", "exact", "sketch"), default="auto",
                   help="distances between final checkpoints: exact (weights) or estimated from the metadata's "
                        "sketches; auto: exact for a folder, sketches for a published zoo (default)")
    p.add_argument("--averaging", default=None,
                   help="folder of `vitzoo average` results (subfolders epochs/, soup/, rebasin/): checks the "
                        "averaging findings too")
    p.add_argument("--lineage", default=None,
                   help="--out folder of `vitzoo lineage --experiment table3`: checks the lineage finding too")
    p.add_argument("--statistics", choices=("matrices", "per-matrix", "flat"), default="matrices",
                   help="weight statistics over: the blocks' weight matrices flattened together (default; of the "
                        "paper's order on ViT-S), each matrix then averaged (per-matrix), or every backbone "
                        "parameter including LayerNorm and embeddings (flat)")
    p.add_argument("--cka", action="store_true",
                   help="also: linear and debiased CKA between the final checkpoints, per layer (OUT/cka)")
    p.add_argument("--cka-images", type=int, default=256, help="validation images for --cka (default 256)")
    p.set_defaults(func=_analyze)
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
    p = sub.add_parser("average", help="weight averaging: epochs, model soups, greedy soups, Git Re-Basin")
    p.add_argument("source", help="a zoo folder (vitzoo generate --out) or a published zoo's metadata repo id")
    p.add_argument("--method", required=True, choices=["epochs", "soup", "greedy-soup", "rebasin"])
    p.add_argument("--out", required=True, help="folder for tables (Markdown, CSV), figures (PNG) and models")
    p.add_argument("--models", nargs="+", metavar="NAME", help="only these models (default: every classifier)")
    p.add_argument("--window", type=int, nargs="+", default=[5],
                   help="epochs: checkpoints per average; several (e.g. 2 3 5) give Fig. 2a at each window, the "
                        "longitudinal study at the largest (default 5)")
    p.add_argument("--factors", nargs="+", choices=["head_seed", "lr", "optimizer", "head"],
                   help="soup: the factors to vary, one at a time (default: all four)")
    p.add_argument("--save-model", metavar="NAME",
                   help="save the best averaged model as OUT/NAME (save_pretrained, safetensors, provenance)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--seed", type=int, default=0, help="rebasin: seed of the coordinate-descent order")
    p.set_defaults(func=_average)

    _add_predict_parser(sub)

    p = sub.add_parser("demo", help="the whole system on one machine: generate, local Hub, publish, analyse, "
                                    "lineage, averaging, report (start here)")
    p.add_argument("--out", default="vitzoo-demo", help="folder for the zoo, the Hub and the report "
                                                        "(default: vitzoo-demo; rerun to continue or refresh)")
    p.add_argument("--blueprint", choices=("mini", "smoke"), default="mini",
                   help="mini: 75 models, about 13 min on 2 cores (default); smoke: 10 models, under a minute")
    p.add_argument("--jobs", type=int, default=None, help="models trained at once (default: one per CPU core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)

    add_hub_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("vitzoo", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
