"""docker-compose.yml, the Dockerfile's build script and the systemd unit, checked here.

No Docker engine runs on the test machine, so the image's build steps
(deploy/docker/build-image.sh) run on the host into a temporary prefix, and the
compose file's one-shot set-up (deploy/docker/init.sh) and command run from there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsm_ocsp.config.file import load_config
from hsm_ocsp.config.pin import read_pin
from hsm_ocsp.config.section import parse_duration

from .support import ROOT
from .support.ca import CASetup, write_config
from .support.server import RunningServer, free_port

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
CONTAINER_CONFIG = ROOT / "deploy" / "docker" / "config.toml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
UNIT = ROOT / "deploy" / "hsm-ocsp.service"
DATA_DIR = "/var/lib/hsm-ocsp/data"


def need(binary: str, package: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        pytest.fail(f"{binary} is not installed: apt-get install {package}")
    return found


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume or a ./path) of each short-form mount."""
    found = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        found[target] = source
    return found


def image_prefix() -> str:
    """The PREFIX the Dockerfile gives build-image.sh."""
    found = re.search(r"build-image\.sh\s+/src\s+(\S+)", DOCKERFILE.read_text())
    assert found, "the Dockerfile no longer runs deploy/docker/build-image.sh /src PREFIX"
    return found.group(1)


