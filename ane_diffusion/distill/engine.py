"""The training engine both stages share: devices, optimisation, checkpoints, logs.

* Devices and processes come from accelerate's :class:`~accelerate.Accelerator` (MPS when present,
  then CUDA, then CPU; ``accelerate launch --num_processes N`` runs data-parallel unchanged). Only
  the main process writes files, logs and progress.
* One update = ``grad_accum`` micro-batches per process, gradient clipping, AdamW, a linear LR
  schedule (optional warm-up, then decay to 0 at the end of the phase) and optional EMA.
* Each micro-batch -- example indices and the generator for t, w and noise -- is a pure function
  of (seed, phase, update, micro-batch, process), so a resumed run continues exactly.
* Checkpoints (:mod:`.checkpoint`) every ``checkpoint_every`` updates and at the end of each
  phase; ``resume`` continues from the last one, losing at most ``checkpoint_every`` updates.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..atomic import OutputError
from .checkpoint import CHECKPOINT_DIR, CheckpointError, load_checkpoint, restore_rng_states, save_checkpoint
from .config import DistillConfig
from .data import TrainingSet, load_training_set
from .precision import check_precision, default_device_type

LOG_FILE = "log.jsonl"
RECENT_LOSSES = 50
"""The card's final loss is the mean over this many last updates."""


@dataclass
class MicroBatch:
    """One process's micro-batch: data on the device, and the CPU generator for t, w and noise."""

    x0: "object"
    """(B, C, h, w) clean latents."""
    cond: "object"
    """(B, 77, D) caption embeddings."""
    uncond: "object"
    """(B, 77, D) empty-prompt embeddings."""
    generator: "object"
    device: "object"


LossFn = Callable[["object", MicroBatch], "object"]
"""``loss_fn(student, micro_batch) -> scalar loss``; the student may be wrapped (DDP)."""


@dataclass
class PhaseResult:
    model: "object"
    """The trained student (EMA weights when EMA is on), unwrapped, float32."""
    summary: dict
    """updates, initial/final loss, effective batch: goes into the card's ``training``."""


def parameter_groups(model, lr: float, lr_scales: Optional[dict] = None) -> list[dict]:
    """AdamW parameter groups: everything at ``lr``, except parameters whose name starts with a prefix
    of ``lr_scales`` (``{prefix: multiplier}``), which get ``lr x multiplier`` in a group of their own.
    Frozen parameters (``requires_grad`` False, e.g. a LoRA student's base weights) are left out, and
    so are empty groups; the order is fixed (the optimizer state of a resumed run matches)."""
    scales = dict(lr_scales or {})
    groups = {prefix: [] for prefix in scales}
    rest = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = next((p for p in scales if name.startswith(p)), None)
        (groups[prefix] if prefix is not None else rest).append(param)
    return [{"params": rest, "lr": lr}] + [{"params": params, "lr": lr * scales[prefix]}
                                           for prefix, params in groups.items() if params]


