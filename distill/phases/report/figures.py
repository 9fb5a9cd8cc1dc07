"""Fig. 1-3 as plotly figures, written as HTML that loads the experiment's one plotly.js (assets.py; opens
offline and in the MLflow UI) with a plotly JSON twin."""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import quote

import numpy as np

from distill.phases.report.assets import PLOTLY_JS, SharedAsset
from distill.phases.report.inputs import CATEGORIES, Inputs

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def teacher_colors(teachers: list[str]) -> dict[str, str]:
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(teachers)}


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return max(1, math.ceil(n / cols)), cols


def figure_accuracy(cells, inputs: Inputs, teachers: list[str], students: list[str], baseline_label: str):
    """Fig. 1: one panel per student, a bar per teacher (error bar: bootstrap 95% interval), seed dots,
    and the few-shot baseline as a dashed line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    colors = teacher_colors(teachers)
    by_cell = {(r.teacher, r.student): r for r in cells.itertuples()}
    n_bars = len(teachers) + len(inputs.baselines)
    rows, cols = _grid(len(students), 4 if n_bars <= 5 else 2)   # wider panels when mixes add bars
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=students or ["(no students)"], shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=0.18)
    top = max([c.ci_high for c in by_cell.values() if np.isfinite(c.ci_high)]
              + [c.accuracy_max for c in by_cell.values()]
              + [r.accuracy for b in inputs.baselines.values() for r in b.values() if np.isfinite(r.accuracy)] + [1.0])
    seed_legend = True
    for k, student in enumerate(students):
        row, col = k // cols + 1, k % cols + 1
        ys, lo, hi, texts, hover = [], [], [], [], []
        for t in teachers:
            c = by_cell.get((t, student))
            if c is None:
                ys.append(None), lo.append(0), hi.append(0), texts.append(""), hover.append(f"{t}: missing")
                continue
            ys.append(c.accuracy_mean)
            lo.append(max(c.accuracy_mean - c.ci_low, 0) if np.isfinite(c.ci_low) else 0)
            hi.append(max(c.ci_high - c.accuracy_mean, 0) if np.isfinite(c.ci_high) else 0)
            texts.append(f"{c.accuracy_mean:.1f}")
            spread = f" ± {c.accuracy_std:.2f} over {c.n_seeds} seeds" if c.n_seeds > 1 else f" (seed {c.seeds})"
            hover.append(f"{t}: {c.accuracy_mean:.2f}%{spread}<br>95% CI [{c.ci_low:.2f}, {c.ci_high:.2f}]")
        fig.add_trace(go.Bar(x=teachers, y=ys, name=student, marker_color=[colors[t] for t in teachers],
                             error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo, thickness=1.5,
                                          width=4, color="#333"),
                             text=texts, textposition="outside", textfont_color="#222", cliponaxis=False,
                             textangle=0,
                             hovertext=hover, hoverinfo="text", showlegend=False), row=row, col=col)
        sx, sy = [], []
        for t in teachers:
            for run in inputs.cells.get((t, student), {}).values():
                if len(inputs.cells[(t, student)]) > 1:
                    sx.append(t), sy.append(run.accuracy)
        if sx:
            fig.add_trace(go.Scatter(x=sx, y=sy, mode="markers", name="one seed",
                                     marker=dict(color="black", size=6, symbol="circle-open"),
                                     showlegend=seed_legend, legendgroup="seeds"), row=row, col=col)
            seed_legend = False
        missing = [t for t in teachers if (t, student) not in by_cell]
        if missing:
            fig.add_trace(go.Scatter(x=missing, y=[top * 0.04] * len(missing), mode="text",
                                     text=["missing"] * len(missing), textfont=dict(color="#999", size=11),
                                     hoverinfo="skip", showlegend=False),
                          row=row, col=col)
        categories = list(teachers)
        for label, runs in inputs.baselines.items():
            r = runs.get(student)
            if r is None or not np.isfinite(r.accuracy):
                continue
            # the untrained student: a grey bar of its own at the right and a dashed line behind the teachers' bars
            categories.append(label)
            fig.add_trace(go.Bar(x=[label], y=[r.accuracy], name=f"{label} baseline", marker_color="#c7c7c7",
                                 marker_pattern_shape="/", text=[f"{r.accuracy:.1f}"], textposition="outside",
                                 hovertext=[f"untrained {student}, {label}: {r.accuracy:.2f}%"], hoverinfo="text",
                                 showlegend=False), row=row, col=col)
            fig.add_hline(y=r.accuracy, line_dash="dash", line_color="#777", line_width=1, layer="below",
                          row=row, col=col)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=categories, title_text="teacher",
                         row=row, col=col)
    fig.update_yaxes(range=[0, percent_axis_top(top)], col=1, title_text="accuracy (%)")
    fig.update_layout(title=f"Fig. 1: student accuracy by teacher ({inputs.eval_set})<br><sup>"
                            "error bars: bootstrap 95% interval; circles: single seeds; grey bar and dashed line: "
                            "the untrained student, few-shot</sup>",
                      template="plotly_white", height=380 * rows + 120, bargap=0.25, margin=dict(t=110),
                      showlegend=False)
    return fig


def figure_errors(errors_df, error_teachers: list[str], students: list[str], colors: dict[str, str]):
    """Fig. 2: per student, bars per error category and teacher: height = share of the judged wrong
    answers, the count written on the bar."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    by = {(r["teacher"], r["student"]): r for _, r in errors_df.iterrows()}
    rows, cols = _grid(len(students))
    titles = []
    for s in students:
        parts = [f"{t}: n={int(by[(t, s)]['n_judged'])}" if (t, s) in by else f"{t}: missing" for t in error_teachers]
        titles.append(f"{s}<br><sup>{' · '.join(parts)}</sup>")
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles or ["(no students)"], shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=0.2)
    cats = ["(A)<br>semantic", "(B)<br>step missing", "(C)<br>calculation"]
    top = max([100 * r[f"errors_{stem}_frac"] for r in by.values() for _, stem, _ in CATEGORIES
               if np.isfinite(r[f"errors_{stem}_frac"])] + [10.0])
    shown = set()
    for k, student in enumerate(students):
        row, col = k // cols + 1, k % cols + 1
        for t in error_teachers:
            r = by.get((t, student))
            if r is None:  # an empty trace keeps the other teacher's bars in their place
                fig.add_trace(go.Bar(x=cats, y=[None] * len(cats), name=f"teacher {t}", legendgroup=t,
                                     showlegend=False, marker_color=colors.get(t, "#888"), hoverinfo="skip"),
                              row=row, col=col)
                continue
            ys = [100 * r[f"errors_{stem}_frac"] for _, stem, _ in CATEGORIES]
            counts = [int(r[f"errors_{stem}"]) for _, stem, _ in CATEGORIES]
            fig.add_trace(go.Bar(x=cats, y=ys, name=f"teacher {t}", legendgroup=t, showlegend=t not in shown,
                                 marker_color=colors.get(t, "#888"), text=[str(c) for c in counts],
                                 textposition="outside", cliponaxis=False, customdata=counts,
                                 hovertemplate=f"teacher {t}<br>%{{x}}: %{{customdata}} answers (%{{y:.1f}}%)"
                                               "<extra></extra>"),
                          row=row, col=col)
            shown.add(t)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=cats, tickangle=0, row=row, col=col)
    fig.update_yaxes(range=[0, min(100, top * 1.15) if top < 87 else 100], col=1,
                     title_text="share of judged wrong answers (%)")
    fig.update_layout(title="Fig. 2: error categories of the students' wrong answers (bar: share, number: count)",
                      barmode="group", template="plotly_white", height=400 * rows + 140, margin=dict(t=130),
                      legend=dict(orientation="h", y=-0.15), font=dict(size=12))
    if errors_df.empty:
        _say(fig, "No errors run for " + ", ".join(error_teachers) + " yet (see Missing in report.md).")
    return fig


