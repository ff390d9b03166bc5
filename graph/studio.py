"""The graph for LangGraph Studio (``langgraph dev``).

``langgraph.json`` at the repository root names ``./graph/studio.py:make_graph``, a
graph factory: the LangGraph server imports this file by path and calls
``make_graph(config)`` when it needs the graph. It returns the divide-and-conquer graph
on the embedded default models (the one-shot decomposition example is shown unless the
shipped distilled adapter is present), compiled without a checkpointer: the server adds
its own. The factory loads no model: models load on the first run that needs them and
are cached per process, so the graph loads in about a second (``bench/studio_load.py``).

The run settings are the graph's context schema (``divconq.graph.Context``), so Studio
shows ``mode``, ``solve``, ``task``, ``decomposer``, ``solver``, ``review`` and
``max_subquestions`` as form fields; nodes read them on every run. An assistant's
``configurable`` may still set them (deprecated); the factory reads ``decomposer``,
``solver``, ``task`` and ``review`` from it through the same ``Context`` class.

Run it:  pip install -U "langgraph-cli[inmem]"  &&  langgraph dev
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

# Absolute imports: the server loads this file by path, not as part of the package.
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from divconq.contract import GRAPH_NAME, Task
from divconq.graph.builder import build_graph
from divconq.graph.context import CONTEXT_FIELDS, from_mapping
from divconq.nodes.models import needs_one_shot
from divconq.nodes.prompts import get_prompts


@lru_cache(maxsize=8)
def studio_graph(
    decomposer: str = "default", solver: str = "default", task: Task = "math", review: bool = False
) -> CompiledStateGraph:
    """The compiled graph Studio serves, cached per settings; its models load on first use.
    ``review`` adds the pause after decomposition."""
    prompts = get_prompts(task, one_shot=needs_one_shot(decomposer))
    graph = build_graph(decomposer, solver, task=task, prompts=prompts, review=review, lazy=True)
    return graph.compile(name=GRAPH_NAME)


def _factory_settings(config: RunnableConfig | None) -> tuple[str, str, Task, bool]:
    configurable = (config or {}).get("configurable") or {}
    chosen = {key: configurable[key] for key in CONTEXT_FIELDS if configurable.get(key) is not None}
    context = from_mapping(chosen, "configurable")
    return context.decomposer or "default", context.solver or "default", context.task or "math", bool(context.review)


async def make_graph(config: RunnableConfig | None = None) -> CompiledStateGraph:
    """The graph factory ``langgraph.json`` points at: the graph on the default models.

    ``config["configurable"]`` may name ``decomposer``, ``solver`` (model specs),
    ``task``, and ``review`` (true: pause after decomposition to edit the sub-questions,
    Studio shows the interrupt). The server calls the factory on its event loop for
    every run, so it is async; building touches files (the adapter check), so it runs
    in a worker thread, and later calls get the cached graph.
    """
    return await asyncio.to_thread(studio_graph, *_factory_settings(config))
