"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint is the folder ``OUTPUT/checkpoint`` (replaced atomically each time)::

    student.safetensors    the student's weights
    ema.safetensors        EMA weights (when EMA is on)
    optimizer.safetensors  every tensor of the optimizer state, keyed "<param index>.<name>"
    rng.safetensors        torch's global RNG states (CPU, and CUDA / MPS when present)
    state.json             counters, settings, LR-scheduler / grad-scaler state, the optimizer's
                           param groups and non-tensor state, loss history, and each file's size

Training randomness does not rely on the global RNG (each update's draws are seeded from
(seed, phase, update)); its state is saved so that code outside the loop sees the same stream.
Loading checks that every file is present, has the recorded size and parses, and raises
:class:`CheckpointError` with one line otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..atomic import atomic_directory

CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 1
STATE_FILE = "state.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupted (one-line message)."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns; tensors are on the CPU."""

    meta: dict
    """Counters, settings, loss history: whatever the engine put in ``meta``."""
    student: dict
    ema: Optional[dict]
    optimizer: dict
    """A torch optimizer ``state_dict`` rebuilt from safetensors + JSON."""
    lr_scheduler: dict
    grad_scaler: Optional[dict]
    rng: dict


def flatten_optimizer(state_dict: dict) -> tuple[dict, dict]:
    """Split an optimizer ``state_dict`` into ``(tensors, json_structure)``."""
    import torch

    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict, structure: dict) -> dict:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entry in structure["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": structure["param_groups"]}


def rng_states() -> dict:
    import torch

    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    if torch.backends.mps.is_available():
        states["mps"] = torch.mps.get_rng_state()
    return states


def restore_rng_states(states: dict) -> None:
    import torch

    torch.set_rng_state(states["torch_cpu"])
    cuda = [states[k] for k in sorted(k for k in states if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "mps" in states and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["mps"])


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_checkpoint(folder: Path, meta: dict, student: dict, optimizer: dict, lr_scheduler: dict,
                    ema: Optional[dict] = None, grad_scaler: Optional[dict] = None) -> Path:
    """Write a checkpoint folder atomically (the previous one stays until the new one is complete)."""
    from safetensors.torch import save_file

    opt_tensors, opt_structure = flatten_optimizer(optimizer)
    files = {"student.safetensors": _cpu(student), "optimizer.safetensors": opt_tensors,
             "rng.safetensors": rng_states()}
    if ema is not None:
        files["ema.safetensors"] = _cpu(ema)
    with atomic_directory(folder, overwrite=True) as tmp:
        for name, tensors in files.items():
            save_file(tensors, str(tmp / name))
        state = {"format": FORMAT_VERSION, "meta": meta, "optimizer": opt_structure,
                 "lr_scheduler": lr_scheduler, "grad_scaler": grad_scaler,
                 "files": {name: (tmp / name).stat().st_size for name in files}}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    return Path(folder)


def read_state(folder: Path) -> dict:
    """``state.json`` of a checkpoint, checked for presence and format."""
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {folder} is corrupted: {STATE_FILE} is not valid JSON ({exc})") from None
    required = ("files", "meta", "optimizer", "lr_scheduler")
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or any(k not in state for k in required):
        raise CheckpointError(f"checkpoint {folder} is corrupted or from another version: bad {STATE_FILE}")
    return state


def _load_tensors(folder: Path, name: str, expected_size: int) -> dict:
    from safetensors.torch import load_file

    from ..names import inside

    path = inside(folder, name, f"checkpoint {folder} is corrupted: {STATE_FILE} names file", CheckpointError)
    if not path.exists():
        raise CheckpointError(f"checkpoint {folder} is incomplete: {name} is missing")
    size = path.stat().st_size
    if size != expected_size:
        raise CheckpointError(f"checkpoint {folder} is corrupted: {name} has {size} bytes, expected {expected_size}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"checkpoint {folder} is corrupted: {name} cannot be read ({exc})") from None


def load_checkpoint(folder: Path) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint`."""
    state = read_state(folder)
    files = state["files"]
    tensors = {name: _load_tensors(folder, name, size) for name, size in files.items()}
    return Checkpoint(meta=state["meta"], student=tensors["student.safetensors"], ema=tensors.get("ema.safetensors"),
                      optimizer=unflatten_optimizer(tensors["optimizer.safetensors"], state["optimizer"]),
                      lr_scheduler=state["lr_scheduler"], grad_scaler=state.get("grad_scaler"),
                      rng=tensors["rng.safetensors"])
