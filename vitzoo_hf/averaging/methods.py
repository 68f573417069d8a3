"""Weight averaging over a zoo: epochs of one run, model soups, greedy soups, and Git Re-Basin merges.

The engine (`RunningAverage`, `average_state_dicts`) is a streamed weighted mean: one float64 running sum plus
the one model being added, whatever the number of checkpoints, so the result does not depend on their order
beyond float64 rounding and the memory does not grow with it. Results are cast back to each weight's dtype.

Every averaged model is evaluated like the zoo evaluated its checkpoints during training: the validation split
of the model's recorded fine-tuning data set, the training recipe's evaluation transform (resize, center crop,
normalise), batches through `accelerate`, the zoo's accuracy metric (`training.evaluate_supervised`).

The experiments mirror the paper's Section 4.2 (Fig. 2a, 2b, 3) and its Git Re-Basin test; each returns plain
rows (dicts) that `vitzoo_hf.averaging.report` turns into tables and figures.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from vitzoo_hf.blueprint import Evaluation
from vitzoo_hf.errors import ZooError

EVAL_BATCH_SIZE = Evaluation().batch_size  # the zoo's default evaluation batch

StateDict = Mapping[str, torch.Tensor]
HEAD_PREFIX = "classifier."
# The fine-tuning factors of the paper's grid that a soup may vary, and every factor that must otherwise agree.
SOUP_FACTORS = ("head_seed", "lr", "optimizer", "head")
FINETUNING_FACTORS = ("parent", "dataset", "head", "head_seed", "optimizer", "lr", "weight_decay", "momentum",
                      "epochs", "batch_size")
_VARIES_WITH = {"optimizer": ("momentum",)}  # momentum is recorded for SGD only
# Greedy soups choose on one half of the validation split ("select") and are scored on the other ("report"):
# a stratified split fixed by HALVES_SEED, so no comparison is chosen and scored on the same images.
HALVES_SEED = 0
SPLITS = ("validation", "select", "report")
CACHE_LIMIT_BYTES = 1 << 30  # evaluation images up to this size are transformed once and kept as one tensor

# ----------------------------------------------------------------------------------------------------------------
# The engine


class RunningAverage:
    """Σ wᵢ·θᵢ / Σ wᵢ over state dicts added one at a time, accumulated in float64.

    Only floating-point tensors are averaged. Integer (and bool) tensors -- index buffers, counters -- are never
    averaged: every model must carry the same values, which the result keeps. A weight stored in different dtypes
    by different models is refused rather than silently mixed."""

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._fixed: dict[str, torch.Tensor] = {}  # non-float tensors: identical in every model, kept as they are
        self._dtypes: dict[str, torch.dtype] = {}
        self._first = ""
        self.total_weight = 0.0
        self.count = 0

    def add(self, state_dict: StateDict, weight: float = 1.0, name: str | None = None) -> None:
        if not weight > 0:
            raise ZooError(f"averaging weight {weight} for {name or 'a model'} must be > 0")
        name = name or f"model #{self.count + 1}"
        if not self._dtypes:
            self._first = name
            self._dtypes = {k: v.dtype for k, v in state_dict.items()}
            self._fixed = {k: v.detach().clone() for k, v in state_dict.items() if not v.is_floating_point()}
            self._sum = {k: v.detach().to(torch.float64) * weight for k, v in state_dict.items()
                         if v.is_floating_point()}
        else:
            self._check(state_dict, name)
            for k, s in self._sum.items():
                s.add_(state_dict[k].detach().to(torch.float64), alpha=weight)
        self.total_weight += weight
        self.count += 1

    def _check(self, state_dict: StateDict, name: str) -> None:
        missing, extra = sorted(set(self._dtypes) - set(state_dict)), sorted(set(state_dict) - set(self._dtypes))
        if missing or extra:
            what = f"lacks {missing[:3]}" if missing else f"has extra {extra[:3]}"
            raise ZooError(f"{name} cannot be averaged with {self._first}: it {what} (different architecture or "
                           "head); average only models of one architecture, or their backbones")
        for k, v in state_dict.items():
            if v.dtype != self._dtypes[k]:
                raise ZooError(f"{name} cannot be averaged with {self._first}: weight {k} is {v.dtype}, not "
                               f"{self._dtypes[k]}; convert the models to one dtype first (mixed dtypes are "
                               "never averaged)")
            ref = self._sum.get(k, self._fixed.get(k))
            if v.shape != ref.shape:
                raise ZooError(f"{name} cannot be averaged with {self._first}: weight {k} has shape "
                               f"{tuple(v.shape)}, not {tuple(ref.shape)}")
            if k in self._fixed and not torch.equal(v, self._fixed[k]):
                raise ZooError(f"{name} cannot be averaged with {self._first}: the {v.dtype} tensor {k} differs, "
                               "and integer tensors are never averaged; they must be equal in every model")

    def result(self, extra: StateDict | None = None, extra_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """The current average (optionally as if `extra` had been added too, without adding it)."""
        if not self._dtypes and extra is None:
            raise ZooError("no models to average")
        if extra is None:
            out = {k: (s / self.total_weight).to(self._dtypes[k]) for k, s in self._sum.items()}
        elif not self._dtypes:
            return {k: v.clone() for k, v in extra.items()}
        else:
            self._check(extra, "the candidate")
            total = self.total_weight + extra_weight
            out = {k: ((s + extra[k].double() * extra_weight) / total).to(self._dtypes[k])
                   for k, s in self._sum.items()}
        out.update({k: v.clone() for k, v in self._fixed.items()})
        return {k: out[k] for k in self._dtypes}


def average_state_dicts(state_dicts: Iterable[StateDict], weights: Sequence[float] | None = None,
                        names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Uniform (or weighted) average of compatible state dicts, consumed one at a time (pass a generator to
    stream from disk)."""
    avg = RunningAverage()
    for i, sd in enumerate(state_dicts):
        avg.add(sd, 1.0 if weights is None else weights[i], names[i] if names else None)
    if weights is not None and avg.count != len(weights):
        raise ZooError(f"{len(weights)} weights for {avg.count} models; give one weight per model")
    return avg.result()


