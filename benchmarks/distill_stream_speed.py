#!/usr/bin/env python
"""Streamed shards vs the in-memory training set: stage-1 updates per second, side by side in one run.

    python benchmarks/distill_stream_speed.py                 # tiny config, 3 rounds
    python benchmarks/distill_stream_speed.py --rounds 5 --updates 200

The same tiny teacher (:func:`ane_diffusion.testing.make_tiny_bundle`) and the same images, once
as a ``manifest.jsonl`` folder (``--data``: encoded once, held in memory) and once as webdataset
shards (``--shards``: streamed through the shuffle buffer). Rounds alternate the paths so that a
busy machine slows both alike. Rates are the training loop's own (``log.jsonl``'s
``updates_per_s``: data, teacher, student, optimiser), after the caches exist: the in-memory
cache file and the stream's per-shard cache (warm). A cold stream (encoding on the fly, first
epoch) is measured too. Writes ``benchmarks/results/distill_stream_speed-DATE.json`` (with the
machine's load average at the end: on a shared machine only the ratio is meaningful).
"""

import argparse
import os
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_folder(shards: list, folder: Path) -> Path:
    """The shards' samples as image files + manifest.jsonl (the in-memory path's input)."""
    import tarfile

    folder.mkdir(parents=True)
    rows = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(n for n in members if n.endswith(".jpg")):
                key = name[:-4]
                (folder / name).write_bytes(tar.extractfile(members[name]).read())
                rows.append({"file": name, "caption": tar.extractfile(members[f"{key}.txt"]).read().decode()})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def rate(run: Path, skip_first: bool) -> float:
    """Updates per second over the run's log lines (the first window dropped when ``skip_first``)."""
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    lines = lines[1:] if skip_first and len(lines) > 1 else lines
    return sum(r["updates_per_s"] for r in lines) / len(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    import torch

    from ane_diffusion.distill import DistillConfig, distill_guidance
    from ane_diffusion.testing import make_tiny_bundle
    from ane_diffusion.testing.shards import write_shards

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        teacher = make_tiny_bundle(root / "teacher", prediction_type="v_prediction")
        shards = write_shards(root / "shards", args.shards, args.per_shard, size=32)
        images = write_folder(shards, root / "images")
        common = dict(model=str(teacher), updates=args.updates, batch_size=args.batch_size, lr=1e-4,
                      w_min=0.0, w_max=4.0, guidance_embedding_dim=32, progress=False, log_every=20,
                      checkpoint_every=10**6, overwrite=True)
        paths = {"in_memory": dict(data=str(images), cache_dir=str(root / "cache-memory")),
                 "stream": dict(shards=str(shards[0].parent), cache_dir=str(root / "cache-stream"),
                                shuffle_buffer=256)}
        results = {"in_memory": [], "stream": [], "stream_cold": []}
        for name, extra in paths.items():  # build the caches (and measure the cold stream once)
            distill_guidance(DistillConfig(output=str(root / f"warm-{name}"), **common, **extra))
            if name == "stream":
                results["stream_cold"].append(rate(root / f"warm-{name}", skip_first=False))
        for round_ in range(args.rounds):
            order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
            for name in order:
                run = root / f"run-{name}"
                start = time.perf_counter()
                distill_guidance(DistillConfig(output=str(run), **common, **paths[name]))
                results[name].append(rate(run, skip_first=True))
                print(f"round {round_} {name}: {results[name][-1]:.2f} updates/s "
                      f"({time.perf_counter() - start:.1f} s in all)", flush=True)
    median = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    paired = [round(s / m, 3) for s, m in zip(results["stream"], results["in_memory"])]  # same round
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
              "machine": f"{platform.machine()} {platform.system()} ({args.threads} torch thread(s))",
              "settings": vars(args) | {"output": str(args.output)}, "updates_per_s": results,
              "median_updates_per_s": median,
              "stream_over_in_memory": round(median["stream"] / median["in_memory"], 3),
              "stream_over_in_memory_per_round": paired,
              "cold_stream_over_in_memory": round(median["stream_cold"] / median["in_memory"], 3),
              "torch": torch.__version__}
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"distill_stream_speed-{report['date'][:10]}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_updates_per_s", "stream_over_in_memory",
                                             "cold_stream_over_in_memory")}, indent=2))
    print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
