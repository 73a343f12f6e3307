"""One shared look for every figure: palette, sizes, axes helpers.

Sized for a page printed in one column: figures are at most ``WIDTH`` inches
wide (a 6.75 in text width) and every text is >= 8 pt at that size. Colours
are Okabe and Ito's colour-blind-safe palette (Okabe & Ito, 2008, "Color
Universal Design"); markers also differ between series, so a figure still
reads in grey scale.
"""

from __future__ import annotations

import functools
import logging

import matplotlib

matplotlib.use("Agg")  # figures are files; no display is needed or used
# Embedding a TrueType font in a PDF (pdf.fonttype 42 below) makes fontTools log
# "'created' timestamp seems very low" once per font: a property of the fonts that
# matplotlib ships, nothing the reader can act on.
logging.getLogger("fontTools.ttLib.tables._h_e_a_d").setLevel(logging.ERROR)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

WIDTH = 6.75          # inches: a one-column text width
PANEL_HEIGHT = 2.6    # inches per row of panels
DPI = 200             # PNG resolution

# Okabe-Ito, in the order series take them.
PALETTE = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "vermillion": "#D55E00",
    "sky": "#56B4E9",
    "purple": "#CC79A7",
    "yellow": "#F0E442",
    "black": "#000000",
}
CYCLE = [PALETTE[k] for k in ("blue", "orange", "green", "vermillion", "sky", "purple", "black")]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
SEQUENTIAL = "viridis"  # colour-blind-safe continuous map (a shift or a score scale)
VIOLATION = PALETTE["vermillion"]
REFERENCE = "0.35"      # identity lines, limits, bounds drawn as guides

RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.titlesize": 10,
    "axes.prop_cycle": matplotlib.cycler(color=CYCLE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,
    "svg.hashsalt": "icl-kd",
    "path.simplify": False,
}


def styled(make):
  """Decorator: ``make`` draws (and its Figure is later saved) under the shared rc settings."""
  @functools.wraps(make)
  def wrapper(*args, **kwargs):
    with plt.rc_context(RC):
      fig = make(*args, **kwargs)
      for ax in fig.axes:
        _tidy_log_ticks(ax)
    return fig
  return wrapper


def _tidy_log_ticks(ax) -> None:
  """Log axes: labels on decades only (minor labels collide in narrow panels)."""
  for axis, scale, lim, most in ((ax.xaxis, ax.get_xscale(), ax.get_xlim(), 5),
                                 (ax.yaxis, ax.get_yscale(), ax.get_ylim(), 8)):
    if scale == "log":
      lo, hi = sorted(lim)
      short = lo > 0 and np.log10(hi / lo) < 1.6   # under ~1.5 decades: label 1, 2, 5 x 10^k
      axis.set_major_locator(matplotlib.ticker.LogLocator(
          base=10, subs=(1.0, 2.0, 5.0) if short else (1.0,), numticks=most))
      if short:
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
      axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def figure(nrows: int = 1, ncols: int = 1, *, height: float | None = None, **kwargs):
  """A Figure and its axes in the shared style (constrained layout, one-column width)."""
  with plt.rc_context(RC):
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, height or PANEL_HEIGHT * nrows),
                             layout="constrained", squeeze=False, **kwargs)
  return fig, axes


def apply(fig) -> None:
  """Applies the shared rc settings to text already created (titles, labels, ticks)."""
  for ax in fig.axes:
    ax.title.set_fontsize(RC["axes.titlesize"])
    ax.xaxis.label.set_fontsize(RC["axes.labelsize"])
    ax.yaxis.label.set_fontsize(RC["axes.labelsize"])
    ax.tick_params(labelsize=RC["xtick.labelsize"])


def panel_label(ax, label: str) -> None:
  """A bold '(a)' in the upper-left corner, outside the data area."""
  ax.set_title(label, loc="left", fontweight="bold", fontsize=RC["axes.titlesize"])


def identity_line(ax, lo: float, hi: float, *, label: str | None = "y = x") -> None:
  """The dashed diagonal y = x over [lo, hi]."""
  ax.plot([lo, hi], [lo, hi], ls="--", color=REFERENCE, lw=1.0, label=label, zorder=1)


def log_range(*arrays, pad: float = 1.5) -> tuple[float, float]:
  """(lo, hi) covering the positive finite values of all arrays, padded by a factor."""
  v = np.concatenate([np.ravel(np.asarray(a, float)) for a in arrays])
  v = v[np.isfinite(v) & (v > 0)]
  if v.size == 0:
    return 1e-3, 1.0
  return float(v.min() / pad), float(v.max() * pad)