def backbone(state_dict: StateDict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if not k.startswith(HEAD_PREFIX)}


def with_head(backbone_sd: StateDict, donor: StateDict) -> dict[str, torch.Tensor]:
    """An averaged backbone with one model's head (heads of different shapes cannot be averaged)."""
    return {**backbone_sd, **{k: v for k, v in donor.items() if k.startswith(HEAD_PREFIX)}}


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def _eval_transform(record: dict[str, Any]):
    """The evaluation transform training used for this model, rebuilt from its record."""
    from vitzoo_hf.blueprint import Architecture, Augmentation
    from vitzoo_hf.recipe import image_transforms

    aug = Augmentation(**record["recipe"].get("augmentation", {}))
    return image_transforms(SimpleNamespace(architecture=Architecture(**record["architecture"])), aug)[1]


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, ds, transform) -> None:
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        row = self.ds[int(i)]
        return self.transform(row["image"]), row["label"]


def validation_halves(ds, seed: int = HALVES_SEED):
    """(select, report): the validation split cut in two halves, stratified by label where every class has at
    least two images (else a plain seeded split)."""
    from collections import Counter

    stratify = min(Counter(ds["label"]).values()) >= 2
    parts = ds.train_test_split(test_size=0.5, seed=seed, stratify_by_column="label" if stratify else None)
    return parts["train"], parts["test"]


