#!/usr/bin/env python3
"""Soak hsm-ocsp: mixed load for minutes, every answer checked, memory watched.

    python scripts/soak.py                 # 10 minutes (issue 6.5)
    python scripts/soak.py --minutes 0.5   # a smoke run

It makes everything it needs in a temporary directory: a SoftHSM token
(``softhsm/init-token.sh``) with a P-256 responder key, a CA run by ``openssl
ca`` whose index has 10,000 lines, and a config with ``workers = 2``. Then it
starts ``hsm-ocsp serve`` (its own process group, stopped by PID at the end) and
drives it from ``--concurrency`` keep-alive connections with a mix of requests:
good, revoked, unknown (random never-issued serials), nonce (signed fresh),
malformed, another CA's CertIDs, by GET and POST, plus a few serials whose
status changes. Every ``--reload-every`` seconds ``openssl ca`` changes the
index as in production, alternately issuing a certificate (unknown -> good)
and revoking it (good -> revoked). ``openssl ca`` renames ``index.txt`` away
before it renames ``index.txt.new`` into place; ``--index-writer rename``
instead writes the new index itself and renames it over the old in one step.

Every answer is checked: HTTP 200, the OCSP status expected, a signature that
verifies with the responder certificate, the certificate status the index
gives (the old status of a changed serial is accepted for ``GRACE`` seconds
after the change), the nonce echoed; errors are unsigned and not cacheable.
Every ``SAMPLE`` seconds it reads the workers' own resident memory
(/proc/PID/status RssAnon: not the answer store's mapped pages) and compares the
end of the run with the end of the warm-up.

Exit code 0 when there was no unexpected answer, every index change was seen,
no worker was replaced, no index reload was refused, the server logged no
ERROR and the workers' RSS grew by less than ``--max-growth``
(10 %) after the warm-up; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402
from cryptography.x509 import ocsp  # noqa: E402
from cryptography.x509.oid import OCSPExtensionOID  # noqa: E402

from tests.support import fuzz  # noqa: E402
from tests.support.pki import OpenSSLCA, generated_index_lines  # noqa: E402
from tests.support.softhsm import use_softhsm_token  # noqa: E402

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
LABEL = "soak"
PIN = "40615273"
SO_PIN = "71520934"
INDEX_LINES = 10_000
GRACE = 4.0  # seconds the old status of a changed serial stays acceptable
SAMPLE = 5.0
MALFORMED = bytes.fromhex("30030a0101")
UNAUTHORIZED = bytes.fromhex("30030a0106")
C = ocsp.OCSPCertStatus
S = ocsp.OCSPResponseStatus


# --- the set-up -------------------------------------------------------------


def make_token(directory: Path) -> None:
    conf = directory / "softhsm2.conf"
    use_softhsm_token(conf, label=LABEL, pin=PIN, so_pin=SO_PIN)


@dataclasses.dataclass
class Setup:
    ca: OpenSSLCA
    config: Path
    port: int
    signer: x509.Certificate
    good: list[int]
    revoked: list[int]


def make_setup(directory: Path, args: argparse.Namespace) -> Setup:
    import pkcs11

    from hsm_ocsp.core.pkcs11_uri import Pkcs11Uri
    from hsm_ocsp.pkcs11.keys import generate_key_pair, public_key_from_token

    make_token(directory)
    ca = OpenSSLCA(directory / "ca", "Soak CA")
    good = [ca.serial_of(ca.issue(f"good{i}")) for i in range(3)]
    revoked = []
    for i in range(2):
        pem = ca.issue(f"revoked{i}")
        ca.revoke(pem, "-crl_reason", "keyCompromise")
        revoked.append(ca.serial_of(pem))
    with ca.index.open("a") as out:
        out.write("\n".join(generated_index_lines(INDEX_LINES - len(good) - len(revoked))) + "\n")
    for line in ca.index.read_text().splitlines()[len(good) + len(revoked) :][:200]:
        fields = line.split("\t")
        (good if fields[0] == "V" else revoked).append(int(fields[3], 16))
    with pkcs11.lib(MODULE).get_token(token_label=LABEL).open(user_pin=PIN, rw=True) as session:
        public, _private, _ = generate_key_pair(session, "ec-p256", label="responder", key_id=None)
        responder = ca.sign_responder(public_key_from_token(public))
    port = args.port or _free_port()
    config = directory / "config.toml"
    config.write_text(
        f"""\
[server]
listen = "127.0.0.1:{port}"
workers = {args.workers}
cache_entries = {args.cache_entries}

