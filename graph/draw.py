"""Draw the graph offline: Mermaid text from LangGraph, a PNG with matplotlib.

LangGraph's own PNG renderers call a web service (mermaid.ink) or need Graphviz
headers; this one lays the nodes out in layers by their distance from START and
draws them with matplotlib, so it works on a machine with no network.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def _layers(nodes: list[str], edges: list[Any]) -> dict[str, int]:
    """Layer of each node: its longest distance from __start__, ignoring loop-back edges."""
    successors = defaultdict(list)
    for edge in edges:
        if edge.source != edge.target:
            successors[edge.source].append(edge.target)
    forward: dict[str, list[str]] = defaultdict(list)
    state: dict[str, str] = {}

    def visit(node: str) -> None:  # depth-first; an edge into the current path is a loop
        state[node] = "open"
        for nxt in successors[node]:
            if state.get(nxt) != "open":
                forward[node].append(nxt)
                if nxt not in state:
                    visit(nxt)
        state[node] = "done"

    visit("__start__")
    depth = {node: 0 for node in nodes}
    for _ in nodes:  # longest path by relaxation; the forward graph has no cycles
        for node, targets in forward.items():
            for nxt in targets:
                depth[nxt] = max(depth[nxt], depth[node] + 1)
    depth["__end__"] = max(d for n, d in depth.items() if n != "__end__") + 1
    return depth


def draw_png(drawable: Any, path: str | Path, title: str = "divconq") -> Path:
    """Render a ``get_graph()`` result to a PNG file; conditional edges are dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    nodes = list(drawable.nodes)
    depth = _layers(nodes, drawable.edges)
    rows: dict[int, list[str]] = defaultdict(list)
    for node in nodes:
        rows[depth[node]].append(node)
    position = {}
    for level, members in rows.items():
        for i, node in enumerate(sorted(members)):
            position[node] = ((i - (len(members) - 1) / 2) * 3.0, -level * 1.6)

    width = max(len(m) for m in rows.values()) * 3.0 + 2
    fig, ax = plt.subplots(figsize=(max(6, width), 1.6 * len(rows) + 1))
    for edge in drawable.edges:
        (x1, y1), (x2, y2) = position[edge.source], position[edge.target]
        bend = 0.5 if edge.source == edge.target or y2 >= y1 else 0.0
        if edge.source == edge.target:
            x2, y2 = x1 + 0.6, y1
        arrow = FancyArrowPatch(
            (x1, y1 - 0.25), (x2, y2 + 0.25),
            arrowstyle="-|>", mutation_scale=14, color="#555",
            linestyle="--" if edge.conditional else "-",
            connectionstyle=f"arc3,rad={bend}",
        )
        ax.add_patch(arrow)
    for node, (x, y) in position.items():
        terminal = node in ("__start__", "__end__")
        ax.add_patch(FancyBboxPatch(
            (x - 1.1, y - 0.25), 2.2, 0.5, boxstyle="round,pad=0.05",
            facecolor="#ffffff" if terminal else "#f2f0ff", edgecolor="#6c5ce7",
        ))
        ax.text(x, y, node.strip("_") if terminal else node, ha="center", va="center", fontsize=10)
    xs = [p[0] for p in position.values()]
    ys = [p[1] for p in position.values()]
    ax.set_xlim(min(xs) - 2, max(xs) + 2)
    ax.set_ylim(min(ys) - 1, max(ys) + 1)
    ax.set_title(title)
    ax.axis("off")
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
