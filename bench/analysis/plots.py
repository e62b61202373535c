"""Plots of a results table: Pareto frontiers, convergence, step-doubling calibration, heatmaps, precision/recall.

Every function takes the rows (a DataFrame as store.load_rows gives) and a folder, writes a PNG and an
SVG, and returns the PNG's path (None when the table has nothing to show). A solver's colour is its
family's (the registry module it lives in: exponential integrators, Runge-Kutta, ...) and its marker
its own within the family, both from the registry's order, so a solver looks the same in every plot and
every run however many solvers a run has; an exec mode fills the marker its own way. Frontier points carry
their standard errors as error bars and are named. Rendering is headless (Agg).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bench.analysis.frontier import (LOWER_IS_BETTER, calibration_pairs, error_per_nfe, fitted_order,  # noqa: E402
                                     frontier, guidance_table, per_config, quality_across, spacing_label)
from solvers import SOLVERS  # noqa: E402

LABELS = {"nfe": "NFE (network evaluations)", "wall_s": "wall time per run [s]", "fid": "FID",
          "frechet": "Frechet distance (data space)", "sliced_wasserstein": "sliced Wasserstein-2",
          "err_reference": "error vs reference (median L2)", "err_stepdoubling": "step-doubling estimate",
          "precision": "precision", "recall": "recall", "kid": "KID"}


USER_FAMILY = "python"  # solvers named python:module:attribute, the user's own (not in the registry)
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "p", "h", "*")
MODE_FILLS = {"eager": "full", "bf16": "none", "compile": "left", "cuda_graph": "bottom"}
FAMILY_NAMES = {"runge_kutta": "Runge-Kutta", "denoising": "DDIM / DDPM", "exponential": "exponential integrators",
                "multistep": "linear multistep", "unipc": "UniPC", "sa_solver": "SA-Solver",
                "stochastic": "stochastic (own noise)", "adaptive": "adaptive", "cfg_pp": "CFG++",
                USER_FAMILY: "your solvers (python:)"}
USER_COLOURS = ((0.1, 0.1, 0.1), (0.45, 0.45, 0.45))  # greys, apart from every family's tab10 colour


def solver_family(name: str) -> str:
    """The family a solver belongs to: the solvers module its function lives in; the user's own for a python: one
    (whose module need not import where the plots are drawn)."""
    return SOLVERS[name].fn.__module__.rsplit(".", 1)[-1] if name in SOLVERS else USER_FAMILY


def solver_order(names) -> list[str]:
    """``names`` once each, the registered ones in registry order, then the user's own by name."""
    names = set(names)
    return [s for s in SOLVERS if s in names] + sorted(names - set(SOLVERS))


