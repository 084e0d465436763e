"""The public API is explicit and pinned: changing it is a decision, not an accident."""

import subprocess
import sys

import swarm_edge


def test_all_is_pinned():
    assert swarm_edge.__all__ == [
        "BackendUnavailableError", "ChecksumError", "ConfigError", "CorruptModelError", "FetchError",
        "InferenceError", "ModelFileError", "ModelLoadError", "ModelSpec", "Registry", "RegistryError",
        "Settings", "SwarmEdgeError", "UnknownModelError", "__version__", "load_registry", "parse_registry",
        "parse_size",
    ]
    for name in swarm_edge.__all__:
        assert hasattr(swarm_edge, name), name


def test_import_and_cli_stay_light():
    """`import swarm_edge` and building the CLI never import the native runtimes or numpy."""
    code = ("import sys, swarm_edge, swarm_edge.cli, swarm_edge.orchestrator; "
            "heavy = [m for m in ('llama_cpp', 'onnxruntime', 'numpy', 'tokenizers', 'huggingface_hub') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