[token]
module = "{MODULE}"

[[ca]]
name = "soak"
certificate = "{ca.cert_path}"
index = "{ca.index}"
key = "{Pkcs11Uri(token=LABEL, object="responder")}"
responder_certificate = "{responder}"
"""
    )
    signer = x509.load_pem_x509_certificate(responder.read_bytes())
    return Setup(ca, config, port, signer, good, revoked)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- what each serial should be ---------------------------------------------


@dataclasses.dataclass
class Period:
    status: C
    since: float
    until: float = math.inf


class Expectations:
    """Each serial's status over time; a change leaves the old one valid for GRACE s."""

    def __init__(self) -> None:
        self.history: dict[int, list[Period]] = {}
        self.changes: list[tuple[int, C, float]] = []  # serial, new status, when
        self.seen: set[int] = set()  # indexes into changes whose new status was answered

    def begin(self, serial: int, status: C, began: float) -> None:
        """A change starts: from now on the new status may be answered, and the old."""
        periods = self.history.setdefault(serial, [Period(C.UNKNOWN, 0.0)])  # never issued
        periods.append(Period(status, began))

    def end(self, serial: int, status: C, ended: float) -> None:
        """The change is written: the old status stays valid for GRACE s more."""
        self.history[serial][-2].until = ended + GRACE
        self.changes.append((serial, status, ended))

    def acceptable(self, serial: int, started: float, finished: float) -> set[C]:
        periods = self.history.get(serial)
        if periods is None:
            return {C.UNKNOWN}  # never issued
        return {p.status for p in periods if p.since <= finished and p.until >= started}

    def observed(self, serial: int, status: C, started: float) -> None:
        for number, (changed, new, when) in enumerate(self.changes):
            if changed == serial and new is status and started >= when:
                self.seen.add(number)


# --- the load -----------------------------------------------------------------


@dataclasses.dataclass
class Stats:
    requests: int = 0
    kinds: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: list[str] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)


KINDS = ["good", "revoked", "unknown", "nonce", "malformed", "foreign", "changing"]
WEIGHTS = [30, 15, 15, 15, 10, 5, 10]