def solver_styles(names=()) -> dict:
    """A fixed (colour, marker) per registered solver: the family's colour, lighter for members beyond the
    markers; the member's marker in registry order. The user's solvers among ``names`` come after them in grey, a
    marker each in name order."""
    families = list(dict.fromkeys(solver_family(name) for name in SOLVERS))
    palette = dict(zip(families, sns.color_palette("tab10", len(families))))
    styles, seen = {}, {}
    for name in SOLVERS:
        family = solver_family(name)
        index = seen[family] = seen.get(family, -1) + 1
        lighter = index // len(MARKERS)
        colour = tuple(c + (1 - c) * 0.45 * lighter for c in palette[family])
        styles[name] = (colour, MARKERS[index % len(MARKERS)])
    for index, name in enumerate(sorted(set(names) - set(SOLVERS))):
        styles[name] = (USER_COLOURS[index // len(MARKERS) % len(USER_COLOURS)], MARKERS[index % len(MARKERS)])
    return styles


def _save(fig, out_dir: Path, name: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    fig.savefig(out_dir / f"{name}.svg", bbox_inches="tight")
    plt.close(fig)
    return png


def _ok(df: pd.DataFrame, *columns) -> pd.DataFrame:
    keep = df.status == "ok"
    for column in columns:
        keep &= df[column].notna()
    return df[keep]


def _panels(n_rows: int, n_cols: int, width=4.6, height=3.6):
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False)
    return fig, axes


def _log_axes(ax, x=True, y=True):
    """Log axes with plain major tick labels (the default minor labels overlap on short ranges)."""
    for on, axis, set_scale in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
        if on:
            set_scale("log")
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if x:
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def _points(ax, data: pd.DataFrame, x: str, y: str, size: float, alpha: float = 0.8, edge: str | None = None):
    """``data``'s rows as points in their solver's colour and marker, filled as their exec mode is."""
    styles = solver_styles(data.solver)
    modes = data.exec_mode if "exec_mode" in data else pd.Series("eager", index=data.index)
    for (solver, mode), group in data.groupby([data.solver, modes]):
        colour, marker = styles[solver]
        ax.plot(group[x], group[y], linestyle="", marker=marker, markersize=size, color=colour, alpha=alpha,
                fillstyle=MODE_FILLS.get(mode, "full"), markeredgecolor=edge or colour, markeredgewidth=0.7)


def _model_scatter(data: pd.DataFrame, x: str, y: str, size: float, width: float, height: float):
    """One panel per model with the rows as points in their solver's style; returns (fig, axes, models)."""
    models = sorted(data.model.unique())
    fig, axes = _panels(1, len(models), width=width, height=height)
    for ax, model in zip(axes[0], models):
        _points(ax, data[data.model == model], x, y, size)
    return fig, axes, models


def _legend(fig, solvers, extra_handles=(), modes=()):
    """The solvers shown, grouped by family (each family's name before its members), and the exec modes' fills."""
    styles, handles, family = solver_styles(solvers), list(extra_handles), None
    for name in solver_order(solvers):
        if solver_family(name) != family:
            family = solver_family(name)
            handles.append(plt.Line2D([], [], linestyle="", label=FAMILY_NAMES.get(family, family)))
        colour, marker = styles[name]
        handles.append(plt.Line2D([], [], marker=marker, linestyle="", color=colour, label=f"  {name}"))
    if len(set(modes)) > 1:
        handles.append(plt.Line2D([], [], linestyle="", label="exec mode (fill)"))
        handles += [plt.Line2D([], [], marker="o", linestyle="", color="0.3", fillstyle=MODE_FILLS.get(m, "full"),
                               label=f"  {m}") for m in MODE_FILLS if m in set(modes)]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize="small",
               title="solver by family")


def _point_name(row, varying: set) -> str:
    """A frontier point's name: its solver, and whichever of spacing, eta and exec mode vary in its panel."""
    parts = [row.solver]
    if "spacing" in varying and isinstance(row.spacing, str):
        parts.append(spacing_label(row.spacing))
    if "eta" in varying:
        parts.append(f"eta {row.eta:g}")
    if "exec_mode" in varying and getattr(row, "exec_mode", "eager") != "eager":
        parts.append(row.exec_mode)
    return " ".join(parts)


def plot_frontier(df: pd.DataFrame, out_dir: Path, quality: str, cost: str = "nfe", facet: str | None = None):
    """Quality against cost, one panel per model (and per ``facet`` value): all configs faded, the
    Pareto frontier drawn as a step line with its points in full colour, named, with +-1 standard error bars
    (of the quality; of the repeated timings for wall time)."""
    data = _ok(df, quality, cost)
    if data.empty:
        return None
    models = sorted(data.model.unique())
    facets = [None] if facet is None else sorted(data[facet].dropna().unique())
    fig, axes = _panels(len(facets), len(models))
    for r, facet_value in enumerate(facets):
        for c, model in enumerate(models):
            ax = axes[r][c]
            group = data[data.model == model] if facet is None else data[(data.model == model) & (data[facet] == facet_value)]
            if group.empty:
                ax.set_visible(False)
                continue
            marked = frontier(group, cost, quality, by=("model",))
            faded, front = marked[~marked.on_frontier], marked[marked.on_frontier].sort_values(cost)
            _points(ax, faded, cost, quality, 3.5, alpha=0.25)
            ax.step(front[cost], front[quality], where="post", color="black", linewidth=1.2, zorder=3)
            y_error = front.get(f"{quality}_se")
            x_error = front.get("wall_s_std") if cost == "wall_s" else None
            if y_error is not None or x_error is not None:
                ax.errorbar(front[cost], front[quality], yerr=y_error, xerr=x_error, fmt="none", ecolor="black",
                            elinewidth=0.8, capsize=2, zorder=3)
            _points(ax, front, cost, quality, 6.5, alpha=1.0, edge="black")
            varying = {column for column in ("spacing", "eta", "exec_mode") if column in group and group[column].nunique() > 1}
            for point in front.itertuples():  # name every frontier point: colours alone are hard to tell apart
                ax.annotate(_point_name(point, varying), (getattr(point, cost), getattr(point, quality)), xytext=(4, 3),
                            textcoords="offset points", fontsize=6.5, zorder=5)
            _log_axes(ax, y=quality in LOWER_IS_BETTER)
            title = model if facet is None else f"{model}, {facet} = {facet_value}"
            ax.set_title(title)
            ax.set_xlabel(LABELS.get(cost, cost))
            ax.set_ylabel(LABELS.get(quality, quality) if c == 0 else "")
    handles = [plt.Line2D([], [], color="black", label="Pareto frontier (bars: +-1 SE)")]
    _legend(fig, set(data.solver), handles, modes=data.exec_mode if "exec_mode" in data else ())
    fig.suptitle(f"{LABELS.get(quality, quality)} vs {LABELS.get(cost, cost)} (lower left is better; "
                 "faded: dominated configs)")
    fig.tight_layout()
    suffix = f"_by_{facet}" if facet else ""
    return _save(fig, out_dir, f"frontier_{quality}_vs_{cost}{suffix}")


def plot_convergence(df: pd.DataFrame, out_dir: Path, error: str = "err_reference", spacing: str = "logsnr"):
    """Error against NFE on log-log axes per solver (ODE configs on one spacing, mean over the rest), fitted order
    and its standard error in the legend (frontier.fitted_order, as the report's table)."""
    data = _ok(df, error, "nfe")
    data = data[(data.eta == 0) & data.steps.notna() & (data[error] > 0)]
    if spacing in set(data.spacing):
        data = data[data.spacing == spacing]
    data = per_config(data, error)  # a configuration and seed once, if several runs hold it
    if data.empty:
        return None
    styles = solver_styles(data.solver)
    models = sorted(data.model.unique())
    fig, axes = _panels(1, len(models), width=5.2, height=4.2)
    labels = {}
    for ax, model in zip(axes[0], models):
        group = data[data.model == model]
        for solver in solver_order(group.solver):
            line = error_per_nfe(group[group.solver == solver], error)
            order, order_se = fitted_order(line.index, line.error, line.se)
            ax.plot(line.index, line.error, marker=styles[solver][1], markersize=4, color=styles[solver][0])
            labels.setdefault(solver, []).append("-" if not np.isfinite(order) else f"{order:.1f}" + (
                f"±{order_se:.1g}" if np.isfinite(order_se) else ""))
        _log_axes(ax)
        ax.set_title(f"{model} ({spacing} spacing, eta = 0)")
        ax.set_xlabel(LABELS["nfe"])
        ax.set_ylabel(LABELS.get(error, error) if ax is axes[0][0] else "")
    handles = [plt.Line2D([], [], marker=styles[s][1], color=styles[s][0], label=f"{s}: {' / '.join(orders)}")
               for s, orders in labels.items()]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize="small",
               title="solver: fitted order ± SE per panel")
    fig.tight_layout()
    return _save(fig, out_dir, f"convergence_{error}")


