"""``verify``: PSNR of each converted Core ML component against its PyTorch source.

    python -m ane_diffusion verify --model runs/student --coreml export

Runs every package of the export (Core ML on macOS, the numpy MIL executor elsewhere) and the
original PyTorch module on the same seeded random inputs and prints a table. Exit status 0 when
every component reaches its threshold (float16 35 dB, Apple's bar; compressed ones per
docs/coreml.md), 1 when one does not, 2 on bad input.
"""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="check a Core ML export against its PyTorch model (PSNR)",
                              description="Run each converted component and its PyTorch source on the same "
                                          "random inputs and report PSNR per component.")
    p.add_argument("--model", required=True, help="the model the export was converted from")
    p.add_argument("--coreml", required=True, help="the export folder (ane_diffusion_coreml.json)")
    p.add_argument("--compute-units", default="ALL", choices=("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"),
                   help="Core ML compute units (macOS; ignored by the executor)")
    p.add_argument("--engine", default="auto", choices=("auto", "coreml", "executor"),
                   help="auto: Core ML on macOS, the numpy MIL executor elsewhere")
    p.add_argument("--components", default=None, help="comma-separated subset (default: all in the export)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the report as JSON to this path")
    p.set_defaults(run=run)


def run(args) -> int:
    from ane_diffusion_conversion.contract import read_contract
    from ane_diffusion_conversion.runtime import resolve_engine
    from ane_diffusion_conversion.verify import verify_export

    engine = resolve_engine(args.engine)
    read_contract(args.coreml)  # a folder that is not an export: one error line, before any notice
    if engine == "executor":
        print("notice: running the packages through the numpy MIL executor (Core ML itself needs macOS); "
              "this checks the converted maths, not Core ML's kernels", file=sys.stderr)
    components = args.components.split(",") if args.components else None
    report = verify_export(args.model, args.coreml, compute_units=args.compute_units, engine=engine,
                           components=components, seed=args.seed)
    print(report.table())
    if args.json:
        from ane_diffusion.atomic import atomic_file

        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if not report.ok:
        print(f"FAIL: {report.failures()}", file=sys.stderr)
        return 1
    return 0
