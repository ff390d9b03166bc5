"""Print Mermaid diagrams: the divconq graph, and the report graph that embeds it.

``get_graph(xray=True)`` expands subgraphs, so the report graph's diagram shows the
divconq nodes inside its ``divide_and_conquer`` node. Nothing here loads a model:
the graphs are built on stand-in chat models, which do not change their shape.

    python examples/xray.py > graphs.md    # paste into any Mermaid viewer
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from langchain_core.language_models.fake_chat_models import FakeListChatModel

from divconq.graph import build_graph


def _subgraph_example():
    # examples/ is a folder of scripts, not a package: load the sibling file by path.
    path = Path(__file__).resolve().parent / "subgraph.py"
    spec = importlib.util.spec_from_file_location("divconq_example_subgraph", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def diagrams() -> dict[str, str]:
    """Mermaid text for each graph, by title."""
    stand_in = FakeListChatModel(responses=["unused"])  # drawing never calls a model
    ours = build_graph(stand_in, stand_in).compile()
    report = _subgraph_example().build_report_graph(stand_in, stand_in).compile()
    return {
        "divconq graph": ours.get_graph(xray=True).draw_mermaid(),
        "report graph embedding divconq": report.get_graph(xray=True).draw_mermaid(),
    }


if __name__ == "__main__":
    for title, text in diagrams().items():
        print(f"## {title}\n\n```mermaid\n{text}```\n")
