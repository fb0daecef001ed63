"""Collect models and their scores into one table (Markdown, JSON) and a quality-vs-size plot.

A RUN_DIR is what ``iwslt-mc build`` writes (or any folder laid out the same way):

- the model: ``RUN_DIR/model/`` when it exists, else RUN_DIR itself when it holds
  ``*.safetensors`` files (a bare model directory);
- its scores: every ``RUN_DIR/scores*.json`` and ``RUN_DIR/scores/*.json``, as written by
  ``iwslt-mc score --out-json`` (one file per language pair and test set);
- its recipe: ``RUN_DIR/build.json`` ("recipe") when present; the techniques come from the
  model's ``provenance.json``.

Size, parameters and bin are measured now, never read from a file: the edition's primary size
measure (2025: safetensors bytes from :func:`iwslt_mc.sizing.sizer.measure`; 2026/2027: the organizers'
``torch.save(model.state_dict())`` bytes, :func:`iwslt_mc.submission.description.torch_save_bytes`). One row per
(run, language pair, test set); a run without scores gets one row without quality. When a language
pair has several test sets, each run scored on all of them also gets an "average" row (the mean of
its test-set scores; runs missing a test set are left out of it, not averaged over fewer sets).

Acceptability (papers/000): for every scores file with segment scores, per threshold the share of
segments whose sentence COMET (sentence chrF when the file has no COMET) is at or above it; with a
teacher (``teacher``: a RUN_DIR whose scores files cover the same language pair and test set, or
the teacher scores ``iwslt-mc score --teacher-hyp`` stored in the file), precision, recall and F1 of
the "acceptable" decisions against the teacher's. Average rows carry none.

The plot has one panel per (language pair, test set) and per language-pair average: quality against
size (log scale) and the Pareto frontier (the 2026/2027 ranking: models no other model beats in both
size and quality at once); for 2025 also the bin boundaries and the best model of each bin.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import provenance
from ..errors import InputFileError, UserError
from ..sizing.track import GB, MB, GiB, MiB, get_edition

METRIC_LABELS = {"comet": "COMET", "bleu": "BLEU", "chrf": "chrF"}
PLOT_NAME = "quality-vs-size.png"
AVERAGE = "average"


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
    size_measure: str = "safetensors_bytes"
    average_of: list[str] = field(default_factory=list)  # test sets averaged (average rows only)
    acceptability: dict | None = None  # see scoring.segment_acceptability (+ "teacher_run")

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


def _teacher_segments(teacher: str | os.PathLike) -> dict[tuple[str, str], list[dict]]:
    """``{(lang, testset): segments}`` of a teacher RUN_DIR's scores files."""
    p = Path(teacher)
    if not p.is_dir():
        raise InputFileError(p, "teacher run directory not found" if not p.exists() else "is not a directory")
    files = scores_files(p)
    if not files:
        raise InputFileError(p, "no scores files for the teacher (RUN_DIR/scores*.json from 'iwslt-mc score --out-json')")
    out = {}
    for f in files:
        s = _load_scores(f)
        out[(s["lang"], s.get("testset") or f.stem)] = s.get("segments") or []
    return out


def _acceptability(segments: list[dict], accept: dict | None, teacher: list[dict] | None, teacher_run: str | None,
                   notes: list[str], what: str) -> dict | None:
    from ..scoring.scoring import acceptability, segment_acceptability

    rec = segment_acceptability(segments, accept)
    if rec is None or teacher is None:
        return rec
    m = rec["metric"]
    if len(teacher) != len(segments) or not all(m in t for t in teacher):
        notes.append(f"{what}: no precision/recall against the teacher {teacher_run} "
                     f"({len(teacher)} teacher segments for {len(segments)}"
                     + ("" if len(teacher) != len(segments) else f", the teacher has no sentence {rec['label']}") + ")")
        return rec
    rec.update(teacher=True, teacher_run=teacher_run,
               levels=acceptability([x[m] for x in segments], rec["thresholds"], [t[m] for t in teacher]))
    return rec


