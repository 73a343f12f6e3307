"""Speed of the toolkit's hot paths against baselines and the machine's own limits.

``python -m benchmarks`` measures, in one process (children only where a
fresh process is the point: XLA flags, the command line, the test suite):

- ``limits``: large matmul FLOP/s and large copy bytes/s of this machine;
- ``B1``: claim C1 checked on 1e6 instances through ``proofs_check`` vs a NumPy loop;
- ``B2``: ``softmax_attention`` vmapped vs ``jax.nn.dot_product_attention``;
- ``B3``: unbiased MMD^2 vs NumPy and ``scipy.spatial.distance.cdist``, and its scaling in n;
- ``B4``: the one-Gram permutation test vs recomputing MMD^2 per permutation;
- ``B5``: the default ``python -m proofs_check`` end to end, with its compile share;
- ``B6``: compilations of the test suite's jitted C1 property check vs shape buckets.

Every timed number is a median over repeats with its spread, compile time
apart; every ratio is "ours / baseline" time measured in the same run. See
:mod:`benchmarks.harness`.
"""

BENCHMARKS = ("limits", "B1", "B2", "B3", "B4", "B5", "B6")
