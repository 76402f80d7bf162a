"""Op-by-op numpy executor of a saved Core ML ``.mlpackage`` (ML Program), for parity checks on Linux.

What: ``MILExecutor(path).predict({name: array})`` runs the package's MIL program op by op in numpy and
returns ``{output name: array}``, the same call shape as ``coremltools.models.MLModel.predict``, so
callers can swap one for the other.

Why: ``MLModel.predict`` needs macOS. coremltools can still read a saved package back into a MIL
program on Linux, and most MIL ops carry a numpy ``value_inference()`` (what constant folding uses);
compression ops (``constexpr_*``) carry ``materialized_val_inference()``. The few ops without one
that Stable Diffusion programs use are written out below (``KERNELS``).

Precision: every op's result is stored in the dtype the program declares for its output, so an
fp16 program really runs through fp16 tensors and its ``cast`` ops are honoured, which is what makes
the executor's fp16 error meaningful. Ops that accumulate (conv, matmul, linear, einsum, softmax,
norms, reductions) compute in float32 before rounding to the declared dtype, like the Neural
Engine / GPU do; numpy's own float16 accumulation would be slower and less accurate than hardware.

Not a performance tool (tiny models only) and not a replacement for testing on a Mac: it checks the
converted graph's maths, not Core ML's kernels or compute-unit placement.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Callable, Dict, Mapping

import numpy as np

try:  # torch is optional: it only makes convolutions faster
    import torch
    import torch.nn.functional as _F
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None
    _F = None


# --------------------------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------------------------- #


def _val(op, name: str, default=None):
    """Value of input ``name`` of ``op`` (or its default); None if absent."""
    var = getattr(op, name, None)
    if var is None:
        return default
    return var.val


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _axes(op, rank: int):
    axes = _val(op, "axes")
    if axes is None:
        return tuple(range(rank))
    return tuple(int(a) % rank for a in np.atleast_1d(axes))


def _same_pads(in_sizes, kernel, strides, dilations, lower: bool):
    pads = []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-n // s)  # ceil(n / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        pads.extend([big, small] if lower else [small, big])
    return pads  # [before_0, after_0, before_1, after_1, ...]


def _conv_pads(op, x_shape, kernel, strides, dilations):
    pad_type = _val(op, "pad_type", "valid")
    nd = len(kernel)
    if pad_type == "valid":
        return [0] * (2 * nd)
    if pad_type == "custom":
        return [int(p) for p in _val(op, "pad")]
    if pad_type in ("same", "same_lower"):
        return _same_pads(x_shape[2:], kernel, strides, dilations, lower=pad_type == "same_lower")
    raise NotImplementedError(f"conv pad_type {pad_type!r}")


# --------------------------------------------------------------------------------------------- #
# Convolution (float32): torch if importable, numpy im2col otherwise
# --------------------------------------------------------------------------------------------- #


def _conv_numpy(x, w, b, strides, pads, dilations, groups):
    """N=1 or 2 spatial dims. x: (N, Cin, *S), w: (Cout, Cin/groups, *K)."""
    nd = x.ndim - 2
    if nd == 1:  # treat 1-D as 2-D with a singleton height
        x, w = x[:, :, None, :], w[:, :, None, :]
        strides, dilations, pads = [1, *strides], [1, *dilations], [0, 0, *pads]
    elif nd != 2:
        raise NotImplementedError("numpy conv fallback handles 1-D and 2-D convolutions only")
    n, cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    sh, sw = strides
    dh, dw = dilations
    oh = (x.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (x.shape[3] - (kw - 1) * dw - 1) // sw + 1
    cols = np.empty((n, cin, kh, kw, oh, ow), dtype=np.float32)  # im2col
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
    cout_g = cout // groups
    out = np.empty((n, cout, oh, ow), dtype=np.float32)
    for g in range(groups):
        xg = cols[:, g * cin_g : (g + 1) * cin_g]  # (N, Cin/g, kh, kw, oh, ow)
        wg = w[g * cout_g : (g + 1) * cout_g]  # (Cout/g, Cin/g, kh, kw)
        out[:, g * cout_g : (g + 1) * cout_g] = np.einsum("ncijhw,ocij->nohw", xg, wg, optimize=True)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out[:, :, 0, :] if nd == 1 else out


def _conv(op) -> np.ndarray:
    x, w = _f32(op.x.val), _f32(op.weight.val)
    b = _val(op, "bias")
    b = None if b is None else _f32(b)
    nd = x.ndim - 2
    strides = [int(s) for s in _val(op, "strides", [1] * nd)]
    dilations = [int(d) for d in _val(op, "dilations", [1] * nd)]
    groups = int(_val(op, "groups", 1))
    pads = _conv_pads(op, x.shape, w.shape[2:], strides, dilations)
    if _F is not None and nd in (1, 2, 3):
        pad_width = []
        for i in reversed(range(nd)):  # F.pad wants the last axis first
            pad_width += [pads[2 * i], pads[2 * i + 1]]
        xt = _F.pad(torch.from_numpy(x), pad_width)
        conv = (_F.conv1d, _F.conv2d, _F.conv3d)[nd - 1]
        with torch.no_grad():
            y = conv(xt, torch.from_numpy(w), None if b is None else torch.from_numpy(b), strides, 0, dilations, groups)
        return y.numpy()
    return _conv_numpy(x, w, b, strides, pads, dilations, groups)


def _conv_transpose(op) -> np.ndarray:
    x, w = _f32(op.x.val), _f32(op.weight.val)  # x: (N, Cin, *S), w: (Cin, Cout/groups, *K)
    b = _val(op, "bias")
    nd = x.ndim - 2
    if nd != 2:
        raise NotImplementedError("conv_transpose: only 2-D is implemented")
    strides = [int(s) for s in _val(op, "strides", [1] * nd)]
    dilations = [int(d) for d in _val(op, "dilations", [1] * nd)]
    groups = int(_val(op, "groups", 1))
    pad_type = _val(op, "pad_type", "valid")
    n, cin, h, wd = x.shape
    _, cout_g, kh, kw = w.shape
    full_h = (h - 1) * strides[0] + (kh - 1) * dilations[0] + 1
    full_w = (wd - 1) * strides[1] + (kw - 1) * dilations[1] + 1
    out_shape = op.outputs[0].shape[2:]  # the program's declared spatial size
    if pad_type == "custom":
        pads = [int(p) for p in _val(op, "pad")]
    elif pad_type == "valid":
        pads = [0, 0, 0, 0]
    else:  # same / same_lower: crop the full output to the declared size
        th, tw = full_h - out_shape[0], full_w - out_shape[1]
        lower = pad_type == "same_lower"
        pads = []
        for t in (th, tw):
            small, big = t // 2, t - t // 2
            pads += [big, small] if lower else [small, big]
    cin_g = cin // groups
    full = np.zeros((n, cout_g * groups, full_h, full_w), dtype=np.float32)
    for g in range(groups):
        xg = x[:, g * cin_g : (g + 1) * cin_g]  # (N, Cin/g, H, W)
        for i in range(kh):
            for j in range(kw):
                wg = w[g * cin_g : (g + 1) * cin_g, :, i, j]  # (Cin/g, Cout/g)
                full[
                    :,
                    g * cout_g : (g + 1) * cout_g,
                    i * dilations[0] : i * dilations[0] + (h - 1) * strides[0] + 1 : strides[0],
                    j * dilations[1] : j * dilations[1] + (wd - 1) * strides[1] + 1 : strides[1],
                ] += np.einsum("nchw,co->nohw", xg, wg)
    out = full[:, :, pads[0] : full_h - pads[1], pads[2] : full_w - pads[3]]
    out = out[:, :, : out_shape[0], : out_shape[1]]
    if b is not None:
        out = out + _f32(b).reshape(1, -1, 1, 1)
    return out


# --------------------------------------------------------------------------------------------- #
# Other kernels
# --------------------------------------------------------------------------------------------- #


def _silu(op):
    x = _f32(op.x.val)
    return x / (1.0 + np.exp(-x))


def _sigmoid(op):
    return 1.0 / (1.0 + np.exp(-_f32(op.x.val)))


def _upsample_nearest_neighbor(op):
    x = op.x.val
    sh, sw = float(_val(op, "scale_factor_height", 1)), float(_val(op, "scale_factor_width", 1))
    h, w = x.shape[-2:]
    oh, ow = int(np.floor(h * sh)), int(np.floor(w * sw))
    if sh.is_integer() and sw.is_integer():
        return np.repeat(np.repeat(x, int(sh), axis=-2), int(sw), axis=-1)
    rows = np.minimum((np.arange(oh) / sh).astype(np.int64), h - 1)  # src = floor(dst / scale)
    cols = np.minimum((np.arange(ow) / sw).astype(np.int64), w - 1)
    return x[..., rows[:, None], cols[None, :]]


def _softmax(op):
    x = _f32(op.x.val)
    axis = int(_val(op, "axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _gelu(op):
    x = _f32(op.x.val)
    mode = _val(op, "mode", "EXACT")
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    z = x / np.float32(np.sqrt(2.0))
    if torch is not None:
        erf = torch.special.erf(torch.from_numpy(z)).numpy()
    else:
        from math import erf as _erf

        erf = np.vectorize(_erf, otypes=[np.float32])(z)
    return 0.5 * x * (1.0 + erf)


def _normalize(op, x: np.ndarray, axes: tuple, affine_shape) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps)`` over ``axes``, then the op's optional gamma and beta."""
    eps = float(_val(op, "epsilon", 1e-5))
    mean = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mean).mean(axis=axes, keepdims=True)
    out = (x - mean) / np.sqrt(var + eps)
    gamma, beta = _val(op, "gamma"), _val(op, "beta")
    if gamma is not None:
        out = out * _f32(gamma).reshape(affine_shape)
    if beta is not None:
        out = out + _f32(beta).reshape(affine_shape)
    return out