def collect(run_dirs: list[str | os.PathLike], edition: str | None = None, *, accept: dict | None = None,
            teacher: str | os.PathLike | None = None, notes: list[str] | None = None) -> tuple[list[Row], dict]:
    """Rows for every run (checked first, so a bad RUN_DIR fails before any measuring).

    ``accept``: acceptability thresholds ``{"comet": [...], "chrf": [...]}`` (defaults: scoring's);
    ``teacher``: a RUN_DIR whose segment scores are the positives for precision/recall/F1.
    """
    from ..sizing.sizer import measure

    ed = get_edition(edition)
    notes = notes if notes is not None else []
    teacher_segs = _teacher_segments(teacher) if teacher is not None else None
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
        rep = measure(model_dir, edition=ed.key)
        nbytes, signatures["size"] = int(rep.bytes), rep.signature
        if ed.primary_size_measure == "torch_save_bytes":
            from .description import torch_save_bytes

            nbytes, signatures["size"] = torch_save_bytes(model_dir)
        prov = provenance.read(model_dir)
        base = dict(run=name, run_dir=str(p), model_dir=str(model_dir), bytes=nbytes, params=rep.params,
                    bin=rep.bin if ed.has_bins else None, recipe=_recipe(p, prov),
                    techniques=provenance.techniques(prov), size_measure=ed.primary_size_measure)
        if not scored:
            rows.append(Row(**base))
        for f, s in scored:
            m = s["metrics"]
            testset = s.get("testset") or f.stem
            tsegs = None if teacher_segs is None else teacher_segs.get((s["lang"], testset))
            if teacher_segs is not None and tsegs is None:
                notes.append(f"{name} ({s['lang']} {testset}): the teacher {teacher} has no scores for this test set")
            row = Row(**base, lang=s["lang"], testset=testset, scores_file=str(f),
                      scores={k: float(v["score"]) for k, v in m.items()},
                      metric_names={k: v.get("name", METRIC_LABELS.get(k, k)) for k, v in m.items()},
                      as_wer=(s.get("resegmentation") or {}).get("as_wer"),
                      acceptability=_acceptability(s.get("segments") or [], accept, tsegs,
                                                   None if teacher is None else str(teacher), notes,
                                                   f"{name} ({s['lang']} {testset})"))
            for k, v in m.items():
                signatures[f"{s['lang']}:{k}"] = v.get("signature", "")
            rows.append(row)
    return rows, signatures


def add_averages(rows: list[Row]) -> tuple[list[Row], list[str]]:
    """Per language pair with several test sets: one "average" row per run scored on all of them.

    Returns (average rows, notes about runs left out). Metrics are averaged only where every test
    set of the run has them.
    """
    out, notes = [], []
    for lang in sorted({r.lang for r in rows if r.lang}):
        lrows = [r for r in rows if r.lang == lang and r.testset != AVERAGE]
        sets = sorted({r.testset for r in lrows})
        if len(sets) < 2:
            continue
        for run in dict.fromkeys(r.run for r in lrows):
            mine = {r.testset: r for r in lrows if r.run == run}
            if set(mine) != set(sets):
                notes.append(f"{run} ({lang}) is not in the average: scored on {len(mine)} of {len(sets)} test sets "
                             f"(missing {', '.join(t for t in sets if t not in mine)})")
                continue
            first = mine[sets[0]]
            keys = [k for k in first.scores if all(k in mine[t].scores for t in sets)]
            out.append(Row(run=run, run_dir=first.run_dir, model_dir=first.model_dir, bytes=first.bytes,
                           params=first.params, bin=first.bin, recipe=first.recipe, techniques=first.techniques,
                           lang=lang, testset=AVERAGE, size_measure=first.size_measure, average_of=sets,
                           scores={k: sum(mine[t].scores[k] for t in sets) / len(sets) for k in keys},
                           metric_names={k: first.metric_names.get(k, k) for k in keys}))
    return out, notes


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


def _fmt_bytes(n: int, binary: bool = False) -> str:
    if binary:
        return f"{n / GiB:.3f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"
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


