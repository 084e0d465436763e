"""Settings: where swarm-edge keeps its data, which models.yaml it reads, budgets and threads.

Values come from keyword arguments (CLI flags) first, then `SWARM_EDGE_*` environment variables, then
defaults. A bad value raises ConfigError naming the variable; nothing is silently defaulted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from swarm_edge.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_DIR / "default_models.yaml"
CLOUD_KEY_ENV = "SWARM_EDGE_CLOUD_API_KEY"

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_size(text: str | int, *, total: int | None = None, name: str = "size") -> int:
    """Parse "1.5GiB", "800MB", "123456" or (given `total`) "60%" into bytes."""
    if isinstance(text, int):
        if text <= 0:
            raise ConfigError(f"{name}: must be positive, got {text}")
        return text
    pct = _PERCENT_RE.match(text)
    if pct:
        if total is None:
            raise ConfigError(f"{name}: a percentage needs a total to take it from: {text!r}")
        share = float(pct.group(1))
        if not 0 < share <= 100:
            raise ConfigError(f"{name}: percentage must be in (0, 100], got {text!r}")
        return int(total * share / 100)
    m = _SIZE_RE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"{name}: not a size: {text!r} (examples: 1.5GiB, 800MB, 60%)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ConfigError(f"{name}: must be positive, got {text!r}")
    return value


def is_loopback(host: str) -> bool:
    """Whether a bare host name or address is this machine: 127.0.0.0/8, ::1 or localhost."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_threads() -> int:
    """Physical cores when known (llama.cpp decodes no faster on hyper-threads), else logical ones."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # psutil may be absent in a minimal install; the fallback is fine
        physical = None
    return max(1, physical or os.cpu_count() or 1)


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "swarm-edge"


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one process; build with `Settings.load(...)`."""

    home: Path
    config_path: Path
    threads: int
    offline: bool = False
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)  # read-only after load()
    socket: Path | None = None
    # SWARM_EDGE_CLOUD_API_KEY, taken out of `env` (and, by cloud.make_client, out of this process's environment);
    # a re-executed `serve` never has it (egress.py)
    cloud_key: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.env, MappingProxyType):
            object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    @property
    def socket_path(self) -> Path:
        """The daemon's Unix socket: --socket, SWARM_EDGE_SOCKET, $XDG_RUNTIME_DIR/swarm-edge/, or HOME/run/."""
        if self.socket is not None:
            return self.socket
        if self.env.get("SWARM_EDGE_SOCKET"):
            return Path(self.env["SWARM_EDGE_SOCKET"]).expanduser()
        if self.env.get("XDG_RUNTIME_DIR"):
            return Path(self.env["XDG_RUNTIME_DIR"]) / "swarm-edge" / "swarm-edge.sock"
        return self.home / "run" / "swarm-edge.sock"

    @property
    def models_dir(self) -> Path:
        """Where materialised model files live: HOME/models/<model-id>/<file>."""
        return self.home / "models"

    @classmethod
    def load(cls, *, home: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
             threads: int | None = None, offline: bool = False, socket: str | os.PathLike | None = None,
             environ: dict[str, str] | None = None) -> Settings:
        """Resolve settings from arguments, then SWARM_EDGE_* env vars, then defaults."""
        env = dict(os.environ if environ is None else environ)
        cloud_key = env.pop(CLOUD_KEY_ENV, None)
        home_path = Path(home or env.get("SWARM_EDGE_HOME") or _default_home()).expanduser()
        config_path = Path(config or env.get("SWARM_EDGE_CONFIG") or DEFAULT_CONFIG).expanduser()
        if threads is None and env.get("SWARM_EDGE_THREADS"):
            raw = env["SWARM_EDGE_THREADS"]
            if not raw.isdigit() or int(raw) < 1:
                raise ConfigError(f"SWARM_EDGE_THREADS: expected a positive integer, got {raw!r}")
            threads = int(raw)
        if threads is not None and threads < 1:
            raise ConfigError(f"threads: expected a positive integer, got {threads}")
        return cls(home=home_path, config_path=config_path, threads=threads or default_threads(),
                   offline=offline, env=MappingProxyType(env), socket=Path(socket).expanduser() if socket else None,
                   cloud_key=cloud_key)
