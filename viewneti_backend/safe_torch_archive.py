"""Read a ``torch.save`` zip archive without running any of the code its pickle asks for.

``torch.save`` writes a zip: ``<name>/data.pkl`` (a protocol-2 pickle) plus one raw record per tensor
storage (``<name>/data/<key>``). A pickle can name any importable callable and have it called, so
unpickling an untrusted file is arbitrary code execution. This reader uses a restricted unpickler:

- ``find_class`` resolves only an allowlist: tensor rebuilds (mapped to this module's own functions
  that build CPU tensors from the raw storage bytes), ``torch.<Type>Storage`` markers,
  ``collections.OrderedDict`` and the builtin containers. The caller may add *stand-in* classes
  for named classes it expects (e.g. the ViewNeTI authors' Fourier-encoder module): a stand-in
  only records the state it is given. Any other global -> :class:`UnsafeArchiveError` naming it;
  nothing is called.
- ``BUILD`` (setting an object's state) is allowed only on stand-ins and ``OrderedDict``\\ s,
  so allowlisted functions and classes cannot be modified from inside the pickle.
- ``persistent_load`` accepts only ``('storage', <marker>, key, location, numel)`` whose record
  exists and has exactly ``numel`` elements. Tensors are always loaded on the CPU.

``torch.load(weights_only=True)`` is not enough for the authors' files: it refuses the pickled
encoder module outright (tested), so their B could not even be checked.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import InputError


class UnsafeArchiveError(InputError):
    """The archive asks for something outside the allowlist: refused before anything ran."""


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageType:
    """What ``torch.FloatStorage`` & co. resolve to: just the element dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


class _TensorTypeMarker:
    """What ``torch.Tensor`` / ``torch.nn.Parameter`` resolve to (only usable by the rebuilds below)."""

    def __init__(self, name: str):
        self.name = name


class StandIn:
    """An inert object for an expected class: records the pickled state, runs nothing.

    ``qualname`` is the class the archive named (``module.Name``); ``state`` the dict it was given.
    """

    qualname = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE of the class: record, do nothing
        self.args, self.kwargs, self.state = args, kwargs, {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise UnsafeArchiveError(f"unexpected state for {self.qualname}: {type(state).__name__}")
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"


def _rebuild_tensor_v2(
    storage: torch.Tensor,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor) or storage.dim() != 1:
        raise UnsafeArchiveError("a tensor rebuild without a storage record")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise UnsafeArchiveError(f"a tensor with bad shape {size} / stride {stride}")
    last = int(storage_offset) + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
    if storage_offset < 0 or (all(n > 0 for n in size) and last >= storage.numel()):
        raise UnsafeArchiveError("a tensor that reaches outside its storage")
    return torch.as_strided(storage, size, stride, int(storage_offset)).clone()


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool = False, backward_hooks: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafeArchiveError("a parameter rebuild without a tensor")
    return data


def _rebuild_parameter_with_state(
    data: torch.Tensor, requires_grad: bool, backward_hooks: Any, state: Any
) -> torch.Tensor:
    return _rebuild_parameter(data)


def _rebuild_from_type_v2(func: Callable[..., Any], new_type: Any, args: tuple, state: Any) -> Any:
    if func not in (_rebuild_tensor_v2, _rebuild_parameter) or not isinstance(new_type, _TensorTypeMarker):
        raise UnsafeArchiveError("a tensor subclass rebuild other than Tensor/Parameter")
    return func(*args)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorTypeMarker("Tensor"),
    ("torch.nn.parameter", "Parameter"): _TensorTypeMarker("Parameter"),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle._Unpickler):  # the Python implementation: its BUILD can be restricted
    def __init__(self, data: bytes, records: Callable[[str], bytes], stand_ins: dict[tuple[str, str], type[StandIn]]):
        super().__init__(io.BytesIO(data))
        self._records, self._stand_ins = records, stand_ins
        dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
        dispatch[pickle.BUILD[0]] = _RestrictedUnpickler._load_build  # type: ignore[assignment]
        self.dispatch = dispatch  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # type: ignore[attr-defined]  # protocol-2 pickles name Python 2 modules (__builtin__.set): the standard mapping
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in self._stand_ins:
            return self._stand_ins[key]
        if key in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[key]
        raise UnsafeArchiveError(
            f"refused: the file asks to import '{module}.{name}', which is not a tensor, a container or an "
            "expected module; it was not run and nothing was written (only load files from people you trust "
            "with a program that executes their code)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeArchiveError(f"refused: unexpected persistent id {type(pid).__name__} in the archive")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise UnsafeArchiveError("refused: a storage record of unexpected form")
        raw = self._records(key)
        itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
        if len(raw) != numel * itemsize:
            raise UnsafeArchiveError(f"storage record {key} holds {len(raw)} bytes, expected {numel} x {itemsize}")
        if numel == 0:
            return torch.empty(0, dtype=storage_type.dtype)
        return torch.frombuffer(bytearray(raw), dtype=storage_type.dtype)

    def _load_build(self) -> None:
        stack = self.stack  # type: ignore[attr-defined]
        state = stack.pop()
        inst = stack[-1]
        if isinstance(inst, StandIn):
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict and isinstance(state, dict):
            inst.__dict__.update(state)  # e.g. a state_dict's _metadata
        else:
            raise UnsafeArchiveError(f"refused: the file sets the state of a {type(inst).__name__}")


def load_torch_archive(path: str | Path, stand_ins: dict[str, type[StandIn]] | None = None) -> Any:
    """Unpickle a ``torch.save`` zip archive with the restricted unpickler; tensors on the CPU.

    ``stand_ins``: ``{"module.ClassName": StandIn subclass}`` for classes the caller expects.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(
            f"{path} is not a torch.save zip archive ({exc}): re-save it with torch >= 1.6 (the default format)"
        ) from None
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise InputError(f"{path}: expected exactly one <name>/data.pkl in the archive, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() not in (b"little", b""):
            raise InputError(f"{path}: big-endian archives are not supported")
        data = zf.read(pkls[0])
        members = set(names)

        def records(key: str) -> bytes:
            member = f"{prefix}data/{key}"
            if "/" in key or member not in members:
                raise UnsafeArchiveError(f"refused: storage record {key!r} is not in the archive")
            return zf.read(member)

        by_key: dict[tuple[str, str], type[StandIn]] = {}
        for qualname, cls in (stand_ins or {}).items():
            module, _, name = qualname.rpartition(".")
            by_key[(module, name)] = type(cls.__name__, (cls,), {"qualname": qualname})  # fresh per load
        try:
            return _RestrictedUnpickler(data, records, by_key).load()
        except UnsafeArchiveError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
            raise InputError(f"{path}: the archive's pickle is malformed ({type(exc).__name__}: {exc})") from None