def table(rows: list[Row], metric: str, edition: str | None = None) -> tuple[list[str], list[list[str]]]:
    """The report's rows as text; sizes in the edition's unit (binary for GiB editions)."""
    binary = get_edition(edition).size_unit in ("GiB", "MiB")
    headers = ["model", "lang", "test set", "size", "params", "bin", "recipe", "techniques",
               "BLEU", "chrF", "COMET", "AS-WER", "Pareto", "best in bin"]
    body = []
    for r in sort_rows(rows, metric):
        ts = r.testset or "-"
        if r.testset == AVERAGE:
            ts = f"average of {len(r.average_of)}"
        body.append([r.run, r.lang or "-", ts, _fmt_bytes(r.bytes, binary),
                     _fmt_params(r.params),
                     r.bin or "none", r.recipe or "-", ", ".join(r.techniques) or "-",
                     _fmt_score(r, "bleu"), _fmt_score(r, "chrf"), _fmt_score(r, "comet"),
                     "-" if r.as_wer is None else f"{r.as_wer:.2f}", "yes" if r.pareto else "",
                     r.bin if r.best_in_bin else ""])
    return headers, body


def sort_rows(rows: list[Row], metric: str) -> list[Row]:
    return sorted(rows, key=lambda r: (r.lang or "~", r.testset == AVERAGE, r.testset or "", r.bytes,
                                       -r.scores.get(metric, -math.inf)))


def markdown(rows: list[Row], metric: str, signatures: dict, edition: str, plot_name: str | None,
             notes: list[str] | None = None) -> str:
    headers, body = table(rows, metric, edition)
    ed = get_edition(edition)
    if not ed.has_bins:
        drop = [headers.index("bin"), headers.index("best in bin")]
        headers = [h for i, h in enumerate(headers) if i not in drop]
        body = [[c for i, c in enumerate(row) if i not in drop] for row in body]

    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = [f"# Models: quality against size ({METRIC_LABELS[metric]}, edition {ed.key})", ""]
    if plot_name:
        lines += [f"![quality against size]({plot_name})", ""]
    lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    lines += ["", f"Size: {ed.size_rule}."]
    if ed.has_bins:
        lines += [f"Bins ({ed.key}): " + "; ".join(
            f"{b.name} {_fmt_bytes(b.low)} <= S < {_fmt_bytes(b.high)}" if b.low else f"{b.name} S < {_fmt_bytes(b.high)}"
            for b in ed.bins) + f" ({ed.boundary_rule}); bin 'none': not eligible.",
            f"Best in bin: highest {METRIC_LABELS[metric]} in its {ed.key} bin."]
    lines += [f"Pareto: no other model of the same language pair and test set (or average) is both no larger and "
              f"no worse in {METRIC_LABELS[metric]}" + ("" if ed.has_bins else f" (the {ed.key} ranking)") + ".",
              "Average: the mean over a language pair's test sets, for models scored on all of them."]
    for n in notes or []:
        lines.append(f"Note: {n}")
    lines += acceptability_markdown(rows, metric)
    lines += ["", "Signatures:", ""]
    lines += [f"- {k}: `{v}`" for k, v in sorted(signatures.items())]
    return "\n".join(lines) + "\n"