def _layer_norm(op):
    x = _f32(op.x.val)
    axes = _axes(op, x.ndim)
    return _normalize(op, x, axes, [x.shape[i] if i in axes else 1 for i in range(x.ndim)])


def _instance_norm(op):
    x = _f32(op.x.val)  # (N, C, *D)
    return _normalize(op, x, tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2))


def _batch_norm(op):
    x = _f32(op.x.val)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps = float(_val(op, "epsilon", 1e-5))
    out = (x - _f32(op.mean.val).reshape(shape)) / np.sqrt(_f32(op.variance.val).reshape(shape) + eps)
    gamma, beta = _val(op, "gamma"), _val(op, "beta")
    if gamma is not None:
        out = out * _f32(gamma).reshape(shape)
    if beta is not None:
        out = out + _f32(beta).reshape(shape)
    return out


def _matmul(op):
    x, y = _f32(op.x.val), _f32(op.y.val)
    if _val(op, "transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if _val(op, "transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _linear(op):
    out = np.matmul(_f32(op.x.val), _f32(op.weight.val).T)
    b = _val(op, "bias")
    return out if b is None else out + _f32(b)


def _einsum(op):
    # coremltools' einsum op only carries the equations it accepts (4-D/3-D batched matmul forms);
    # numpy evaluates any of them directly, with broadcasting of singleton axes.
    x, y = (_f32(v.val) for v in op.values)
    equation = op.equation.val
    lhs, out = equation.split("->")
    a, b = lhs.split(",")
    sizes = {}
    for letters, arr in ((a, x), (b, y)):
        for letter, n in zip(letters, arr.shape):
            sizes[letter] = max(sizes.get(letter, 1), n)
    x = np.broadcast_to(x, [sizes[c] for c in a])
    y = np.broadcast_to(y, [sizes[c] for c in b])
    return np.einsum(equation, x, y, optimize=True)


def _gather_nd(op):
    x = op.x.val
    idx = np.asarray(op.indices.val).astype(np.int64)  # (*I, k): k leading axes of x per index
    batch_dims = int(_val(op, "batch_dims", 0))
    if batch_dims == 0:
        return x[tuple(np.moveaxis(idx, -1, 0))]  # (*I, *x.shape[k:])
    batch = idx.shape[:batch_dims]
    xs = x.reshape((-1,) + x.shape[batch_dims:])
    ids = idx.reshape((-1,) + idx.shape[batch_dims:])
    out = np.stack([xi[tuple(np.moveaxis(ii, -1, 0))] for xi, ii in zip(xs, ids)])
    return out.reshape(batch + out.shape[1:])


def _reduce(fn):
    def kernel(op):
        x = _f32(op.x.val)
        keep = bool(_val(op, "keep_dims", False))  # numpy 2 wants a Python bool, not numpy.bool_
        return fn(x, axis=_axes(op, x.ndim), keepdims=keep)

    return kernel


#: op type -> kernel(op) -> numpy value. Ops without ``value_inference`` in coremltools (conv,
#: conv_transpose, silu, upsample_nearest_neighbor, instance_norm, batch_norm, gather_nd) plus ops whose
#: coremltools implementation would accumulate in float16 or trips over numpy 2 (reductions).
def _shape(op) -> np.ndarray:
    """The runtime shape: the declared one is symbolic in a program with flexible input shapes."""
    return np.asarray(np.shape(op.x.val), dtype=np.int32)


def _reshape(op) -> np.ndarray:
    """MIL reshape (0 keeps the input's size on that axis, -1 is inferred) on the runtime shape."""
    x = np.asarray(op.x.val)
    shape = [int(s) for s in np.atleast_1d(op.shape.val)]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


KERNELS: Mapping[str, Callable] = MappingProxyType({
    "reshape": _reshape,
    "shape": _shape,
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "silu": _silu,
    "sigmoid": _sigmoid,
    "upsample_nearest_neighbor": _upsample_nearest_neighbor,
    "softmax": _softmax,
    "gelu": _gelu,
    "layer_norm": _layer_norm,
    "instance_norm": _instance_norm,
    "batch_norm": _batch_norm,
    "gather_nd": _gather_nd,
    "matmul": _matmul,
    "linear": _linear,
    "einsum": _einsum,
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "reduce_prod": _reduce(np.prod),
    "reduce_sum_square": _reduce(lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims)),
    "reduce_l2_norm": _reduce(lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims))),
})


