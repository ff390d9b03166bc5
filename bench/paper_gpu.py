"""The paper's comparisons on a GPU machine, with bigger models than the CPU run.

The same stages and configurations as ``bench/paper_cpu.py`` (collect, sft, train, eval;
resumable), with a larger teacher served by vLLM's OpenAI-compatible server and a larger
student trained with LoRA in bf16 on the GPU. Not part of CI.

    pip install vllm                    # on the GPU machine
    python bench/paper_gpu.py --teacher-model Qwen/Qwen2.5-7B-Instruct \\
        --student-model Qwen/Qwen2.5-0.5B-Instruct --questions 500 --train-questions 2000

Models are hub ids or local directories (a machine without a hub connection needs the
latter). ``--teacher-url`` uses a server that is already running instead of starting one.
Results: bench/results/paper_gpu.{md,json,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from paper_cpu import Setup, add_arguments, finish, run
from teacher import openai_server


def vllm_server(model: str, *, port: int, timeout_s: float = 900) -> contextlib.AbstractContextManager[str]:
    """Serve ``model`` under the name ``teacher`` on loopback; yields the OpenAI base URL."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", "teacher", "--host", "127.0.0.1", "--port", str(port),
               # The student trains on the same GPU while the teacher is up: leave it room.
               "--gpu-memory-utilization", "0.5"]
    return openai_server(command, f"http://127.0.0.1:{port}/v1", Path(f"/tmp/vllm-{port}.log"),
                         name="vLLM (is vllm installed?)", timeout_s=timeout_s, stop_timeout_s=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "paper_gpu_work")
    parser.add_argument("--teacher-model", default="Qwen/Qwen2.5-7B-Instruct", help="hub id or local dir, served by vLLM")
    parser.add_argument("--student-model", default="Qwen/Qwen2.5-0.5B-Instruct", help="hub id or local dir")
    parser.add_argument("--teacher-url", help="an already running teacher server (OpenAI base URL, model name 'teacher')")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(exist_ok=True)
    student = f"hf:{args.student_model}"

    def setup(url: str) -> Setup:
        return Setup(teacher=f"openai:teacher@{url}", student=student, base=student,
                     concurrency=args.concurrency, batch_size=16, name="paper_gpu")

    if not args.table_only:
        if args.teacher_url:
            run(args, setup(args.teacher_url))
        else:
            with vllm_server(args.teacher_model, port=args.port) as url:
                run(args, setup(url))
    finish(args, setup(args.teacher_url or "unused"))


if __name__ == "__main__":
    main()
