"""Few-shot in-context learning tasks for a causal LM, and their exact-match scoring.

Every prompt has one fixed format, one ``input -> output`` line per
demonstration, then the query line without its answer:

    <|endoftext|>hot -> cold
    big -> small
    fast ->

The leading ``<|endoftext|>`` holds the attention sink (see
:mod:`icl_kd.llm.heads`). The gold continuation is `` {output}\\n``; the answer
is correct when greedy decoding produces exactly the output and then the
newline. Scoring is teacher-forced: one forward pass of prompt + gold
continuation gives the argmax and the log-probability at every answer
position; exact match is "the argmax equals the gold token at every answer
position, newline included". This equals real greedy decoding except when the
model would produce the same text with a different tokenization (tested on a
sample in tests/test_llm.py).

The eight tasks were written for this project; each says where its facts come
from. Every task has at least 50 items with distinct inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd.llm import bucket_length


class Task(NamedTuple):
  """One ICL task: (input, output) items, a description and the source of its facts."""
  name: str
  items: tuple
  description: str
  source: str


def _pairs(text: str) -> tuple:
  return tuple(tuple(p.strip() for p in item.split(":")) for item in text.split(",") if item.strip())


_ANTONYMS = _pairs("""hot:cold, big:small, fast:slow, up:down, happy:sad, light:dark, old:young,
 rich:poor, strong:weak, open:closed, early:late, hard:soft, high:low, long:short, wet:dry,
 full:empty, heavy:light, loud:quiet, clean:dirty, thick:thin, wide:narrow, deep:shallow,
 sharp:dull, safe:dangerous, cheap:expensive, easy:difficult, true:false, brave:afraid,
 near:far, inside:outside, good:bad, right:wrong, first:last, love:hate, win:lose, push:pull,
 buy:sell, give:take, arrive:leave, begin:end, friend:enemy, day:night, north:south, east:west,
 top:bottom, front:back, before:after, always:never, more:less, max:min, increase:decrease,
 accept:reject, remember:forget, question:answer, sweet:sour, awake:asleep, alive:dead,
 absent:present, ancient:modern, polite:rude, smooth:rough, tight:loose""")

_CAPITALS = _pairs("""France:Paris, Germany:Berlin, Italy:Rome, Spain:Madrid, Portugal:Lisbon,
 Japan:Tokyo, China:Beijing, Russia:Moscow, Egypt:Cairo, Kenya:Nairobi, Peru:Lima, Chile:Santiago,
 Argentina:Buenos Aires, Canada:Ottawa, Mexico:Mexico City, Cuba:Havana, Greece:Athens,
 Austria:Vienna, Hungary:Budapest, Poland:Warsaw, Sweden:Stockholm, Norway:Oslo,
 Finland:Helsinki, Denmark:Copenhagen, Ireland:Dublin, Belgium:Brussels,
 Netherlands:Amsterdam, Switzerland:Bern, Czechia:Prague, Romania:Bucharest, Bulgaria:Sofia,
 Serbia:Belgrade, Croatia:Zagreb, Ukraine:Kyiv, Turkey:Ankara, Iran:Tehran, Iraq:Baghdad,
 Syria:Damascus, Lebanon:Beirut, Jordan:Amman, Israel:Jerusalem, India:New Delhi,
 Pakistan:Islamabad, Bangladesh:Dhaka, Nepal:Kathmandu, Thailand:Bangkok, Vietnam:Hanoi,
 Indonesia:Jakarta, Philippines:Manila, Malaysia:Kuala Lumpur, South Korea:Seoul,
 Australia:Canberra, New Zealand:Wellington, Brazil:Brasilia, Colombia:Bogota,
 Venezuela:Caracas, Ecuador:Quito, Bolivia:La Paz, Uruguay:Montevideo, Paraguay:Asuncion,
 Nigeria:Abuja, Ghana:Accra, Ethiopia:Addis Ababa, Morocco:Rabat, Algeria:Algiers,
 Tunisia:Tunis, Senegal:Dakar, Iceland:Reykjavik, Estonia:Tallinn, Latvia:Riga,
 Lithuania:Vilnius, Afghanistan:Kabul, Mongolia:Ulaanbaatar, Saudi Arabia:Riyadh""")

_UPPER_WORDS = tuple("""apple river stone cloud garden window silver forest mountain ocean
 candle pencil rocket dragon planet spider lemon violin castle bridge mirror tiger island
 market pepper bottle jacket engine rabbit summer winter butter ladder doctor farmer hammer
 button cotton desert flower guitar helmet jungle kettle lizard magnet needle orange parrot
 puzzle saddle tunnel wallet yellow zipper anchor basket carpet""".split())

_FIRST_LETTER_WORDS = tuple("""banana elephant umbrella giraffe kitchen notebook octopus penguin
 quarter rainbow sunset teacher village whistle xylophone yogurt zebra airport balloon camera
 dolphin eagle feather glacier harbor igloo jewel koala lantern meadow nectar orchid pumpkin
 quilt raccoon saucer tornado unicorn valley walrus yacht zigzag acorn blossom cactus diamond
 emerald falcon gravel hazel ivory jasmine kayak lobster""".split())

_PLURALS = _pairs("""cat:cats, dog:dogs, box:boxes, child:children, man:men, woman:women,
 mouse:mice, foot:feet, tooth:teeth, goose:geese, city:cities, baby:babies, leaf:leaves,
 knife:knives, wife:wives, wolf:wolves, bus:buses, glass:glasses, church:churches,
 dish:dishes, potato:potatoes, tomato:tomatoes, hero:heroes, person:people, ox:oxen,
 sheep:sheep, fish:fish, deer:deer, cactus:cacti, crisis:crises, analysis:analyses,
 phenomenon:phenomena, criterion:criteria, half:halves, shelf:shelves, loaf:loaves,
 party:parties, story:stories, lady:ladies, key:keys, toy:toys, day:days, book:books,
 tree:trees, house:houses, car:cars, star:stars, apple:apples, chair:chairs, table:tables,
 horse:horses, bird:birds, kiss:kisses, fox:foxes, watch:watches""")

_PAST = _pairs("""go:went, eat:ate, see:saw, run:ran, take:took, give:gave, write:wrote,
 speak:spoke, drink:drank, sing:sang, swim:swam, begin:began, break:broke, choose:chose,
 drive:drove, fly:flew, forget:forgot, freeze:froze, know:knew, ride:rode, rise:rose,
 steal:stole, throw:threw, wake:woke, wear:wore, buy:bought, bring:brought, think:thought,
 teach:taught, catch:caught, fight:fought, seek:sought, sell:sold, tell:told, feel:felt,
 keep:kept, sleep:slept, leave:left, meet:met, find:found, hold:held, stand:stood,
 understand:understood, walk:walked, play:played, jump:jumped, talk:talked, cook:cooked,
 open:opened, call:called, help:helped, watch:watched, dance:danced, smile:smiled""")

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_word(n: int) -> str:
  if n < 20:
    return _ONES[n]
  t, o = divmod(n, 10)
  return _TENS[t] + ("" if o == 0 else "-" + _ONES[o])


_NUMBERS = tuple((_number_word(n), str(n)) for n in (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23, 25, 27,
    30, 32, 34, 36, 38, 40, 41, 43, 45, 47, 50, 52, 54, 56, 58, 60, 61, 63, 65, 67, 70, 72, 74,
    76, 78, 80, 81, 83, 85, 87, 90, 92, 94, 96, 99))

_SENTIMENT = tuple([(p, "positive") for p in (
    "a wonderful day", "I love this song", "great food", "a beautiful garden", "what a nice surprise",
    "the best movie ever", "a happy ending", "delicious cake", "a brilliant idea", "such a kind friend",
    "an amazing view", "I enjoyed the trip", "a lovely evening", "fantastic service",
    "a warm welcome", "the party was fun", "an excellent book", "a perfect match",
    "she was very helpful", "a pleasant walk", "a cheerful smile", "this is awesome",
    "a gorgeous sunset", "the team played well", "a charming village", "a great success")] +
    [(p, "negative") for p in (
    "a terrible day", "I hate this song", "awful food", "a broken window", "what a nasty surprise",
    "the worst movie ever", "a sad ending", "stale bread", "a stupid mistake", "such a rude waiter",
    "an ugly building", "I regret the trip", "a boring evening", "horrible service",
    "a cold reception", "the party was dull", "a dreadful book", "a total failure",
    "he was very unhelpful", "a painful injury", "a gloomy face", "this is disgusting",
    "a filthy room", "the team played badly", "a noisy street", "a complete disaster")])

TASKS = {t.name: t for t in (
    Task("antonym", _ANTONYMS, "an English word -> its opposite",
         "common English antonym pairs (general lexical knowledge, e.g. WordNet antonymy)"),
    Task("capital", _CAPITALS, "a country -> its capital city",
         "capital cities as listed in the CIA World Factbook (2024 edition)"),
    Task("uppercase", tuple((w, w.upper()) for w in _UPPER_WORDS), "a word -> the word in capitals",
         "computed: str.upper of common English nouns"),
    Task("first_letter", tuple((w, w[0]) for w in _FIRST_LETTER_WORDS),
         "a word -> its first letter", "computed: the first character of common English nouns"),
    Task("plural", _PLURALS, "an English noun -> its plural",
         "English plural forms, regular and irregular (standard grammar references)"),
    Task("past_tense", _PAST, "an English verb -> its simple past",
         "English simple-past forms, regular and irregular (standard grammar references)"),
    Task("number_word", _NUMBERS, "an English number word -> the number in digits",
         "computed: the English names of the integers 0-99"),
    Task("sentiment", _SENTIMENT, "a short phrase -> positive or negative",
         "phrases written for this project, balanced 26 positive / 26 negative"),
)}


def format_prompt(demos, query: str) -> str:
  """The prompt text (without the sink token): one ``x -> y`` line per demo, then ``query ->``."""
  return "".join(f"{x} -> {y}\n" for x, y in demos) + f"{query} ->"


class EncodedPrompt(NamedTuple):
  """A prompt with its gold continuation, tokenized.

  Attributes:
    ids: (T,) sink, demonstrations, query line, then the gold continuation `` y\\n``.
    answer_start: index of the first gold token (the answer position, where the
      query is read, is answer_start - 1).
    demo_end: end of the demonstration tokens (they occupy [1, demo_end)).
    n_answer: number of gold answer tokens (without the final newline).
  """
  ids: np.ndarray
  answer_start: int
  demo_end: int
  n_answer: int


def encode_prompt(model, demos, query: str, answer: str) -> EncodedPrompt:
  """Tokenizes a prompt and its gold answer; checks that the prompt's tokens are a prefix."""
  demo_text = "".join(f"{x} -> {y}\n" for x, y in demos)
  prompt = demo_text + f"{query} ->"
  p_ids = model.encode(prompt)
  full = model.encode(prompt + f" {answer}\n")
  d_ids = model.encode(demo_text) if demos else []
  ans = model.encode(f" {answer}")
  if full[:len(p_ids)] != p_ids or p_ids[:len(d_ids)] != d_ids or full[len(p_ids):][:len(ans)] != ans:
    raise ValueError(f"the prompt's tokens are not a prefix of prompt + answer for {query!r}")
  ids = np.asarray([model.sink_id] + full, np.int32)
  return EncodedPrompt(ids, 1 + len(p_ids), 1 + len(d_ids), len(ans))


