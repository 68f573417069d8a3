"""Peak memory of streaming a whole published zoo through `WeightSpaceStream`: one checkpoint at a time, read over
HTTP into memory, represented, dropped. Prints the RSS after the first checkpoint and the peak over all of them
beside the zoo's total weight bytes (what a loader that kept every checkpoint would hold), and checks that nothing
was written to the HF cache.

    vitzoo hub serve --root COPY_OF_HUB &      # then export HF_ENDPOINT=... HF_HUB_DISABLE_XET=1
    python benchmarks/weightspace_stream.py vitzoo-demo/mini-metadata [--representation flat|tokens|stats]

Target: peak RSS − RSS after the first checkpoint < 3 × the largest checkpoint (bounded, whatever the zoo's size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import psutil


def _cache_weights() -> int:
    from huggingface_hub import constants

    root = constants.HF_HUB_CACHE
    return sum(f == "model.safetensors" for _, _, fs in os.walk(root) for f in fs) if os.path.isdir(root) else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a published zoo's metadata repo (HF_ENDPOINT pointing at its Hub)")
    ap.add_argument("--representation", default="flat", choices=("flat", "tokens", "stats"))
    args = ap.parse_args()

    from vitzoo_hf.weightspace import WeightSpaceStream
    from vitzoo_hf.zoo import Zoo

    proc = psutil.Process()
    zoo = Zoo.from_hub(args.source)
    cached = _cache_weights()
    stream = WeightSpaceStream(zoo, args.representation, target="accuracy")
    sizes = [c["weights_size"] for c in zoo.checkpoints]
    base = proc.memory_info().rss
    first = peak = None
    n, t = 0, time.perf_counter()
    for sample in stream:
        n += 1
        rss = proc.memory_info().rss
        first = first or rss
        peak = max(peak or 0, rss)
        del sample
    seconds = time.perf_counter() - t
    report = {
        "checkpoints": n, "zoo_weight_bytes": sum(sizes), "largest_checkpoint_bytes": max(sizes),
        "rss_before_mb": base / 2**20, "rss_after_first_mb": first / 2**20, "peak_rss_mb": peak / 2**20,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "growth_after_first_mb": (peak - first) / 2**20, "seconds": seconds,
        "weight_files_added_to_hf_cache": _cache_weights() - cached,
        "bounded": (peak - first) < 3 * max(sizes),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
