"""The shared CLI runtime: the progress bar's lines, rate and time left (a fake clock)."""

import io

from icl_kd import runtime


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def _updates(stream, steps, total=1000, interval=60.0):
  clock = _Clock()
  bar = runtime.Progress("claims", total, stream=stream, interval=interval, clock=clock)
  for t, done in steps:
    clock.t = t
    bar.update(done)
  return stream


def test_plain_lines_every_quarter_and_at_least_every_interval():
  """Not a terminal: a line at 25%, 50%, ... and whenever `interval` seconds passed since the
  last one, each with the rate and the time left (here 100 done in 61 s: 1.64/s, and
  900 / (100/61) = 549 s = 9 min 9 s left); the final line has no time left."""
  out = _updates(io.StringIO(), [(1, 10), (61, 100), (70, 250), (80, 260), (100, 300),
                                 (161, 400), (200, 1000)]).getvalue().splitlines()
  assert len(out) == 4, out
  assert "100/1,000" in out[0] and "61.0s" in out[0] and "1.64/s, 9m09s left" in out[0]
  assert "250/1,000" in out[1]                              # 25%
  assert "400/1,000" in out[2] and "2.48/s" in out[2]       # 161 - 70 >= 60 s since the last
  assert "1,000/1,000" in out[3] and "left" not in out[3]


def test_terminal_redraws_one_line_and_ends_it():
  class Tty(io.StringIO):
    def isatty(self):
      return True
  text = _updates(Tty(), [(1, 10), (2, 500), (4, 1000)]).getvalue()
  assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
  assert "[##########..........]" in text and "250/s, 2s left" in text


def test_hours_left_and_disabled_bar():
  out = _updates(io.StringIO(), [(3600, 100)], total=10_000).getvalue()
  assert "99h00m left" in out                  # 9,900 left at 1/36 per second
  silent = io.StringIO()
  runtime.Progress("x", 10, enabled=False, stream=silent).update(10)
  assert silent.getvalue() == ""


def test_items_loaded_without_work_do_not_inflate_the_rate():
  """600 of 1000 loaded from a checkpoint at t = 0, then 200 computed in 20 s: 10/s, and the
  200 left take 20 s (counting the loaded ones would claim 40/s and 5 s left)."""
  clock = _Clock()
  out = io.StringIO()
  bar = runtime.Progress("claims", 1000, stream=out, clock=clock)
  bar.skip(600)
  bar.update(600)
  clock.t = 20.0
  bar.update(800)
  last = out.getvalue().splitlines()[-1]
  assert "800/1,000" in last and "10/s, 20s left" in last, last
