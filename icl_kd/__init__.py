"""icl_kd: in-context learning as implicit knowledge distillation, made computable.

One softmax-attention layer reading demonstrations builds the weights of a
reference model W phi(W^K x) in one distillation step (Li, Liu, Li, 2025,
"Brewing Knowledge in Context: Distillation Perspectives on In-Context
Learning", arXiv:2506.11516). This package computes both sides of each of the
paper's claims exactly; ``proofs_check`` verifies them at scale.

Dtypes: float32 or float64 (half precision is refused); ``dtype`` arguments
default to the type JAX gives a new float array (float64 under
``jax_enable_x64``). A float64 request computed in float32 because x64 is off
emits :class:`Float64TruncatedWarning` at the calling line (once per line
under Python's default warning filter).

Values that cannot be checked while tracing (a NaN input, ``tau <= 0``, a mask
keeping nothing) raise eagerly and poison the result to NaN under ``jax.jit``;
:func:`checked` turns them into errors there too (``jax.experimental.checkify``).
"""

from icl_kd._checks import Float64TruncatedWarning, checked, default_float_dtype
from icl_kd.attention import (AttentionParams, Decomposition, attention_scores, check_params,
                              decompose, implicit_learning_rate, init_params, softmax_attention)
from icl_kd.dual import (DualWeights, aligned_difference, log_softmax_kernel, relative_hs_error,
                         softmax_kernel)
from icl_kd.features import (PositiveRandomFeatures, TaylorFeatures, positive_random_features,
                             taylor_features, taylor_remainder_bound)
from icl_kd.kd import (LOSS_KINDS, kd_loss, kd_step_dual, kd_step_increment, one_step_kd_weights,
                       squared_step_residual)
from icl_kd import bounds, distributions, mmd  # noqa: E402  (submodules: icl_kd.mmd.mmd2, ...)

# The one home of the version: pyproject.toml reads it (dynamic version), CITATION.cff and
# CHANGELOG.md follow it (tests/test_version.py). Report numbers change only with it.
__version__ = "0.2.0"

__all__ = [
    "AttentionParams", "Decomposition", "DualWeights", "Float64TruncatedWarning", "LOSS_KINDS",
    "PositiveRandomFeatures", "TaylorFeatures", "aligned_difference", "attention_scores",
    "check_params", "checked", "decompose", "default_float_dtype", "implicit_learning_rate",
    "init_params", "kd_loss", "kd_step_dual", "kd_step_increment", "log_softmax_kernel",
    "one_step_kd_weights", "positive_random_features", "relative_hs_error", "softmax_attention",
    "softmax_kernel", "squared_step_residual", "taylor_features", "taylor_remainder_bound",
    "__version__", "bounds", "distributions", "mmd",
]
