"""Run an export folder's packages: Core ML on macOS, the numpy MIL executor anywhere else.

``ComponentRunner(export_dir, contract, "Unet").predict({"sample": ..., ...})`` feeds the inputs
in the dtypes the contract names, runs the component's package, or its chunks in order (chunk 2 gets
the original inputs it needs plus every output of chunk 1 under the same names), and returns the
contract's outputs as float32 arrays.

Engines:

- ``coreml`` (macOS only): ``coremltools.models.MLModel(path, compute_units=...)``, or
  ``CompiledMLModel`` for a compiled ``.mlmodelc`` next to the package; compute units ``ALL``,
  ``CPU_AND_NE``, ``CPU_AND_GPU``, ``CPU_ONLY``.
- ``executor``: :class:`~.mil_executor.MILExecutor`, op by op in numpy (slow; checks the converted
  graph's maths, not Core ML's kernels or compute-unit placement).
- ``auto``: ``coreml`` on macOS, ``executor`` elsewhere.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from .integrity import problems, summary
from .options import component_key

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
ENGINES = ("auto", "coreml", "executor")
DTYPES = {"float16": np.float16, "float32": np.float32, "int32": np.int32}


def resolve_engine(engine: str = "auto") -> str:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "auto":
        return "coreml" if sys.platform == "darwin" else "executor"
    if engine == "coreml" and sys.platform != "darwin":
        raise ValueError("Core ML predictions need macOS; use the executor engine here")
    return engine


def check_compute_units(compute_units: str) -> str:
    units = str(compute_units).upper()
    if units not in COMPUTE_UNITS:
        raise ValueError(f"unknown compute units {compute_units!r}; choose from {', '.join(COMPUTE_UNITS)}")
    return units


class _CoreMLModel:
    """coremltools' model with the executor's interface (input_names, predict)."""

    def __init__(self, package: Path, compute_units: str) -> None:
        from .components import import_coremltools

        ct = import_coremltools()
        units = getattr(ct.ComputeUnit, compute_units)
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
        self.input_names = [var.name for var in spec.description.input]
        self.output_names = [var.name for var in spec.description.output]
        array_type = ct.proto.FeatureTypes_pb2.ArrayFeatureType
        numpy_of = {array_type.FLOAT16: np.float16, array_type.FLOAT32: np.float32,
                    array_type.INT32: np.int32, array_type.DOUBLE: np.float64}
        self._dtypes = {var.name: numpy_of.get(var.type.multiArrayType.dataType, np.float32)
                        for var in spec.description.input}
        compiled = package.with_suffix(".mlmodelc")
        if compiled.exists():
            self._model = ct.models.CompiledMLModel(str(compiled), compute_units=units)
        else:
            self._model = ct.models.MLModel(str(package), compute_units=units)

    def predict(self, data: Mapping[str, np.ndarray]) -> dict:
        feed = {k: np.ascontiguousarray(v, dtype=self._dtypes.get(k, None)) for k, v in data.items()}
        return {k: np.asarray(v) for k, v in self._model.predict(feed).items()}


def open_package(path, engine: str = "auto", compute_units: str = "ALL"):
    """One package as an object with ``input_names``, ``output_names`` and ``predict(dict) -> dict``."""
    engine = resolve_engine(engine)
    if engine == "coreml":
        return _CoreMLModel(Path(path), check_compute_units(compute_units))
    from .components import import_coremltools
    from .mil_executor import MILExecutor

    import_coremltools()  # quietly: the executor reads packages with coremltools
    return MILExecutor(path)


class ComponentRunner:
    """One contract component (``TextEncoder``, ``Unet``, ``VAEDecoder``, ``VAEEncoder``), runnable."""

    def __init__(self, export_dir, contract: dict, name: str, engine: str = "auto", compute_units: str = "ALL"):
        spec = contract["components"].get(name)
        if spec is None:
            raise KeyError(name)
        self.name = name
        self.spec = spec
        self.inputs = {item["name"]: item for item in spec["inputs"]}
        self.outputs = [item["name"] for item in spec["outputs"]]
        self.batch = int(spec.get("batch", spec["inputs"][0]["shape"][0]))
        files = spec.get("chunks") or [spec["file"]]
        missing = [f for f in files if not (Path(export_dir) / f).exists()]
        if missing:
            raise FileNotFoundError(f"{export_dir} lacks {', '.join(missing)} (listed by its contract)")
        record = ((contract.get("converter") or {}).get("components") or {}).get(name) or {}
        damage = summary(problems(export_dir, record, hashes=False))
        if damage:
            raise FileNotFoundError(f"{name} in {export_dir} is damaged: {damage}; convert it again "
                                    f"(convert --components {component_key(name)} --force)")
        self.files = files
        self.overflow = None
        """After :meth:`predict` on the executor: where float16 arithmetic overflowed inside, or None
        (Core ML itself does not expose its intermediates)."""
        self.models = []
        for fname in files:
            try:
                self.models.append(open_package(Path(export_dir) / fname, engine, compute_units))
            except (OSError, RuntimeError, ValueError, KeyError) as exc:  # coremltools / protobuf / blob reader
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise FileNotFoundError(f"{fname} in {export_dir} cannot be loaded ({reason}); convert it "
                                        f"again (convert --components {component_key(name)} --force)") from None

    def predict(self, feeds: Mapping[str, np.ndarray]) -> dict:
        values = {}
        for name, item in self.inputs.items():
            if name not in feeds:
                raise KeyError(f"{self.name}: missing input {name!r}")
            array = np.asarray(feeds[name]).astype(DTYPES[item["dtype"]], copy=False)
            allowed = item.get("shapes") or [item["shape"]]
            if list(array.shape) not in [list(shape) for shape in allowed]:
                shown = " or ".join(str(list(shape)) for shape in allowed)
                raise ValueError(f"{self.name}: input {name!r} has shape {list(array.shape)}, the package takes "
                                 f"{shown}")
            values[name] = array
        self.overflow = None
        for model in self.models:
            out = model.predict({k: v for k, v in values.items() if k in model.input_names})
            values.update(out)
            self.overflow = self.overflow or getattr(model, "overflow", None)
        return {name: np.asarray(values[name], dtype=np.float32) for name in self.outputs}


__all__ = ["COMPUTE_UNITS", "ENGINES", "ComponentRunner", "check_compute_units", "open_package", "resolve_engine"]
