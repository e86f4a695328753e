from pathlib import Path

import pytest

from martd_asgi import configref
from martd_asgi.config import FIELDS

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configref_committed_docs_match_the_settings() -> None:
    assert DOC.read_text(encoding="utf-8") == configref.markdown(), (
        "docs/configuration.md is stale: run "
        "`python -m martd_asgi.configref --write docs/configuration.md`"
    )


def test_configref_lists_every_setting_with_its_default() -> None:
    text = configref.markdown()
    for name, (variable, _) in FIELDS.items():
        assert f"| `{variable}` | `{name}` |" in text
    assert "| `MARTD_POLL_TIMEOUT` | `poll_timeout` | number | `30` |" in text
    assert "| `MARTD_ALLOW` | `allow` | list | `127.0.0.1,::1` |" in text
    assert "| `MARTD_SECRET` | `secret` | string | none |" in text


def test_configref_check_fails_on_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n")
    assert configref.main(["--check", str(stale)]) == 1
    assert "--write" in capsys.readouterr().err
    assert configref.main(["--write", str(stale)]) == 0
    assert configref.main(["--check", str(stale)]) == 0
