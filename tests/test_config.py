import pytest

from swarm_edge.config import Settings, parse_size
from swarm_edge.errors import ConfigError


@pytest.mark.parametrize("text,expected", [
    ("123", 123), ("1KiB", 1024), ("1.5GiB", int(1.5 * 2**30)), ("800MB", 800_000_000),
    ("2 gib", 2 * 2**30), (4096, 4096),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_percentage_needs_total():
    assert parse_size("50%", total=1000) == 500
    with pytest.raises(ConfigError, match="needs a total"):
        parse_size("50%")


@pytest.mark.parametrize("bad", ["", "abc", "-1GiB", "0", "12 parsecs", "150%", "0%"])
def test_parse_size_rejects(bad):
    with pytest.raises(ConfigError):
        parse_size(bad, total=100, name="SWARM_EDGE_BUDGET")


def test_settings_from_env(tmp_path):
    s = Settings.load(environ={"SWARM_EDGE_HOME": str(tmp_path), "SWARM_EDGE_THREADS": "3"})
    assert s.home == tmp_path and s.threads == 3 and s.models_dir == tmp_path / "models"
    with pytest.raises(ConfigError, match="SWARM_EDGE_THREADS"):
        Settings.load(environ={"SWARM_EDGE_THREADS": "many"})
