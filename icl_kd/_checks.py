"""Input validation shared by the public functions.

Shape and dtype checks run in Python on static shapes, so they raise while
tracing and therefore also under ``jax.jit``. Value checks (finiteness,
positivity) can only run on concrete arrays: they raise when a function is
called eagerly; under a transformation the public functions instead poison
their result with NaN (see :func:`poison_if_nonfinite`), so a non-finite input
never yields a silently finite number. The same value checks become errors
under ``jax.jit`` and ``jax.vmap`` on request: wrap the function with
:func:`checked` (``jax.experimental.checkify``).

Dtype policy: every array argument must be float32 or float64. float16 and
bfloat16 are refused (TypeError naming the argument): the exact identities are
checked to 1e-12 (float64) and 1e-5 (float32), and half precision (relative
rounding 1e-3 to 8e-3) cannot meet either. Arguments named ``dtype`` default
to the type JAX gives a new float array (float64 when ``jax_enable_x64`` is
on, float32 otherwise; :func:`default_float_dtype`). A float64 request while
x64 is off (``dtype=jnp.float64``, or a NumPy float64 array) is computed in
float32 and says so with a :class:`Float64TruncatedWarning` attributed to the
caller's line: under Python's default warning filter it is shown once per
calling line, every line that asks for float64 is told (turn it into an error
with ``warnings.simplefilter("error", icl_kd.Float64TruncatedWarning)``).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


class Float64TruncatedWarning(UserWarning):
  """A float64 input was computed in float32 because ``jax_enable_x64`` is off."""


_LIBRARY_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (jax,))
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Frames skipped to find the caller's line: this package, JAX (a call traced under jit),
# and the wrappers of a runtime type checker (jaxtyping, beartype), if one is installed.
_WRAPPER_PARTS = (os.sep + "jaxtyping" + os.sep, os.sep + "beartype" + os.sep, "<@beartype")


def _caller_stacklevel() -> int:
  """The ``stacklevel`` of :func:`warnings.warn` that names the first frame outside the library.

  Counted from the function calling this one (level 1 is its caller's ``warn``).
  """
  frame, level = sys._getframe(2), 1
  while frame is not None:
    name = frame.f_code.co_filename
    if not (name.startswith(_PACKAGE_DIR) or name.startswith(_LIBRARY_DIRS)
            or any(part in name for part in _WRAPPER_PARTS)):
      return level
    frame, level = frame.f_back, level + 1
  return level


def _warn_truncated(name: str, *, requested: bool = False) -> None:
  """Warns, at the caller's line, that a float64 request is computed in float32 (x64 off).

  ``requested``: ``name`` is a ``dtype`` argument set to float64 (else a float64 array).
  """
  what = (f"{name}=float64 was requested" if requested else f"{name} is a float64 array")
  warnings.warn(
      f"{what} but jax_enable_x64 is off, so it is computed in float32 "
      "(~1e-7 relative rounding). Call jax.config.update('jax_enable_x64', True) before "
      "creating any array (or set JAX_ENABLE_X64=1) for float64, or pass float32 to silence "
      "this warning (shown once per calling line).", Float64TruncatedWarning,
      stacklevel=_caller_stacklevel() + 1)


def default_float_dtype() -> jnp.dtype:
  """The dtype JAX gives a new float array: float64 under x64, float32 otherwise."""
  return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


_HALF = "float16/bfloat16 (and other sub-32-bit floats) are not supported"


def resolve_dtype(dtype: Any, name: str = "dtype") -> jnp.dtype:
  """``None`` -> :func:`default_float_dtype`; float32/float64 accepted; others refused.

  float64 requested while x64 is off resolves to float32, with a
  :class:`Float64TruncatedWarning` at the caller's line (every call site is told).
  """
  if dtype is None:
    return default_float_dtype()
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
  if not jnp.issubdtype(dt, jnp.floating) or dt.itemsize not in (4, 8):
    raise TypeError(f"{name} must be float32 or float64, got {dt}"
                    + (f" ({_HALF})" if jnp.issubdtype(dt, jnp.floating) else ""))
  if dt.itemsize == 8 and not jax.config.jax_enable_x64:
    _warn_truncated(name, requested=True)
    return jnp.dtype(jnp.float32)
  return dt


def check_key(key: Any, name: str = "key") -> Any:
  """Checks that ``key`` is one JAX PRNG key: ``jax.random.key(seed)`` (or a legacy uint32 key).

  Runs on static shapes and dtypes only, so it also raises under jit/vmap.
  Returns ``key`` unchanged.
  """
  hint = "e.g. jax.random.key(0)"
  if not isinstance(key, (jax.Array, np.ndarray)):
    what = f"{type(key).__name__} {key!r}" if isinstance(key, (int, float, str)) else type(
        key).__name__
    raise TypeError(f"{name} must be a JAX PRNG key ({hint}), got {what}")
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    shape = key.shape
  elif key.dtype == np.uint32:
    try:
      shape = jax.eval_shape(jax.random.wrap_key_data, key).shape
    except (TypeError, ValueError):
      raise TypeError(f"{name} must be a JAX PRNG key ({hint}); got a uint32 array of shape "
                      f"{key.shape}, which is not legacy key data") from None
  else:
    raise TypeError(f"{name} must be a JAX PRNG key ({hint}), got an array of dtype {key.dtype} "
                    f"and shape {key.shape}")
  if shape != ():
    raise ValueError(f"{name} must be a single PRNG key, got a batch of keys of shape {shape}; "
                     "pass one key (index or split the batch)")
  return key


def is_concrete(x: Any) -> bool:
  """True when ``x`` holds values (not a tracer under jit/vmap/grad).

  A concrete array captured by a jitted function counts as concrete; value
  checks on it therefore run in NumPy (a jnp operation would be staged).
  """
  return not isinstance(x, jax.core.Tracer)


def as_float_array(name: str, x: Any, *, ndim: int | None = None) -> jax.Array:
  """Converts ``x`` to an array and checks it is floating with rank ``ndim``."""
  if isinstance(x, (bool, np.bool_)):
    raise TypeError(f"{name} must be a floating array, got a bool")
  if not isinstance(x, (jax.Array, np.ndarray, float, int, np.generic, list, tuple)):
    raise TypeError(f"{name} must be an array, got {type(x).__name__}")
  src = getattr(x, "dtype", None) if isinstance(x, (np.ndarray, np.generic)) else None
  arr = jnp.asarray(x)
  if not jnp.issubdtype(arr.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype (float32 or float64), got {arr.dtype}")
  if arr.dtype.itemsize < 4:
    raise TypeError(f"{name} must be float32 or float64, got {arr.dtype} ({_HALF}: half "
                    "precision cannot meet the identities' tolerances; cast with "
                    ".astype(jnp.float32))")
  if src is not None and np.dtype(src).itemsize > arr.dtype.itemsize and jnp.issubdtype(
      src, np.floating):
    _warn_truncated(name)
  if ndim is not None and arr.ndim != ndim:
    raise ValueError(f"{name} must have rank {ndim}, got shape {arr.shape}")
  return arr


def check_dim(name: str, arr: jax.Array, axis: int, expected: int, what: str) -> None:
  if arr.shape[axis] != expected:
    raise ValueError(
        f"{name} has shape {arr.shape}: expected axis {axis} of size {expected} ({what}), "
        f"got {arr.shape[axis]}")


def check_same_dtype(**arrays: jax.Array) -> jnp.dtype:
  """All arrays share one floating dtype; returns it."""
  dtypes = {name: a.dtype for name, a in arrays.items()}
  uniq = set(dtypes.values())
  if len(uniq) > 1:
    listing = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
    raise TypeError(f"all inputs must share one floating dtype; got {listing}")
  return next(iter(uniq))


def check_finite(**arrays: jax.Array) -> None:
  """Raises ValueError naming the first non-finite concrete argument."""
  for name, a in arrays.items():
    if is_concrete(a) and a.size:
      finite = np.isfinite(np.asarray(a))
      if not finite.all():
        raise ValueError(f"{name} contains {int(finite.size - finite.sum())} non-finite value(s) "
                         "(NaN or inf); expected finite values")


def scalar_param(name: str, value: Any, dtype, *, positive: bool = True,
                 allow_zero: bool = False) -> jax.Array:
  """Converts a scalar hyperparameter; checks its sign when concrete."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a real scalar, got a bool")
  arr = jnp.asarray(value)
  if arr.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
  if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
    raise TypeError(f"{name} must be a real scalar, got dtype {arr.dtype}")
  if isinstance(value, (int, float, np.number, np.ndarray)) or is_concrete(arr):
    v = float(np.asarray(value if not isinstance(value, jax.Array) else arr))
    if not np.isfinite(v):
      raise ValueError(f"{name} must be finite, got {v}")
    if positive and (v < 0 or (v == 0 and not allow_zero)):
      need = ">= 0" if allow_zero else "> 0"
      raise ValueError(f"{name} must be {need}, got {v}")
  return arr.astype(dtype)


