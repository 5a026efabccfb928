"""A stand-in for `tensorrt.plugin` (TensorRT >= 10.9 with AOT), for tests on machines without TensorRT.

TensorRT cannot be installed in this project's environments. This stand-in exists only so that our
registration code meets the contract TensorRT enforces when a plugin is registered; it re-implements
the checks of NVIDIA's public `tensorrt/plugin/_validate.py` (read, not copied) and refuses what they
refuse:
- every parameter needs an annotation, which is passed to issubclass(): a postponed (string)
  annotation raises TypeError; no default values; TensorDescs first, then attributes of a serializable
  type (int, float, bytes, bool, str), never named outputs / stream / tactic;
- register returns TensorDesc or Tuple[TensorDesc, ...];
- autotune takes exactly (tensors..., attributes used..., outputs) and returns AutoTuneCombination or
  List[AutoTuneCombination] if annotated (a bare `list` is refused);
- aot_impl takes exactly (tensors..., attributes used..., outputs, tactic) and must be annotated to
  return Tuple[str | bytes, str | bytes, KernelLaunchParams, <a SymExprs subclass>];
- KernelLaunchParams has only grid_x/y/z, block_x/y/z and shared_mem; cdiv refuses two ints;
- namespaces: no '.', not "", "trt", "tensorrt" or "std".
Shape expressions carry concrete ints, so tests can read what a launch computes.
"""

from __future__ import annotations

import inspect
import types
import typing

SERIALIZABLE = (int, float, bytes, bool, str)
RESERVED_NAMESPACES = {"", "trt", "tensorrt", "std"}
DISALLOWED_ATTRS = {"outputs", "stream", "tactic"}


class DataType:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


float16, float32 = DataType("HALF"), DataType("FLOAT")


