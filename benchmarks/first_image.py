"""Time to first image: a fresh ``python -m ane_diffusion generate`` against ``python -c "import torch"``.

    python benchmarks/first_image.py                                     # 5 interleaved rounds
    python benchmarks/first_image.py --repeats 3 --threads 1 2 auto      # thread-policy sweep
    python benchmarks/first_image.py --tree /path/to/other/checkout      # e.g. the code before a change

Each round runs, in fresh processes and in this order: ``python -c pass`` (interpreter start),
``python -c "import torch"`` (the reference), the generate command (wall time: the number a user
waits), and the same command under ``python -X importtime`` (the split). The split of one image:

* ``startup``: interpreter start (``python -c pass``);
* ``imports``: every module import, as ``-X importtime`` counts it (sum over top-level imports);
* ``compute``: the pipeline's own ``total`` (text encoder, sampling, VAE decode), from the
  command's timings line;
* ``load and rest``: what remains of the ``-X importtime`` run's wall time (reading the bundle and
  weights, building modules, writing the PNG, interpreter exit).

Medians over the rounds are reported, with the machine's load average before and after (run it on a quiet
machine). Results: ``benchmarks/results/
first-image-<label>.{json,md}``. The target of issue 15: generate <= 2x import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on a blue background"
TOTAL = re.compile(r"total ([0-9.]+)s")


def _run(command: list[str], env: dict) -> tuple[float, str]:
    """Wall time and stderr of ``command``, run in the timed tree (``python -c``/``-m`` put the working
    directory ahead of PYTHONPATH, so the working directory decides which code runs)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=env["PYTHONPATH"])
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return wall, done.stderr


def import_seconds(importtime_stderr: str) -> float:
    """Sum of the cumulative times of top-level imports in ``-X importtime`` output."""
    total = 0
    for line in importtime_stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if match and match.group(2) == "":
            total += int(match.group(1))
    return total / 1e6


def one_round(tree: Path, model: str, threads: str, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    env.pop("OMP_NUM_THREADS", None)
    if threads != "auto":  # both, so that a tree without the policy (before it) obeys too
        env["ANE_DIFFUSION_THREADS"] = env["OMP_NUM_THREADS"] = threads
    generate = ["-m", "ane_diffusion", "generate", PROMPT, "--model", model, "-o", str(out)]
    startup, _ = _run([sys.executable, "-c", "pass"], env)
    torch_import, _ = _run([sys.executable, "-c", "import torch"], env)
    wall, err = _run([sys.executable, *generate], env)
    compute = float(TOTAL.search(err).group(1))
    split_wall, split_err = _run([sys.executable, "-X", "importtime", *generate], env)
    imports = import_seconds(split_err)
    return {"startup": startup, "import_torch": torch_import, "generate": wall, "ratio": wall / torch_import,
            "split": {"wall": split_wall, "imports": imports, "compute": float(TOTAL.search(split_err).group(1)),
                      "load_and_rest": split_wall - startup - imports - compute},
            "compute_plain_run": compute}


def policy_threads(tree: Path, model: str) -> str:
    """What the thread policy of ``tree`` picks for ``model`` (without importing torch), if it has one."""
    code = ("from ane_diffusion.threads import planned_threads; from ane_diffusion.bundle import resolve_bundle; "
            f"print(planned_threads(resolve_bundle({model!r})))")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(tree)),
                          capture_output=True, text=True, cwd=tree)
    return done.stdout.strip() if done.returncode == 0 else "torch default (no policy in this tree)"


def median(rows: list[dict], *path: str) -> float:
    values = []
    for row in rows:
        for key in path:
            row = row[key]
        values.append(row)
    return statistics.median(values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", nargs="+", default=["auto"], help="auto (the policy) or a thread count")
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout to time (default: this one)")
    parser.add_argument("--label", default=None, help="results file label (default: today's date)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    label = args.label or time.strftime("%Y-%m-%d")
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            rows = []
            for i in range(args.repeats):
                rows.append(one_round(args.tree, args.model, threads, Path(tmp) / f"{threads}-{i}.png"))
                print(f"threads={threads} round {i}: generate {rows[-1]['generate']:.2f}s, "
                      f"import torch {rows[-1]['import_torch']:.2f}s", file=sys.stderr)
            results[threads] = {
                "threads_used": policy_threads(args.tree, args.model) if threads == "auto" else threads,
                "rounds": rows,
                "median": {"startup": median(rows, "startup"), "import_torch": median(rows, "import_torch"),
                           "generate": median(rows, "generate"), "ratio": median(rows, "ratio"),
                           "imports": median(rows, "split", "imports"), "compute": median(rows, "split", "compute"),
                           "load_and_rest": median(rows, "split", "load_and_rest")}}
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tree": str(args.tree),
              "model": args.model, "repeats": args.repeats, "python": platform.python_version(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "results": results}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"first-image-{label}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Time to first image ({report['date']}, {report['machine']}, Python {report['python']})", "",
             f"Tree: `{args.tree}`; model `{args.model}`; median of {args.repeats} interleaved fresh-process rounds; "
             f"load average before {load_before[0]:.2f}, after {report['load_average_after'][0]:.2f}.", "",
             "| threads | `import torch` s | generate s | ratio | startup s | imports s | load and rest s | compute s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for threads, result in results.items():
        m = result["median"]
        lines.append(f"| {threads} ({result['threads_used']}) | {m['import_torch']:.2f} | {m['generate']:.2f} | "
                     f"{m['ratio']:.2f}x | {m['startup']:.2f} | {m['imports']:.2f} | {m['load_and_rest']:.2f} | "
                     f"{m['compute']:.3f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