# --------------------------------------------------------------------------------------------- #
# Executor
# --------------------------------------------------------------------------------------------- #


def _np_dtype(var):
    from coremltools.converters.mil.mil import types

    return types.nptype_from_builtin(var.dtype)


def _shape_fits(actual, declared) -> bool:
    """True when ``actual`` fits ``declared``, whose symbolic dimensions (flexible shapes) fit any size."""
    actual, declared = tuple(actual), tuple(declared)
    return len(actual) == len(declared) and all(
        not isinstance(d, (int, np.integer)) or int(a) == int(d) for a, d in zip(actual, declared))


def _set_value(var, value) -> None:
    """Give ``var`` a concrete value in its declared dtype (how value_inference reads its inputs)."""
    if var.shape == () or not hasattr(value, "shape"):
        value = np.asarray(value).astype(_np_dtype(var))
        value = value.item() if value.ndim == 0 and var.shape == () else value
    else:
        value = np.asarray(value).astype(_np_dtype(var), copy=False)
        if not _shape_fits(value.shape, var.shape):
            raise ValueError(f"{var.name}: computed shape {value.shape}, program declares {var.shape}")
    builtin = var.sym_type()
    builtin.val = value
    var._sym_val = builtin


class MILExecutor:
    """Run a saved ``.mlpackage`` op by op in numpy.

    Attributes:
        input_names: the main function's input names, in order.
        output_names: its output names, in order.
    """

    def __init__(self, mlpackage_path: str | os.PathLike, function_name: str = "main") -> None:
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load

        self.overflow = None
        """After :meth:`predict`: the first op whose float16 result overflowed (NaN / +inf), or None."""
        model = ct.models.MLModel(str(mlpackage_path), skip_model_load=True)
        spec = model.get_spec()
        self._program = load(
            spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir
        )
        self._function = self._program.functions[function_name]
        self._inputs = dict(self._function.inputs)  # name -> Var
        self.input_names = list(self._inputs)
        self.output_names = [var.name for var in self._function.outputs]
        self._ops = list(self._function.operations)
        self.op_counts: Dict[str, int] = {}
        for op in self._ops:
            self.op_counts[op.op_type] = self.op_counts.get(op.op_type, 0) + 1
        missing = sorted(
            {
                op.op_type
                for op in self._ops
                if op.op_type not in KERNELS
                and op.op_type != "const"
                and not op.op_type.startswith("constexpr_")
                and "value_inference" not in {k for cls in type(op).__mro__[:-2] for k in cls.__dict__}
            }
        )
        if missing:
            raise NotImplementedError(f"no numpy implementation for MIL ops {missing}")
        nested = sorted({op.op_type for op in self._ops if op.blocks})
        if nested:  # cond / while_loop bodies are not walked
            raise NotImplementedError(f"control-flow ops with nested blocks are not supported: {nested}")
        self._materialize_constants()

    def _materialize_constants(self) -> None:
        """Weights: decompress constexpr ops once; make scalar bool consts Python bools (numpy 2)."""
        for op in self._ops:
            if op.op_type == "const":
                out = op.outputs[0]
                if out.shape == () and isinstance(out.val, np.bool_):
                    _set_value(out, bool(out.val))
            elif op.op_type.startswith("constexpr_"):
                vals = op.materialized_val_inference()
                vals = vals if isinstance(vals, tuple) else (vals,)
                for out, val in zip(op.outputs, vals):
                    _set_value(out, val)

    def predict(self, data: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Same call shape as ``MLModel.predict``: {input name: array} -> {output name: array}."""
        unknown = set(data) - set(self._inputs)
        if unknown:
            raise KeyError(f"unknown inputs {sorted(unknown)}; expected {self.input_names}")
        for name, var in self._inputs.items():
            if name not in data:
                raise KeyError(f"missing input {name!r}")
            value = np.asarray(data[name])
            if not _shape_fits(value.shape, var.shape):
                raise ValueError(f"input {name!r}: shape {value.shape}, program expects {var.shape}")
            _set_value(var, value)
        self.overflow = None
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is recorded (self.overflow), not warned
            self._run_ops()
        return {var.name: np.array(var.val) for var in self._function.outputs}

    def _run_ops(self) -> None:
        for op in self._ops:
            if op.op_type == "const" or op.op_type.startswith("constexpr_"):
                continue
            kernel = KERNELS.get(op.op_type)
            try:
                vals = kernel(op) if kernel is not None else op.value_inference()
            except Exception as exc:  # name the op: a bare numpy error deep in a program is unreadable
                raise RuntimeError(f"MIL op {op.name!r} ({op.op_type}) failed: {exc}") from exc
            vals = vals if isinstance(vals, (tuple, list)) and len(op.outputs) > 1 else (vals,)
            for out, val in zip(op.outputs, vals):
                if val is None:
                    raise RuntimeError(f"MIL op {op.name!r} ({op.op_type}) produced no value")
                _set_value(out, val)
                if self.overflow is None:
                    self._note_overflow(op, out)

    def _note_overflow(self, op, out) -> None:
        """Record the first float16 op whose result holds NaN or +inf (``self.overflow``, a phrase
        naming the op): float16 arithmetic overflowed there. Later ops may turn it back into finite
        but meaningless values (a variance of inf normalises everything to 0: a flat, black image),
        so the outputs alone do not show it. -inf is left alone: attention masks use it on purpose."""
        value = out.val
        if not isinstance(value, np.ndarray) or value.dtype != np.float16:
            return
        if np.isnan(value).any() or np.isposinf(value).any():
            self.overflow = f"op {op.name!r} ({op.op_type})"