def evaluation_dataset(record: dict[str, Any], split: str = "validation",
                       progress: bool = True) -> torch.utils.data.Dataset:
    """The images a model is evaluated on: `validation`, or one of its halves `select` / `report`
    (`validation_halves`), with the evaluation transform. Small sets are transformed once and kept as a tensor."""
    from vitzoo_hf.data import load_splits

    if split not in SPLITS:
        raise ValueError(f"unknown evaluation split {split!r}; one of {SPLITS}")
    d = record["recipe"]["dataset"]
    splits = load_splits(d["name"], d.get("max_train"), d.get("max_validation"))
    ds = splits["validation"]
    if split != "validation":
        ds = validation_halves(ds)[0 if split == "select" else 1]
    transform = _eval_transform(record)
    lazy = _Transformed(ds, transform)
    first = lazy[0][0]
    if first.numel() * first.element_size() * len(ds) > CACHE_LIMIT_BYTES:
        return lazy
    images = torch.stack([transform(im) for im in tqdm(ds["image"], desc=f"{split} images", leave=False,
                                                       disable=not progress)])
    return torch.utils.data.TensorDataset(images, torch.tensor(ds["label"]))


class Evaluator:
    """Accuracy and loss of state dicts on one evaluation set, through `accelerate` (one process or many)."""

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int = EVAL_BATCH_SIZE, accelerator=None):
        from accelerate import Accelerator
        from torch.utils.data import DataLoader, SequentialSampler

        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        loader = DataLoader(dataset, batch_size, sampler=SequentialSampler(dataset))
        self.loader = self.accelerator.prepare_data_loader(loader)
        self.examples = len(dataset)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, state_dict: StateDict | None = None) -> dict[str, float]:
        from vitzoo_hf.training import evaluate_supervised

        if state_dict is not None:
            model.load_state_dict(state_dict, strict=True)
        model.to(self.accelerator.device).eval()
        with self.accelerator.autocast():  # the recorded training precision (bf16 on a GPU), as training evaluated
            out = evaluate_supervised(model, self.loader, self.accelerator)
        model.eval()
        return {"accuracy": out["accuracy"], "loss": out["loss"]}


# ----------------------------------------------------------------------------------------------------------------
# A zoo under evaluation: cached checkpoint accuracies, one model object per architecture


@dataclass
class Averaged:
    """An averaged model and where it came from (for saving it as a checkpoint)."""

    method: str
    description: str
    ingredients: list[dict[str, Any]]  # name, epoch, weight (+ aligned: permuted into the reference's basis)
    metrics: dict[str, float]
    state_dict: dict[str, torch.Tensor] | None = None
    details: dict[str, Any] = field(default_factory=dict)


