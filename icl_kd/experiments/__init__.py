"""The experiments the paper proposes (THEORY.md E1-E4), run on models trained here.

Each experiment is a module with ``run(config) -> results`` and ``main(argv)``;
``python -m icl_kd.experiments NAME [--seed S] [--quick] [--out DIR]`` runs one.
"""
