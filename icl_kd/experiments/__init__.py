"""The experiments the paper proposes (THEORY.md E1-E4) and the real-model experiment.

E1-E4 run on models trained here; ``real`` on pretrained MiniLM attention.
Each experiment is a module exposing ``main(argv) -> int`` and accepting
``--seed``, ``--quick`` and ``--out DIR``;
``python -m icl_kd.experiments NAME [--seed S] [--quick] [--out DIR]`` runs one.
"""
