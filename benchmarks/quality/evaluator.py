"""Attribute evaluator: a small CNN that reads a demo scene's five attributes off an image.

One shared convolutional body, a penultimate feature layer (:meth:`Evaluator.features`, what the
Frechet distance compares) and one classification head per attribute (:data:`ATTRIBUTES`: shape,
colour, size, position, background). It is trained on real synthetic scenes from
:func:`ane_diffusion.demo.shapes.make_dataset` (split "all", with the jitter the renderer draws)
plus mild pixel noise and blur, so that slightly soft decoded images are still read by what they
show; it is checked on fresh clean real images of the train and held-out splits (other seeds).

A metric built on it is only as good as its reading of *real* images: :func:`measure_accuracy`
reports per-attribute accuracy and :func:`is_trusted` demands :data:`TRUST_THRESHOLD` on every
attribute; the harness marks its numbers untrusted otherwise.

The trained evaluator lives in ``benchmarks/quality/evaluator/`` as ``evaluator.safetensors``
(weights) and ``config.json`` (architecture, classes, training settings, measured accuracy):
no pickle. Retrain and re-measure with::

    python -m benchmarks.quality.evaluator --train          # a few minutes on 1 CPU thread
    python -m benchmarks.quality.evaluator --check          # accuracy of the stored one
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ane_diffusion.demo.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, make_dataset

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "size": SIZES,
    "position": POSITIONS,
    "background": BACKGROUNDS,
}
"""Attribute name -> class names, in :class:`Scene` field order: one head each."""

RESOLUTION = 32
TRUST_THRESHOLD = 0.98
"""Minimum accuracy on real images, per attribute and per split, for the metric to be trusted."""

DEFAULT_DIR = Path(__file__).with_name("evaluator")
WEIGHTS_NAME = "evaluator.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "ane-diffusion attribute evaluator"
FORMAT_VERSION = 1

CHECK_SEEDS = {"train": 1001, "heldout": 1002}
"""Seeds of the stored accuracy check: different from the training seed (0) and the tests'."""


@dataclass
class EvaluatorConfig:
    """Architecture of the evaluator; stored in ``config.json``."""

    widths: tuple[int, ...] = (16, 32, 64)
    """Channels of the conv stages; each stage is conv3x3 + ReLU + 2x2 max-pool."""
    feature_dim: int = 64
    resolution: int = RESOLUTION
    classes: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in ATTRIBUTES.items()})

    @classmethod
    def from_dict(cls, data: dict) -> "EvaluatorConfig":
        return cls(widths=tuple(data["widths"]), feature_dim=int(data["feature_dim"]),
                   resolution=int(data["resolution"]), classes={k: list(v) for k, v in data["classes"].items()})


