"""Layer 3 of the sandbox, and the wall clock of layer 5: the resource limits of one run. The child sets
the rlimits on itself before it locks down the kernel layers; its working directory is a tmpfs of `disk_mb`
with `max_files` inodes (in a mount namespace; otherwise its supervisor polls the directory against the same
caps); the host enforces `wall_s` and the output caps.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmstack.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits. `wall_s` bounds the whole call; `cpu_s` is the RLIMIT_CPU limit (SIGKILL at
    `cpu_s` in a PID namespace; without one SIGXCPU at `cpu_s` and SIGKILL a second later). `file_mb` caps
    each file, `disk_mb` and `max_files` the working directory as a whole."""

    cpu_s: int = 2
    wall_s: float = 5.0
    memory_mb: int = 256
    file_mb: int = 1
    open_files: int = 32
    output_bytes: int = 64_000
    result_bytes: int = 16_000
    disk_mb: int = 16
    max_files: int = 256

    def __post_init__(self) -> None:
        names = ("cpu_s", "memory_mb", "file_mb", "open_files", "output_bytes", "result_bytes", "disk_mb", "max_files")
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"Limits.{name} must be a positive integer, got {value!r}")
        if not self.wall_s > 0:
            raise ConfigError(f"Limits.wall_s must be > 0 seconds, got {self.wall_s!r}")
        if self.memory_mb < 64:
            raise ConfigError(f"Limits.memory_mb={self.memory_mb} is too small for the interpreter; use >= 64")
        if self.open_files < 16:
            raise ConfigError(f"Limits.open_files={self.open_files} is too small for the interpreter; use >= 16")