class Load:
    def __init__(self, setup: Setup, target: fuzz.Target, expect: Expectations, seed: int) -> None:
        self.setup = setup
        self.target = target
        self.expect = expect
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.changing: list[int] = []  # serials issued or about to be: asked often

    def make(self) -> tuple[str, bytes, int | None, bytes | None, bool]:
        """(kind, HTTP request, serial asked or None, nonce or None, is GET)."""
        rng = self.rng
        kind = rng.choices(KINDS, WEIGHTS)[0]
        if kind == "changing" and not self.changing:
            kind = "good"
        serial: int | None
        if kind == "good":
            serial = rng.choice(self.setup.good)
        elif kind == "revoked":
            serial = rng.choice(self.setup.revoked)
        elif kind == "unknown":
            serial = rng.randrange(1 << 40, 1 << 63)
        elif kind == "changing":
            serial = rng.choice(self.changing[-3:])
        elif kind == "nonce":
            serial = rng.choice(self.setup.good + self.setup.revoked)
        else:
            serial = None
        algorithm = rng.choice(["sha1", "sha256"])
        if kind == "malformed":
            der = fuzz.ocsp_request([fuzz.cert_id(self.target, 5, algorithm)])
            body = rng.choice([b"", b"\x04\x03abc", der[: rng.randrange(1, len(der))], b"\x30"])
            if rng.random() < 0.5:
                return kind, fuzz.post("/", body), None, None, False
            path = rng.choice(["/not*base64", "/%0A", "/" + "A" * 7, "/soak/%%%"])
            return kind, fuzz.get(path), None, None, True
        if kind == "foreign":
            cid = fuzz.raw_cert_id(
                fuzz.HASH_OIDS["sha256"], rng.randbytes(32), rng.randbytes(32), 4096
            )
            return kind, fuzz.post("/", fuzz.ocsp_request([cid])), None, None, False
        assert serial is not None
        cid = fuzz.cert_id(self.target, serial, algorithm)
        if kind == "nonce":
            nonce = rng.randbytes(32)
            value = bytes([0x04, len(nonce)]) + nonce
            return kind, fuzz.post("/", fuzz.ocsp_request([cid], value)), serial, nonce, False
        der = fuzz.ocsp_request([cid])
        if rng.random() < 0.5:
            import base64
            import urllib.parse

            path = "/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")
            return kind, fuzz.get(path), serial, None, True
        return kind, fuzz.post(rng.choice(["/", "/soak/"]), der), serial, None, False

    def check(
        self,
        kind: str,
        serial: int | None,
        nonce: bytes | None,
        status: int,
        headers: dict[str, str],
        body: bytes,
        started: float,
        finished: float,
    ) -> None:
        assert status == 200, f"HTTP {status}"
        assert headers.get("content-type") == fuzz.OCSP_TYPE, headers
        if kind in ("malformed", "foreign"):
            want = MALFORMED if kind == "malformed" else UNAUTHORIZED
            assert body == want, f"answer {body[:16].hex()}, want {want.hex()}"
            assert "no-cache" in headers.get("cache-control", ""), headers
            return
        response = ocsp.load_der_ocsp_response(body)
        assert response.response_status is S.SUCCESSFUL, response.response_status.name
        fuzz.verify(self.setup.signer, response.signature, response.tbs_response_bytes, response)
        assert response.serial_number == serial, "another serial answered"
        allowed = self.expect.acceptable(serial, started, finished)
        got = response.certificate_status
        assert got in allowed, f"serial {serial:x}: {got.name}, want {[s.name for s in allowed]}"
        if kind == "changing":
            self.expect.observed(serial, got, started)
        if nonce is not None:
            echoed = response.extensions.get_extension_for_oid(OCSPExtensionOID.NONCE)
            assert isinstance(echoed.value, x509.OCSPNonce) and echoed.value.nonce == nonce, (
                "nonce not echoed"
            )
        else:
            assert not list(response.extensions), "extensions without a nonce"

    async def worker(self, host: str, port: int, until: float) -> None:
        connection = fuzz.Connection(host, port)
        stats = self.stats
        try:
            while time.monotonic() < until:
                kind, request, serial, nonce, _get = self.make()
                started = time.monotonic()
                try:
                    status, headers, body = await connection.exchange(request, False)
                    finished = time.monotonic()
                    self.check(kind, serial, nonce, status, headers, body, started, finished)
                except Exception as exc:  # every unexpected answer is a finding
                    finished = time.monotonic()
                    if len(stats.errors) < 1000:
                        stats.errors.append(f"{kind} at {finished:.1f}: {exc!r}")
                    await connection.close()
                stats.requests += 1
                stats.kinds[kind] += 1
                stats.latencies.append(finished - started)
                if self.rng.random() < 0.01:  # some connection churn too
                    await connection.close()
        finally:
            await connection.close()


# --- index changes and memory ---------------------------------------------------


class OpenSSLWriter:
    """Changes the index through ``openssl ca``, as a CA operator does.

    ``openssl ca`` writes ``index.txt.new``, renames ``index.txt`` to
    ``index.txt.old`` and then ``index.txt.new`` to ``index.txt``: between the
    two renames there is no ``index.txt`` for a moment.
    """

    def __init__(self, ca: OpenSSLCA) -> None:
        self.ca = ca
        self.pem: Path | None = None

    def upcoming(self) -> int:
        return int((self.ca.dir / "serial").read_text().strip(), 16)

    def issue(self, number: int) -> int:
        self.pem = self.ca.issue(f"soak{number}")
        return self.ca.serial_of(self.pem)

    def revoke(self, serial: int) -> None:
        assert self.pem is not None and self.ca.serial_of(self.pem) == serial
        self.ca.revoke(self.pem, "-crl_reason", "superseded")


class RenameWriter:
    """Writes ``index.txt.new`` in OpenSSL's format and renames it over ``index.txt``
    in one step: the file is never missing."""

    def __init__(self, ca: OpenSSLCA) -> None:
        self.index = ca.index
        self.next = 0x50000000

    def upcoming(self) -> int:
        return self.next

    def _write(self, text: str) -> None:
        new = self.index.with_name(self.index.name + ".new")
        new.write_text(text)
        os.replace(new, self.index)

    def issue(self, number: int) -> int:
        serial, self.next = self.next, self.next + 1
        line = f"V\t301231235959Z\t\t{serial:08X}\tunknown\t/CN=soak{number}\n"
        self._write(self.index.read_text() + line)
        return serial

    def revoke(self, serial: int) -> None:
        old = f"V\t301231235959Z\t\t{serial:08X}\t"
        when = time.strftime("%y%m%d%H%M%SZ", time.gmtime())
        text = self.index.read_text()
        assert text.count(old) == 1
        self._write(text.replace(old, f"R\t301231235959Z\t{when},superseded\t{serial:08X}\t"))


