"""Draw the graph offline: Mermaid text from LangGraph, a PNG with matplotlib.

LangGraph's own PNG renderers call a web service (mermaid.ink) or need Graphviz
headers; this one lays the nodes out in layers by their distance from START and
draws them with matplotlib, so it works on a machine with no network.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from divconq.safeio import atomic_path


def _layers(nodes: list[str], edges: list[Any]) -> dict[str, int]:
    """Layer of each node: its longest distance from __start__, ignoring loop-back edges.

    In a loop, the edge that goes back towards START (to a node no farther from START by
    the shortest path) is the loop-back one, so a loop's entry node sits above its body.
    """
    successors = defaultdict(list)
    for edge in edges:
        if edge.source != edge.target:
            successors[edge.source].append(edge.target)

    def reachable(node: str) -> set[str]:
        seen, todo = set(), [node]
        while todo:
            for nxt in successors[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    distance, frontier = {"__start__": 0}, ["__start__"]
    while frontier:  # breadth-first: shortest distance from START
        next_frontier = []
        for node in frontier:
            for nxt in successors[node]:
                if nxt not in distance:
                    distance[nxt] = distance[node] + 1
                    next_frontier.append(nxt)
        frontier = next_frontier
    reach = {node: reachable(node) for node in nodes}
    forward = [(a, b) for a in nodes for b in successors[a]
               if not (a in reach[b] and distance.get(b, 0) <= distance.get(a, 0))]
    depth = {node: 0 for node in nodes}
    for _ in nodes:  # longest path by relaxation; the forward edges have no cycles
        for a, b in forward:
            depth[b] = max(depth[b], depth[a] + 1)
    depth["__end__"] = max(d for n, d in depth.items() if n != "__end__") + 1
    return depth


BOX_W, BOX_H, X_GAP, Y_GAP = 2.2, 0.5, 3.0, 1.6


def _positions(nodes: list[str], edges: list[Any], depth: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Node centres: one row per layer, each row ordered by the mean x of its predecessors
    (the barycentre heuristic), which keeps most edges from crossing."""
    rows: dict[int, list[str]] = defaultdict(list)
    for node in nodes:
        rows[depth[node]].append(node)
    predecessors: dict[str, list[str]] = defaultdict(list)
    for edge in edges:
        if depth[edge.source] < depth[edge.target]:
            predecessors[edge.target].append(edge.source)
    position: dict[str, tuple[float, float]] = {}
    for level in sorted(rows):
        def barycentre(node: str) -> tuple[float, str]:
            xs = [position[p][0] for p in predecessors[node] if p in position]
            return (sum(xs) / len(xs) if xs else 0.0, node)

        members = sorted(rows[level], key=barycentre)
        for i, node in enumerate(members):
            position[node] = ((i - (len(members) - 1) / 2) * X_GAP, -level * Y_GAP)
    return position


def _curve_points(start: tuple[float, float], end: tuple[float, float], rad: float, n: int = 24) -> list[tuple[float, float]]:
    """Points on matplotlib's ``arc3`` curve: a quadratic Bezier bent by ``rad``."""
    (x1, y1), (x2, y2) = start, end
    cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)
    return [((1 - t) ** 2 * x1 + 2 * (1 - t) * t * cx + t * t * x2, (1 - t) ** 2 * y1 + 2 * (1 - t) * t * cy + t * t * y2)
            for t in (i / n for i in range(1, n))]


def _bend(start: tuple[float, float], end: tuple[float, float], obstacles: list[tuple[float, float]]) -> float:
    """The smallest bend that keeps an edge off every box it does not join."""
    for rad in (0.0, 0.25, -0.25, 0.45, -0.45, 0.7, -0.7):
        if not any(abs(x - ox) < BOX_W / 2 + 0.1 and abs(y - oy) < BOX_H / 2 + 0.1
                   for x, y in _curve_points(start, end, rad) for ox, oy in obstacles):
            return rad
    return 0.45


def draw_png(drawable: Any, path: str | Path, title: str = "divconq") -> Path:
    """Render a ``get_graph()`` result to a PNG file; conditional edges are dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    nodes = list(drawable.nodes)
    edges = list({(e.source, e.target): e for e in drawable.edges}.values())  # one arrow per pair
    position = _positions(nodes, edges, _layers(nodes, edges))
    levels = {y for _, y in position.values()}
    widest = max(sum(1 for _, y in position.values() if y == level) for level in levels)
    fig, ax = plt.subplots(figsize=(max(6, widest * X_GAP + 2), Y_GAP * len(levels) + 1))
    for edge in edges:
        (x1, y1), (x2, y2) = position[edge.source], position[edge.target]
        if edge.source == edge.target:
            start, end, rad = (x1 + BOX_W / 2, y1 + 0.1), (x1 + BOX_W / 2, y1 - 0.1), -2.0
        else:
            # Leave from the bottom going down, from the top going back up.
            down = y2 < y1
            start = (x1, y1 - BOX_H / 2) if down else (x1, y1 + BOX_H / 2)
            end = (x2, y2 + BOX_H / 2) if down else (x2, y2 - BOX_H / 2)
            obstacles = [p for n, p in position.items() if n not in (edge.source, edge.target)]
            rad = _bend(start, end, obstacles) if down else (_bend(start, end, obstacles) or 0.45)  # loops curve
        ax.add_patch(FancyArrowPatch(
            start, end, arrowstyle="-|>", mutation_scale=14, color="#555",
            linestyle="--" if edge.conditional else "-", connectionstyle=f"arc3,rad={rad}",
        ))
    for node, (x, y) in position.items():
        terminal = node in ("__start__", "__end__")
        ax.add_patch(FancyBboxPatch(
            (x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H, boxstyle="round,pad=0.05",
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
    try:
        with atomic_path(path, "PNG file") as scratch:  # an earlier PNG stays whole if this fails
            fig.savefig(scratch, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