def all_finite(*arrays: jax.Array) -> jax.Array:
  """A traced bool: every element of every array is finite.

  Computed as isfinite(sum(a * 0)): a * 0 is 0 for a finite element and NaN
  for +-inf or NaN, so the sum is finite exactly when every element is, and it
  cannot overflow (its terms are zeros). A float reduction rather than
  all(isfinite(a)): the compiled C1 sweep of ``python -m proofs_check`` takes
  ~30% less time per instance this way (``benchmarks/profile_c1.py``), and the
  default report is the same in every number.
  """
  ok = jnp.asarray(True)
  for a in arrays:
    if a.size:
      ok = ok & jnp.isfinite(jnp.sum(a * 0))
  return ok


def poison_if_nonfinite(out, *inputs: jax.Array, positive: tuple = (),
                        names: Sequence[str] = (), positive_names: Sequence[str] = ()):
  """Replaces every leaf of ``out`` by NaN when an input is non-finite.

  ``positive`` lists scalars that must be > 0 (e.g. tau); a non-positive one
  poisons the result too. This is the documented behaviour under ``jit``,
  where values cannot raise.

  Under :func:`checked` (``jax.experimental.checkify``) each failed condition is
  also an error: "<name> contains non-finite values" for ``inputs[i]`` named
  ``names[i]``, "<name> must be > 0, got <value>" for ``positive[i]`` named
  ``positive_names[i]`` (unnamed ones are "an input" / "a scalar argument").
  Without checkify these checks are no-ops (removed from the compiled program).
  """
  oks = []
  for i, a in enumerate(inputs):
    ok_i = all_finite(a)
    name = names[i] if i < len(names) else "an input"
    checkify.debug_check(ok_i, f"{name} contains non-finite values (NaN or inf); expected "
                         "finite values")
    oks.append(ok_i)
  for i, p in enumerate(positive):
    ok_i = p > 0
    name = positive_names[i] if i < len(positive_names) else "a scalar argument"
    checkify.debug_check(ok_i, f"{name} must be > 0, got {{}}", p)
    oks.append(ok_i)
  ok = functools.reduce(jnp.logical_and, oks, jnp.asarray(True))
  return jax.tree_util.tree_map(
      lambda leaf: jnp.where(ok, leaf, jnp.nan) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf,
      out)