def acceptability_markdown(rows: list[Row], metric: str) -> list[str]:
    """The acceptability section: one line per (model, test set, threshold)."""
    acc_rows = [r for r in sort_rows(rows, metric) if r.acceptability]
    if not acc_rows:
        return []

    def f(x):
        return "-" if x is None else f"{x:.2f}"

    with_teacher = any(r.acceptability.get("teacher") for r in acc_rows)
    headers = ["model", "lang", "test set", "metric", "threshold", "acceptable", "share"]
    if with_teacher:
        headers += ["teacher acceptable", "precision", "recall", "F1"]
    lines = ["", "## Acceptability", "",
             "Share of segments whose sentence score is at or above each threshold (papers/000: quality is used "
             "for accept/reject decisions)" + ("; precision, recall and F1 of the model's 'acceptable' decisions "
                                                "against the teacher's (teacher-acceptable segments are the positives)"
                                                if with_teacher else "") + ".", "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in acc_rows:
        a = r.acceptability
        for lv in a["levels"]:
            cells = [r.run, r.lang or "-", r.testset or "-", f"sentence {a['label']}",
                     f"{lv['threshold']:.2f}" if a["metric"] == "comet" else f"{lv['threshold']:g}",
                     f"{lv['acceptable']}/{lv['segments']}", f"{100 * (lv['share'] or 0):.1f}%"]
            if with_teacher:
                cells += ([f"{lv['teacher_acceptable']}/{lv['segments']}", f(lv["precision"]), f(lv["recall"]),
                           f(lv["f1"])] if "precision" in lv else ["-"] * 4)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def plot_png(rows: list[Row], metric: str, edition: str | None = None) -> bytes:
    """The quality-vs-size figure as PNG bytes (matplotlib's Agg canvas: no display needed)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    ed = get_edition(edition)
    binary = ed.size_unit in ("GiB", "MiB")
    keys = sorted({(r.lang, r.testset) for r in rows if metric in r.scores}, key=lambda k: (k[0], k[1] == AVERAGE, k[1]))
    if not keys:
        raise UserError("no scored model to plot (write scores with 'iwslt-mc score --out-json RUN_DIR/scores.json')")
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(7.5 * ncols, 5.2 * nrows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flatten())
    for ax in axes[len(keys):]:
        ax.set_visible(False)
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
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _fmt_bytes(int(x), binary).replace(".000", "")
                                                   .replace(".0 MB", " MB").replace(".0 MiB", " MiB")))
        units = (MiB, GiB) if binary else (MB, GB)
        ticks = [t for t in [units[0], 10 * units[0], 100 * units[0], units[1], *edges, 10 * units[1]] if lo <= t <= hi]
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
        if ed.has_bins:
            ax.scatter([r.bytes for r in best], [r.scores[metric] for r in best], s=230, facecolors="none",
                       edgecolors="goldenrod", lw=2.0, zorder=3.5, label=f"best in its {ed.key} bin")
        right = math.exp(math.log(lo) + 0.82 * (math.log(hi) - math.log(lo)))
        for k, r in enumerate(group):
            label = r.run + ((f" ({r.bin})" if r.bin else " (no bin)") if ed.has_bins else "")
            # Labels of points near the right edge go to their left, so they are not cut off.
            if r.bytes > right:
                xy, ha = (-6, 9), "right"
            else:
                xy, ha = (8, 7 if k % 2 == 0 else -13), "left"
            ax.annotate(label, (r.bytes, r.scores[metric]), textcoords="offset points", ha=ha, xytext=xy,
                        fontsize=8, zorder=5)
        if ed.has_bins:
            ax.set_xlabel(f"storage size (log scale; {ed.key} bins, decimal units)")
        else:
            what = "torch.save(state_dict)" if ed.primary_size_measure == "torch_save_bytes" else "safetensors files"
            ax.set_xlabel(f"size on disk: {what} (log scale, {'binary' if binary else 'decimal'} units)")
        ax.set_ylabel(METRIC_LABELS[metric] if metric != "chrf" else group[0].metric_names.get("chrf", "chrF"))
        title = key[1] if key[1] != AVERAGE else f"average of {len(group[0].average_of)} test sets"
        ax.set_title(f"{key[0]}  {title}", fontsize=11)
        ax.grid(True, axis="y", color="0.92")
    # One legend under the panels, where it cannot hide a point or a label.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike, *, metric: str = "auto",
                 edition: str | None = None, accept: dict | None = None,
                 teacher: str | os.PathLike | None = None) -> dict:
    """Write ``report.md``, ``report.json`` and the plot to ``out_dir``; returns the JSON record.

    Editions with bins (2025) draw the bin edges and mark the best model per bin; Pareto editions
    (2026, 2027) draw the frontier only, per test set and averaged over a pair's test sets.
    """
    from ..fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

    ed = get_edition(edition)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    accept_notes: list[str] = []
    rows, signatures = collect(run_dirs, edition=ed.key, accept=accept, teacher=teacher, notes=accept_notes)
    metric = choose_metric(rows, metric)
    averages, notes = add_averages(rows)
    notes = accept_notes + notes
    rows = rows + averages
    mark(rows, metric)
    png = plot_png(rows, metric, ed.key) if any(metric in r.scores for r in rows) else None
    out.mkdir(parents=True, exist_ok=True)
    if png is not None:
        atomic_write_bytes(out / PLOT_NAME, png)
    record = {"format": 1, "edition": ed.key, "ranking": ed.ranking, "size_measure": ed.primary_size_measure,
              "metric": metric, "plot": PLOT_NAME if png is not None else None,
              "rows": [r.to_json() for r in sort_rows(rows, metric)], "signatures": signatures, "notes": notes}
    atomic_write_json(out / "report.json", record)
    atomic_write_text(out / "report.md", markdown(rows, metric, signatures, ed.key, PLOT_NAME if png else None, notes))
    return record
