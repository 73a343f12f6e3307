"""Real English sentences by domain, from text installed on every machine.

Nobody here wrote these texts; they ship with Python and with the project's
own dependencies, so every checkout can rebuild the same corpus offline:

  python_docs  the Python reference manual's topic pages (``pydoc_data.topics``);
  licenses     license files shipped in the dist-info of installed dependencies
               (numpy, jax, jaxlib, matplotlib, flax, optax, chex, hypothesis, scipy);
  numpy_docs   the prose of numpy's public function docstrings (before "Parameters");
  jax_docs     the prose of docstrings in jax.numpy, jax.lax, jax.nn and jax.random
               (before "Args:").

The exact texts depend on the installed versions, so every :class:`Sentence`
records its source (e.g. ``pydoc_data.topics['assert']``, ``numpy.linspace.__doc__``,
``numpy-2.4.6.dist-info/licenses/LICENSE.txt``), and :func:`corpus_versions`
the versions. Sentences are split with a simple rule (end punctuation followed by
whitespace and a capital letter), markup is stripped, code and tables are
dropped, and only sentences of 6 to 40 words made mostly of letters are kept.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from typing import NamedTuple

import jax
import numpy as np

DOMAINS = ("python_docs", "licenses", "numpy_docs", "jax_docs")
LICENSE_DISTRIBUTIONS = ("numpy", "jax", "jaxlib", "matplotlib", "flax", "optax", "chex",
                         "hypothesis", "scipy")
JAX_MODULES = ("jax.numpy", "jax.lax", "jax.nn", "jax.random")
MIN_WORDS, MAX_WORDS = 6, 40


class Sentence(NamedTuple):
  """One sentence: its ``text``, its ``domain`` (one of DOMAINS) and its ``source``."""
  text: str
  domain: str
  source: str


_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z])")
_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")   # :func:`numpy.sum` -> numpy.sum
_LITERAL = re.compile(r"`{1,2}([^`]*)`{1,2}_?")                 # ``x`` / `x` / `x`_ -> x
_ABBREV = re.compile(r"\b(e\.g|i\.e|etc|cf|vs|Inc|Ltd|Dr|Mr|Mrs|No|Fig|approx)\.", re.IGNORECASE)


def clean(text: str) -> str:
  """Strips reStructuredText roles and literals and collapses whitespace."""
  text = _ROLE.sub(r"\1", text)
  text = _LITERAL.sub(r"\1", text)
  text = text.replace("**", "").replace("|", " ")
  return " ".join(text.split())


def _paragraphs(text: str) -> list[str]:
  """Prose paragraphs of ``text``: blank-line separated, code and tables dropped."""
  out = []
  for block in re.split(r"\n\s*\n", text):
    lines = [ln for ln in block.splitlines() if ln.strip()]
    if not lines:
      continue
    stripped = [ln.strip() for ln in lines]
    if any(s.startswith((">>>", "...", ".. ", "::", "$ ", "+-", "==", "--", "*", "-", "#"))
           for s in stripped):
      continue
    if block.rstrip().endswith("::") and len(lines) == 1:
      continue
    indents = {len(ln) - len(ln.lstrip()) for ln in lines}
    if len(indents) > 2:                       # ragged indentation: code, grammar or a table
      continue
    out.append(" ".join(stripped))
  return out


def _is_prose(sentence: str) -> bool:
  words = sentence.split()
  if not MIN_WORDS <= len(words) <= MAX_WORDS:
    return False
  letters = sum(ch.isalpha() for ch in sentence)
  if letters < 0.7 * len(sentence.replace(" ", "")):
    return False
  if any(tok in sentence for tok in ("=", "{", "}", "[", "]", "<", ">", "\\", "_", "()", "http")):
    return False
  return sentence[0].isupper() and sentence[-1] in ".!?"


def split_sentences(text: str) -> list[str]:
  """Prose sentences of ``text`` (see the module docstring for the rule)."""
  sentences = []
  for para in _paragraphs(text):
    para = clean(para)
    protected = _ABBREV.sub(lambda m: m.group(0).replace(".", "\x00"), para)
    for s in _SPLIT.split(protected):
      s = s.replace("\x00", ".").strip()
      if _is_prose(s):
        sentences.append(s)
  return sentences


def _dedupe(items: list[Sentence]) -> list[Sentence]:
  seen, out = set(), []
  for s in items:
    if s.text not in seen:
      seen.add(s.text)
      out.append(s)
  return out


def _python_docs() -> list[Sentence]:
  from pydoc_data.topics import topics  # noqa: PLC0415
  return [Sentence(s, "python_docs", f"pydoc_data.topics[{name!r}]")
          for name in sorted(topics) for s in split_sentences(topics[name])]


def _licenses() -> list[Sentence]:
  out = []
  for dist_name in LICENSE_DISTRIBUTIONS:
    try:
      dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
      continue
    files = sorted((f for f in (dist.files or ()) if ".dist-info" in str(f)
                    and re.search(r"(LICEN[CS]E|COPYING)", f.name, re.IGNORECASE)), key=str)
    for f in files:
      try:
        text = f.read_text(encoding="utf-8")
      except (OSError, UnicodeDecodeError):
        continue
      out.extend(Sentence(s, "licenses", str(f)) for s in split_sentences(text))
  return out


def _docstring_prose(doc: str, stop: tuple[str, ...]) -> str:
  """The part of a docstring before its first section heading in ``stop``."""
  lines = doc.expandtabs().splitlines()
  if not lines:
    return ""
  # Dedent everything after the first line (docstring convention).
  rest = [ln for ln in lines[1:] if ln.strip()]
  indent = min((len(ln) - len(ln.lstrip()) for ln in rest), default=0)
  body = [lines[0].strip()] + [ln[indent:] for ln in lines[1:]]
  for i, ln in enumerate(body):
    if ln.strip() in stop or ln.strip().rstrip(":") in stop:
      body = body[:i]
      break
  return "\n".join(body)


def _module_docstrings(module_name: str, domain: str, stop: tuple[str, ...]) -> list[Sentence]:
  module = importlib.import_module(module_name)
  out = []
  for name in sorted(dir(module)):
    if name.startswith("_"):
      continue
    obj = getattr(module, name, None)
    doc = getattr(obj, "__doc__", None)
    if not callable(obj) or not isinstance(doc, str) or isinstance(obj, type):
      continue
    text = _docstring_prose(doc, stop)
    out.extend(Sentence(s, domain, f"{module_name}.{name}.__doc__") for s in split_sentences(text))
  return out


def _numpy_docs() -> list[Sentence]:
  return _module_docstrings("numpy", "numpy_docs",
                            ("Parameters", "Returns", "See Also", "Notes", "Examples"))


def _jax_docs() -> list[Sentence]:
  out = []
  for m in JAX_MODULES:
    out.extend(_module_docstrings(m, "jax_docs", ("Args", "Returns", "See also", "Examples",
                                                  "Notes", "Parameters", "Raises")))
  return out


_BUILDERS = {"python_docs": _python_docs, "licenses": _licenses, "numpy_docs": _numpy_docs,
             "jax_docs": _jax_docs}


def domain_sentences(domain: str) -> list[Sentence]:
  """All prose sentences of one domain, deduplicated, in a deterministic order."""
  if domain not in _BUILDERS:
    raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
  return _dedupe(_BUILDERS[domain]())


def load_corpus(domains=DOMAINS) -> dict[str, list[Sentence]]:
  """{domain: sentences} for each of ``domains``; a sentence found in two domains is dropped from the later."""
  if isinstance(domains, str):
    raise TypeError("domains must be a sequence of domain names, got a single str")
  seen, corpus = set(), {}
  for d in domains:
    sents = [s for s in domain_sentences(d) if s.text not in seen]
    seen.update(s.text for s in sents)
    corpus[d] = sents
  return corpus


def sample_sentences(corpus: dict[str, list[Sentence]], n_per_domain: int, *,
                     key) -> dict[str, list[Sentence]]:
  """``n_per_domain`` sentences per domain drawn without replacement (fewer if a domain is short).

  The same ``key`` gives the same sample; the returned lists keep corpus order.
  """
  if isinstance(n_per_domain, bool) or int(n_per_domain) != n_per_domain or n_per_domain < 1:
    raise ValueError(f"n_per_domain must be a positive integer, got {n_per_domain!r}")
  out = {}
  keys = jax.random.split(key, len(corpus))
  for k, (d, sents) in zip(keys, corpus.items()):
    if not sents:
      raise ValueError(f"domain {d!r} has no sentences on this machine")
    m = min(int(n_per_domain), len(sents))
    idx = np.sort(np.asarray(jax.random.choice(k, len(sents), (m,), replace=False)))
    out[d] = [sents[i] for i in idx]
  return out


def corpus_versions() -> dict[str, str]:
  """Versions of Python and of every package the corpus reads (its provenance)."""
  out = {"python": sys.version.split()[0]}
  for name in LICENSE_DISTRIBUTIONS:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out
