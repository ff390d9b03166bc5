"""The divide-and-conquer LangGraph graph."""

from divconq.graph.builder import MODES, SOLVE_STRATEGIES, assemble_graph, build_graph, decompose_first
from divconq.graph.context import Context
from divconq.graph.state import DivConqState, InputState, OutputState
from divconq.graph.tools import as_tool

__all__ = ["as_tool", "Context", "DivConqState", "InputState", "MODES", "OutputState", "SOLVE_STRATEGIES", "assemble_graph", "build_graph", "decompose_first"]