class ZooEvaluation:
    """Evaluates checkpoints and averages of one zoo; remembers the best averaged model if asked to."""

    def __init__(self, zoo, batch_size: int = EVAL_BATCH_SIZE, keep_best: bool = False, accelerator=None,
                 progress: bool = True) -> None:
        self.zoo = zoo
        self.batch_size = batch_size
        self.keep_best = keep_best
        self.best: Averaged | None = None
        self.progress = progress
        self._accelerator = accelerator
        self._evaluators: dict[tuple[str, str], Evaluator] = {}
        self._templates: dict[tuple, torch.nn.Module] = {}
        self._scores: dict[tuple[str, int, str], dict[str, float]] = {}
        self.rows: dict[str, dict[str, Any]] = {r["name"]: dict(r) for r in zoo.models}
        self.incomplete: list[str] = []  # models left out because they are not trained to their last epoch
        self.epochs: dict[str, dict[int, dict[str, Any]]] = {}  # name -> epoch -> checkpoints row
        table = zoo.checkpoints.select_columns(["name", "epoch", "train_accuracy", "validation_accuracy"])
        for c in table:
            self.epochs.setdefault(c["name"], {})[int(c["epoch"])] = c

    @property
    def accelerator(self):
        """On a GPU, the zoo's recorded training precision (so evaluation matches training's); on CPU, fp32."""
        if self._accelerator is None:
            from accelerate import Accelerator

            precision = "no"
            if torch.cuda.is_available() and self.rows:
                record = self.zoo.record(next(iter(self.rows)))
                precision = (record.get("distribution") or {}).get("mixed_precision") or "no"
            self._accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
        return self._accelerator

    def evaluator(self, name: str, split: str = "validation") -> Evaluator:
        record = self.zoo.record(name)
        d = record["recipe"]["dataset"]
        key = (f"{d['name']}|{d.get('max_train')}|{d.get('max_validation')}|{record['architecture']}|"
               f"{record['recipe'].get('augmentation')}", split)
        if key not in self._evaluators:
            data = evaluation_dataset(record, split, self.progress)
            self._evaluators[key] = Evaluator(data, self.batch_size, self.accelerator)
        return self._evaluators[key]

    def template(self, name: str, state_dict: StateDict) -> torch.nn.Module:
        """A model object of the right class and shapes, loaded once and reused for every evaluation."""
        key = tuple(sorted((k, tuple(v.shape)) for k, v in state_dict.items()))
        if key not in self._templates:
            self._templates[key] = self.zoo.load_model(name)
        return self._templates[key]

    def score(self, reference: str, state_dict: StateDict, split: str = "validation") -> dict[str, float]:
        """Metrics of any state dict shaped like model `reference`, on `reference`'s evaluation data."""
        return self.evaluator(reference, split)(self.template(reference, state_dict), state_dict)

    def checkpoint(self, name: str, epoch: int | None = None, split: str = "validation") -> dict[str, float]:
        epoch = self.final_epoch(name) if epoch is None else epoch
        key = (name, epoch, split)
        if key not in self._scores:
            self._scores[key] = self.score(name, self.zoo.state_dict(name, epoch), split)
        return self._scores[key]

    def final_epoch(self, name: str) -> int:
        return int(self.rows[name]["final_epoch"])

    def average(self, parts: Sequence[tuple[str, int]], weights: Sequence[float] | None = None) -> dict:
        """The streamed average of checkpoints (name, epoch), read one at a time."""
        sds: Iterator[StateDict] = (self.zoo.state_dict(n, e) for n, e in parts)
        return average_state_dicts(sds, weights, [f"{n}@{e}" for n, e in parts])

    def offer(self, candidate: Averaged, state_dict: StateDict) -> None:
        """Keep the averaged model with the best validation accuracy (only with keep_best)."""
        if self.keep_best and (self.best is None or candidate.metrics["accuracy"] > self.best.metrics["accuracy"]):
            candidate.state_dict = {k: v.clone() for k, v in state_dict.items()}
            self.best = candidate

    def bar(self, items, desc: str):
        return tqdm(items, desc=desc, disable=not self.progress)