def lr_factor(update: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` updates, then linear decay reaching 0 after ``total``."""
    if update < warmup:
        return (update + 1) / warmup
    return max(0.0, (total - update) / (total - warmup))


class EMA:
    """Exponential moving average of the student's parameters (float32), with the usual warm-up
    ``decay_u = min(decay, (1 + u) / (10 + u))`` so that short runs are not dominated by the start."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad}

    def update(self, model, update: int) -> None:
        import torch

        decay = min(self.decay, (1 + update) / (10 + update))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.shadow:
                    self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)

    def copy_to(self, model) -> None:
        import torch

        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.shadow:
                    p.copy_(self.shadow[name])


def student_state(student) -> dict:
    """What a checkpoint keeps of the student: every tensor, or a LoRA student's trainable ones."""
    from ..student_lora import is_lora, trainable_state

    return trainable_state(student) if is_lora(student) else student.state_dict()


def micro_batch_seed(*parts: int) -> int:
    """A 64-bit seed from integers (seed, phase, update, micro-batch, process)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


class Engine:
    """One distillation run in ``cfg.output``: the accelerator, the run folder, the training loop."""

    def __init__(self, cfg: DistillConfig, stage: str):
        from accelerate import Accelerator

        self.cfg, self.stage = cfg, stage
        # accelerate itself fails on what the device cannot run (and fp16 on a CPU leaves files): ask first
        check_precision(cfg.mixed_precision, default_device_type())
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.accelerator.num_processes:  # else every process would write the same files
            raise ValueError(f"{launched} processes were launched but accelerate joined "
                             f"{self.accelerator.num_processes}; without GPUs launch with ACCELERATE_USE_CPU=1 "
                             "accelerate launch --multi_gpu --num_processes N")
        check_precision(cfg.mixed_precision, self.accelerator.device)  # before anything is written
        self.output = Path(cfg.output)
        self.checkpoint = None
        self._prepare_output()

    # -- processes ----------------------------------------------------------------------------
    @property
    def device(self):
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def half_dtype(self):
        """The mixed-precision dtype (teachers are cast to it), or None."""
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision)

    def autocast(self):
        """Mixed-precision context for the teacher's forward passes (the student is prepared)."""
        return self.accelerator.autocast()

    def on_main(self, fn: Callable, *args, **kwargs):
        """Run ``fn`` on the main process only, then wait for all processes."""
        result = fn(*args, **kwargs) if self.is_main else None
        self.accelerator.wait_for_everyone()
        return result

    # -- run folder ---------------------------------------------------------------------------
    def _prepare_output(self) -> None:
        out, cfg = self.output, self.cfg
        taken = ([p for p in (out / CHECKPOINT_DIR, out / LOG_FILE, out / "student") if p.exists()]
                 + sorted(out.glob("steps-*")) + sorted(out.glob("*-lora.safetensors"))) if out.is_dir() else []
        if out.exists() and not out.is_dir():
            raise OutputError(f"--output {out} exists and is not a folder")
        if cfg.resume:
            self.checkpoint = load_checkpoint(out / CHECKPOINT_DIR)
            self._check_resumable(self.checkpoint.meta)
        elif taken and not cfg.overwrite:
            raise OutputError(f"{out} already holds a run ({taken[0].name}); pass --resume to continue it "
                              "or --overwrite to start over")
        self.accelerator.wait_for_everyone()
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
            for path in taken if cfg.overwrite else []:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        self.accelerator.wait_for_everyone()
        if self.checkpoint is not None:
            restore_rng_states(self.checkpoint.rng)
            self.on_main(self._truncate_log)

    def _check_resumable(self, meta: dict) -> None:
        missing = [k for k in ("stage", "phase_index", "update", "settings", "losses", "processes") if k not in meta]
        if missing:
            raise CheckpointError(f"checkpoint in {self.output} is corrupted: state.json lacks {', '.join(missing)}")
        if meta["stage"] != self.stage:
            raise CheckpointError(f"the checkpoint in {self.output} is from a {meta['stage']} run, "
                                  f"not {self.stage}")
        saved, current = meta["settings"], self.cfg.training_settings()
        changed = sorted(k for k in current if saved.get(k) != current[k])
        if changed:
            raise CheckpointError(f"--resume needs the interrupted run's settings; changed: {', '.join(changed)}")
        if meta["processes"] != self.accelerator.num_processes:
            warnings.warn(f"resuming with {self.accelerator.num_processes} processes instead of "
                          f"{meta['processes']}: the data order will differ from an uninterrupted run",
                          stacklevel=2)

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint (by the run that was interrupted)."""
        from ..atomic import atomic_file

        path = self.output / LOG_FILE
        if not path.exists():
            return
        meta = self.checkpoint.meta
        keep = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                if (record["phase_index"], record["update"]) <= (meta["phase_index"], meta["update"]):
                    keep.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        with atomic_file(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in keep))

    def resume_position(self) -> Optional[tuple[int, int]]:
        """``(phase_index, updates done)`` of the loaded checkpoint, or None for a fresh run."""
        if self.checkpoint is None:
            return None
        return self.checkpoint.meta["phase_index"], self.checkpoint.meta["update"]

    # -- data ---------------------------------------------------------------------------------
    def training_set(self, bundle, components):
        """The run's batches: a :class:`~.data.streams.StreamSet` for ``--shards`` (this process's
        share of the stream), else the cached in-memory :class:`TrainingSet` (the main process
        builds it, the others then read it)."""
        cache = Path(self.cfg.cache_dir) if self.cfg.cache_dir else self.output / "cache"
        if self.cfg.shards is not None:
            return self._stream(bundle, components, cache)
        with self.accelerator.main_process_first():
            return load_training_set(self.cfg, bundle, components, cache, self.device, write_cache=self.is_main)

    def _stream(self, bundle, components, cache: Path):
        from .data import DataError
        from .data.cache import ShardEncoder
        from .data.streams import StreamSet

        cfg, acc = self.cfg, self.accelerator
        size = int(cfg.resolution or bundle.default_size)
        if size % bundle.vae_scale_factor:
            raise DataError(f"--resolution {size} is not a multiple of the VAE factor {bundle.vae_scale_factor}")
        encoder = ShardEncoder(bundle, components, size, self.device, cache, cfg.bad_data)
        stream = StreamSet(cfg.shards, encoder, cfg.seed, acc.process_index, acc.num_processes, cfg.shuffle_buffer)
        saved = self.checkpoint.meta.get("stream") if self.checkpoint is not None else None
        if saved:
            if len(saved) == acc.num_processes:
                stream.load_state(saved[acc.process_index])
            else:  # another process count reads other shards: restart the earliest saved epoch
                stream.load_state({"epoch": min(s["epoch"] for s in saved), "offset": 0})
        return stream

    def _stream_states(self, data) -> Optional[list]:
        """Every process's stream position (a collective: all processes call it), or None."""
        import torch

        if not hasattr(data, "state"):
            return None
        state = data.state()
        mine = torch.tensor([state["epoch"], state["offset"]], dtype=torch.long, device=self.device)
        every = self.accelerator.gather(mine).view(-1, 2).tolist()
        return [{"epoch": int(e), "offset": int(o)} for e, o in every]

    def micro_batch(self, data, phase_index: int, update: int, micro: int) -> MicroBatch:
        """The examples and the random generator of one micro-batch (a pure function of its position)."""
        import torch

        acc, cfg = self.accelerator, self.cfg
        position = ((update * cfg.grad_accum + micro) * acc.num_processes + acc.process_index) * cfg.batch_size
        x0, cond, uncond = data.micro_batch(position, cfg.batch_size, cfg.seed)
        generator = torch.Generator().manual_seed(
            micro_batch_seed(cfg.seed, phase_index, update, micro, acc.process_index))
        return MicroBatch(x0.to(self.device), cond.to(self.device), uncond.to(self.device), generator, self.device)

    # -- training -----------------------------------------------------------------------------
    def train_phase(self, phase_index: int, label: str, student, loss_fn: LossFn, data: TrainingSet,
                    lr_scales: Optional[dict] = None) -> PhaseResult:
        """Train ``student`` (float32, on any device) for ``cfg.updates`` updates, resuming from the
        loaded checkpoint when it belongs to this phase. Returns the unwrapped trained student.

        ``lr_scales``: ``{parameter-name prefix: multiplier}``; matching parameters get their own
        AdamW group at ``cfg.lr x multiplier`` (same warm-up and decay)."""
        import torch

        cfg, acc = self.cfg, self.accelerator
        student = student.to(self.device)
        if cfg.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        # A LoRA student trains its adapters and guidance projection only (the rest is frozen).
        optimizer = torch.optim.AdamW(parameter_groups(student, cfg.lr, lr_scales), lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(u, cfg.warmup, cfg.updates))
        ema = EMA(student, cfg.ema_decay) if cfg.ema_decay else None
        history = {"initial": None, "recent": []}
        start = 0
        ckpt = self.checkpoint
        if ckpt is not None and ckpt.meta["phase_index"] == phase_index:
            start, history = self._restore(ckpt, student, optimizer, scheduler, ema)
        model, optimizer = acc.prepare(student, optimizer)
        recent = deque(history["recent"], maxlen=RECENT_LOSSES)
        state = {"phase_index": phase_index, "label": label, "initial": history["initial"], "recent": recent}
        bar = self._progress(label, start)
        tick, logged = time.perf_counter(), []
        for update in range(start, cfg.updates):
            loss = self._update(model, optimizer, scheduler, loss_fn, data, phase_index, update)
            if ema is not None:
                ema.update(acc.unwrap_model(model), update)
            state["initial"] = loss if state["initial"] is None else state["initial"]
            recent.append(loss)
            logged.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            done = update + 1
            if done % cfg.log_every == 0 or done == cfg.updates:
                now = time.perf_counter()
                self.on_main(self._log, state, done, float(np.mean(logged)), scheduler.get_last_lr()[0],
                             len(logged) / (now - tick))
                tick, logged = now, []
            if done % cfg.checkpoint_every == 0 or done == cfg.updates:
                state["stream"] = self._stream_states(data)
                self._checkpoint(state, done, model, optimizer, scheduler, ema)
        bar.close()
        trained = acc.unwrap_model(model, keep_fp32_wrapper=False)
        if ema is not None:
            ema.copy_to(trained)
        acc.free_memory()
        self.checkpoint = None
        return PhaseResult(trained, self._summary(state))

    def _update(self, model, optimizer, scheduler, loss_fn: LossFn, data, phase_index: int, update: int) -> float:
        """One optimiser update over ``grad_accum`` micro-batches; returns the loss (mean over processes)."""
        import torch

        cfg, acc = self.cfg, self.accelerator
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            sync = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                loss = loss_fn(model, self.micro_batch(data, phase_index, update, micro))
                acc.backward(loss / cfg.grad_accum)
            total += loss.detach().float() / cfg.grad_accum
        value = float(acc.reduce(total, reduction="mean"))
        if not math.isfinite(value) and cfg.mixed_precision != "fp16":  # fp16: the grad scaler skips the step
            from ..checks import NonFiniteError

            raise NonFiniteError(f"the distillation loss is not finite ({value}) at update {update + 1} of phase "
                                 f"{phase_index + 1}: the teacher's weights or the training set hold NaN/inf, or "
                                 "the learning rate is too high (lower --lr)")
        acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return value

    def _restore(self, ckpt, student, optimizer, scheduler, ema) -> tuple[int, dict]:
        """Load weights, optimizer, LR schedule, EMA and grad scaler; returns (update, loss history)."""
        from ..student_lora import is_lora

        if is_lora(student):  # the checkpoint holds the trainable tensors only
            names = {name for name, p in student.named_parameters() if p.requires_grad}
            if set(ckpt.student) != names:
                raise CheckpointError("the checkpoint's student does not match this LoRA student")
            student.load_state_dict(ckpt.student, strict=False)
        else:
            student.load_state_dict(ckpt.student)
        optimizer.load_state_dict(ckpt.optimizer)
        scheduler.load_state_dict(ckpt.lr_scheduler)
        if ema is not None:
            if ckpt.ema is None:
                raise CheckpointError("the checkpoint has no EMA weights")
            ema.load_state_dict(ckpt.ema)
        if self.accelerator.scaler is not None and ckpt.grad_scaler:
            self.accelerator.scaler.load_state_dict(ckpt.grad_scaler)
        return ckpt.meta["update"], ckpt.meta["losses"]

    def _checkpoint(self, state: dict, done: int, model, optimizer, scheduler, ema) -> None:
        acc = self.accelerator
        if self.is_main:
            meta = {"stage": self.stage, "phase_index": state["phase_index"], "label": state["label"],
                    "update": done, "updates": self.cfg.updates, "processes": acc.num_processes,
                    "settings": self.cfg.training_settings(),
                    "losses": {"initial": state["initial"], "recent": list(state["recent"])},
                    "stream": state.get("stream")}
            scaler = acc.scaler.state_dict() if acc.scaler is not None else None
            save_checkpoint(self.output / CHECKPOINT_DIR, meta, student_state(acc.unwrap_model(model)),
                            optimizer.state_dict(), scheduler.state_dict(),
                            ema=ema.shadow if ema is not None else None, grad_scaler=scaler)
        acc.wait_for_everyone()

    def _log(self, state: dict, done: int, loss: float, lr: float, rate: float) -> None:
        record = {"stage": self.stage, "phase": state["label"], "phase_index": state["phase_index"],
                  "update": done, "loss": loss, "lr": lr, "updates_per_s": rate, "time": time.time()}
        with (self.output / LOG_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _progress(self, label: str, start: int):
        from tqdm import tqdm

        return tqdm(total=self.cfg.updates, initial=start, desc=label, unit="update", dynamic_ncols=True,
                    disable=not (self.is_main and self.cfg.progress))

    def _summary(self, state: dict) -> dict:
        cfg, acc = self.cfg, self.accelerator
        return {"updates": cfg.updates, "initial_loss": state["initial"],
                "final_loss": float(np.mean(state["recent"])) if state["recent"] else None,
                "final_loss_window": len(state["recent"]), "processes": acc.num_processes,
                "effective_batch_size": cfg.batch_size * cfg.grad_accum * acc.num_processes,
                "mixed_precision": acc.mixed_precision, "device": self.device.type}