class AttributeNet(nn.Module):
    """Conv body -> flattened map (keeps where things are) -> feature layer -> one head per attribute."""

    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in config.widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.body = nn.Sequential(*layers)
        side = config.resolution // 2 ** len(config.widths)
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, config.feature_dim), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, len(values))
                                    for name, values in config.classes.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features, (B, feature_dim)."""
        return self.neck(self.body(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(x)
        return {name: head(feats) for name, head in self.heads.items()}


def to_tensor(images, resolution: int = RESOLUTION) -> torch.Tensor:
    """uint8 array (N, H, W, 3) or a sequence of PIL images -> float (N, 3, R, R) in [-1, 1].

    Images of another size are resized to ``resolution`` (bilinear up, box down), so the
    evaluator can read a 16x16 test model's output as well as a 32x32 demo model's."""
    from PIL import Image

    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape (N, H, W, 3), got {images.shape}")
        if images.shape[1:3] != (resolution, resolution):
            images = [Image.fromarray(image) for image in images]
    if not isinstance(images, np.ndarray):
        arrays = []
        for image in images:
            image = image.convert("RGB")
            if image.size != (resolution, resolution):
                method = Image.Resampling.BOX if image.size[0] > resolution else Image.Resampling.BILINEAR
                image = image.resize((resolution, resolution), method)
            arrays.append(np.asarray(image))
        images = np.stack(arrays) if arrays else np.zeros((0, resolution, resolution, 3), np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def scene_labels(scenes: Sequence[Scene], classes: dict[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """Class indices of each attribute of ``scenes``: {attribute: int array (N,)}."""
    classes = classes or {k: list(v) for k, v in ATTRIBUTES.items()}
    return {name: np.array([values.index(getattr(s, name)) for s in scenes], dtype=np.int64)
            for name, values in classes.items()}


class Evaluator:
    """A trained :class:`AttributeNet` plus its config and the accuracy measured when it was saved."""

    def __init__(self, net: AttributeNet, config: EvaluatorConfig, metadata: dict | None = None):
        self.net = net.eval()
        self.config = config
        self.metadata = metadata or {}

    # -- reading images ---------------------------------------------------------------------
    @torch.no_grad()
    def analyse(self, images, batch_size: int = 256) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``(predictions, features)``: predicted class index per attribute {name: (N,)} and the
        penultimate features (N, feature_dim), in one pass."""
        x = to_tensor(images, self.config.resolution)
        preds: dict[str, list[np.ndarray]] = {name: [] for name in self.config.classes}
        feats = []
        for start in range(0, x.shape[0], batch_size):
            f = self.net.features(x[start:start + batch_size])
            feats.append(f.numpy())
            for name, head in self.net.heads.items():
                preds[name].append(head(f).argmax(1).numpy())
        dim = self.config.feature_dim
        return ({name: np.concatenate(p) if p else np.zeros(0, np.int64) for name, p in preds.items()},
                np.concatenate(feats).astype(np.float64) if feats else np.zeros((0, dim)))

    def predict(self, images) -> dict[str, np.ndarray]:
        """Predicted class index per attribute: {name: int array (N,)}."""
        return self.analyse(images)[0]

    def features(self, images) -> np.ndarray:
        """Penultimate-layer features (N, feature_dim), float64: the Frechet distance's input."""
        return self.analyse(images)[1]

    def accuracy(self, images, scenes: Sequence[Scene]) -> dict[str, float]:
        """Fraction of images whose attribute matches its scene, per attribute, plus ``"all"``
        (all five right at once)."""
        return score(self.predict(images), scenes, self.config.classes)

    # -- trust --------------------------------------------------------------------------------
    @property
    def stored_accuracy(self) -> dict:
        """Accuracy measured on real images when the evaluator was saved: {split: {attr: acc}}."""
        return self.metadata.get("accuracy", {})

    # -- storage ------------------------------------------------------------------------------
    def save(self, folder: Path = DEFAULT_DIR) -> Path:
        """Write ``evaluator.safetensors`` + ``config.json`` into ``folder``, atomically."""
        from safetensors.torch import save_file

        from ane_diffusion.atomic import atomic_directory

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_directory(folder, overwrite=True) as tmp:
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
            document = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": asdict(self.config),
                        "trust_threshold": TRUST_THRESHOLD, **self.metadata}
            (tmp / CONFIG_NAME).write_text(json.dumps(document, indent=2) + "\n")
            for path in (tmp / WEIGHTS_NAME, tmp / CONFIG_NAME):
                path.chmod(0o644)
            tmp.chmod(0o755)  # mkdtemp makes it private; this folder is meant to be committed
        return folder

    @classmethod
    def load(cls, folder: Path = DEFAULT_DIR) -> "Evaluator":
        """Load a saved evaluator (weights via safetensors, never pickle)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no evaluator in {folder}: train one with "
                                    f"`python -m benchmarks.quality.evaluator --train --out {folder}`")
        document = json.loads((folder / CONFIG_NAME).read_text())
        if document.get("format") != FORMAT:
            raise ValueError(f"{folder / CONFIG_NAME} is not an {FORMAT} config")
        config = EvaluatorConfig.from_dict(document["architecture"])
        net = AttributeNet(config)
        net.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        metadata = {k: v for k, v in document.items()
                    if k not in ("format", "format_version", "architecture", "trust_threshold")}
        return cls(net, config, metadata)


def score(predictions: dict[str, np.ndarray], scenes: Sequence[Scene],
          classes: dict[str, list[str]] | None = None) -> dict[str, float]:
    """Per-attribute accuracy of ``predictions`` against ``scenes``, plus ``"all"``."""
    labels = scene_labels(scenes, classes)
    if not scenes:
        return {**{name: float("nan") for name in labels}, "all": float("nan")}
    correct = {name: predictions[name] == labels[name] for name in labels}
    result = {name: float(c.mean()) for name, c in correct.items()}
    result["all"] = float(np.logical_and.reduce(list(correct.values())).mean())
    return result


def measure_accuracy(evaluator: Evaluator, num_images: int = 2000,
                     seeds: dict[str, int] = CHECK_SEEDS) -> dict[str, dict[str, float]]:
    """Accuracy on fresh real images of each split: {"train": {...}, "heldout": {...}}.

    Each split gets ``num_images`` images of its own scenes (every scene about equally often)
    with the renderer's jitter, drawn with ``seeds[split]``."""
    result = {}
    for split, seed in seeds.items():
        images, _, scenes = make_dataset(num_images, RESOLUTION, seed=seed, split=split)
        result[split] = evaluator.accuracy(images, scenes)
    return result


