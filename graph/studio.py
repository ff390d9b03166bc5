"""The graph for LangGraph Studio (``langgraph dev``) and the loader of ``langgraph.json``.

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
import concurrent.futures
import importlib
import importlib.util
import inspect
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

# Absolute imports: the server loads this file by path, not as part of the package.
from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.pregel import Pregel

from divconq.contract import GRAPH_NAME, Task
from divconq.errors import DivconqError
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


# --------------------------------------------------------------------------- langgraph.json


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DivconqError(f"{path} does not exist: pass the path of a langgraph.json file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DivconqError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("graphs"), dict):
        raise DivconqError(f'{path} has no "graphs" object: expected {{"graphs": {{"name": "./file.py:attr"}}}}')
    return config


def _import_entry(module_ref: str, base: Path, where: str) -> Any:
    """Import a file path (``./graph/studio.py``) or a module name (``pkg.module``)."""
    is_file = module_ref.endswith(".py") or "/" in module_ref or "\\" in module_ref
    if not is_file:
        try:
            return importlib.import_module(module_ref)
        except Exception as exc:  # noqa: BLE001 - any import failure is the same bad input
            reason = f"{type(exc).__name__}: {_first_line(exc)}"
            raise DivconqError(f"{where}: module {module_ref!r} does not import ({reason})") from exc
    file = (base / module_ref).resolve()
    if not file.is_file():
        raise DivconqError(f"{where}: file {file} does not exist")
    modname = "langgraph_json__" + "".join(c if c.isalnum() else "_" for c in str(file))
    spec = importlib.util.spec_from_file_location(modname, file)
    if spec is None or spec.loader is None:
        raise DivconqError(f"{where}: {file} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        sys.modules.pop(modname, None)
        raise DivconqError(f"{where}: {file} does not import ({type(exc).__name__}: {_first_line(exc)})") from exc
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


def _call_factory(factory: Any) -> Any:
    try:
        takes_config = bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        takes_config = False
    value = factory(RunnableConfig(configurable={})) if takes_config else factory()
    if inspect.isawaitable(value):  # an async factory, as the server accepts
        value = _run_coroutine(value)
    return value


def _run_coroutine(awaitable: Any) -> Any:
    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:  # called from async code
        return pool.submit(asyncio.run, wait()).result()


def load_langgraph_json_graph(path: str | Path = "langgraph.json", name: str = GRAPH_NAME) -> Pregel:
    """Load graph ``name`` the way ``langgraph dev`` does, and return it compiled.

    Resolves the entry (``./file.py:attr`` relative to the JSON file, or
    ``package.module:attr``), imports it, and returns the attribute: a compiled graph
    as is, a ``StateGraph`` compiled, a factory (sync or async) called, with an empty
    config when it takes one. Every failure is a ``DivconqError`` with one line saying what is wrong.
    """
    path = Path(path)
    graphs = _read_config(path)["graphs"]
    if name not in graphs:
        raise DivconqError(f"{path} defines no graph {name!r}: it has {', '.join(map(repr, graphs)) or 'none'}")
    entry = graphs[name]
    if isinstance(entry, dict):  # {"path": "./file.py:attr", "description": ...}
        entry = entry.get("path")
    where = f"{path} graph {name!r}"
    if not isinstance(entry, str) or ":" not in entry:
        raise DivconqError(f"{where}: entry {entry!r} is not of the form './file.py:attr' or 'module:attr'")
    module_ref, _, attr = entry.rpartition(":")
    if not module_ref or not attr:
        raise DivconqError(f"{where}: entry {entry!r} is not of the form './file.py:attr' or 'module:attr'")
    module = _import_entry(module_ref, path.resolve().parent, where)
    if not hasattr(module, attr):
        exported = [n for n, v in vars(module).items() if not n.startswith("_") and isinstance(v, (Pregel, StateGraph))]
        hint = f" (graphs it defines: {', '.join(exported)})" if exported else ""
        raise DivconqError(f"{where}: {module_ref} has no attribute {attr!r}{hint}")
    value = getattr(module, attr)
    if callable(value) and not isinstance(value, (Pregel, StateGraph)):
        value = _call_factory(value)
    if isinstance(value, StateGraph):
        value = value.compile()
    if not isinstance(value, Pregel):
        raise DivconqError(f"{where}: {module_ref}:{attr} is a {type(value).__name__}, not a graph or graph factory")
    return value
