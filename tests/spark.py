"""A local Spark Connect server for tests, started by the project's script (one per test
run, on a port of its own) and stopped at the end if this run started it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.services import ROOT, free_port

SCRIPT = ROOT / "infra" / "scripts" / "spark-connect.sh"


@dataclass
class SparkConnect:
    remote: str
    started: bool
    env: dict[str, str]

    @classmethod
    def start(cls, state: Path) -> SparkConnect:
        env = {**os.environ, "PYTHON": sys.executable,
               "SANDBOX_SPARK_PORT": str(free_port()), "SANDBOX_SPARK_STATE": str(state)}
        out = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True,
                             check=True, timeout=300, env=env)
        remote, state_word = out.stdout.split()[-2:]
        return cls(remote, state_word == "started", env)

    def stop(self) -> None:
        if self.started:
            subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120,
                           env=self.env, check=False)
