"""
How results are shown, once for the scorer and the report: numbers as a page prints them,
markdown tables, the arm a run belongs to, JSON without NaN, and line charts as hand-written SVG
(no plotting dependency). Shared by evaluate.py (each score's tables and plot) and runs/report.py
(the results pages); no command line, no torch.
"""

import json
import math
import os
import re
from xml.sax.saxutils import escape


def arm_of(name):
    """The arm a run belongs to: "ARM@SEED" and "ARM@SEED:SETTING" are training seeds of the arm
    "ARM" and "ARM:SETTING"."""
    return re.sub(r"@[^:]*", "", name)


def num(x, digits=3, sign=False):
    """A number for a table cell; None (JSON's null), nan or a non-number shows as n/a, and
    -0.000 as 0.000 (a rounding artefact, not a sign worth reading)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        return "n/a"
    text = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return text.replace("-", "+" if sign else "", 1) if float(text) == 0 else text


def table(head, rows):
    """A markdown table: the header, its separator, one line per row of cells (no blank line
    after it: the caller places it)."""
    lines = [head, *rows]
    out = ["| " + " | ".join(str(c) for c in cells) + " |" for cells in lines]
    return "\n".join(out[:1] + ["|---" * len(head) + "|"] + out[1:])


def json_text(x):
    """Indented JSON, nan and inf as null: JSON has neither, json.loads hands them to
    parse_constant."""
    return json.dumps(json.loads(json.dumps(x), parse_constant=lambda _: None), indent=1)


def write_files(out_dir, files):
    """Write {file name: text} into out_dir (created if needed), "\\n" line ends on every
    platform; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    return [os.path.join(out_dir, name) for name in files]


# ----------------------------------------------------------------------------------------------
# A line chart as SVG: linear axes, 5 ticks each, a legend on the right.

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _line(xa, ya, xb, yb, style='stroke="black"'):
    return f'<line x1="{xa}" y1="{ya}" x2="{xb}" y2="{yb}" {style}/>'


def _text(x, y, s, style=""):
    """An SVG text element; the text is escaped (a name may hold <, > or &)."""
    return f'<text x="{x}" y="{y}"{style}>{escape(str(s))}</text>'


def svg_plot(series, title, xlabel, ylabel, hline=None, width=640, height=400):
    """A line chart as an SVG string: series {name: [(x, y), ...]} as polylines with dots, nan
    points left out; hline = (label, y) draws a dashed reference line."""
    left, right, top, bottom = 70, 170, 40, 50  # margins; the legend lives in the right one
    pts = [(x, y) for s in series.values() for x, y in s if not math.isnan(y)]
    xs = [x for x, _ in pts] or [0.0, 1.0]  # no data at all: a unit square
    ys = [y for _, y in pts] + ([hline[1]] if hline else []) or [0.0, 1.0]
    # the data range, widened where it is empty (one x value), padded by 5% on y (no dot on the
    # frame)
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1.0
    pad = 0.05 * (max(ys) - min(ys)) or 1.0
    y0, y1 = min(ys) - pad, max(ys) + pad

    def sx(x):  # data -> pixel: left + (x - x0) / (x1 - x0) * the plot's width
        return round(left + (x - x0) / (x1 - x0) * (width - left - right), 1)

    def sy(y):  # y is measured up from the bottom
        return round(height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom), 1)
    base, legend_x, y_mid = sy(y0), width - right + 10, (top + sy(y0)) / 2  # base: the x axis's row
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
          f'font-size="12" font-family="sans-serif">',
          f'<rect width="{width}" height="{height}" fill="white"/>',
          _text(width / 2, 20, title, ' text-anchor="middle" font-size="14"'),
          _line(left, base, sx(x1), base), _line(left, base, left, sy(y1))]  # the x and y axes
    for k in range(5):  # 5 evenly spaced ticks per axis, labelled with 3-4 significant digits
        xv, yv = x0 + k * (x1 - x0) / 4, y0 + k * (y1 - y0) / 4
        px, py = sx(xv), sy(yv)
        el += [_line(px, base, px, base + 5)
               + _text(px, base + 18, f"{xv:.3g}", ' text-anchor="middle"'),
               _line(left - 5, py, left, py)
               + _text(left - 8, py + 4, f"{yv:.4g}", ' text-anchor="end"')]
    # axis labels; the y label is rotated about its own anchor point
    el += [_text((left + sx(x1)) / 2, height - 12, xlabel, ' text-anchor="middle"'),
           _text(16, y_mid, ylabel, f' text-anchor="middle" transform="rotate(-90 16 {y_mid})"')]
    if hline:  # the reference line gets the legend slot after the last series
        el += [_line(left, sy(hline[1]), sx(x1), sy(hline[1]),
                     'stroke="gray" stroke-dasharray="5,4"'),
               _text(legend_x, top + 20 * len(series) + 14, "- - " + hline[0], ' fill="gray"')]
    for k, (name, s) in enumerate(series.items()):  # a coloured line per name
        c, ok = COLORS[k % len(COLORS)], [(sx(x), sy(y)) for x, y in s if not math.isnan(y)]
        el.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                  + " ".join(f"{px},{py}" for px, py in ok) + '"/>')
        el += [f'<circle cx="{px}" cy="{py}" r="3" fill="{c}"/>' for px, py in ok]
        el.append(_text(legend_x, top + 20 * k + 14, name, f' fill="{c}"'))  # the legend entry
    return "\n".join(el + ["</svg>"]) + "\n"


