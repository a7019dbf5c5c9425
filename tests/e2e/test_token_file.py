"""``wsdhq ray start``'s token file is readable by its owner only."""
from __future__ import annotations

import stat

from cluster import local


def test_ensure_token_writes_the_token_0600_and_tightens_an_existing_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = local.ensure_token()
    assert path == tmp_path / ".ray" / "auth_token" and path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text()
    path.chmod(0o644)  # a token an older version (or Ray itself) left world-readable
    assert local.ensure_token() == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == token  # kept, tightened