def classifier_rows(ev: ZooEvaluation, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Complete models with a classification head (fine-tunes and supervised backbones), optionally only
    `names`."""
    wanted = set(names) if names else None
    if wanted:
        unknown = sorted(wanted - set(ev.rows))
        if unknown:
            raise ZooError(f"--models names models not in zoo {ev.zoo.name!r}: {', '.join(unknown[:5])}; list "
                           "them with zoo.models['name']")
    rows = [r for r in ev.rows.values() if (r["stage"] == "finetuning" or r["task"] == "supervised")
            and (wanted is None or r["name"] in wanted)]
    ev.incomplete = sorted(r["name"] for r in rows if not _complete(r))
    return [r for r in rows if _complete(r)]


def _complete(row: dict[str, Any]) -> bool:
    """Trained to its last epoch (a zoo still being generated has models part-way)."""
    return row.get("epochs") is None or row.get("final_epoch") == row["epochs"]


# ----------------------------------------------------------------------------------------------------------------
# Fig. 2a / Fig. 3: averaging over epochs


def epoch_averaging(ev: ZooEvaluation, names: Iterable[str] | None = None, window: int = 5,
                    stage: str | None = "finetuning", longitudinal: bool = True) -> tuple[list[dict], list[dict]]:
    """Per model: at every epoch e ≥ window, the average of checkpoints e−window+1 … e (epoch 0, the untrained
    start, never counts) vs checkpoint e alone (longitudinal, Fig. 3); and at the final epoch the average of the
    last `window` vs the best of those `window` checkpoints (Fig. 2a). Returns (final rows, longitudinal rows);
    `longitudinal=False` skips every epoch but the last (the longitudinal rows are then empty)."""
    if window < 1:
        raise ZooError(f"--window must be >= 1, got {window}")
    rows = [r for r in classifier_rows(ev, names) if stage is None or r["stage"] == stage]
    if not rows:
        raise ZooError(f"zoo {ev.zoo.name!r} has no classifier models to average over epochs")
    final_rows, long_rows = [], []
    skipped = []
    for r in ev.bar(rows, "epoch averaging"):
        name = r["name"]
        ckpt_rows = ev.epochs.get(name, {})
        epochs = sorted(e for e in ckpt_rows if e >= 1)
        if len(epochs) < window:
            skipped.append(f"{name} ({len(epochs)} trained epochs)")
            continue
        for i in range(window - 1 if longitudinal else len(epochs) - 1, len(epochs)):
            span = epochs[i - window + 1: i + 1]
            single = ev.checkpoint(name, epochs[i])
            avg_sd = ev.average([(name, e) for e in span])
            avg = ev.score(name, avg_sd)
            recorded = ckpt_rows[epochs[i]].get("validation_accuracy")
            if longitudinal:
                long_rows.append({"model": name, "epoch": epochs[i], "window": f"{span[0]}-{span[-1]}",
                                  "single_accuracy": single["accuracy"], "averaged_accuracy": avg["accuracy"],
                                  "single_loss": single["loss"], "averaged_loss": avg["loss"],
                                  "recorded_accuracy": recorded})
            if i == len(epochs) - 1:
                singles = {e: ev.checkpoint(name, e)["accuracy"] for e in span}
                best_epoch = max(singles, key=lambda e: (singles[e], e))
                train_acc = ckpt_rows[epochs[i]].get("train_accuracy")
                final_rows.append({
                    "model": name, "parent": r["parent"], "head": r["head"], "optimizer": r["optimizer"],
                    "lr": r["lr"], "head_seed": r["head_seed"], "epochs_averaged": f"{span[0]}-{span[-1]}",
                    "best_single_epoch": best_epoch, "best_single_accuracy": singles[best_epoch],
                    "final_accuracy": single["accuracy"], "averaged_accuracy": avg["accuracy"],
                    "gain": avg["accuracy"] - singles[best_epoch],
                    "generalization_gap": None if train_acc is None or recorded is None else train_acc - recorded})
                ev.offer(Averaged("epochs", f"uniform average of epochs {span[0]}-{span[-1]} of {name}",
                                  [{"name": name, "epoch": e, "weight": 1.0} for e in span], avg), avg_sd)
    if not final_rows:
        raise ZooError(f"no model has {window} trained epochs to average ({'; '.join(skipped[:3])}); "
                       "lower --window")
    return final_rows, long_rows


# ----------------------------------------------------------------------------------------------------------------
# Fig. 2b: soups of models that differ in exactly one factor


def one_factor_groups(rows: Sequence[dict[str, Any]], factor: str) -> list[tuple[dict[str, Any], list[dict]]]:
    """Groups of fine-tuned models that agree on every fine-tuning factor but `factor` (≥ 2 members)."""
    if factor not in SOUP_FACTORS:
        raise ZooError(f"cannot soup over {factor!r}; choose from {', '.join(SOUP_FACTORS)}")
    fixed = [f for f in FINETUNING_FACTORS if f != factor and f not in _VARIES_WITH.get(factor, ())]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["stage"] == "finetuning":
            groups.setdefault(tuple(r.get(f) for f in fixed), []).append(r)
    out = []
    for key, members in groups.items():
        if len({m[factor] for m in members}) >= 2:
            out.append((dict(zip(fixed, key, strict=True)), sorted(members, key=lambda m: str(m[factor]))))
    return out


def _describe(fixed: dict[str, Any]) -> str:
    shown = ("parent", "head", "optimizer", "lr", "head_seed")
    return " ".join(f"{k}={fixed[k]}" for k in shown if k in fixed)


def soups(ev: ZooEvaluation, names: Iterable[str] | None = None,
          factors: Sequence[str] = SOUP_FACTORS) -> list[dict[str, Any]]:
    """Uniform soup vs best member, per one-factor group (final checkpoints). Members with heads of one shape are
    averaged whole; across head types (factor `head`) the backbones are averaged and the best member's head is
    put on top. Every group also reports that backbone-soup-plus-best-head variant, to separate the effect of
    averaging heads from that of averaging backbones."""
    rows = classifier_rows(ev, names)
    out = []
    for factor in factors:
        groups = one_factor_groups(rows, factor)
        for fixed, members in ev.bar(groups, f"soups over {factor}"):
            names_ = [m["name"] for m in members]
            accs = {n: ev.checkpoint(n)["accuracy"] for n in names_}
            best = max(names_, key=lambda n: accs[n])
            best_sd = ev.zoo.state_dict(best)
            parts = [(n, ev.final_epoch(n)) for n in names_]
            same_shape = len({m["head"] for m in members}) == 1
            if same_shape:
                soup_sd = ev.average(parts)
                soup = ev.score(best, soup_sd)
                bb_sd = with_head(backbone(soup_sd), best_sd)
            else:
                bb_sd = with_head(average_state_dicts((backbone(ev.zoo.state_dict(n, e)) for n, e in parts)),
                                  best_sd)
                soup_sd = bb_sd
                soup = ev.score(best, soup_sd)
            bb = soup if not same_shape else ev.score(best, bb_sd)
            out.append({"factor": factor, "group": _describe(fixed), "members": len(names_),
                        "values": " / ".join(str(m[factor]) for m in members),
                        "member_accuracies": " / ".join(f"{accs[n]:.4f}" for n in names_),
                        "best_member": best, "best_accuracy": accs[best], "soup_accuracy": soup["accuracy"],
                        "gain": soup["accuracy"] - accs[best],
                        "backbone_soup_best_head_accuracy": bb["accuracy"],
                        "heads": "averaged" if same_shape else "best member's head"})
            ev.offer(Averaged("soup", f"uniform soup over {factor} ({_describe(fixed)})",
                              [{"name": n, "epoch": e, "weight": 1.0} for n, e in parts], soup,
                              details={"heads": out[-1]["heads"], "head_from": None if same_shape else best}),
                     soup_sd)
    if not out:
        raise ZooError(f"zoo {ev.zoo.name!r} has no fine-tuned models that differ in exactly one of "
                       f"{', '.join(factors)}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Greedy soup (Wortsman et al., 2022)


def greedy_soups(ev: ZooEvaluation, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Per backbone and head type (heads of one shape, one pre-trained init): rank the fine-tunes by accuracy on
    the `select` half of validation, start from the best and add each next one to the running average only if
    `select` accuracy strictly increases. Everything reported -- the greedy soup, the uniform soup and the best
    member picked on `select` -- is scored on the other half, `report`, which no choice has seen. The best member
    by `report` accuracy (an oracle: chosen and scored on the same images) is shown for reference only."""
    rows = [r for r in classifier_rows(ev, names) if r["stage"] == "finetuning"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["parent"], r["head"]), []).append(r)
    out = []
    for (parent, head), members in ev.bar(sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))),
                                          "greedy soups"):
        if len(members) < 2:
            continue
        names_ = [m["name"] for m in members]
        chosen, select_acc = greedy_select(
            {n: ev.checkpoint(n, split="select")["accuracy"] for n in names_}, ev.zoo.state_dict,
            lambda sd, ref=names_[0]: ev.score(ref, sd, "select")["accuracy"])
        # reporting: only now is the other half looked at
        report = {n: ev.checkpoint(n, split="report")["accuracy"] for n in names_}
        greedy_sd = average_state_dicts(ev.zoo.state_dict(n) for n in chosen)
        greedy = ev.score(chosen[0], greedy_sd, "report")
        uniform = ev.score(chosen[0], ev.average([(n, ev.final_epoch(n)) for n in names_]), "report")
        oracle = max(names_, key=lambda n: (report[n], n))
        out.append({"parent": parent, "head": head, "members": len(names_), "ingredients": len(chosen),
                    "greedy_select_accuracy": select_acc, "greedy_accuracy": greedy["accuracy"],
                    "uniform_accuracy": uniform["accuracy"], "best_by_select": chosen[0],
                    "best_by_select_accuracy": report[chosen[0]], "best_by_report_oracle": oracle,
                    "best_by_report_oracle_accuracy": report[oracle],
                    "gain": greedy["accuracy"] - report[chosen[0]], "chosen": " ".join(chosen)})
        ev.offer(Averaged("greedy-soup", f"greedy soup of {len(chosen)} fine-tunes of {parent} ({head} head)",
                          [{"name": n, "epoch": ev.final_epoch(n), "weight": 1.0} for n in chosen], greedy,
                          details={"selection": {"split": "validation", "half": "select", "seed": HALVES_SEED,
                                                 "stratified": True},
                                   "scored_on": "validation, the other half (report)",
                                   "select_accuracy": select_acc}), greedy_sd)
    if not out:
        raise ZooError(f"zoo {ev.zoo.name!r} has no backbone with two fine-tunes of one head type")
    return out


