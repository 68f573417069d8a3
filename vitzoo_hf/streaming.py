"""Streamed data sets in training: shards split across processes and DataLoader workers, each image exactly once
per epoch, in an order fixed by the seeds.

A loader *stream* is one (process, worker) pair: S = processes x max(1, workers) streams, stream
s = rank * workers + worker. With at least S shards, every stream reads whole shards (`IterableDataset.shard`),
those at positions s, s + S, ... of the epoch's shard order (a permutation drawn from the epoch's seed for
training, file order for evaluation). With fewer shards than streams (one Parquet file, a tiny data set), every
stream reads them all in file order and keeps every S-th example (`datasets.distributed.split_dataset_by_node`,
its example-level mode). Either way the streams partition the split: no duplicates, no gaps. Training then mixes
each stream through a seeded shuffle buffer of raw (undecoded) examples.

Every example carries a key that identifies it in the split (shard * 2**32 + position in the shard, or its index
when split by example): it seeds the example's augmentation (recipe.SAMPLE_SEED_RULE) and puts evaluation
results back in data-set order. The epoch's order depends on (data seed, epoch, processes, workers); the run
records both counts and a resume must use the same ones.

Processes may end an epoch with different numbers of examples (shards differ in size). `lockstep` keeps them in
step: each step every process says how many examples it has (one all-reduce of one integer); a process whose
streams are done takes part with one padding image (key -1, weight 0) until every process is, so DDP's collectives
never wait and the
loss of each step is weighted by its share of the global batch (`step_weight`).

Resume: checkpoints are written at epoch ends, so an interrupted epoch is rerun from its start: its order is a
function of the seeds alone, so the rerun is bitwise the one that was interrupted (on CPU).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vitzoo_hf.recipe import sample_seed

SHUFFLE_BUFFER = 1000  # raw examples per stream (~110 MB of ImageNet JPEGs)
READ_BATCH = 64  # rows per Arrow read
STREAM_TRAIN_EVAL_RULE = ("streamed: the first ceil(train_max / shards) examples of every shard (with fewer shards "
                          "than loader streams: the first train_max examples)")


def shard_mode(n_shards: int, streams: int) -> bool:
    """Whole shards per stream when there are enough of them; else every stream reads all and keeps its share."""
    return n_shards >= streams


class StreamImages(IterableDataset):
    """One process's part of a streamed split, transformed per example under its seed: yields
    (transform(image), label, key). `set_epoch(seed)` before each epoch fixes shard order, shuffle and seeds."""

    def __init__(self, split, transform: Callable, shuffle: bool, rank: int = 0, world: int = 1,
                 per_shard: int | None = None, total: int | None = None, buffer: int = SHUFFLE_BUFFER):
        self.split, self.transform, self.shuffle = split, transform, shuffle
        self.rank, self.world, self.buffer = rank, world, buffer
        self.per_shard, self.total = per_shard, total
        self.n_shards = split.n_shards
        self.seed = 0

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def _stream(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.world * workers, self.rank * workers + worker

    def _rows(self, ds) -> Iterator[dict]:
        for batch in ds.iter(batch_size=READ_BATCH):  # .iter(): no second split among workers by `datasets`
            for i in range(len(batch["label"])):
                yield {"image": batch["image"][i], "label": batch["label"][i]}

    def raw(self) -> Iterator[tuple[int, dict]]:
        """(key, undecoded row) of this stream, before shuffling: exactly this stream's share of the split."""
        from datasets.distributed import split_dataset_by_node

        streams, s = self._stream()
        if shard_mode(self.n_shards, streams):
            if self.shuffle:
                order = torch.randperm(self.n_shards, generator=torch.Generator().manual_seed(self.seed)).tolist()
            else:
                order = list(range(self.n_shards))
            for shard in order[s::streams]:
                for pos, row in enumerate(self._rows(self.split.shard(self.n_shards, shard, contiguous=True))):
                    if self.per_shard is not None and pos >= self.per_shard:
                        break
                    yield shard * 2**32 + pos, row
        else:
            part = split_dataset_by_node(self.split, rank=s, world_size=streams)
            for k, row in enumerate(self._rows(part)):
                index = k * streams + s
                if self.total is not None and index >= self.total:
                    break
                yield index, row

    def keyed(self) -> Iterator[tuple[int, dict]]:
        """`raw()` through the seeded shuffle buffer (training) or as is (evaluation)."""
        if not self.shuffle or self.buffer <= 1:
            yield from self.raw()
            return
        streams, s = self._stream()
        rng = random.Random(sample_seed(self.seed, s))
        pool: list[tuple[int, dict]] = []
        for item in self.raw():
            if len(pool) < self.buffer:
                pool.append(item)
                continue
            i = rng.randrange(len(pool))
            pool[i], item = item, pool[i]
            yield item
        rng.shuffle(pool)
        yield from pool

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        for key, row in self.keyed():
            state = torch.default_generator.get_state()  # the caller's generator is left as it was (0 workers:
            try:  # the training loop's own draws must not depend on the loader)
                torch.default_generator.manual_seed(sample_seed(self.seed, key))
                out = self.transform(row["image"])
            finally:
                torch.default_generator.set_state(state)
            yield out, int(row["label"]), key


