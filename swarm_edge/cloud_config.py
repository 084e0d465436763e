"""The cloud fallback's configuration: models.yaml's `cloud:` section with the environment's URL and model applied,
the API key (from a 0600 file of ours or SWARM_EDGE_CLOUD_API_KEY), and what keeps a key out of reach of other
processes (the environment block wiped, the process made undumpable)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import ConfigDict

from swarm_edge.config import CLOUD_KEY_ENV, is_loopback
from swarm_edge.errors import ConfigError
from swarm_edge.registry import CloudSpec

KEY_ENV = CLOUD_KEY_ENV

class CloudConfig(CloudSpec):
    """A configured cloud: models.yaml's `cloud:` section (CloudSpec: timeouts, retries, breaker, when to
    escalate) with the environment's URL and model applied, both required here."""

    model_config = ConfigDict(frozen=True)
    base_url: str
    model: str

    @classmethod
    def resolve(cls, spec: CloudSpec | None, env: dict[str, str]) -> CloudConfig | None:
        """The config from models.yaml's section (or None) and the environment; None when not configured."""
        url = env.get("SWARM_EDGE_CLOUD_URL") or (spec.base_url if spec else None)
        model = env.get("SWARM_EDGE_CLOUD_MODEL") or (spec.model if spec else None)
        if spec is not None and not spec.enabled and not env.get("SWARM_EDGE_CLOUD_URL"):
            return None
        if not url and not model:
            return None
        if not url or not model:
            missing = ("SWARM_EDGE_CLOUD_URL (or cloud.base_url)" if not url
                       else "SWARM_EDGE_CLOUD_MODEL (or cloud.model)")
            raise ConfigError(f"the cloud fallback is half configured: {missing} is not set")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"cloud base_url must start with http:// or https://, got {url!r}")
        if url.startswith("http://") and not _loopback(_host_of(url)):
            raise ConfigError(f"cloud base_url {url!r} is plain http:// to another machine: the API key and every "
                              "prompt would cross the network in clear text; use https:// (http:// is allowed only "
                              "for a server on this machine: 127.0.0.1, ::1 or localhost)")
        return cls(**{**(spec.model_dump() if spec else {}), "base_url": url.rstrip("/"), "model": model})

    @property
    def host(self) -> str:
        return _host_of(self.base_url)


def _host_of(url: str) -> str:
    """host[:port] of an http(s) URL, without any user:password@."""
    return url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]


def _loopback(hostport: str) -> bool:
    """Whether host[:port] names this machine."""
    return is_loopback(hostport[1:].split("]", 1)[0] if hostport.startswith("[") else hostport.rsplit(":", 1)[0])


def load_key(config: CloudConfig, env: dict[str, str]) -> str | None:
    """The API key from a 0600 file of ours or from SWARM_EDGE_CLOUD_API_KEY (then removed from os.environ and
    `env`, so that no child process inherits it). None: the endpoint needs no key (a local server)."""
    key = env.pop(KEY_ENV, None)
    os.environ.pop(KEY_ENV, None)
    if config.api_key_file is not None:
        path = Path(config.api_key_file).expanduser()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise ConfigError(f"cloud api_key_file {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"cloud api_key_file {path} must be a regular file of ours that only we can read "
                                  f"(chmod 600 {path}); its mode is {stat.filemode(st.st_mode)}")
            key = os.read(fd, 4096).decode("utf-8", "replace").strip() or None
        finally:
            os.close(fd)
    if key is not None and (any(c.isspace() for c in key) or not key.isprintable()):
        raise ConfigError("the cloud API key contains whitespace or control characters")
    return key


def cloud_policy(registry, settings) -> CloudConfig | None:
    """The configured cloud's settings (even offline, where no client is built), or None if none is configured."""
    try:
        return CloudConfig.resolve(registry.cloud, settings.env)
    except ConfigError:
        return None


def wipe_from_environ_block(name: str) -> bool:
    """Overwrite NAME's value in this process's original environment block; True if it was there.

    `os.environ.pop` takes a variable out of what children inherit, but /proc/PID/environ shows the block the
    process started with (the kernel's env_start..env_end), and the value stays readable there by anyone who may
    read our /proc files. Linux only; elsewhere a no-op.
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # fields 50 and 51 of proc(5): env_start, env_end
    except (OSError, ValueError, IndexError):
        return False
    import ctypes

    block, prefix, pos, found = ctypes.string_at(start, end - start), name.encode() + b"=", 0, False
    for entry in block.split(b"\0"):
        if entry.startswith(prefix) and len(entry) > len(prefix):
            ctypes.memset(start + pos + len(prefix), ord("*"), len(entry) - len(prefix))
            found = True
        pos += len(entry) + 1
    return found


def make_undumpable() -> bool:
    """Make this process non-dumpable (Linux): no core dump, no ptrace and no /proc/PID/{environ,mem,maps} for
    other processes of the same uid, so a held API key is not readable that way. True if it took effect."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        return False
