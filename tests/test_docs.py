"""The documents a newcomer reads: every configuration key documented, no link to a
file that is not there, and a README short enough to read."""

from __future__ import annotations

import re

import pytest

from hsm_ocsp.config import file as config_file
from hsm_ocsp.config.crl_keys import CRL_KEYS

from .support import ROOT

DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_configuration_key_is_in_configuration_md() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    documented: dict[str, set[str]] = {}
    for section in sections[1:]:
        name = section.split("`")[1].strip("[]")
        documented[name] = set(re.findall(r"^\| `([a-z_]+)`", section, flags=re.M))
        for row in re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)+) \|", section, flags=re.M):
            documented[name] |= set(re.findall(r"`([a-z_]+)`", row))
    keys = {
        "server": config_file._SERVER_KEYS,
        "token": config_file._TOKEN_KEYS,
        "ca": config_file._CA_KEYS | CRL_KEYS,
        "producer": config_file._PRODUCER_KEYS,
        "store": {"redis"},
        "audit": config_file._AUDIT_KEYS,
    }
    for table, names in keys.items():
        missing = names - documented.get(table, set())
        assert not missing, (table, sorted(missing))
        unknown = documented.get(table, set()) - names
        assert not unknown, (table, sorted(unknown))  # documented, but no such key


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_to_files_of_the_repository_resolve(doc: object) -> None:
    path = ROOT / str(doc)
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), (path.name, target)


def test_readme_is_short_enough_to_read() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