def register_dataclass_pytree(cls: type, data_fields: Sequence[str],
                              meta_fields: Sequence[str] = ()) -> type:
  """Registers a frozen dataclass as a pytree that is rebuilt without calling ``__init__``.

  ``jax.tree_util.register_dataclass`` rebuilds an instance through its
  constructor, with whatever the leaves have become (shapes, ``None``, vmap
  axes, tracers); a constructor whose annotations are checked (a runtime type
  checker) would refuse those. Rebuilding by ``object.__new__`` keeps the
  constructor for the values a user builds, and pytree operations free.
  """
  data_fields, meta_fields = tuple(data_fields), tuple(meta_fields)

  def flatten(obj):
    children = [(jax.tree_util.GetAttrKey(f), getattr(obj, f)) for f in data_fields]
    return children, tuple(getattr(obj, f) for f in meta_fields)

  def unflatten(meta, children):
    obj = object.__new__(cls)
    for name, value in zip(data_fields + meta_fields, tuple(children) + tuple(meta)):
      object.__setattr__(obj, name, value)
    return obj

  jax.tree_util.register_pytree_with_keys(cls, flatten, unflatten)
  return cls


def checked(fn: Callable) -> Callable:
  """``fn`` whose run-time value checks raise, also under ``jax.jit`` and ``jax.vmap``.

  Eagerly, the library refuses bad values (a NaN demonstration, ``tau <= 0``, a
  ``demo_mask`` that keeps nothing) with a ValueError. Inside a jitted or
  vmapped computation the values are not known while tracing, so the result
  is poisoned to NaN instead (documented on each function). ``checked(fn)``
  runs ``fn`` through :func:`jax.experimental.checkify.checkify` so that the same
  conditions raise an error that names the argument. Wrap the jitted function
  (``checked(jax.jit(f))``): the check is compiled into the program, and the
  error is raised after it returns.

  Args:
    fn: a function of arrays that calls the library (e.g. :func:`icl_kd.decompose`,
      a jitted or vmapped computation).

  Returns:
    A function with ``fn``'s arguments and result.

  Raises:
    jax.experimental.checkify.JaxRuntimeError: (a ValueError) when a checked
      condition fails; the message names the argument, e.g. "demos contains
      non-finite values (NaN or inf); expected finite values".

  Example:
    >>> import jax, jax.numpy as jnp, icl_kd
    >>> params = icl_kd.init_params(4, key=jax.random.key(0))
    >>> demos = jnp.ones((3, 4)).at[0, 0].set(jnp.nan)
    >>> decompose = jax.jit(icl_kd.decompose)
    >>> bool(jnp.isnan(decompose(params, demos, None, jnp.ones(4)).attention[0]))
    True
    >>> icl_kd.checked(decompose)(params, demos, None, jnp.ones(4))
    Traceback (most recent call last):
    ...
    jax._src.checkify.JaxRuntimeError: demos contains non-finite values (NaN or inf); ...
  """
  run = checkify.checkify(fn, errors=checkify.user_checks)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    err, out = run(*args, **kwargs)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(err)):
      raise TypeError("icl_kd.checked(fn) was called inside a jax transformation, where an "
                      "error cannot be raised; wrap the transformed function instead: "
                      "checked(jax.jit(f)), not jax.jit(checked(f))")
    err.throw()
    return out
  return wrapper
