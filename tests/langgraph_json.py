"""Load a graph of ``langgraph.json`` the way ``langgraph dev`` does: the tests check that
the repository's ``langgraph.json`` serves the graph Studio shows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

from divconq.contract import GRAPH_NAME
from divconq.errors import DivconqError


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
