"""Shared pytest fixtures. Sections are owned by different modules' tests; append yours below."""

from __future__ import annotations

import pytest

# --- Hub server (tests/hubserver.py): a real, offline Hub-compatible server (olah) on 127.0.0.1 -------------


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """A running olah server; ``.endpoint``, ``.add_repo(repo_id, files, branch=, tag=)``, ``.stop()``,
    ``.restart()``. Fails (never skips) where olah or git is missing: olah is in the test extra, so a missing one
    is a broken install, not a reason to test less. Tests that stop it must restart it."""
    from hubserver import HubServer, olah_available

    why = olah_available()
    if why:
        pytest.fail(f"the Hub test server cannot run: {why}", pytrace=False)
    server = HubServer(tmp_path_factory.mktemp("hubserver")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub(hub_server):
    """The session's hub server, guaranteed running when the test starts."""
    if not hub_server.running:
        hub_server.start()
    return hub_server


# --- barcoded videos (tests/corpus.py): every frame carries its own number --------------------------------------


@pytest.fixture(scope="session")
def barcode_corpus(tmp_path_factory):
    """``{case name: corpus.CaseInfo}`` for every case of tests/corpus.py (built once per session, ~20 s)."""
    import corpus

    return corpus.build_corpus(tmp_path_factory.mktemp("barcodes"))
