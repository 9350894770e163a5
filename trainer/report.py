"""A tailored task's report: JSON plus two PNGs.

* ``<task>-architecture.png``: in the style of the paper's Fig. 4, nodes 0..L on a line, the universal
  blocks between them (kept: filled, removed: dashed grey), and the proxies as arcs from their source
  node, drawn with a width that grows with alpha and labelled with it (removed ones faint).
* ``<task>-sweep.png``: validation and test accuracy against parameters for every n of the sweep, the
  teacher's accuracy as horizontal lines, the selected network starred.
"""

from __future__ import annotations

from pathlib import Path

from .export import write_json

__all__ = ["plot_architecture", "plot_sweep", "write_report"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_architecture(report: dict, path: Path) -> None:
    from matplotlib.patches import Arc, FancyBboxPatch

    plt = _pyplot()
    arch = report["architecture"]
    L = len(arch)
    fig, ax = plt.subplots(figsize=(1.6 * L + 2.5, 3.8))
    max_h = 0.0
    for l, paths in enumerate(arch, start=1):
        for p in paths:
            a = p["alpha_final"] if p["kept"] else p["alpha_student"]
            if p["src"] is None:
                color, style = ("tab:blue", "-") if p["kept"] else ("0.8", "--")
                ax.add_patch(FancyBboxPatch((l - 0.8, -0.18), 0.6, 0.36, boxstyle="round,pad=0.02",
                                            fc=color if p["kept"] else "white", ec=color, ls=style, lw=1.5))
                ax.text(l - 0.5, 0, f"G{l}\n{a:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if p["kept"] else "0.5")
            else:
                span = l - p["src"]
                h = 0.35 + 0.3 * span
                max_h = max(max_h, h)
                color = "tab:orange" if p["kept"] else "0.85"
                width = 0.5 + 5 * a if p["kept"] else 0.6
                ax.add_patch(Arc(((l + p["src"]) / 2, 0.2), span, 2 * h, theta1=0, theta2=180, color=color,
                                 lw=width, ls="-" if p["kept"] else ":"))
                if p["kept"]:
                    ax.text((l + p["src"]) / 2, 0.2 + h, f"{a:.2f}", ha="center", va="bottom", fontsize=7,
                            color="tab:orange")
    for q in range(L + 1):
        ax.plot(q, 0, "o", color="k", ms=7, zorder=5)
        ax.text(q, -0.32, str(q), ha="center", va="top", fontsize=8)
    ax.add_patch(FancyBboxPatch((L + 0.25, -0.15), 0.5, 0.3, boxstyle="round,pad=0.02", fc="tab:green", ec="k"))
    ax.text(L + 0.5, 0, "fc", ha="center", va="center", fontsize=8, color="white")
    m = report.get("metrics", {})
    ax.set_title(f"{report['task_id']}: {m.get('blocks_kept', '?')}/{m.get('blocks_total', L)} blocks kept, "
                 f"{100 * m.get('blocks_params_removed', 0):.1f}% of block params removed, "
                 f"val {100 * m.get('val_acc', 0):.2f}% (teacher {100 * m.get('teacher_val_acc', 0):.2f}%)",
                 fontsize=9)
    ax.set_xlim(-0.5, L + 1)
    ax.set_ylim(-0.6, 0.5 + max_h + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(report: dict, path: Path) -> None:
    plt = _pyplot()
    pts = sorted((p for p in report["sweep"] if p.get("same_as") is None and p.get("val_acc") is not None),
                 key=lambda p: p["cost"]["params"])
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["cost"]["params"] / 1e6 for p in pts]
    ax.plot(xs, [100 * p["val_acc"] for p in pts], "o-", label="validation")
    ax.plot(xs, [100 * p["test_acc"] for p in pts], "s--", alpha=0.7, label="test")
    for p, x in zip(pts, xs):
        ax.annotate(f"n={p['n']}", (x, 100 * p["val_acc"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if p.get("selected"):
            ax.plot(x, 100 * p["val_acc"], "*", ms=16, color="tab:red", label="selected", zorder=5)
    t = report["teacher"]
    ax.axhline(100 * t["val_acc"], color="k", ls="-", lw=1, label="teacher (validation)")
    ax.axhline(100 * t["test_acc"], color="k", ls=":", lw=1, label="teacher (test)")
    tol = report.get("metrics", {}).get("tolerance")
    if tol is not None:
        ax.axhspan(100 * t["val_acc"] - tol, 100 * t["val_acc"], color="0.9", zorder=0)
    ax.set_xlabel("parameters (M, shared + task)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{report['task_id']}: accuracy vs complexity")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write ``<task>-report.json`` and the two PNGs into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    task = report["task_id"]
    paths = {"json": out_dir / f"{task}-report.json", "architecture": out_dir / f"{task}-architecture.png",
             "sweep": out_dir / f"{task}-sweep.png"}
    write_json(paths["json"], report)
    plot_architecture(report, paths["architecture"])
    plot_sweep(report, paths["sweep"])
    return paths
