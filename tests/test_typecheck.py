"""The suite's runtime type checker (tests/typecheck.py): on, and the library's refusals first."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, ArrayLike, Float, TypeCheckError, jaxtyped

import icl_kd
from tests import typecheck

ON = os.environ.get("ICL_KD_TYPECHECK", "1") != "0"


@jaxtyped(typechecker=typecheck.library_first)
def _refusing(x: Float[ArrayLike, " n"]) -> Float[Array, " n"]:
  """Refuses what its annotation rules out, with its own message (as the library does)."""
  x = jnp.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"x must have rank 1, got shape {x.shape}")
  return x


@jaxtyped(typechecker=typecheck.library_first)
def _lax(x: Float[ArrayLike, " n"]) -> Float[Array, " n"]:
  """Accepts what its annotation rules out: the annotation is stricter than the code."""
  return jnp.atleast_1d(jnp.asarray(x, float))


@jaxtyped(typechecker=typecheck.library_first)
def _wrong_result(x: Float[ArrayLike, " n"]) -> Float[Array, " n"]:
  return jnp.asarray(x)[None]


def test_the_library_message_wins_where_both_refuse():
  with pytest.raises(ValueError, match=r"x must have rank 1, got shape \(2, 2\)"):
    _refusing(np.ones((2, 2)))
  np.testing.assert_array_equal(_refusing(np.ones(3)), np.ones(3))


def test_an_annotation_stricter_than_the_code_fails():
  with pytest.raises(TypeCheckError, match="parameter 'x'"):
    _lax(np.ones((2, 2)))


def test_a_result_that_breaks_its_annotation_fails():
  with pytest.raises(TypeCheckError, match="return value"):
    _wrong_result(np.ones(3))


@pytest.mark.skipif(not ON, reason="ICL_KD_TYPECHECK=0: the suite runs without the checker")
def test_the_package_is_checked():
  """icl_kd was loaded through jaxtyping's hook: its functions carry the checking wrapper."""
  assert type(icl_kd.attention.__loader__).__name__ == "_JaxtypingLoader"
  assert hasattr(icl_kd.decompose, "__wrapped__")
  params = icl_kd.init_params(3, key=__import__("jax").random.key(0))
  with pytest.raises(ValueError, match=r"query must have shape \(3,\)"):   # the library's words
    icl_kd.softmax_attention(params, jnp.ones((4, 3)), jnp.ones(2))