def is_trusted(accuracy: dict[str, dict[str, float]], threshold: float = TRUST_THRESHOLD) -> bool:
    """Whether every attribute of every split reaches ``threshold`` (``"all"`` is not required)."""
    values = [acc for split in accuracy.values() for name, acc in split.items() if name != "all"]
    return bool(values) and all(v >= threshold for v in values)


# -- training -------------------------------------------------------------------------------------

_BLUR = torch.tensor([1.0, 2.0, 1.0])


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild robustness augmentation: a 3x3 binomial blur on ~30% of images, then per-image Gaussian
    pixel noise of standard deviation up to 0.06 (about 8/255). Neither can change an attribute."""
    batch = x.shape[0]
    kernel = (_BLUR[:, None] * _BLUR[None, :] / 16).expand(3, 1, 3, 3)
    blurred = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    pick = (torch.rand(batch, 1, 1, 1, generator=generator) < 0.3).float()
    x = pick * blurred + (1 - pick) * x
    sigma = torch.rand(batch, 1, 1, 1, generator=generator) * 0.06
    return x + sigma * torch.randn(x.shape, generator=generator)


def train_evaluator(num_images: int = 24000, epochs: int = 4, batch_size: int = 128, lr: float = 3e-3,
                    seed: int = 0, config: EvaluatorConfig | None = None,
                    log: Callable[[str], None] = print) -> Evaluator:
    """Train an evaluator on ``num_images`` real scenes (split "all", seed ``seed``).

    Adam with a one-cycle learning rate, summed cross-entropy over the heads. The returned
    evaluator's metadata holds the training settings and time; :func:`main` adds the accuracy."""
    config = config or EvaluatorConfig()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images, _, scenes = make_dataset(num_images, config.resolution, seed=seed, split="all")
    x_all = to_tensor(images, config.resolution)
    labels = {k: torch.from_numpy(v) for k, v in scene_labels(scenes, config.classes).items()}
    net = AttributeNet(config)
    steps_per_epoch = -(-num_images // batch_size)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(num_images, generator=generator)
        total, count = 0.0, 0
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            logits = net(_augment(x_all[index], generator))
            loss = sum(nn.functional.cross_entropy(logits[k], labels[k][index]) for k in logits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + float(loss.detach()) * len(index), count + len(index)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / count:.4f} ({time.perf_counter() - start:.0f}s)")
    metadata = {"training": {"num_images": num_images, "split": "all", "seed": seed, "epochs": epochs,
                             "batch_size": batch_size, "lr": lr, "augmentation": "binomial blur p=0.3, "
                             "gaussian noise std U(0, 0.06)", "threads": torch.get_num_threads(),
                             "seconds": round(time.perf_counter() - start, 1),
                             "parameters": sum(p.numel() for p in net.parameters())}}
    return Evaluator(net, config, metadata)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.evaluator",
                                     description="Train or check the quality harness's attribute evaluator.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--train", action="store_true", help="train, measure and save an evaluator")
    action.add_argument("--check", action="store_true", help="measure the saved evaluator's accuracy")
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="evaluator folder (default: %(default)s)")
    parser.add_argument("--num-images", type=int, default=24000, help="training images (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--check-images", type=int, default=2000, help="real images per split for the check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from ane_diffusion.memory import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    if args.train:
        evaluator = train_evaluator(args.num_images, args.epochs, seed=args.seed)
    else:
        evaluator = Evaluator.load(args.out)
    accuracy = measure_accuracy(evaluator, args.check_images)
    trusted = is_trusted(accuracy)
    for split, values in accuracy.items():
        print(f"{split:8s} " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
    print(f"trusted (>= {TRUST_THRESHOLD} per attribute): {trusted}")
    if args.train:
        evaluator.metadata["accuracy"] = accuracy
        evaluator.metadata["accuracy_check"] = {"images_per_split": args.check_images, "seeds": CHECK_SEEDS,
                                                "clean real images, jittered": True}
        evaluator.metadata["trusted"] = trusted
        folder = evaluator.save(args.out)
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"saved {folder} ({size / 1024:.0f} KiB)")
    return 0 if trusted else 1


if __name__ == "__main__":
    raise SystemExit(main())
