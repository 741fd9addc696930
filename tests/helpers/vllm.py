"""A vLLM server for tests and benchmarks: `python -m chat vllm` (`make vllm`'s environment) on a checkpoint folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.server import free_port

VLLM_START_S = 600  # ~70 s on 2 idle cores; a shared CI machine can be several times slower
CONTEXT_TOKENS = 4096  # the server's max_model_len: enough for the tests' prompts and answers


@dataclass
class VllmServer:
    """`python -m chat vllm` serving the checkpoint, which a test may stop and start again."""

    url: str  # ending in /v1
    environment: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    @classmethod
    def on(cls, checkpoint: Path, served_name: str, log: Path, device: str = "cpu") -> VllmServer:
        """A server (not started yet) for `checkpoint`, on a free port, on `device` (cuda: vLLM's CUDA build)."""
        url = f"http://127.0.0.1:{free_port()}/v1"
        environment = {
            **os.environ,
            "LOUPE_MODEL": str(checkpoint),
            "LOUPE_VLLM_URL": url,
            "LOUPE_VLLM_MODEL": served_name,
            "LOUPE_CONTEXT_TOKENS": str(CONTEXT_TOKENS),
            "LOUPE_DEVICE": device,
            "HF_HUB_OFFLINE": "1",
        }
        return cls(url, environment, log)

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chat", "vllm"],
                env=self.environment,
                stdout=output,
                stderr=output,
                start_new_session=True,  # vLLM's engine runs in a child process: stop the whole group
            )
        deadline = time.monotonic() + VLLM_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited during start-up:\n{self.log.read_text()[-5000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(1)
        raise RuntimeError(f"vLLM did not start within {VLLM_START_S} s:\n{self.log.read_text()[-5000:]}")

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, how)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