# ----------------------------------------------------------------------------------------------
# The tables of one score (evaluate.py score writes them as results.md).


def ci_table(items, label, rates):
    """Intervals as a table: rows = (label filled from the entry, metric), columns = rates, cells
    "mean [lo, hi]"."""
    rows = {}
    for d in items:
        cell = f"{num(d['mean_diff'])} [{num(d['lo'])}, {num(d['hi'])}]"
        rows.setdefault((label.format(**d), d["metric"]), {})[d["rate"]] = cell
    return [table(["", "metric", *rates],
                  [[*k, *(c.get(r, "") for r in rates)] for k, c in rows.items()]), ""]


def mean_sd(cell, metric):
    """"mean", with " ± sd" over the seeds where the arm has several."""
    sd = f" ± {num(cell['seed_sd'][metric])}" if len(cell["seeds"]) > 1 else ""
    return num(cell["summary"][metric]) + sd


WHOLE = {"length_tv": "length histogram against the data's: total variation (0 = the data's)",
         "coverage": "the data's share in the length bins the outputs reach",
         "distinct_valid": "share of outputs that are valid and distinct"}


def whole_tables(res):
    """A table per number of the whole output (WHOLE), arms x rates, where the file has them."""
    out, rates, ref = [], res["rates"], (res.get("reference") or {}).get("whole", {})
    for key, title in WHOLE.items():
        cells = {name: [by_rate[r].get("whole", {}).get(key) for r in rates]
                 for name, by_rate in res["arms"].items()}
        if all(v is None for row in cells.values() for v in row):
            continue
        rows = [[name] + [num(v) for v in row] for name, row in cells.items()]
        rows += [["true responses"] + [num(ref[key])] * len(rates)] if key in ref else []
        out += [f"## {key}: {title}", "", table(["name \\ shift rate", *rates], rows), ""]
    return out


def markdown_report(res, better):
    """All tables of one `score` run (evaluate.py score) as a markdown string: per arm the mean
    over its seeds, with their standard deviation after +- where an arm has several; better maps
    a metric to its direction ("higher is better" where absent)."""
    metrics, rates, runs, ref = res["metrics"], res["rates"], res["arms"], res.get("reference")
    out = [f"# {res['task']} task: {res['n_prompts']} prompts, baseline {res['baseline']}", ""]
    out += [f"Note: {n}" for n in res["notes"]] + [""] * bool(res["notes"])
    for k, m in enumerate(metrics):  # the primary metric first, the realised shift under it
        out += [f"## {m} ({better.get(m, 'higher is better')}): mean per prompt", ""]
        rows = [[name] + [mean_sd(runs[name][r], m) for r in rates] for name in runs]
        rows += [["true responses"] + [num(ref["summary"][m])] * len(rates)] if ref else []
        # shifted / committed tokens, as really moved
        rows += [[f"realised shift: {name}"] + [num(runs[name][r]["realised_shift"], 4)
                                                for r in rates] for name in runs if k == 0]
        out += [table(["name \\ shift rate", *rates], rows), ""]
    out += whole_tables(res)
    # every interval: 95%, two-level bootstrap over training seeds and prompts (stats.py)
    out += ["Intervals: 95%, a two-level bootstrap over training seeds and prompts (each arm's "
            "seeds on their own; paired_lo and paired_hi in results.json resample the seeds an "
            "arm shares with the baseline jointly).", ""]
    if res.get("primary_comparison"):
        p = res["primary_comparison"]
        out += [f"Primary comparison (declared by the experiment script): "
                f"{p['arm']} - {res['baseline']}, {res['primary']}, shift rate {p['rate']}; "
                f"every other comparison is exploratory.", ""]
    out += ["## Change from rate 0, same name", ""]
    out += ci_table(res["robustness"], "{name}", rates[1:])
    out += ["## Share of the shift-0 score kept: name_r / name_0", ""]
    out += ci_table(res["retained"], "{name}", rates[1:])
    out += ["## Name minus baseline at equal rate", ""]
    out += ci_table(res["differences"], "{name} - {baseline}", rates)
    out += ["## Difference in degradation: (name_r - name_0) - (base_r - base_0)", ""]
    out += ci_table(res["diff_in_diff"], "{name} vs {baseline}", rates[1:])
    return "\n".join(out) + "\n"