class ShapeExpr:
    def __init__(self, value: int, constant: bool = True) -> None:
        self.value, self._constant = int(value), constant

    def _wrap(self, other, fn):
        other_value = other.value if isinstance(other, ShapeExpr) else other
        constant = self._constant and (other._constant if isinstance(other, ShapeExpr) else True)
        return ShapeExpr(fn(self.value, other_value), constant)

    def __mul__(self, other):
        return self._wrap(other, lambda a, b: a * b)

    __rmul__ = __mul__

    def __add__(self, other):
        return self._wrap(other, lambda a, b: a + b)

    def __floordiv__(self, other):
        return self._wrap(other, lambda a, b: a // b)

    @property
    def is_constant(self) -> bool:
        return self._constant

    def constant_value(self) -> int:
        if not self._constant:
            raise RuntimeError("Not accessible for non-constant shape expressions")
        return self.value


class SymExprs:
    def __init__(self, length: int) -> None:
        self._exprs = [None] * length


class SymInt32:
    def __init__(self, value) -> None:
        self.value = value.value if isinstance(value, (ShapeExpr, SymInt32)) else int(value)


class SymIntExprs(SymExprs):
    @classmethod
    def from_tuple(cls, exprs) -> SymIntExprs:
        inst = cls(len(exprs))
        inst._exprs = [e if isinstance(e, SymInt32) else SymInt32(e) for e in exprs]
        return inst

    def values(self) -> tuple[int, ...]:
        return tuple(e.value for e in self._exprs)


class KernelLaunchParams:
    _FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")

    def __init__(self) -> None:
        for name in self._FIELDS:
            self.__dict__[name] = SymInt32(0 if name == "shared_mem" else 1)

    def __setattr__(self, name, value) -> None:
        if name not in self._FIELDS:
            raise AttributeError(f"KernelLaunchParams object has no attribute '{name}'")
        self.__dict__[name] = SymInt32(value)


def cdiv(first, second) -> ShapeExpr:
    if isinstance(first, int) and isinstance(second, int):
        raise ValueError("Both arguments cannot be 'int's")
    first = first if isinstance(first, ShapeExpr) else ShapeExpr(first)
    return first._wrap(second, lambda a, b: -(-a // b))


class TensorDesc:
    def __init__(self, shape=(), dtype=float32) -> None:
        self.shape_expr = [d if isinstance(d, ShapeExpr) else ShapeExpr(d) for d in shape]
        self.dtype = dtype

    def like(self) -> TensorDesc:
        return TensorDesc(self.shape_expr, self.dtype)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(d.value for d in self.shape_expr)


class AutoTuneCombination:
    def __init__(self, io_types: str | None = None, layouts: str | None = None, tactics=None) -> None:
        self.io_types = [s.strip() for s in io_types.split(",")] if io_types else []
        for t in self.io_types:
            if "|" in t and "*" in t:
                raise ValueError(f"Type '{t}' contains both '|' and '*'")


class _Plugin:
    def __init__(self, tensors: list[str], attrs: dict[str, type], num_outputs: int) -> None:
        self.tensors, self.attrs, self.num_outputs = tensors, attrs, num_outputs
        self.desc = self.autotune = self.aot_impl = None


class StandIn:
    """One registry, with the decorators of `tensorrt.plugin` and the classes they use."""

    float16, float32 = float16, float32
    TensorDesc, ShapeExpr, KernelLaunchParams, SymExprs, SymIntExprs, SymInt32 = (
        TensorDesc, ShapeExpr, KernelLaunchParams, SymExprs, SymIntExprs, SymInt32)
    AutoTuneCombination = AutoTuneCombination
    cdiv = staticmethod(cdiv)

    def __init__(self) -> None:
        self.plugins: dict[str, _Plugin] = {}

    # -- register ---------------------------------------------------------------------------------
    def register(self, plugin_id: str):
        ns, _, name = plugin_id.partition("::")
        if "." in ns or "." in name or ns in RESERVED_NAMESPACES:
            raise ValueError(f"invalid plugin id {plugin_id!r}")

        def wrap(fn):
            sig = inspect.signature(fn)
            tensors, attrs, seen_attr = [], {}, False
            for idx, (pname, p) in enumerate(sig.parameters.items()):
                if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                    raise ValueError(f"Argument {pname} is not a positional-or-keyword or keyword-only arg")
                if p.annotation is inspect.Parameter.empty:
                    raise ValueError(f"Argument {pname} does not have a type annotation")
                if p.default is not inspect.Parameter.empty:
                    raise ValueError(f"Argument {pname} has a default value")
                if issubclass(p.annotation, TensorDesc):  # TypeError for a string annotation, as in TensorRT
                    if seen_attr:
                        raise ValueError("TensorDescs args and attribute args cannot be interspersed")
                    tensors.append(pname)
                    continue
                if idx == 0 or pname in DISALLOWED_ATTRS or p.annotation not in SERIALIZABLE:
                    raise ValueError(f"attribute {pname}: {p.annotation} not allowed")
                seen_attr = True
                attrs[pname] = p.annotation
            ret = sig.return_annotation
            if typing.get_origin(ret) is tuple:
                outs = typing.get_args(ret)
                if not all(issubclass(a, TensorDesc) for a in outs):
                    raise ValueError("Return types can only be TensorDesc or Tuple[TensorDesc]")
            elif not (inspect.isclass(ret) and issubclass(ret, TensorDesc)):
                raise ValueError(f"Return argument is of type {ret}. Return types can only be TensorDesc")
            else:
                outs = (ret,)
            plugin = _Plugin(tensors, attrs, len(outs))
            plugin.desc = fn
            self.plugins[plugin_id] = plugin
            return fn

        return wrap

    # -- autotune and aot_impl --------------------------------------------------------------------
    def _check_params(self, fn, plugin: _Plugin, tail: tuple[str, ...], kind: str) -> inspect.Signature:
        sig = inspect.signature(fn)
        used = []
        for pname, p in sig.parameters.items():
            ann = p.annotation
            if ann is inspect.Parameter.empty:
                if pname in plugin.attrs:
                    used.append(pname)
                continue
            if pname == "outputs":
                descs = all(issubclass(a, TensorDesc) for a in typing.get_args(ann))
                if typing.get_origin(ann) is not tuple or not descs:
                    raise ValueError(f"'outputs' should be of type Tuple[TensorDesc]. Received {ann}.")
            elif pname == "tactic":
                if not issubclass(ann, int):
                    raise ValueError("'tactic' input argument should be an int")
            elif issubclass(ann, TensorDesc):
                if pname not in plugin.tensors:
                    raise ValueError(f"Unexpected tensor '{pname}' in {kind}")
            else:
                if pname not in plugin.attrs or ann != plugin.attrs[pname]:
                    raise ValueError(f"Attribute '{pname}' of {kind} does not match the registration")
                used.append(pname)
        expected = [*plugin.tensors, *(a for a in plugin.attrs if a in used), *tail]
        if list(sig.parameters) != expected:
            raise ValueError(f"Signature of the {kind} function {sig} does not match the expected schema {expected}")
        return sig

    def autotune(self, plugin_id: str):
        def wrap(fn):
            plugin = self.plugins[plugin_id]
            ret = self._check_params(fn, plugin, ("outputs",), "autotune").return_annotation
            if ret is not inspect.Parameter.empty:
                if typing.get_origin(ret) is list:
                    if not all(issubclass(a, AutoTuneCombination) for a in typing.get_args(ret)):
                        raise ValueError(f"Return argument is of type {ret}")
                elif not (inspect.isclass(ret) and issubclass(ret, AutoTuneCombination)):
                    raise ValueError(f"Return argument is of type {ret}. Return types can only be "
                                     "AutoTuneCombination or List[AutoTuneCombination].")
            plugin.autotune = fn
            return fn

        return wrap

    def aot_impl(self, plugin_id: str):
        def str_or_bytes(a) -> bool:
            if typing.get_origin(a) in (typing.Union, types.UnionType):
                return all(x in (str, bytes) for x in typing.get_args(a))
            return a in (str, bytes)

        def wrap(fn):
            plugin = self.plugins[plugin_id]
            ret = self._check_params(fn, plugin, ("outputs", "tactic"), "aot_impl").return_annotation
            if ret is inspect.Parameter.empty:
                raise ValueError("No return annotation found for aot_impl function")
            args = typing.get_args(ret)
            if typing.get_origin(ret) is not tuple or len(args) != 4:
                raise ValueError(f"Return annotation is {ret}. Expected a 4-tuple")
            if not (str_or_bytes(args[0]) and str_or_bytes(args[1])):
                raise ValueError(f"Return annotation {ret}: kernel name and PTX must be str or bytes")
            if not issubclass(args[2], KernelLaunchParams) or not issubclass(args[3], SymExprs):
                raise ValueError(f"Return annotation {ret}: expected KernelLaunchParams and a SymExprs subclass")
            plugin.aot_impl = fn
            return fn

        return wrap