def greedy_select(select: Mapping[str, float], load, score) -> tuple[list[str], float]:
    """The greedy recipe (Wortsman et al., 2022) given only selection accuracies: `select` (name → accuracy of
    each candidate), `load(name)` its state dict, `score(state_dict)` a soup's selection accuracy. Returns the
    chosen names (best first) and the soup's selection accuracy. It sees nothing else, so whatever it is later
    scored on cannot leak into the choice."""
    ranked = sorted(select, key=lambda n: (-select[n], n))
    soup = RunningAverage()
    soup.add(load(ranked[0]), name=ranked[0])
    chosen, best = [ranked[0]], select[ranked[0]]
    for n in ranked[1:]:
        candidate = load(n)
        acc = score(soup.result(candidate))
        if acc > best:
            soup.add(candidate, name=n)
            chosen.append(n)
            best = acc
    return chosen, best


# ----------------------------------------------------------------------------------------------------------------
# Git Re-Basin across pre-trained backbones


ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def rebasin_groups(rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict]]]:
    """Fine-tunes that share every fine-tuning factor but differ in their pre-trained parent."""
    fixed = [f for f in FINETUNING_FACTORS if f != "parent"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["stage"] == "finetuning":
            groups.setdefault(tuple(r.get(f) for f in fixed), []).append(r)
    return [(dict(zip(fixed, k, strict=True)), sorted(v, key=lambda m: m["parent"]))
            for k, v in groups.items() if len({m["parent"] for m in v}) >= 2]


def rebasin(ev: ZooEvaluation, names: Iterable[str] | None = None, alphas: Sequence[float] = ALPHAS,
            merge_all: bool = True, seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """For every pair of fine-tunes with the same fine-tuning factors from different backbones: endpoints, naive
    average, Re-Basin-aligned average (B permuted onto A by weight matching, heads included), and both
    interpolation paths at `alphas`. With `merge_all`, each group of ≥ 3 backbones is also merged whole (naive
    mean vs all aligned to the first vs MergeMany). Returns (pair rows, interpolation rows, many-model rows)."""
    from vitzoo_hf.averaging.rebasin import (
        apply_permutation,
        interpolate,
        merge_many,
        vit_permutation_spec,
        weight_matching,
    )

    rows = classifier_rows(ev, names)
    groups = rebasin_groups(rows)
    if not groups:
        raise ZooError(f"zoo {ev.zoo.name!r} has no fine-tunes with the same factors from different backbones; "
                       "Re-Basin needs at least two pre-trained backbones")
    pairs, curve, many = [], [], []
    for fixed, members in ev.bar(groups, "re-basin groups"):
        sds = {m["name"]: ev.zoo.state_dict(m["name"]) for m in members}
        first = members[0]["name"]
        heads = int(ev.zoo.record(first)["architecture"]["num_attention_heads"])
        spec = vit_permutation_spec(sds[first], heads)
        for ma, mb in itertools.combinations(members, 2):
            a, b = sds[ma["name"]], sds[mb["name"]]
            match = weight_matching(spec, a, b, seed=seed)
            b_aligned = apply_permutation(spec, match.perms, b)
            acc_a, acc_b = ev.checkpoint(ma["name"])["accuracy"], ev.checkpoint(mb["name"])["accuracy"]
            path: dict[str, dict[float, float]] = {"naive": {}, "aligned": {}}
            for alpha in alphas:
                for kind, other in (("naive", b), ("aligned", b_aligned)):
                    if alpha == 0.0:
                        acc = acc_a
                    elif alpha == 1.0:
                        acc = acc_b
                    else:
                        acc = ev.score(ma["name"], interpolate(a, other, alpha))["accuracy"]
                    path[kind][alpha] = acc
                    curve.append({"model_a": ma["name"], "model_b": mb["name"], "kind": kind, "alpha": alpha,
                                  "accuracy": acc})
            naive_mid = path["naive"].get(0.5, ev.score(ma["name"], interpolate(a, b, 0.5))["accuracy"])
            aligned_sd = interpolate(a, b_aligned, 0.5)
            aligned_mid = path["aligned"].get(0.5, ev.score(ma["name"], aligned_sd)["accuracy"])
            moved = sum(int((p != torch.arange(len(p))).sum()) for p in match.perms.values())
            pairs.append({"group": _describe(fixed), "pair_type": pair_type(ev, ma, mb),
                          "model_a": ma["name"], "model_b": mb["name"],
                          "accuracy_a": acc_a, "accuracy_b": acc_b, "naive_average_accuracy": naive_mid,
                          "aligned_average_accuracy": aligned_mid,
                          "l2_naive": _l2(a, b), "l2_aligned": _l2(a, b_aligned),
                          "units_moved": moved, "units": sum(spec.sizes.values()), "iterations": match.iterations})
            ev.offer(Averaged("rebasin", f"Re-Basin average of {ma['name']} and {mb['name']} (B aligned to A)",
                              [{"name": ma["name"], "epoch": ev.final_epoch(ma["name"]), "weight": 0.5},
                               {"name": mb["name"], "epoch": ev.final_epoch(mb["name"]), "weight": 0.5,
                                "aligned": True}], {"accuracy": aligned_mid},
                              details={"alignment": "weight matching", "seed": seed}), aligned_sd)
        if merge_all and len(members) >= 3:
            ordered = [sds[m["name"]] for m in members]
            to_reference, _ = merge_many(spec, ordered, iterate=False)
            reference = ev.score(first, average_state_dicts(to_reference))["accuracy"]
            aligned, rounds = merge_many(spec, ordered, seed=seed)
            naive = ev.score(first, average_state_dicts(ordered))["accuracy"]
            merged_sd = average_state_dicts(aligned)
            merged = ev.score(first, merged_sd)["accuracy"]
            accs = [ev.checkpoint(m["name"])["accuracy"] for m in members]
            many.append({"group": _describe(fixed), "models": len(members), "best_member_accuracy": max(accs),
                         "mean_member_accuracy": sum(accs) / len(accs), "naive_average_accuracy": naive,
                         "reference_aligned_average_accuracy": reference, "mergemany_average_accuracy": merged,
                         "rounds": rounds})
            ev.offer(Averaged("rebasin", f"MergeMany average of {len(members)} fine-tunes ({_describe(fixed)})",
                              [{"name": m["name"], "epoch": ev.final_epoch(m["name"]),
                                "weight": 1.0 / len(members), "aligned": True} for m in members],
                              {"accuracy": merged}, details={"alignment": "MergeMany", "seed": seed}), merged_sd)
    return pairs, curve, many


def pair_type(ev: ZooEvaluation, a: dict[str, Any], b: dict[str, Any]) -> str:
    """"supervised–supervised", "supervised–contrastive", ...: the pre-training tasks of the two parents."""
    tasks = sorted((ev.rows.get(m["parent"], {}).get("task") or m.get("task") or "?") for m in (a, b))
    order = {"supervised": 0, "contrastive": 1}
    return "–".join(sorted(tasks, key=lambda t: order.get(t, 2)))


def _l2(a: StateDict, b: StateDict) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a) ** 0.5)

