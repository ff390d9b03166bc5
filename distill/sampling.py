"""Several distinct decompositions of one question from a local student, and their replay in the graph.

``divconq improve`` screens a student's decompositions by whether they lead the solver to
gold, so it needs K *different* ones per question. The student draws them all in one
``generate`` call (temperature sampling, ``num_return_sequences``: one pass over the
prompt for every draw), from the very prompt the graph would send it, rendered with its
chat template as its chat model renders it; the first K distinct usable ones are kept.

The solver then answers the question with each sample through the real graph: there
``SampledDecomposer`` stands in for the student and replies to each run with the sample
that run is for (named in the run's metadata, ``SAMPLE_KEY``), with the tokens the student
spent writing it, so a trace store records each screening run as the student's (the time
it took is the sampling step's, kept with the draws).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult

from divconq.errors import DivconqError
from divconq.nodes.parsing import is_no_decomposition, parse_subquestions

__all__ = ["SAMPLE_KEY", "Draws", "Sample", "SampledDecomposer", "prompt_digest", "sample_decompositions"]

# The run metadata key naming the sample a screening run is for.
SAMPLE_KEY = "divconq_sample"


@dataclass(frozen=True)
class Sample:
    """One sampled decomposition: the student's text, its sub-questions and what it cost."""

    text: str
    subquestions: list[str]
    input_tokens: int
    output_tokens: int


@dataclass
class Draws:
    """What sampling one question gave: its distinct usable samples, and the rest of the draws."""

    samples: list[Sample]
    draws: int
    prompt_digest: str
    duplicates: int = 0  # the same sub-questions as an earlier draw
    declined: int = 0  # "No decomposition"
    unusable: int = 0  # no usable sub-questions
    surplus: int = 0  # distinct and usable, after the K kept
    input_tokens: int = 0  # over every draw: what sampling this question cost
    output_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Draws:
        values = {**data, "samples": [Sample(**s) for s in data["samples"]]}
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def prompt_digest(messages: list[BaseMessage]) -> str:
    """A short hash of a prompt: a replayed sample must answer the prompt it was sampled for."""
    payload = json.dumps(convert_to_openai_messages(messages), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _key(subquestions: list[str]) -> tuple[str, ...]:
    """Two decompositions are the same when they ask the same sub-questions in the same order."""
    return tuple(" ".join(q.split()).casefold() for q in subquestions)


def sample_decompositions(
    student: Any,
    messages: list[BaseMessage],
    *,
    question: str,
    samples: int,
    draws: int,
    temperature: float,
    max_subquestions: int,
    max_new_tokens: int,
    seed: int,
) -> Draws:
    """Draw ``draws`` decompositions at ``temperature`` and keep the first ``samples`` distinct usable ones.

    ``student``: a local chat model of ``divconq.nodes.load_chat_model`` (its pipeline's model
    and tokenizer generate). Seeded, so a resumed run draws what the first run would have.
    Fewer than ``samples`` come back when the draws hold fewer distinct usable ones.
    """
    import torch

    tokenizer, model = student.tokenizer, student.llm.pipeline.model
    started = time.perf_counter()
    prompt = tokenizer.apply_chat_template(convert_to_openai_messages(messages), tokenize=False,
                                           add_generation_prompt=True)
    # The chat template holds any BOS, as at inference (the pipeline adds no special tokens).
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    torch.manual_seed(seed)
    with torch.no_grad():
        generated = model.generate(**inputs, do_sample=True, temperature=temperature, num_return_sequences=draws,
                                   max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(generated[:, prompt_tokens:], skip_special_tokens=True)
    result = Draws(samples=[], draws=draws, prompt_digest=prompt_digest(messages))
    seen: set[tuple[str, ...]] = set()
    for text in texts:
        output_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])  # as the chat model counts
        result.input_tokens += prompt_tokens
        result.output_tokens += output_tokens
        subquestions = [] if is_no_decomposition(text) else parse_subquestions(text, max_subquestions, question)
        if not subquestions:
            if is_no_decomposition(text):
                result.declined += 1
            else:
                result.unusable += 1
        elif _key(subquestions) in seen:
            result.duplicates += 1
        elif len(result.samples) < samples:
            seen.add(_key(subquestions))
            result.samples.append(Sample(text, subquestions, prompt_tokens, output_tokens))
        else:
            result.surplus += 1
    result.seconds = round(time.perf_counter() - started, 3)
    return result


class SampledDecomposer(BaseChatModel):
    """A decomposer that answers each screening run with the decomposition sampled for it.

    ``samples`` maps a sample id to ``(prompt digest, Sample)``; the run's metadata names
    the id under ``SAMPLE_KEY``. A run for no sample, or one whose prompt is not the prompt
    the sample was drawn for (other prompts, another cap), is refused: it would screen a
    decomposition the student never wrote for that prompt.
    """

    samples: dict[str, Any]
    model_name: str

    @property
    def _llm_type(self) -> str:
        return "divconq-sampled-decomposer"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        sample_id = (getattr(run_manager, "metadata", None) or {}).get(SAMPLE_KEY)
        if sample_id not in self.samples:
            raise DivconqError(f"no sampled decomposition {sample_id!r}: the sampled decomposer serves the screening "
                               f"runs of divconq improve, whose metadata names their sample under {SAMPLE_KEY!r}")
        digest, sample = self.samples[sample_id]
        if prompt_digest(messages) != digest:
            raise DivconqError(f"sample {sample_id} was drawn for another prompt than this run sent: screen with "
                               "the prompts and cap it was sampled with")
        usage = {"input_tokens": sample.input_tokens, "output_tokens": sample.output_tokens,
                 "total_tokens": sample.input_tokens + sample.output_tokens}
        message = AIMessage(sample.text, usage_metadata=usage, response_metadata={"model_name": self.model_name})
        return ChatResult(generations=[ChatGeneration(message=message)])
