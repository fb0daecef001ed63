"""Collect models and their scores into one table (Markdown, JSON) and a quality-vs-size plot.

A RUN_DIR is what ``iwslt-mc build`` writes (or any folder laid out the same way):

- the model: ``RUN_DIR/model/`` when it exists, else RUN_DIR itself when it holds
  ``*.safetensors`` files (a bare model directory);
- its scores: every ``RUN_DIR/scores*.json`` and ``RUN_DIR/scores/*.json``, as written by
  ``iwslt-mc score --out-json`` (one file per language pair and test set);
- its recipe: ``RUN_DIR/build.json`` ("recipe") when present; the techniques come from the
  model's ``provenance.json``.

Size, parameters and bin are measured now by :func:`iwslt_mc.sizer.measure`, never read from a
file. One row per (run, language pair, test set); a run without scores gets one row without
quality. The plot has one panel per (language pair, test set): quality against size (log scale),
the 2025 bin boundaries, and the Pareto frontier (2026 ranking: no model both smaller and better).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import provenance
from .errors import InputFileError, UserError
from .track import GB, MB, get_edition

METRIC_LABELS = {"comet": "COMET", "bleu": "BLEU", "chrf": "chrF"}
PLOT_NAME = "quality-vs-size.png"


@dataclass
class Row:
    run: str
    run_dir: str
    model_dir: str
    bytes: int
    params: int
    bin: str | None
    recipe: str | None
    techniques: list[str]
    lang: str | None = None
    testset: str | None = None
    scores: dict[str, float] = field(default_factory=dict)  # bleu, chrf, comet
    metric_names: dict[str, str] = field(default_factory=dict)  # bleu -> "BLEU", chrf -> "chrF2++"
    as_wer: float | None = None
    scores_file: str | None = None
    pareto: bool = False
    best_in_bin: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _load_scores(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(path, f"not a readable JSON scores file ({e})") from None
    if not isinstance(data, dict) or "metrics" not in data or "lang" not in data:
        raise InputFileError(path, "not an iwslt-mc scores file (write one with 'iwslt-mc score --out-json')")
    return data


def find_model_dir(run_dir: Path) -> Path:
    if (run_dir / "model").is_dir():
        return run_dir / "model"
    if any(run_dir.glob("*.safetensors")):
        return run_dir
    raise InputFileError(run_dir, "no model: expected RUN_DIR/model/ or *.safetensors files in RUN_DIR")


def scores_files(run_dir: Path) -> list[Path]:
    files = sorted(run_dir.glob("scores*.json"))
    if (run_dir / "scores").is_dir():
        files += sorted((run_dir / "scores").glob("*.json"))
    return files


def _recipe(run_dir: Path, prov: dict) -> str | None:
    state = run_dir / "build.json"
    if state.is_file():
        try:
            name = json.loads(state.read_text(encoding="utf-8")).get("recipe")
            if name:
                return str(name)
        except (OSError, ValueError):
            pass
    stages = [s.get("stage") for s in prov.get("stages", []) if s.get("stage")]
    return " > ".join(stages) if stages else None


def collect(run_dirs: list[str | os.PathLike], edition: str = "2025") -> tuple[list[Row], dict]:
    """Rows for every run (checked first, so a bad RUN_DIR fails before any measuring)."""
    from .sizer import measure

    dirs = []
    for d in run_dirs:
        p = Path(d)
        if not p.is_dir():
            raise InputFileError(p, "run directory not found" if not p.exists() else "is not a directory")
        dirs.append((p, find_model_dir(p), [(f, _load_scores(f)) for f in scores_files(p)]))
    names = [p.resolve().name for p, _, _ in dirs]
    rows: list[Row] = []
    signatures: dict[str, str] = {}
    for (p, model_dir, scored), name in zip(dirs, names):
        if names.count(name) > 1:
            name = str(p)
        rep = measure(model_dir, edition=edition)
        signatures["size"] = rep.signature
        prov = provenance.read(model_dir)
        base = dict(run=name, run_dir=str(p), model_dir=str(model_dir), bytes=rep.bytes, params=rep.params,
                    bin=rep.bin, recipe=_recipe(p, prov), techniques=provenance.techniques(prov))
        if not scored:
            rows.append(Row(**base))
        for f, s in scored:
            m = s["metrics"]
            row = Row(**base, lang=s["lang"], testset=s.get("testset") or f.stem, scores_file=str(f),
                      scores={k: float(v["score"]) for k, v in m.items()},
                      metric_names={k: v.get("name", METRIC_LABELS.get(k, k)) for k, v in m.items()},
                      as_wer=(s.get("resegmentation") or {}).get("as_wer"))
            for k, v in m.items():
                signatures[f"{s['lang']}:{k}"] = v.get("signature", "")
            rows.append(row)
    return rows, signatures


def choose_metric(rows: list[Row], metric: str = "auto") -> str:
    """``auto``: COMET when every scored row has it (the track's metric), else BLEU."""
    scored = [r for r in rows if r.scores]
    if metric != "auto":
        if metric not in METRIC_LABELS:
            raise UserError(f"--metric must be auto, {', '.join(METRIC_LABELS)} (got {metric!r})")
        missing = [r.run for r in scored if metric not in r.scores]
        if missing:
            raise UserError(f"--metric {metric}: no {METRIC_LABELS[metric]} score for {', '.join(missing)} "
                            f"(score with --comet, or choose another metric)")
        return metric
    return "comet" if scored and all("comet" in r.scores for r in scored) else "bleu"


def pareto_front(points: list[tuple[int, float]]) -> list[int]:
    """Indices of the points no other point beats: none both no larger and no worse, and better in one."""
    front = []
    for i, (s, q) in enumerate(points):
        dominated = any((s2 <= s and q2 >= q) and (s2 < s or q2 > q) for j, (s2, q2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def mark(rows: list[Row], metric: str) -> None:
    """Set ``pareto`` and ``best_in_bin`` per (language pair, test set)."""
    for key in {(r.lang, r.testset) for r in rows if metric in r.scores}:
        group = [r for r in rows if (r.lang, r.testset) == key and metric in r.scores]
        for i in pareto_front([(r.bytes, r.scores[metric]) for r in group]):
            group[i].pareto = True
        for b in {r.bin for r in group if r.bin}:
            best = max((r for r in group if r.bin == b), key=lambda r: (r.scores[metric], -r.bytes))
            best.best_in_bin = True


def _fmt_bytes(n: int) -> str:
    return f"{n / GB:.3f} GB" if n >= GB else f"{n / MB:.1f} MB"


def _fmt_params(n: int) -> str:
    for div, unit in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _fmt_score(r: Row, k: str) -> str:
    if k not in r.scores:
        return "-"
    return f"{r.scores[k]:.4f}" if k == "comet" else f"{r.scores[k]:.1f}"


def table(rows: list[Row], metric: str) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "lang", "test set", "size", "params", "bin", "recipe", "techniques",
               "BLEU", "chrF", "COMET", "AS-WER", "Pareto", "best in bin"]
    body = []
    for r in sort_rows(rows, metric):
        body.append([r.run, r.lang or "-", r.testset or "-", _fmt_bytes(r.bytes), _fmt_params(r.params),
                     r.bin or "none", r.recipe or "-", ", ".join(r.techniques) or "-",
                     _fmt_score(r, "bleu"), _fmt_score(r, "chrf"), _fmt_score(r, "comet"),
                     "-" if r.as_wer is None else f"{r.as_wer:.2f}", "yes" if r.pareto else "",
                     r.bin if r.best_in_bin else ""])
    return headers, body


def sort_rows(rows: list[Row], metric: str) -> list[Row]:
    return sorted(rows, key=lambda r: (r.lang or "~", r.testset or "", r.bytes, -r.scores.get(metric, -math.inf)))


def markdown(rows: list[Row], metric: str, signatures: dict, edition: str, plot_name: str | None) -> str:
    headers, body = table(rows, metric)

    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = [f"# Models: quality against size ({METRIC_LABELS[metric]})", ""]
    if plot_name:
        lines += [f"![quality against size]({plot_name})", ""]
    lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    ed = get_edition(edition)
    lines += ["", f"Bins ({ed.key}): " + "; ".join(
        f"{b.name} {_fmt_bytes(b.low)} <= S < {_fmt_bytes(b.high)}" if b.low else f"{b.name} S < {_fmt_bytes(b.high)}"
        for b in ed.bins) + f" ({ed.boundary_rule}); bin 'none': not eligible.",
        f"Pareto: no other model of the same language pair and test set is both no larger and no worse in "
        f"{METRIC_LABELS[metric]} (2026 ranking). Best in bin: highest {METRIC_LABELS[metric]} in its {ed.key} bin.",
        "", "Signatures:", ""]
    lines += [f"- {k}: `{v}`" for k, v in sorted(signatures.items())]
    return "\n".join(lines) + "\n"


def plot_png(rows: list[Row], metric: str, edition: str = "2025") -> bytes:
    """The quality-vs-size figure as PNG bytes (matplotlib's Agg canvas: no display needed)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    ed = get_edition(edition)
    keys = sorted({(r.lang, r.testset) for r in rows if metric in r.scores})
    if not keys:
        raise UserError(f"no scored model to plot (write scores with 'iwslt-mc score --out-json RUN_DIR/scores.json')")
    fig = Figure(figsize=(7.5 * len(keys), 5.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    edges = sorted({b.low for b in ed.bins if b.low} | {b.high for b in ed.bins if b.high})
    for ax, key in zip(axes, keys):
        group = sorted((r for r in rows if (r.lang, r.testset) == key and metric in r.scores), key=lambda r: r.bytes)
        xs = [r.bytes for r in group]
        ys = [r.scores[metric] for r in group]
        lo = min(min(xs) / 2, edges[0] / 2) if edges else min(xs) / 2
        hi = max(max(xs) * 2, edges[-1] * 2) if edges else max(xs) * 2
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        span = (max(ys) - min(ys)) or max(abs(max(ys)), 1.0) * 0.1
        ax.set_ylim(min(ys) - 0.25 * span, max(ys) + 0.3 * span)
        # Bins: boundaries, names between them, and the region no bin accepts.
        for e in edges:
            ax.axvline(e, color="0.55", lw=0.9, ls="--", zorder=1)
        if edges:
            ax.axvspan(edges[-1], hi, color="0.9", zorder=0)
            ax.text(math.sqrt(edges[-1] * hi), 0.97, "no bin", transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, color="0.4")
        for b in ed.bins:
            left = b.low if b.low else lo
            ax.text(math.sqrt(left * b.high), 0.97, b.name, transform=ax.get_xaxis_transform(), ha="center",
                    va="top", fontsize=9, color="0.3", fontweight="bold")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _fmt_bytes(int(x)).replace(".000", "")
                                                   .replace(".0 MB", " MB")))
        ticks = [t for t in [1 * MB, 10 * MB, 100 * MB, *edges, 10 * GB] if lo <= t <= hi]
        ax.set_xticks(sorted(set(ticks)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        # Frontier as a staircase: the best quality reachable at or below each size.
        front = [group[i] for i in pareto_front(list(zip(xs, ys)))]
        fx = [r.bytes for r in front]
        fy = [r.scores[metric] for r in front]
        if front:
            ax.step(fx + [hi], fy + [fy[-1]], where="post", color="tab:red", lw=1.6, zorder=2,
                    label="Pareto frontier")
        others = [r for r in group if not r.pareto]
        ax.scatter([r.bytes for r in others], [r.scores[metric] for r in others], s=36, color="tab:blue",
                   zorder=3, label="model")
        ax.scatter(fx, fy, s=70, color="tab:red", edgecolor="black", lw=0.8, zorder=4, label="on the frontier")
        best = [r for r in group if r.best_in_bin]
        ax.scatter([r.bytes for r in best], [r.scores[metric] for r in best], s=230, facecolors="none",
                   edgecolors="goldenrod", lw=2.0, zorder=3.5, label=f"best in its {ed.key} bin")
        right = math.exp(math.log(lo) + 0.82 * (math.log(hi) - math.log(lo)))
        for k, r in enumerate(group):
            label = r.run + (f" ({r.bin})" if r.bin else " (no bin)")
            # Labels of points near the right edge go to their left, so they are not cut off.
            if r.bytes > right:
                xy, ha = (-6, 9), "right"
            else:
                xy, ha = (8, 7 if k % 2 == 0 else -13), "left"
            ax.annotate(label, (r.bytes, r.scores[metric]), textcoords="offset points", ha=ha, xytext=xy,
                        fontsize=8, zorder=5)
        ax.set_xlabel(f"storage size (log scale; {ed.key} bins, decimal units)")
        ax.set_ylabel(METRIC_LABELS[metric] if metric != "chrf" else group[0].metric_names.get("chrf", "chrF"))
        ax.set_title(f"{key[0]}  {key[1]}", fontsize=11)
        ax.grid(True, axis="y", color="0.92")
    # One legend under the panels, where it cannot hide a point or a label.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike, *, metric: str = "auto",
                 edition: str = "2025") -> dict:
    """Write ``report.md``, ``report.json`` and the plot to ``out_dir``; returns the JSON record."""
    from .fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

    ed = get_edition(edition)
    if not ed.has_bins:
        raise UserError(f"edition {ed.key} has no bins to draw; use --edition 2025 (the frontier is drawn either way)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    rows, signatures = collect(run_dirs, edition=ed.key)
    metric = choose_metric(rows, metric)
    mark(rows, metric)
    png = plot_png(rows, metric, ed.key) if any(metric in r.scores for r in rows) else None
    out.mkdir(parents=True, exist_ok=True)
    if png is not None:
        atomic_write_bytes(out / PLOT_NAME, png)
    record = {"format": 1, "edition": ed.key, "metric": metric,
              "plot": PLOT_NAME if png is not None else None,
              "rows": [r.to_json() for r in sort_rows(rows, metric)], "signatures": signatures}
    atomic_write_json(out / "report.json", record)
    atomic_write_text(out / "report.md", markdown(rows, metric, signatures, ed.key, PLOT_NAME if png else None))
    return record