def plot_calibration(df: pd.DataFrame, out_dir: Path):
    """Step-doubling estimate against the true error it estimates; the diagonal is perfect calibration."""
    pairs = calibration_pairs(df)
    pairs = pairs[(pairs.err_stepdoubling > 0) & (pairs.err_reference > 0)]
    if pairs.empty:
        return None
    fig, axes, models = _model_scatter(pairs, "err_reference", "err_stepdoubling", 4.5, 4.4, 4.2)
    for ax, model in zip(axes[0], models):
        group = pairs[pairs.model == model]
        lo = min(group.err_reference.min(), group.err_stepdoubling.min())
        hi = max(group.err_reference.max(), group.err_stepdoubling.max())
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="estimate = true error")
        for factor in (3, 1 / 3):
            ax.plot([lo, hi], [lo * factor, hi * factor], color="grey", linewidth=0.8, linestyle=":",
                    label="factor 3 off" if factor == 3 else None)
        _log_axes(ax)
        ax.set_title(model)
        ax.set_xlabel("true error of the 2n-step solve")
        ax.set_ylabel("step-doubling estimate (n vs 2n)" if ax is axes[0][0] else "")
        ax.legend(fontsize="x-small", loc="upper left")
    _legend(fig, set(pairs.solver))
    return _save(fig, out_dir, "calibration_stepdoubling")


def plot_heatmaps(df: pd.DataFrame, out_dir: Path, quality: str, budget: float):
    """Best quality per (solver, spacing) and per (solver, eta) among configs with NFE <= budget.

    The eta row needs a metric measured at every eta: when ``quality`` exists at one eta only
    (err_reference is for ODE configs), it uses the first sample-based distance the table has.
    """
    data = _ok(df, "nfe")
    data = data[(data.nfe <= budget) & data.steps.notna()]
    eta_quality = quality_across(data, quality, "eta")
    if data[quality].isna().all():
        return None
    data = data.assign(spacing=data.spacing.map(spacing_label))
    models = sorted(data[data[quality].notna()].model.unique())  # a model without the metric has no panel
    fig, axes = _panels(2, len(models), width=5.6, height=0.3 * data.solver.nunique() + 1.6)
    for c, model in enumerate(models):
        group = data[data.model == model]
        for r, (column, metric) in enumerate((("spacing", quality), ("eta", eta_quality))):
            table = group.pivot_table(index="solver", columns=column, values=metric, aggfunc="min")
            table = table.reindex(solver_order(table.index))
            log_scale = metric in LOWER_IS_BETTER and bool((table.fillna(1) > 0).all().all())
            ax = axes[r][c]
            if table.empty:
                ax.set_axis_off()
                ax.set_title(f"{model}: no {metric}")
                continue
            sns.heatmap(np.log10(table) if log_scale else table, ax=ax, cmap="viridis_r",
                        annot=table.map(lambda v: f"{v:.2g}" if pd.notna(v) else ""), fmt="", annot_kws={"fontsize": 6},
                        cbar_kws={"label": f"log10 {metric}" if log_scale else metric, "shrink": 0.8},
                        yticklabels=c == 0)
            ax.set_title(f"{model}: best {metric}, NFE <= {budget:g}")
            ax.set_ylabel("")
    fig.tight_layout()
    return _save(fig, out_dir, f"heatmap_{quality}_nfe{budget:g}")


