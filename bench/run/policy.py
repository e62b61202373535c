"""One execution policy per sweep: the torch settings that change a float32 result or its speed without changing
the config.

TF32 for matmuls and cuDNN convolutions (with the float32 matmul precision it implies), cuDNN's benchmark and
deterministic modes and the number of torch threads are process-wide switches. Left to chance, an eager row
would run with whatever the configuration before it left switched on (a compiled or bf16 config, a library
that sets them on import), so a result would depend on the order configurations run in. The sweep sets them
once from the spec (``tf32_matmul``, ``tf32_cudnn``, ``cudnn_benchmark``, ``deterministic``; ``threads`` or
``--threads``) in its own process, in every worker process it starts and in every Ray task, before any config
runs, and every row records the settings read back from torch in the process that ran it (``in_effect``).

The defaults are torch's own (TF32 off for matmuls, on for cuDNN convolutions; no benchmark; not
deterministic), the settings a user's script runs with unless it changes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SPEC_KEYS = ("tf32_matmul", "tf32_cudnn", "cudnn_benchmark", "deterministic", "threads")


@dataclass(frozen=True)
class ExecutionPolicy:
    tf32_matmul: bool = False
    tf32_cudnn: bool = True
    cudnn_benchmark: bool = False
    deterministic: bool = False
    threads: int | None = None  # torch intra-op threads; None: torch's default (one per physical core)

    @classmethod
    def from_spec(cls, values: dict, threads: int | None = None) -> "ExecutionPolicy":
        """The spec's policy keys (defaults where absent), ``threads`` (the command line's) over the spec's."""
        chosen = {key: values[key] for key in SPEC_KEYS if values.get(key) is not None}
        if threads is not None:
            chosen["threads"] = threads
        return cls(**chosen)

    def apply(self) -> None:
        """Set every switch in this process (idempotent)."""
        torch.backends.cuda.matmul.allow_tf32 = self.tf32_matmul
        torch.set_float32_matmul_precision("high" if self.tf32_matmul else "highest")
        torch.backends.cudnn.allow_tf32 = self.tf32_cudnn
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.deterministic
        if (torch.are_deterministic_algorithms_enabled() != self.deterministic
                or torch.is_deterministic_algorithms_warn_only_enabled() != self.deterministic):
            # Only on a change: the call imports torch._inductor, 2.5 s of a CLI run's start on the 2-core CPU.
            torch.use_deterministic_algorithms(self.deterministic, warn_only=True)
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


def in_effect() -> dict:
    """The row columns: the switches as torch has them now in this process."""
    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
            "threads": torch.get_num_threads()}