def figure_tokens(rows: list[dict], teachers: list[str], tokenizers: list[str], colors: dict[str, str]):
    """Fig. 3: box plot of tokens per teacher answer, one panel per tokenizer (the mean as a dashed line)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n_rows, cols = _grid(len(tokenizers), 3)
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=[f"tokenizer {t}" for t in tokenizers] or [""],
                        horizontal_spacing=0.06, vertical_spacing=0.18)
    for k, tok in enumerate(tokenizers):
        r, c = k // cols + 1, k % cols + 1
        for t in teachers:
            ys = [x["tokens"] for x in rows if x.get("tokenizer") == tok and x.get("teacher") == t]
            if not ys:
                continue
            fig.add_trace(go.Box(y=ys, name=t, marker_color=colors.get(t, "#888"), boxmean=True, showlegend=False,
                                 legendgroup=t), row=r, col=c)
        present = [t for t in teachers if any(x.get("tokenizer") == tok and x.get("teacher") == t for x in rows)]
        means = {t: np.mean([x["tokens"] for x in rows if x.get("tokenizer") == tok and x.get("teacher") == t])
                 for t in present}
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=present, tickvals=present,
                         ticktext=[f"{t}<br>mean {means[t]:.1f}" for t in present], title_text="teacher",
                         row=r, col=c)
        fig.update_yaxes(title_text="tokens per answer" if c == 1 else None, rangemode="tozero", row=r, col=c)
    fig.update_layout(title="Fig. 3: tokens per teacher answer (box: quartiles, whiskers 1.5 IQR, dashed: mean)",
                      template="plotly_white", height=420 * n_rows + 100)
    if not tokenizers:
        _say(fig, "No token counts: no FINISHED tokens run with token_counts.jsonl (see Missing in report.md).")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return fig


def percent_axis_top(top: float) -> float:
    """An accuracy axis in %: 0-100 once the data reach past 60, else up to the data (at least 10%)
    with room for the labels above the bars; never 0-1 on all-zero data."""
    return 100.0 if top > 60 else max(10.0, math.ceil(top * 1.25 / 5) * 5)


def _say(fig, text: str) -> None:
    fig.add_annotation(text=text, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                       font=dict(size=16, color="#666"), bgcolor="white")


# The MLflow UI shows an HTML artifact from a blob: URL, where `plotly.min.mjs` resolves to nothing: there
# the figure fetches the experiment's shared copy from the server it was opened from; elsewhere from the
# shared copy's address (assets.py), when the copy beside it is missing too.
_LOADER = ('<script>if(!window.Plotly){{var u=location.protocol==="blob:"?new URL(location.href.slice(5)).origin+'
           '"/get-artifact?path={path}&run_uuid={run}":"{address}";if(u)document.write(\'<script charset="utf-8" '
           'src="\'+u+\'"><\\/script>\')}}</script>')


def write_figure(fig, path: Path, asset: SharedAsset | None = None) -> None:
    """HTML that loads plotly.js from beside it, else from the experiment's shared copy (assets.py), and
    the figure's JSON beside it."""
    html = fig.to_html(include_plotlyjs=False, full_html=True)  # plotly takes only a `.js` name as a path
    tag = f'<script charset="utf-8" src="{PLOTLY_JS}"></script>'
    if asset is not None:
        tag += _LOADER.format(path=quote(asset.path, safe=""), run=asset.run_id, address=asset.address)
    html = html.replace("</head>", tag + "\n</head>", 1)
    path.with_suffix(".html").write_text(html, encoding="utf-8")
    fig.write_json(str(path.with_suffix(".json")))