def test_compose_services_files_ports_and_volumes_line_up() -> None:
    data = compose()
    services = data["services"]
    assert set(services) == {"softhsm-init", "responder", "prometheus"}
    init, responder, prometheus = (services[n] for n in ("softhsm-init", "responder", "prometheus"))
    declared = set(data["volumes"])

    # Every ./file a service mounts exists; every named volume is declared.
    for name, service in services.items():
        for target, source in mounts(service).items():
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
            assert target.startswith("/"), target

    # The image is built once, from this Dockerfile, and both token users share it.
    assert init["build"] == "." and DOCKERFILE.is_file()
    assert responder["image"] == init["image"]
    for source in re.findall(r"^COPY\s+(.+)\s+\S+$", DOCKERFILE.read_text(), re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    assert responder["depends_on"]["softhsm-init"]["condition"] == (
        "service_completed_successfully"
    )
    assert prometheus["depends_on"]["responder"]["condition"] == "service_healthy"

    # Token and CA data: the same volumes at the same places for init and responder.
    init_mounts, responder_mounts = mounts(init), mounts(responder)
    for target in ("/var/lib/hsm-ocsp/token", DATA_DIR, "/etc/hsm-ocsp/config.toml"):
        assert init_mounts[target] == responder_mounts[target], target
    assert responder_mounts["/etc/hsm-ocsp/config.toml"] == "./deploy/docker/config.toml"
    assert responder["command"][-1] == "/etc/hsm-ocsp/config.toml"

    # The config the responder reads agrees with the environment and the volumes.
    config = tomllib.loads(CONTAINER_CONFIG.read_text())
    env, init_env = responder["environment"], init["environment"]
    assert config["token"]["pin_env"] in env and config["token"]["pin_env"] in init_env
    assert env["SOFTHSM2_CONF"].startswith("/var/lib/hsm-ocsp/token/")
    assert init_env["SOFTHSM2_CONF"] == env["SOFTHSM2_CONF"]
    for ca in config["ca"]:
        assert init_env["HSM_OCSP_KEY"] == ca["key"]
        assert f"token={init_env['TOKEN_LABEL']};" in ca["key"]
        for key in ("certificate", "index", "responder_certificate"):
            assert ca[key].startswith(DATA_DIR + "/"), key
    assert init_env["HSM_OCSP_DATA"] == DATA_DIR

    # One port all the way: config listen, published port, health check, scrape target.
    host, _, port = config["server"]["listen"].rpartition(":")
    assert host == "0.0.0.0", "inside a container the responder must listen on all addresses"
    published = [p.rsplit(":", 1) for p in responder["ports"]]
    assert [p[1] for p in published] == [port]
    assert all(p[0].startswith("127.0.0.1:") for p in published)
    health = " ".join(responder["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in health
    scrape = yaml.safe_load(PROMETHEUS.read_text())
    targets = [
        t for job in scrape["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert targets == [f"responder:{port}"]
    prometheus_mounts = mounts(prometheus)
    config_flag = next(c for c in prometheus["command"] if c.startswith("--config.file="))
    assert prometheus_mounts[config_flag.split("=", 1)[1]] == "./deploy/prometheus/prometheus.yml"
    for rule_file in scrape["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in prometheus_mounts


def test_prometheus_config_passes_promtool() -> None:
    promtool = need("promtool", "prometheus")
    done = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "rules found" in done.stdout


def test_alert_rules_pass_promtool_and_their_unit_tests(tmp_path: Path) -> None:
    """Each alert fires on the series that should fire it and not on a healthy one
    (deploy/prometheus/hsm-ocsp-alerts.test.yml), and a broken expectation fails."""
    promtool = need("promtool", "prometheus")
    rules = PROMETHEUS.parent / "hsm-ocsp-alerts.yml"
    unit = PROMETHEUS.parent / "hsm-ocsp-alerts.test.yml"
    for args in (["check", "rules", str(rules)], ["test", "rules", str(unit)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    names = {
        r["alert"]
        for g in yaml.safe_load(rules.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    for metric in (
        "token_up",
        "withdrawals_pending",
        "store_soonest_next_update",
        "production_backlog",
        "replication_lag",
        "index_stale",
        "tryLater",
        "http_server_errors",
        "responder_certificate_expiry",
    ):
        assert metric in rules.read_text(), metric
    assert len(names) >= 12
    (tmp_path / "hsm-ocsp-alerts.yml").write_text(rules.read_text())
    broken = unit.read_text().replace("values: '1 1 0 0 0 0'", "values: '1 1 1 1 1 1'")
    (tmp_path / "unit.yml").write_text(broken)
    done = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "unit.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0


def run_script(
    args: list[str | Path], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def serve_installed(
    command: Path, config: Path, port: int, env: dict[str, str], tmp_path: Path
) -> RunningServer:
    """The responder's compose command, run from the built venv until /readyz answers."""
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(command), "serve", "--config", str(config)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(process, port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{server.url}readyz", timeout=1) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise AssertionError(f"serve not ready in 30 s: {log.read_text()}")


@pytest.mark.slow
def test_image_build_init_and_serve_without_docker(tmp_path: Path) -> None:
    prefix = tmp_path / "opt"
    build = run_script(
        [ROOT / "deploy" / "docker" / "build-image.sh", ROOT, prefix],
        {**os.environ, "HSM_OCSP_REUSE_DEPS": "1", "PYTHON": sys.executable},
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "hsm-ocsp " in build.stdout  # --version ran from the venv
    venv_python = prefix / "venv" / "bin" / "python"
    where = subprocess.run(
        [venv_python, "-c", "import hsm_ocsp; print(hsm_ocsp.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(prefix)), f"the venv imports hsm_ocsp from {where}"
    assert not (ROOT / "build").exists(), "the build wrote into the source tree"

    # The paths the compose file and Dockerfile name exist in the built prefix.
    services = compose()["services"]
    image = Path(image_prefix())
    for path in (
        services["softhsm-init"]["entrypoint"][0],
        services["responder"]["healthcheck"]["test"][1],
    ):
        built = prefix / Path(path).relative_to(image)
        assert built.is_file() and os.access(built, os.X_OK), path

    # softhsm-init, as compose runs it, on a fresh token and data directory.
    data = tmp_path / "data"
    port = free_port()
    config = tmp_path / "config.toml"
    text = CONTAINER_CONFIG.read_text()
    assert text.count('listen = "0.0.0.0:8080"') == 1
    config.write_text(
        text.replace(DATA_DIR, str(data)).replace('"0.0.0.0:8080"', f'"127.0.0.1:{port}"')
    )
    init_env = services["softhsm-init"]["environment"]
    env = {
        **os.environ,
        "PATH": f"{prefix / 'venv' / 'bin'}:{os.environ['PATH']}",
        "SOFTHSM2_CONF": str(tmp_path / "token" / "softhsm2.conf"),
        "TOKEN_LABEL": init_env["TOKEN_LABEL"],
        "HSM_OCSP_PIN": "20406080",
        "HSM_OCSP_SO_PIN": "10305070",
        "HSM_OCSP_DATA": str(data),
        "HSM_OCSP_CONFIG": str(config),
        "HSM_OCSP_KEY": init_env["HSM_OCSP_KEY"],
        "HSM_OCSP_ALGORITHM": init_env["HSM_OCSP_ALGORITHM"],
    }
    init = prefix / Path(services["softhsm-init"]["entrypoint"][0]).relative_to(image)

    # Without CA files it makes token, key and CSR, then refuses to let the responder start.
    first = run_script([init], {**env, "HSM_OCSP_DEMO_CA": "0"})
    assert first.returncode == 3, first.stdout + first.stderr
    assert "responder.csr" in first.stderr and "ocsp.pem" in first.stderr
    key_text = (data / "responder-key.txt").read_text()
    assert "BEGIN PUBLIC KEY" in key_text and "pkcs11:" in key_text
    assert b"BEGIN CERTIFICATE REQUEST" in (data / "responder.csr").read_bytes()

    second = run_script([init], {**env, "HSM_OCSP_DEMO_CA": "1"})
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 error(s)" in second.stdout  # hsm-ocsp check passed
    third = run_script([init], {**env, "HSM_OCSP_DEMO_CA": "1"})
    assert third.returncode == 0, third.stdout + third.stderr
    assert "exists" in third.stdout
    assert (data / "responder-key.txt").read_text() == key_text, "a second run made a new key"

    # The responder command of the compose file, from the built venv.
    server = serve_installed(prefix / "venv" / "bin" / "hsm-ocsp", config, port, env, tmp_path)
    try:
        for name, status in (("good", "good"), ("revoked", "revoked")):
            out = subprocess.run(
                [
                    "openssl",
                    "ocsp",
                    "-issuer",
                    data / "ca.pem",
                    "-cert",
                    data / f"{name}.pem",
                    "-url",
                    server.url,
                    "-CAfile",
                    data / "ca.pem",
                ],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            assert "Response verify OK" in out.stderr + out.stdout
            assert f": {status}" in out.stdout
    finally:
        server.stop()


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "systemd")
    # verify checks that ExecStart exists: point it at the hsm-ocsp installed here.
    installed = str(Path(sys.executable).parent / "hsm-ocsp")  # this venv's, whatever PATH says
    assert Path(installed).is_file(), "hsm-ocsp is not installed in this environment"
    unit = tmp_path / "hsm-ocsp.service"
    text = UNIT.read_text()
    assert text.count("/opt/hsm-ocsp/venv/bin/hsm-ocsp ") == 1
    unit.write_text(text.replace("/opt/hsm-ocsp/venv/bin/hsm-ocsp ", f"{installed} "))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    # Unknown or misspelt keys only warn: the output must say nothing of this unit, not
    # just rc 0. (It may warn of the machine's other units: Debian's freeradius.service,
    # installed for the EAP-TLS tests, uses a deprecated key.)
    ours = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and not line.startswith(("/lib/systemd/", "/usr/lib/systemd/"))
    ]
    assert done.returncode == 0 and not ours, done.stderr


def test_systemd_unit_hardening_reload_and_pin_credential() -> None:
    settings = unit_settings()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "User": "hsm-ocsp",
        "CapabilityBoundingSet": "",
        "RestartPreventExitStatus": "2",
    }.items():
        assert settings.get(key) == [value], key
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["ExecStart"][0].endswith(" serve --config /etc/hsm-ocsp/config.toml")

    # The example config reads the PIN where LoadCredential= puts it.
    (credential,) = settings["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source.startswith("/etc/hsm-ocsp/")
    example = tomllib.loads((ROOT / "deploy" / "hsm-ocsp.example.toml").read_text())
    assert example["token"]["pin_file"] == f"/run/credentials/{UNIT.name}/{name}"


def test_absolute_pin_file_is_read_where_load_credential_puts_it(
    tmp_path: Path, ca_setup: CASetup
) -> None:
    """pin_file is relative to the config unless absolute: the credentials path works."""
    credentials = tmp_path / "run" / "credentials" / UNIT.name
    credentials.mkdir(parents=True)
    (credentials / "pin").write_text("5511\n")
    (credentials / "pin").chmod(0o400)
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    config = write_config(config_dir / "config.toml", {"root": ca_setup})
    text = config.read_text().replace(
        "[token]\n", f'[token]\npin_file = "{credentials / "pin"}"\n', 1
    )
    config.write_text(text)
    loaded = load_config(config)
    assert loaded.token.pin_file == credentials / "pin"
    assert read_pin(loaded.token, config) == "5511"


def test_image_user_and_group_are_numeric_10001() -> None:
    """runAsNonRoot needs a numeric USER; volumes need a fixed gid."""
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert users == ["10001:10001"]
    script = (ROOT / "deploy" / "docker" / "build-image.sh").read_text()
    assert re.search(r"groupadd --system --gid 10001 ", script)
    assert re.search(r"useradd --system --uid 10001 --gid 10001 ", script)
    assert "--user-group" not in script  # that gives the group a dynamic id
    assert "chown 10001:10001 " in script


def test_compose_stop_grace_is_above_the_drain_bound() -> None:
    responder = compose()["services"]["responder"]
    grace = parse_duration(responder["stop_grace_period"]).total_seconds()
    drain = load_config_text_default("drain_timeout")
    assert grace >= drain + 5, (grace, drain)


def load_config_text_default(key: str) -> float:
    """A [server] duration of the container's config, or its default."""
    from hsm_ocsp.config.model import ServerConfig

    value = tomllib.loads(CONTAINER_CONFIG.read_text()).get("server", {}).get(key)
    if value is None:
        return float(getattr(ServerConfig(), key))
    return parse_duration(value).total_seconds()


@pytest.mark.slow
def test_image_build_installs_the_pinned_versions_without_pip_or_setuptools(
    tmp_path: Path,
) -> None:
    """The image's venv is made from constraints.txt, as CI's is."""
    prefix = tmp_path / "opt"
    build = run_script(
        [ROOT / "deploy" / "docker" / "build-image.sh", ROOT, prefix], dict(os.environ), 600
    )
    assert build.returncode == 0, build.stdout + build.stderr
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    python = prefix / "venv" / "bin" / "python"
    code = (
        "import importlib.metadata as m, importlib.util as u\n"
        "for name in ('aiohttp', 'cryptography', 'python-pkcs11', 'asn1crypto'):\n"
        "    print(name, m.version(name))\n"
        "print('pip', u.find_spec('pip') is not None)\n"
        "print('setuptools', u.find_spec('setuptools') is not None)\n"
    )
    found = dict(
        line.split(" ", 1)
        for line in subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
        ).stdout.splitlines()
    )
    assert found.pop("pip") == "False" and found.pop("setuptools") == "False"
    for name, version in found.items():
        assert pins[name] == version, (name, version)
