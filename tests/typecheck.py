"""The suite's runtime type checker: jaxtyping's shapes, checked by beartype, the library first.

``tests/conftest.py`` installs jaxtyping's import hook for ``icl_kd`` with
:func:`library_first` as its type checker, before ``icl_kd`` is first imported,
so every annotated signature of the package (``Float[ArrayLike, "N d"]`` ...)
is checked on every call the suite makes: the arguments before the body runs,
the result after.

Why beartype: it checks a call in O(1) (one random element of a container,
code generated once per signature), where typeguard walks every element and
re-checks each call in full; the shape checks themselves are jaxtyping's and
the same under either. Its PEP 484 numeric tower is switched on (an ``int``
is accepted where ``float`` is annotated, as Python's typing rules say).

The library first: a call that an annotation rejects is replayed without the
check. When the library itself refuses it (a ValueError or TypeError: the
toolkit's own message, naming the argument, the expected and the received),
that refusal is what the caller sees, exactly as a user without a checker
sees it. When the library accepts a call that its annotation rejects, the
annotation is stricter than the code: jaxtyping's error is raised and the test
fails. So the suite checks two things on every call: an accepted call and its
result match the annotations, and whatever the annotations rule out, the
library refuses with its own message.
"""

from __future__ import annotations

import functools
import inspect
import sys

from beartype import BeartypeConf, beartype

CONF = BeartypeConf(is_pep484_tower=True)
_bear = beartype(conf=CONF)

# jaxtyping calls the checked parameter function from this frame; ``fn`` there is the
# function being called (the undecorated one).
_CALLER = "wrapped_fn_impl"
REPLAYED: list[str] = []   # qualified names whose annotation rejected a call the library refused


def _refuses(fn, args, kwargs) -> bool:
  """Whether the library refuses the call with its own ValueError / TypeError."""
  try:
    fn(*args, **kwargs)
  except (ValueError, TypeError):
    return True
  return False


def library_first(fn):
  """A jaxtyping ``typechecker``: beartype, with the library's own refusal taking precedence."""
  checked = _bear(fn)
  if not inspect.isfunction(checked):
    return checked

  @functools.wraps(checked)
  def check(*args, **kwargs):
    try:
      return checked(*args, **kwargs)
    except Exception:
      caller = sys._getframe(1)
      real = caller.f_locals.get("fn") if caller.f_code.co_name == _CALLER else None
      # the parameter check only: the result check passes the result as one more keyword
      params = inspect.signature(real).parameters if real is not None else {}
      if real is not None and set(kwargs) <= set(params) and _refuses(real, args, kwargs):
        REPLAYED.append(getattr(real, "__qualname__", repr(real)))
        return None            # jaxtyping then calls ``fn``, which raises the library's error
      raise
  return check
