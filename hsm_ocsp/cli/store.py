"""``hsm-ocsp store stats``: what the host's answer store holds, per CA."""

from __future__ import annotations

import argparse
import collections
import datetime as dt

from ..config.file import load_config
from ..config.model import Config
from ..core.errors import EXIT_OK, ConfigError
from ..core.pre_production import cert_id, lifetime_of, needs
from ..core.shared_answers import (
    NOT_IN_INDEX,
    StoredAnswer,
    decode,
    parse_key,
    shared_key,
    signer_fingerprint,
)
from ..server.issuers import issuers_of
from ..server.status_source import open_source
from ..store.lmdb_store import LmdbStore

__all__ = ["run_store_stats"]


def run_store_stats(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    state_dir = config.server.state_dir
    if state_dir is None:
        raise ConfigError(
            config.path,
            "server.state_dir",
            "not set: without it the store lives in a private directory only while serve runs",
        )
    if not (state_dir / "answers.lmdb").is_dir():
        print(f"no store in {state_dir} yet (serve makes it)")
        return EXIT_OK
    store = LmdbStore(state_dir, readonly=True)
    try:
        records = []
        for key, value in store.items():
            parsed, answer = parse_key(key), decode(value)
            if parsed is not None and answer is not None:
                records.append((parsed[0], len(key) + len(value), answer))
        backlog = _backlog(store, config) if config.signing else {}
    finally:
        store.close()
    now = int(dt.datetime.now(dt.UTC).timestamp())
    for ca in config.cas:
        mine = [(size, answer) for name, size, answer in records if name == ca.name]
        line = _ca_line(ca.name, mine, now)
        if ca.name in backlog:
            line += f", backlog {backlog[ca.name]} (to produce or refresh now)"
        print(line)
    return EXIT_OK


def _ca_line(name: str, mine: list[tuple[int, StoredAnswer]], now: int) -> str:
    """What the store holds for CA ``name``: ``mine``, (size, record) each."""
    statuses = collections.Counter(answer.cert_status.value for _, answer in mine)
    counted = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    line = f"ca {name}: {len(mine)} answers ({counted or 'none'}), "
    line += f"{sum(size for size, _ in mine)} bytes"
    live = [answer.next_update for _, answer in mine if answer.next_update > now]
    kept = [a.next_update for _, a in mine if a.next_update > now and a.truth != NOT_IN_INDEX]
    if kept:  # of those kept fresh: an unknown serial's answer is signed when asked
        soonest = dt.datetime.fromtimestamp(min(kept), dt.UTC)
        line += f", soonest nextUpdate {soonest:%Y-%m-%d %H:%M:%S} UTC"
    expired = len(mine) - len(live)
    if expired:
        line += f", {expired} past their nextUpdate (never served)"
    return line


def _backlog(store: LmdbStore, config: Config) -> dict[str, int]:
    """Per CA: answers the producer has yet to make (or refresh) now, as it would see
    them: every serial of the index, each CertID hash of ``ca.cert_id_hashes``."""
    now = dt.datetime.now(dt.UTC)
    counts = {}
    for ca, issuer in zip(config.cas, issuers_of(config), strict=True):
        signer = issuer.signer_at(now)
        if signer is None:
            continue
        fingerprint = signer_fingerprint(signer)
        source = open_source(ca)
        try:
            snapshot = source.load()
        finally:
            source.close()
        lifetime = lifetime_of(issuer.validity, signer.not_after, snapshot)
        counts[ca.name] = sum(
            needs(
                store.get(shared_key(ca.name, cert_id(issuer, h, serial))),
                value,
                fingerprint,
                now,
                lifetime,
            )
            is not None
            for serial, value in snapshot.entries.items()
            for h in ca.cert_id_hashes
        )
    return counts