def log_square(ax, lo: float, hi: float) -> None:
  """Log scales on both axes, each limited to [lo, hi] (a panel of lhs against rhs)."""
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlim(lo, hi)
  ax.set_ylim(lo, hi)


def c1_heat_map(fig, ax, errors, layers: int, heads: int, *, layer_step: int = 1,
                  xlabel: str = "head (from 0)") -> None:
  """The panel "(a) C1 error, float64": log10 of the per-head C1 errors as a layers x heads map.

  ``errors`` are layer-major (as :func:`figures.head_columns`), floored at
  1e-18 so that an exact zero stays on the colour scale; every second head and
  every ``layer_step``-th layer get a tick, numbered from 0.
  """
  grid = np.log10(np.maximum(errors, 1e-18)).reshape(layers, heads)
  im = ax.imshow(grid, cmap=SEQUENTIAL, aspect="auto", origin="lower")
  ax.set_xticks(range(0, heads, 2), [str(k) for k in range(0, heads, 2)])
  ax.set_yticks(range(0, layers, layer_step), [str(k) for k in range(0, layers, layer_step)])
  ax.set_xlabel(xlabel)
  ax.set_ylabel("layer (0 = first)")
  ax.grid(False)
  ax.set_title("(a) C1 error, float64", loc="left")
  cb = fig.colorbar(im, ax=ax, pad=0.01, aspect=30)
  cb.set_label("$\\log_{10}$ max relative error")


def correlation_intervals(ax, c, kinds=("pooled", "within trials")) -> None:
  """Spearman rho with its interval [lo, hi] per name, one marker per kind, side by side.

  ``c``: the columns of a :func:`figures.correlation_table` (or any table with columns
  kind, rho, lo, hi) as :func:`figures.table` reads them; names at x = 0, 1, ...; a line
  at rho = 0 for reference.
  """
  for i, kind in enumerate(kinds):
    sel = c["kind"] == kind
    xs = np.arange(sel.sum()) + (i - 0.5) * 0.3
    rho, lo, hi = c["rho"][sel], c["lo"][sel], c["hi"][sel]
    ax.errorbar(xs, rho, yerr=[rho - lo, hi - rho], fmt=MARKERS[i], color=CYCLE[i],
                capsize=2, label=kind)
  ax.axhline(0.0, color=REFERENCE, lw=0.8)


def annotate(ax, text: str, *, loc: str = "lower right") -> None:
  """A small boxed note inside the axes (key numbers of the panel)."""
  x, ha = (0.97, "right") if "right" in loc else (0.03, "left")
  y, va = (0.04, "bottom") if "lower" in loc else (0.96, "top")
  t = ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=RC["legend.fontsize"],
              bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.7", lw=0.5, alpha=0.9),
              zorder=10)
  t.set_in_layout(False)  # inside the axes: must not shrink them under constrained layout


def legend(ax, **kwargs):
  """A legend inside the axes that does not take part in the constrained layout."""
  leg = ax.legend(**kwargs)
  leg.set_in_layout(False)
  return leg


def legend_below(ax, **kwargs):
  """A legend under the axes (part of the layout): for panels whose data fill the axes."""
  kwargs.setdefault("loc", "upper center")
  kwargs.setdefault("bbox_to_anchor", (0.5, -0.3))
  return ax.legend(**kwargs)


def fit_loglog_slope(x, y) -> tuple[float, float]:
  """Least-squares slope and intercept of log y on log x (positive finite pairs only)."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
  if ok.sum() < 2:
    return float("nan"), float("nan")
  slope, intercept = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
  return float(slope), float(intercept)


def watermark(fig, text: str) -> None:
  """A large diagonal grey ``text`` across the figure (gid ``"quick-watermark"``).

  The text up to the first ':' is written large, the rest small under it. It
  takes no part in the layout: the panels stay where they are.
  """
  head, _, rest = text.partition(":")
  common = dict(transform=fig.transFigure, ha="center", va="center", rotation=12,
                color="0.5", alpha=0.35, fontweight="bold", zorder=100)
  texts = [fig.text(0.5, 0.52, head.strip(), fontsize=30, gid="quick-watermark", **common)]
  if rest:
    texts.append(fig.text(0.5, 0.36, rest.strip(), fontsize=10, gid="quick-watermark-note",
                          **common))
  for t in texts:
    t.set_in_layout(False)