def encode_lines(model, lines) -> tuple[EncodedPrompt, list]:
  """The text of ``lines`` (each ending in a newline) after the sink, as an
  :class:`EncodedPrompt` whose "answer" is the last token, and each line's token span.

  Used to read lines in context (the lines of a pool, a target sample or the queries,
  a few at a time, so that each takes positions a demonstration takes in a prompt).

  Returns:
    (prompt, spans): spans[i] = (start, end), the positions of line i's tokens in
    ``prompt.ids`` (position 0 is the sink).

  Raises:
    ValueError: a line does not end in a newline, or the tokens of a prefix of the lines
      are not a prefix of the tokens of all of them (a token spanning two lines).
  """
  if not lines or any(not line.endswith("\n") for line in lines):
    raise ValueError(f"lines must be a non-empty list of strings ending in a newline, got "
                     f"{lines!r}")
  full = np.asarray([model.sink_id] + model.encode("".join(lines)), np.int32)
  n = len(full)
  return EncodedPrompt(full, n - 1, n - 1, 1), line_spans(model, lines)


def line_spans(model, lines) -> list:
  """The token span (start, end) of each line of ``"".join(lines)`` after the sink (position
  0), checked: the tokens of every prefix of the lines are a prefix of all lines' tokens."""
  ids = model.encode("".join(lines))
  spans, start = [], 0
  for i in range(len(lines)):
    pre = model.encode("".join(lines[:i + 1]))
    if ids[:len(pre)] != pre:
      raise ValueError(f"the tokens of the first {i + 1} lines are not a prefix of all lines' "
                       f"tokens: {lines!r}")
    spans.append((1 + start, 1 + len(pre)))
    start = len(pre)
  return spans


