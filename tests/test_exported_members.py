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


def test_help_imports_nothing_heavy():
    """`swarm-edge --help` must stay fast: no runtimes, no web stack, not even the models.yaml schema."""
    code = ("import sys; sys.argv = ['swarm-edge', '--help']\n"
            "from swarm_edge.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('llama_cpp', 'onnxruntime', 'numpy', 'tokenizers', 'huggingface_hub', 'fastapi',\n"
            "         'uvicorn', 'starlette', 'httpx2', 'pydantic', 'yaml', 'psutil') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "serve" in out.stdout and out.stdout.strip().endswith("HEAVY=")