async def change_index(
    writer: OpenSSLWriter | RenameWriter,
    load: Load,
    expect: Expectations,
    every: float,
    until: float,
    log: list[str],
) -> None:
    """Alternately issue a certificate (unknown -> good) and revoke it (-> revoked)."""
    number = 0
    issued: int | None = None
    upcoming = writer.upcoming()
    load.changing.append(upcoming)  # asked as unknown before it exists
    while time.monotonic() + every + GRACE + 2 < until:  # the last change gets asked too
        await asyncio.sleep(every)
        # The new status is expected from before the write starts: the responder
        # may see the file before the writer's thread returns here.
        if issued is None:
            expect.begin(upcoming, C.GOOD, time.monotonic())
            issued = await asyncio.to_thread(writer.issue, number)
            assert issued == upcoming, (issued, upcoming)
            expect.end(issued, C.GOOD, time.monotonic())
            upcoming = writer.upcoming()
            load.changing.append(upcoming)
            log.append(f"issued {issued:x}")
        else:
            expect.begin(issued, C.REVOKED, time.monotonic())
            await asyncio.to_thread(writer.revoke, issued)
            expect.end(issued, C.REVOKED, time.monotonic())
            log.append(f"revoked {issued:x}")
            issued = None
        number += 1


def worker_pids(server_pid: int) -> list[int]:
    path = Path(f"/proc/{server_pid}/task/{server_pid}/children")
    return sorted(int(x) for x in path.read_text().split())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        # The process's own memory: not the answer store's pages, which it maps from
        # the page cache (shared by every process, bounded by the store's own limits).
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError(f"no RssAnon for {pid}")


async def sample_memory(
    server_pid: int, until: float, samples: list[tuple[float, dict[int, int]]]
) -> None:
    while time.monotonic() < until:
        sample = {}
        for pid in worker_pids(server_pid):
            try:
                sample[pid] = rss_kib(pid)
            except FileNotFoundError:  # a worker that just died: the verdict notes it
                pass
        samples.append((time.monotonic(), sample))
        await asyncio.sleep(SAMPLE)


# --- the run -------------------------------------------------------------------


