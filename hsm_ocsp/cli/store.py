"""``hsm-ocsp store stats``: what the host's answer store holds, per CA."""

from __future__ import annotations

import argparse
import collections
import datetime as dt

from ..config.file import load_config
from ..core.errors import EXIT_OK, ConfigError
from ..core.shared_answers import decode, parse_key
from ..store.lmdb_store import LmdbStore

__all__ = ["run_store_stats"]


def run_store_stats(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    state_dir = config.server.state_dir
    if state_dir is None:
        raise ConfigError(config.path, "server.state_dir", "not set: without it the store "
                          "lives in a private directory only while serve runs")  # fmt: skip
    if not (state_dir / "answers.lmdb").is_dir():
        print(f"no store in {state_dir} yet (serve makes it)")
        return EXIT_OK
    store = LmdbStore(state_dir)
    try:
        records = []
        for key, value in store.items():
            parsed, answer = parse_key(key), decode(value)
            if parsed is not None and answer is not None:
                records.append((parsed[0], len(key) + len(value), answer))
    finally:
        store.close()
    now = int(dt.datetime.now(dt.UTC).timestamp())
    for ca in config.cas:
        mine = [(size, answer) for name, size, answer in records if name == ca.name]
        statuses = collections.Counter(answer.cert_status.value for _, answer in mine)
        counted = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        line = f"ca {ca.name}: {len(mine)} answers ({counted or 'none'}), "
        line += f"{sum(size for size, _ in mine)} bytes"
        live = [answer.next_update for _, answer in mine if answer.next_update > now]
        if live:
            soonest = dt.datetime.fromtimestamp(min(live), dt.UTC)
            line += f", soonest nextUpdate {soonest:%Y-%m-%d %H:%M:%S} UTC"
        expired = len(mine) - len(live)
        if expired:
            line += f", {expired} past their nextUpdate (never served)"
        print(line)
    return EXIT_OK