def keyed_collate(inner: Callable) -> Callable:
    """Collate (x, label, key) triples: `inner` on the (x, label) pairs, then the keys as a tensor."""

    def collate(items: list[tuple[Any, int, int]]) -> tuple:
        return (*inner([(x, y) for x, y, _ in items]), torch.tensor([k for _, _, k in items], dtype=torch.long))

    return collate


def stream_loader(ds: StreamImages, batch_size: int, collate: Callable, num_workers: int,
                  empty: Callable[[], tuple]) -> DataLoader:
    """Workers restart every epoch (not persistent) so they see the epoch set by `set_epoch`. Each worker
    batches its own stream; its last batch may be short. `empty()` builds this loader's empty batch."""
    workers = {"prefetch_factor": 2} if num_workers else {}
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available(), generator=torch.Generator(), **workers)
    loader.empty = empty  # type: ignore[attr-defined]
    return loader


def lockstep(loader: DataLoader, accelerator) -> Iterator[tuple[tuple, int]]:
    """(batch, examples in this step across all processes) until every process's loader is exhausted; a process
    that is done yields `loader.empty()`, one padding image with key -1 (a ViT cannot run on 0 images). One
    all-reduce of one integer per step."""
    it, done = iter(loader), False
    while True:
        batch = None
        if not done:
            batch = next(it, None)
            done = batch is None
        n = 0 if batch is None else int((batch[-1] >= 0).sum())
        total = n
        if accelerator.num_processes > 1:
            import torch.distributed as dist

            count = torch.tensor([n])
            dist.all_reduce(count, group=_host_group())  # on the CPU: waiting on it never waits for the GPU
            total = int(count.item())
        if total == 0:
            return
        yield (batch if batch is not None else loader.empty()), total


@cache
def _host_group():
    """A gloo process group for the per-step example counts (NCCL's would need a GPU tensor and a device sync, which
    would stop the CPU from queueing the next step while the GPU runs this one). Made on first use, by every rank
    in the same lockstep call."""
    import torch.distributed as dist

    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def step_weight(local: int, total: int, processes: int) -> float:
    """Factor on a process's mean loss so that DDP's average over processes is the mean over the step's global
    batch, whatever each process holds: local * processes / total (1.0 when all hold the same)."""
    return local * processes / total


def streamed_loaders(bp, aug, streams, batch_size: int, rank: int, world: int, num_workers: int,
                     contrastive: bool, pipeline: str = "reference") -> tuple[dict[str, DataLoader], Any]:
    """train (shuffled, augmented), eval_train (STREAM_TRAIN_EVAL_RULE) and eval_validation (every image, in
    data-set order by key) of a streamed data set for this process; plus the FastTrain plan (or None)."""
    import math

    from vitzoo_hf.decode import NO_BOX, Plan, collate_device, collate_fast, open_image, pipeline_transform
    from vitzoo_hf.recipe import collate_supervised, collate_views, contrastive_views, image_transforms

    size = bp.architecture.image_size
    none = torch.zeros(1, dtype=torch.long)
    pad = torch.full((1,), -1, dtype=torch.long)  # the padding image's key

    def images(dtype=torch.float32):
        return torch.zeros((1, 3, size, size), dtype=dtype)

    train_max = bp.evaluation.train_max
    n = streams.train.n_shards
    streams_total = world * max(1, num_workers)
    eval_train = {"per_shard": math.ceil(train_max / n), "total": None} if train_max and shard_mode(
        n, streams_total) else {"per_shard": None, "total": train_max}

    def make(split, transform, shuffle, collate, empty, batch, **limit):
        ds = StreamImages(split, transform, shuffle, rank, world, **limit)
        return stream_loader(ds, batch, keyed_collate(collate), num_workers, empty)

    fast = None
    if contrastive:
        views = contrastive_views(bp)

        def tf(image):
            return views(open_image(image))

        def empty():
            return images(), images(), pad

        loaders = {"train": make(streams.train, tf, True, collate_views, empty, batch_size),
                   "eval_train": make(streams.train, tf, False, collate_views, empty, batch_size, **eval_train),
                   "eval_validation": make(streams.validation, tf, False, collate_views, empty, batch_size)}
        return loaders, None
    train_tf, eval_tf = image_transforms(bp, aug)
    transform, collate, fast = pipeline_transform(pipeline, train_tf)
    padding_plan = Plan((size, size), (0.0, 0.0, float(size), float(size)), False, 0.0, NO_BOX)
    empty_train = {collate_supervised: lambda: (images(), none, pad),
                   collate_fast: lambda: (images(torch.uint8), torch.tensor([NO_BOX], dtype=torch.int16), none, pad),
                   collate_device: lambda: ([(images(torch.uint8)[0], padding_plan)], none, pad)}[collate]

    def ev(image):
        return eval_tf(open_image(image))

    def empty_eval():
        return images(), none, pad

    eb = bp.evaluation.batch_size
    loaders = {"train": make(streams.train, transform, True, collate, empty_train, batch_size),
               "eval_train": make(streams.train, ev, False, collate_supervised, empty_eval, eb, **eval_train),
               "eval_validation": make(streams.validation, ev, False, collate_supervised, empty_eval, eb)}
    return loaders, fast
