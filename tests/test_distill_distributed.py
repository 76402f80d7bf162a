"""Two data-parallel CPU processes (gloo) under ``accelerate launch``: stage 1 completes, learns,
and the main process alone writes a loadable student.

accelerate 1.x's ``launch --cpu --num_processes 2`` starts ONE process unless an MPI hostfile is
given; two CPU processes are started through torchrun with ``--multi_gpu`` and
``ACCELERATE_USE_CPU=1``, which makes accelerate join them with gloo. Runs in the default suite
(about 30 s); the ``distributed`` mark lets it be selected or skipped.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from ane_diffusion.bundle import resolve_bundle
from ane_diffusion.distill import DistillConfig
from ane_diffusion.distill.data import load_training_set
from ane_diffusion.distill.models import alpha_sigma
from ane_diffusion.distill.stage1 import GuidanceLoss
from ane_diffusion.guidance import STUDENT_W_SCALE, GuidanceEmbedding
from ane_diffusion.schedule import expand_like
from ane_diffusion.student import add_guidance_input
from ane_diffusion.testing import TINY_CORPUS, make_tiny_bundle
from ane_diffusion.torch_models import load_components


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_dataset(folder, count=8):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "manifest.jsonl").write_text("".join(
        json.dumps({"file": f"{i}.png", "caption": TINY_CORPUS[i % len(TINY_CORPUS)]}) + "\n" for i in range(count)))
    return folder


@pytest.mark.distributed
def test_two_process_stage1_run(tmp_path):
    teacher = make_tiny_bundle(tmp_path / "teacher", prediction_type="v_prediction")
    images = write_dataset(tmp_path / "images")
    output = tmp_path / "run"
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    distill = ["-m", "ane_diffusion", "distill", "guidance", "--teacher", str(teacher), "--data", str(images),
               "--output", str(output), "--updates", "40", "--lr", "1e-4", "--batch-size", "2",
               "--w-min", "0", "--w-max", "4", "--guidance-embedding-dim", "32", "--log-every", "5",
               "--checkpoint-every", "20", "--quiet"]
    result = subprocess.run(launch + distill, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(output / "student")]  # printed once, by the main process

    student = resolve_bundle(output / "student")
    assert student.card.training["processes"] == 2 and student.card.training["effective_batch_size"] == 4
    trained = load_components(student).unet
    log = [json.loads(line)["update"] for line in (output / "log.jsonl").read_text().splitlines()]
    assert log == list(range(5, 41, 5))  # one writer

    bundle = resolve_bundle(teacher)
    components = load_components(bundle)
    cfg = DistillConfig(model=str(teacher), output=str(output), data=str(images))
    data = load_training_set(cfg, bundle, components, output / "cache", "cpu")
    x0, cond, uncond = data.batch(np.arange(8))
    t = torch.tensor([30, 150, 300, 450, 600, 750, 900, 999])
    alpha, sigma = alpha_sigma(bundle.schedule, t, "cpu")
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    z = expand_like(alpha, x0) * x0 + expand_like(sigma, x0) * eps
    loss = GuidanceLoss(components.unet, bundle.schedule, "v_prediction", "v_prediction",
                        GuidanceEmbedding(32, STUDENT_W_SCALE), 0.0, 4.0,
                        contextlib.nullcontext)
    initial = add_guidance_input(components.unet, 32)
    with torch.no_grad():
        w = torch.full((8,), 3.0)
        before = loss.loss_at(initial, z, t, cond, uncond, w).item()
        after = loss.loss_at(trained, z, t, cond, uncond, w).item()
    assert after < 0.8 * before, (before, after)


STREAM_DRIVER = '''
import os, sys
from ane_diffusion.distill.data.streams import StreamSet
from ane_diffusion.distill.engine import Engine

rank, stop = os.environ["RANK"], int(os.environ.get("STOP_AT", "-1"))
log = open(os.path.join(os.environ["KEYS_DIR"], f"keys-{rank}.txt"), "a")
original_sample, original_update = StreamSet.next_sample, Engine._update

def next_sample(self):
    sample = original_sample(self)
    log.write(sample[2] + "\\n"); log.flush()
    return sample

def update(self, model, optimizer, scheduler, loss_fn, data, phase, step):
    if step == stop:
        os._exit(17)  # the process dies before this update
    return original_update(self, model, optimizer, scheduler, loss_fn, data, phase, step)

StreamSet.next_sample, Engine._update = next_sample, update
from ane_diffusion.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.distributed
def test_two_processes_stream_every_sample_once_per_epoch_and_resume(tmp_path):
    """A LoRA student (DDP over the adapters) on 4 shards x 6 samples, 2 processes, batch 2 each:
    an epoch is 6 updates. The run dies
    before update 4 (checkpoint at 3: each process 6 samples into its epoch), resumes, and ends at
    update 9 (epoch 1 half done). Each epoch's samples across the processes are every sample once,
    and the resumed stream continues exactly where the checkpoint left it."""
    from ane_diffusion.testing.shards import write_shards

    teacher = make_tiny_bundle(tmp_path / "teacher", prediction_type="v_prediction")
    write_shards(tmp_path / "shards", 4, 6)
    driver = tmp_path / "driver.py"
    driver.write_text(STREAM_DRIVER)
    output = tmp_path / "run"

    def launch(stop, *extra):
        keys = tmp_path / f"keys-{'a' if stop >= 0 else 'b'}"
        keys.mkdir()
        env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "KEYS_DIR": str(keys),
                            "STOP_AT": str(stop)}
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), str(driver),
                   "distill", "guidance", "--teacher", str(teacher), "--shards", str(tmp_path / "shards"),
                   "--output", str(output), "--updates", "9", "--batch-size", "2", "--lr", "1e-4",
                   "--guidance-embedding-dim", "16", "--checkpoint-every", "3", "--shuffle-buffer", "4",
                   "--lora-rank", "4", "--quiet", *extra]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        return result, [(keys / f"keys-{r}.txt").read_text().split() for r in range(2)]

    died, first = launch(4)
    assert died.returncode != 0
    state = json.loads((output / "checkpoint" / "state.json").read_text())["meta"]
    assert state["update"] == 3 and state["stream"] == [{"epoch": 0, "offset": 6}] * 2
    finished, second = launch(-1, "--resume")
    assert finished.returncode == 0, finished.stderr[-3000:]
    streams = [first[r][:6] + second[r] for r in range(2)]  # what each process trained on
    assert all(len(s) == 18 for s in streams)
    everything = {f"{s:05d}{i:04d}" for s in range(4) for i in range(6)}
    epoch0 = streams[0][:12] + streams[1][:12]
    assert sorted(epoch0) == sorted(everything)  # every sample exactly once in epoch 0
    epoch1 = streams[0][12:] + streams[1][12:]
    assert len(set(epoch1)) == 12 and streams[0][:6] != streams[0][12:]
    final = json.loads((output / "checkpoint" / "state.json").read_text())["meta"]["stream"]
    assert final == [{"epoch": 1, "offset": 6}] * 2
    card = resolve_bundle(output / "student").card
    assert card.training["processes"] == 2 and card.training["data"]["kind"] == "shards"
    assert card.training["settings"]["lora_rank"] == 4 and (output / "student-lora.safetensors").is_file()