def plot_precision_recall(df: pd.DataFrame, out_dir: Path, budget: float):
    """Precision against recall for configs with NFE <= budget, one panel per model (upper right is better)."""
    data = _ok(df, "precision", "recall", "nfe")
    data = data[data.nfe <= budget]
    if data.empty:
        return None
    fig, axes, models = _model_scatter(data, "recall", "precision", 4.5, 4.2, 4.0)
    for ax, model in zip(axes[0], models):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{model}, NFE <= {budget:g}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision" if ax is axes[0][0] else "")
    _legend(fig, set(data.solver), modes=data.exec_mode)
    return _save(fig, out_dir, f"precision_recall_nfe{budget:g}")


def plot_guidance(df: pd.DataFrame, out_dir: Path):
    """The guidance trade-off: FID, KID, precision and recall (those measured) against the guidance scale, one line
    per solver (and eta) at its largest NFE, +-1 standard error; one row of panels per model."""
    table = guidance_table(df)
    if table.empty:
        return None
    metrics = [m for m in ("fid", "kid", "precision", "recall") if m in table and table[m].notna().any()]
    models = sorted(table.model.unique())
    fig, axes = _panels(len(models), len(metrics), width=4.0, height=3.4)
    styles = solver_styles(table.solver)
    for r, model in enumerate(models):
        group = table[table.model == model]
        top = group[group.nfe == group.groupby(["solver", "eta"]).nfe.transform("max")]
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for (solver, eta), curve in top.groupby(["solver", "eta"]):
                curve = curve.sort_values("guidance_scale")
                colour, marker = styles[solver]
                ax.errorbar(curve.guidance_scale, curve[metric], yerr=curve[f"{metric}_se"], color=colour, marker=marker,
                            markersize=4.5, linewidth=1.1, capsize=2, linestyle="-" if eta == 0 else "--")
            if metric in LOWER_IS_BETTER:
                ax.set_yscale("log")
            ax.set_title(f"{model}: {metric}" if len(models) > 1 else metric)
            ax.set_xlabel("guidance scale")
    _legend(fig, set(table.solver))
    fig.tight_layout()
    return _save(fig, out_dir, "guidance_tradeoff")


def plot_frontier_overlay(base: pd.DataFrame, head: pd.DataFrame, out_dir: Path, quality: str, cost: str = "nfe"):
    """The Pareto frontiers of two runs in one panel per model: base dashed grey, head solid black."""
    runs = {"base": _ok(base, quality, cost), "head": _ok(head, quality, cost)}
    models = sorted(set(runs["base"].model) | set(runs["head"].model))
    if not models:
        return None
    fig, axes = _panels(1, len(models))
    for ax, model in zip(axes[0], models):
        for name, style in (("base", dict(color="grey", linestyle="--")), ("head", dict(color="black", linestyle="-"))):
            group = runs[name][runs[name].model == model]
            if group.empty:
                continue
            front = frontier(group, cost, quality).query("on_frontier").sort_values(cost)
            ax.step(front[cost], front[quality], where="post", label=name, marker="o", markersize=4, **style)
        _log_axes(ax, y=quality in LOWER_IS_BETTER)
        ax.set_title(model)
        ax.set_xlabel(LABELS.get(cost, cost))
        ax.set_ylabel(LABELS.get(quality, quality) if ax is axes[0][0] else "")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, out_dir, f"frontier_overlay_{quality}_vs_{cost}")


def plot_training_loss(losses_csv: Path, png: Path, window: int = 100) -> Path:
    """The training loss of every step (faint) and its exponential moving average, log scale (PNG only:
    an SVG of every step would outweigh the weights it documents)."""
    losses = pd.read_csv(losses_csv)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(losses.step, losses.loss, color="0.8", linewidth=0.5, label="per step")
    ax.plot(losses.step, losses.loss.ewm(span=window).mean(), color="C0",
            label=f"exponential moving average (span {window} steps)")
    ax.set(xlabel="training step", ylabel="loss (MSE of the noise prediction)", yscale="log")
    ax.legend()
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(png)