def start_server(setup: Setup, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hsm_ocsp", "serve", "--config", str(setup.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 30
    url = f"http://127.0.0.1:{setup.port}/readyz"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited {process.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200 and len(worker_pids(process.pid)) >= 1:
                    return process
        except OSError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise SystemExit(f"server not ready in 30 s: {log.read_text()}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # the supervisor stops its workers
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _metric(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


async def soak(
    setup: Setup, server: subprocess.Popen[bytes], args: argparse.Namespace
) -> dict[str, object]:
    target = fuzz.Target(name="soak", issuer=setup.ca.certificate, signer=setup.signer, statuses={})
    expect = Expectations()
    for serial in setup.good:
        expect.history[serial] = [Period(C.GOOD, 0.0)]
    for serial in setup.revoked:
        expect.history[serial] = [Period(C.REVOKED, 0.0)]
    load = Load(setup, target, expect, args.seed)
    writer = OpenSSLWriter(setup.ca) if args.index_writer == "openssl" else RenameWriter(setup.ca)
    started = time.monotonic()
    seconds = args.minutes * 60
    until = started + seconds
    warmup_end = started + (args.warmup if args.warmup is not None else min(60.0, seconds / 5))
    samples: list[tuple[float, dict[int, int]]] = []
    changes: list[str] = []
    pids_before = worker_pids(server.pid)

    async def progress() -> None:
        while time.monotonic() < until:
            await asyncio.sleep(60)
            rss = samples[-1][1] if samples else {}
            print(
                f"{time.monotonic() - started:4.0f} s: {load.stats.requests} requests, "
                f"{len(load.stats.errors)} errors, {len(changes)} index changes, "
                f"RSS KiB {rss}",
                flush=True,
            )

    tasks = [
        asyncio.create_task(sample_memory(server.pid, until, samples)),
        asyncio.create_task(change_index(writer, load, expect, args.reload_every, until, changes)),
        asyncio.create_task(progress()),
    ]
    await asyncio.gather(
        *(load.worker("127.0.0.1", setup.port, until) for _ in range(args.concurrency))
    )
    for task in tasks[:2]:
        await task
    tasks[2].cancel()
    pids_after = worker_pids(server.pid)
    with urllib.request.urlopen(f"http://127.0.0.1:{setup.port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()

    baseline = [s for t, s in samples if t >= warmup_end][:1]
    last = [s for _, s in samples[-3:]]

    def total(sample: dict[int, int]) -> int:
        return sum(sample.values())

    base_kib = total(baseline[0]) if baseline else 0
    end_kib = max(total(s) for s in last) if last else 0
    growth = (end_kib - base_kib) / base_kib if base_kib else math.inf
    latencies = sorted(load.stats.latencies)
    return {
        "seconds": time.monotonic() - started,
        "requests": load.stats.requests,
        "kinds": dict(load.stats.kinds),
        "errors": load.stats.errors,
        "index_changes": changes,
        "changes_seen": len(expect.seen),
        "changes_made": len(expect.changes),
        "rss_first_kib": total(samples[0][1]) if samples else 0,
        "rss_baseline_kib": base_kib,
        "rss_end_kib": end_kib,
        "rss_max_kib": max(total(s) for _, s in samples) if samples else 0,
        "rss_growth": growth,
        "workers_before": pids_before,
        "workers_after": pids_after,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0,
        "max_ms": 1000 * latencies[-1] if latencies else 0,
        "cache_hits": _metric(metrics, 'hsm_ocsp_cache_lookups_total{result="hit"}'),
        "cache_misses": _metric(metrics, 'hsm_ocsp_cache_lookups_total{result="miss"}'),
        "sign_errors": _metric(metrics, "hsm_ocsp_sign_errors_total"),
        "index_reload_errors": _metric(metrics, "hsm_ocsp_index_reload_errors_total"),
    }


def verdict(result: dict[str, object], max_growth: float) -> list[str]:
    """What failed, one line each; empty when the soak passed."""
    problems = []
    errors = result["errors"]
    assert isinstance(errors, list)
    if errors:
        problems.append(f"{len(errors)} unexpected answers, first: {errors[:5]}")
    if result["workers_before"] != result["workers_after"]:
        problems.append(
            f"workers replaced: {result['workers_before']} -> {result['workers_after']}"
        )
    if result["changes_seen"] != result["changes_made"]:
        problems.append(
            f"only {result['changes_seen']} of {result['changes_made']} index changes were served"
        )
    growth = result["rss_growth"]
    assert isinstance(growth, float)
    if not growth < max_growth:
        problems.append(f"worker RSS grew {growth:.1%} after warm-up (limit {max_growth:.0%})")
    logged = result.get("server_log_errors") or []
    assert isinstance(logged, list)
    if logged:
        problems.append(f"{len(logged)} ERROR lines in the server log, first: {logged[:3]}")
    if result["sign_errors"] or result["index_reload_errors"]:
        problems.append(
            f"sign errors {result['sign_errors']}, index reload errors "
            f"{result['index_reload_errors']}"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before the RSS baseline (default min(60, run/5))",
    )
    parser.add_argument("--reload-every", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-entries", type=int, default=2000)
    parser.add_argument("--max-growth", type=float, default=0.10)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--dir", type=Path, default=None, help="keep the files here")
    parser.add_argument(
        "--index-writer",
        choices=["openssl", "rename"],
        default="openssl",
        help="openssl: openssl ca changes the index (the file is missing for a moment "
        "between its two renames); rename: one atomic rename of index.txt.new",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1:
        parser.error("--minutes and --concurrency must be positive")
    with tempfile.TemporaryDirectory(prefix="hsm-ocsp-soak-") as tmp:
        directory = args.dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        setup = make_setup(directory, args)
        print(f"soak: {args.minutes} min, seed {args.seed}, files in {directory}", flush=True)
        server = start_server(setup, directory / "server.log")
        try:
            result = asyncio.run(soak(setup, server, args))
        finally:
            stop_server(server)
        log_lines = (directory / "server.log").read_text(errors="replace").splitlines()
        result["server_log_errors"] = [
            line for line in log_lines if " ERROR " in line or "Traceback" in line
        ]
    for key, value in result.items():
        if key == "errors":
            assert isinstance(value, list)
            print(f"errors: {len(value)}")
            for line in value[:20]:
                print("  ", line)
        elif key == "server_log_errors":
            assert isinstance(value, list)
            print(f"server_log_errors: {len(value)}")
            for line in value[:20]:
                print("  ", line)
        elif key == "index_changes":
            assert isinstance(value, list)
            print(f"index_changes: {len(value)}")
        elif isinstance(value, float):
            print(f"{key}: {value:.3f}")
        else:
            print(f"{key}: {value}")
    problems = verdict(result, args.max_growth)
    for problem in problems:
        print("FAIL", problem)
    print("soak passed" if not problems else "soak FAILED", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