class PromptScores(NamedTuple):
  """Teacher-forced results of n prompts (float64 NumPy).

  Attributes:
    correct: (n,) bool, exact match of the greedy answer.
    logprob: (n,) log p(gold answer tokens | prompt) (newline excluded).
    log_partition: (n, L, H) log D' of every head at the answer position.
    entropy: (n, L, H) attention entropy (nats) there.
    sink_share, demo_share: (n, L, H) shares of D' on the sink token and on the demonstrations.
  """
  correct: np.ndarray
  logprob: np.ndarray
  log_partition: np.ndarray
  entropy: np.ndarray
  sink_share: np.ndarray
  demo_share: np.ndarray


@jax.jit
def _stats(scores, demo_end):
  """scores (B, L, H, T) at the answer position -> log D', entropy, sink and demo shares."""
  logz = jax.nn.logsumexp(scores, axis=-1)
  logp = scores - logz[..., None]
  p = jnp.exp(logp)
  ent = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
  j = jnp.arange(scores.shape[-1])
  sink = p[..., 0]
  demo = jnp.sum(jnp.where((j[None, :] >= 1) & (j[None, :] < demo_end[:, None]), 1.0, 0.0)
                 [:, None, None, :] * p, axis=-1)
  return logz, ent, sink, demo


class Batch(NamedTuple):
  """One padded batch of prompts (see :func:`batches`).

  Attributes:
    part: indices of the batch's real prompts (its first rows).
    full: ``part`` filled up to the batch size with copies of its last index.
    ids: (B, T) token ids, T the length bucket; read: (B, W) the answer positions
      (repeated to the width W); targets: (B, W) the gold tokens; mask: (B, W) the real
      answer positions (answer and newline).
  """
  part: np.ndarray
  full: np.ndarray
  ids: np.ndarray
  read: np.ndarray
  targets: np.ndarray
  mask: np.ndarray


