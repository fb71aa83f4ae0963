import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from holo_mlx.runtime import blas_reexec_pending, use_fast_blas
from holo_mlx.testing import FIXTURE_CACHE


def pytest_configure(config):
    if config.getoption("numprocesses", None):
        # Under xdist each worker (and what it starts) gets about one core: more BLAS or torch threads
        # per process would only compete with the other worker's.
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(name, "1")
    # Re-exec with OpenBLAS preloaded before any test runs MLX (minutes instead of hours on the
    # reference BLAS); output capture is stopped first so the new process writes to the terminal.
    if blas_reexec_pending():
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.stop_global_capturing()
        use_fast_blas()


def cached_checkpoint(**options) -> Path:
    """Build (once per machine, keyed by the options and the builder's source) a tiny checkpoint."""
    from holo_mlx import testing

    source = Path(testing.__file__).read_bytes()
    key = hashlib.sha256(source + json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    path = FIXTURE_CACHE / f"{options.get('preset', 'tiny')}-{key}"

    def build():
        testing.build_checkpoint(path, **options)
        (path / "done").write_text("ok")

    testing.build_once(path / "done", build)  # test workers share the cache
    return path


@pytest.fixture(scope="module")
def module_tmp_factory(tmp_path_factory, request):
    """`module_tmp_factory(name)`: a new folder for a module's fixtures, removed when the module's tests
    end, or when the fixture whose `request` is passed as `until` ends (a parametrized one: its next
    parameter's folders need not sit beside it). Converted checkpoints take 100s of MB each: kept to
    the end, a full run held gigabytes."""

    def mktemp(name: str, until: pytest.FixtureRequest | None = None) -> Path:
        path = tmp_path_factory.mktemp(name)
        (until or request).addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    return mktemp


@pytest.fixture(scope="session")
def hf_root_checkpoint() -> Path:
    """transformers 4.x config layout, model.layers.* / visual.* keys, float32."""
    return cached_checkpoint(config_layout="root", key_layout="flat", dtype="float32")


@pytest.fixture(scope="session")
def hf_nested_checkpoint() -> Path:
    """transformers 5 config layout, model.language_model.* / model.visual.* keys, float32."""
    return cached_checkpoint(config_layout="nested", key_layout="nested", dtype="float32")


@pytest.fixture(scope="session")
def hf_bf16_checkpoint() -> Path:
    return cached_checkpoint(config_layout="root", key_layout="nested", dtype="bfloat16")


@pytest.fixture(scope="session")
def holo2_root_checkpoint() -> Path:
    """Holo2 (Qwen3-VL) as published: transformers 4.57 config layout, float32."""
    return cached_checkpoint(preset="holo2-tiny", config_layout="root", dtype="float32")


@pytest.fixture(scope="session")
def holo2_nested_checkpoint() -> Path:
    """Holo2 as transformers 5 saves it (rope_parameters), float32."""
    return cached_checkpoint(preset="holo2-tiny", config_layout="nested", dtype="float32")


@pytest.fixture(scope="session")
def holo2_bf16_checkpoint() -> Path:
    return cached_checkpoint(preset="holo2-tiny", config_layout="root", dtype="bfloat16")


@pytest.fixture(scope="session")
def holo2_moe_root_checkpoint() -> Path:
    """Holo2-30B-A3B's architecture (Qwen3-VL MoE), published layout: 4.57's expert orientation."""
    return cached_checkpoint(preset="holo2-moe-tiny", config_layout="root", dtype="float32")


@pytest.fixture(scope="session")
def holo2_moe_nested_checkpoint() -> Path:
    return cached_checkpoint(preset="holo2-moe-tiny", config_layout="nested", dtype="float32")


@pytest.fixture(scope="session")
def holo3_checkpoint() -> Path:
    """Holo3 (Qwen3.5, dense) as transformers 5 saves it, with the mtp.* head Qwen publishes, float32."""
    return cached_checkpoint(preset="holo3-tiny", dtype="float32")


@pytest.fixture(scope="session")
def holo3_moe_checkpoint() -> Path:
    """Holo3-35B-A3B's architecture (Qwen3.5 MoE) as transformers 5 saves it, with the mtp.* head, float32."""
    return cached_checkpoint(preset="holo3-moe-tiny", dtype="float32")


class SharedServers:
    """serve.py processes kept for the whole session, one per exact argument tuple: a server takes
    some 10 s to start here, and many modules ask for the same one. Only for tests that neither stop
    it nor assert on state that other tests change (absolute metric counts, a failed /health)."""

    def __init__(self):
        self.running = {}

    def get(self, *args):
        from test_server import Server

        key = tuple(str(arg) for arg in args)
        server = self.running.get(key)
        # One that died is started anew: its crash fails the tests that caused it, not every later module.
        if server is None or server.process.poll() is not None:
            server = self.running[key] = Server(*key)
        return server

    def stop(self) -> None:
        for server in self.running.values():
            if server.process.poll() is None:
                server.stop()


@pytest.fixture(scope="session")
def shared_server(request):
    """`shared_server(*serve_py_args)`: the session's running server for exactly those arguments,
    started on first use and stopped when the session ends."""
    servers = SharedServers()
    request.addfinalizer(servers.stop)
    return servers.get


@pytest.fixture(scope="module")
def server(shared_server, hf_root_checkpoint):
    """`serve.py` on the tiny checkpoint as "holo-tiny", shared by every module that uses it (a module
    may define its own `server` with other flags)."""
    return shared_server("--model", str(hf_root_checkpoint), "--served-model-name", "holo-tiny")


@pytest.fixture(scope="module")
def client(server):
    """The real `openai` client of the module's server."""
    return server.client()


@pytest.fixture(scope="module")
def holo2_server(shared_server, holo2_root_checkpoint):
    """`serve.py` on the tiny Holo2 checkpoint (served under its folder's name), shared by every module
    that uses it: test_server_engine's Holo2 `family_server` has the same flags."""
    return shared_server("--model", str(holo2_root_checkpoint), "--max-num-seqs", "4")


# Fixtures that start or hand out a live server: a test using one (directly or through another
# fixture) is marked `server`; tests that start a server in their body carry the mark themselves.
SERVER_FIXTURES = {"shared_server", "server", "client", "live", "alone", "ranked", "family_server",
                   "normalized_server", "holo2_server"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