def batches(prompts, batch: int):
  """The prompts grouped by length bucket in padded batches of ``batch`` (one compile per
  bucket and answer width), as :class:`Batch` es."""
  width = max(p.n_answer for p in prompts) + 1
  width = 1 << (width - 1).bit_length()
  buckets = np.array([bucket_length(len(p.ids)) for p in prompts])
  for b in sorted(set(buckets.tolist())):
    idx = np.flatnonzero(buckets == b)
    for s in range(0, len(idx), batch):
      part = idx[s:s + batch]
      full = np.concatenate([part, np.repeat(part[-1:], batch - len(part))])
      ids = np.zeros((batch, b), np.int32)
      read = np.zeros((batch, width), np.int32)
      tgt = np.zeros((batch, width), np.int32)
      mask = np.zeros((batch, width), bool)
      for r, i in enumerate(full):
        p = prompts[i]
        ids[r, :len(p.ids)] = p.ids
        k = len(p.ids) - p.answer_start                                      # answer + newline
        pos = p.answer_start - 1 + np.arange(k)
        read[r] = np.concatenate([pos, np.repeat(pos[-1:], width - k)])
        tgt[r] = ids[r, read[r] + 1]
        mask[r, :k] = True
      yield Batch(part, full, ids, read, tgt, mask)


def _answers(prompts, b: Batch, greedy, target_logprob):
  """(correct, logprob) of the batch's real prompts from the teacher-forced read-out."""
  g, tl = np.asarray(greedy), np.asarray(target_logprob, np.float64)
  correct, logprob = [], []
  for r, i in enumerate(b.part):
    k = int(b.mask[r].sum())
    correct.append(bool(np.all(g[r, :k] == b.targets[r, :k])))
    logprob.append(float(tl[r, :prompts[i].n_answer].sum()))
  return correct, logprob


def score_prompts(model, prompts, *, batch: int = 8, progress=None) -> PromptScores:
  """Teacher-forced exact match, gold log-probability and per-head statistics of prompts.

  Prompts are grouped by padded length bucket and run ``batch`` at a time (one
  compile per bucket and answer width).
  """
  n = len(prompts)
  if n == 0:
    raise ValueError("prompts must not be empty")
  cfg = model.config
  correct, logprob = np.zeros(n, bool), np.zeros(n)
  logz, ent, sink, demo = (np.zeros((n, cfg.num_layers, cfg.num_heads)) for _ in range(4))
  done = 0
  for b in batches(prompts, batch):
    out = model.score_batch(b.ids, b.read, b.targets, b.read[:, 0])
    de = np.array([prompts[i].demo_end for i in b.full], np.int32)
    lz, en, sk, dm = (np.asarray(a, np.float64) for a in _stats(out.scores, jnp.asarray(de)))
    c, lp = _answers(prompts, b, out.greedy, out.target_logprob)
    for r, i in enumerate(b.part):
      correct[i], logprob[i] = c[r], lp[r]
      logz[i], ent[i], sink[i], demo[i] = lz[r], en[r], sk[r], dm[r]
    done += len(b.part)
    if progress is not None:
      progress.update(done)
  return PromptScores(correct, logprob, logz, ent, sink, demo)


def score_prompts_with_states(model, prompts, layers: tuple, extract, *, batch: int = 8,
                              progress=None) -> tuple[np.ndarray, np.ndarray, list]:
  """Teacher-forced exact match and gold log-probability, and what ``extract`` takes from
  each prompt's :class:`icl_kd.llm.LayerStates` at ``layers``.

  Args:
    model: a loaded :class:`icl_kd.llm.Llama`.
    prompts: EncodedPrompts.
    layers: the layers whose head inputs are read (a tuple of ints).
    extract: (prompt index, LayerStates of that one prompt (NumPy, no batch axis)) ->
      anything small; called once per prompt, so the states of a batch are never kept.
    batch: prompts per compiled call.

  Returns:
    (correct (n,) bool, logprob (n,), [extract(i, ...) for every prompt i]).
  """
  n = len(prompts)
  if n == 0:
    raise ValueError("prompts must not be empty")
  correct, logprob, taken = np.zeros(n, bool), np.zeros(n), [None] * n
  done = 0
  for b in batches(prompts, batch):
    st = model.states_batch(b.ids, layers, b.read, b.targets)
    arrays = [np.asarray(a) for a in st]
    c, lp = _answers(prompts, b, st.greedy, st.target_logprob)
    for r, i in enumerate(b.part):
      correct[i], logprob[i] = c[r], lp[r]
      taken[i] = extract(int(i), type(st)(*(a[r] for a in arrays)))
    done += len(b.part)
    if progress is not None:
      progress.update(done)
  return correct, logprob, taken


def greedy_answer(model, demos, query: str, *, max_new_tokens: int = 8) -> str:
  """Real greedy decoding (one forward per token) of the answer, up to the newline, stripped."""
  ids = [model.sink_id] + model.encode(format_prompt(demos, query))
  new = model.generate(ids, max_new_tokens, stop="\n")
  text = model.decode(new)
  return text.split("\n")[0].strip() if "\n" in text else "\x00" + text
