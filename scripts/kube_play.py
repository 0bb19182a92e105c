"""Play deploy/kubernetes/ with ``podman kube play`` and ask the fleet what a client gets.

Run by ``make image-test`` (scripts/image-test.sh) after the image is built; needs root
and podman. What it does, in the order a cluster would:

1. the claims (podman volumes), the PIN Secret's files (see ``pin_from``), Redis;
2. the set-up Job's pod (podman 4.3 plays no Job: its pod template, with the demo CA
   turned on) until it exits 0: token, responder key, CSR, demo CA, ``hsm-ocsp check``;
3. the ConfigMap of public certificates the edges need, from the data claim, as an
   operator makes it with ``kubectl create configmap``;
4. the signing Deployment and the edge Deployment. podman has no Services: each pod
   gets the Service name ``hsm-ocsp-redis`` as a host alias for the Redis pod's address,
   which is what the Service gives it in a cluster. Three more changes work around
   podman 4.3, each explained where it is made: no port published on this machine
   (``unpublished``), each replica its own emptyDirs (``one_per_replica``), the PIN
   files from a host directory (``pin_from``). Nothing else in the manifests changes;
5. through the edge: ``openssl ocsp`` verifies a good and a revoked answer, the edge has
   signed nothing, a revocation made in the CA's index reaches it;
6. the memory and CPU each pod used, idle and under a burst of requests (the figures the
   manifests' resource requests come from), and a stop within the grace period: exit 0.

Services, the PodDisruptionBudget and the NetworkPolicies are not played (podman has no
such objects); the suite validates them against the Kubernetes API schemas.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
DATA = "/var/lib/hsm-ocsp/data"
REDIS_IMAGE = "docker.io/library/redis:7.2"


def podman(*args: str, check: bool = True, timeout: float = 300) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise SystemExit(f"kube-play: podman {' '.join(args[:3])}: {done.stderr.strip()[-800:]}")
    return done.stdout


def documents() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] != "Kustomization":
                found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def write(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def redis_image(work: Path) -> None:
    """The manifests' Redis image; with no registry here, Debian's redis-server in an
    image of that name (the same server the suite's fleet tests run)."""
    if subprocess.run(["podman", "image", "exists", REDIS_IMAGE], check=False).returncode == 0:
        return
    pulled = subprocess.run(
        ["timeout", "60", "podman", "pull", "-q", REDIS_IMAGE], capture_output=True, check=False
    )
    if pulled.returncode == 0:
        return
    print(f"kube-play: no registry; {REDIS_IMAGE} built from Debian's redis-server")
    (work / "Containerfile.redis").write_text(
        "FROM docker.io/library/debian:bookworm-slim\n"
        "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        "--no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*\n"
    )
    podman(
        "build", "-q", "--pull=never", "--network=host", "-t", REDIS_IMAGE,
        "-f", str(work / "Containerfile.redis"), str(work), timeout=600,
    )  # fmt: skip


def pod_ip(pod: str) -> str:
    infra = json.loads(podman("pod", "inspect", pod))
    infra_id = (infra[0] if isinstance(infra, list) else infra)["InfraContainerID"]
    networks = json.loads(podman("inspect", infra_id))[0]["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["IPAddress"])


def pods_of(name: str) -> list[str]:
    listed = json.loads(podman("pod", "ps", "--format", "json"))
    return sorted(p["Name"] for p in listed if p["Name"].startswith(name + "-"))


def pin_from(spec: dict[str, Any], secret_dir: Path) -> None:
    """The Secret volume ``pin`` as a host directory of the same files, mode 0440.

    podman 4.3 mounts a Secret volume's files 0644 root:root whatever ``defaultMode``
    and ``fsGroup`` say, and the PIN check refuses a PIN file others can read (as it
    should). A cluster applies both; here the same files come from a host directory.
    """
    for volume in spec["volumes"]:
        if "secret" in volume:
            volume.pop("secret")
            volume["hostPath"] = {"path": str(secret_dir), "type": "Directory"}


def unpublished(spec: dict[str, Any]) -> None:
    """No container port published on this machine; named probe ports as numbers.

    podman 4.3 publishes every ``containerPort`` on the host, on all addresses and at the
    same number (two edge replicas collide on 8080); a cluster publishes none. The pods
    are reached at their own addresses on podman's bridge, as in a cluster.
    """
    for container in spec["containers"]:
        named = {p["name"]: p["containerPort"] for p in container.pop("ports", ())}
        for probe in ("readinessProbe", "livenessProbe"):
            for kind in ("httpGet", "tcpSocket"):
                action = container.get(probe, {}).get(kind)
                if action and action["port"] in named:
                    action["port"] = named[action["port"]]


def own_empty_dirs(spec: dict[str, Any], owner: str) -> None:
    """Each emptyDir volume renamed after its pod, so that no two pods share it.

    podman 4.3 makes an emptyDir a named volume called after the volume (``state``,
    ``tmp``): every pod with an emptyDir of that name, and every replica of a
    Deployment, would share one directory. The edges' state_dir would then be one
    store for two instances, which serve refuses. A cluster gives each pod its own.
    """
    renamed = {}
    for volume in spec["volumes"]:
        if "emptyDir" in volume:
            renamed[volume["name"]] = volume["name"] = f"{owner}-{volume['name']}"
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", ()):
            mount["name"] = renamed.get(mount["name"], mount["name"])


def one_per_replica(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """A Deployment of N replicas as N Deployments of one, each with its own emptyDirs."""
    copies = []
    for number in range(deployment["spec"].get("replicas", 1)):
        one = copy.deepcopy(deployment)
        one["metadata"]["name"] = f"{deployment['metadata']['name']}-{number}"
        one["spec"]["replicas"] = 1
        spec = one["spec"]["template"]["spec"]
        own_empty_dirs(spec, one["metadata"]["name"])
        unpublished(spec)
        copies.append(one)
    return copies


def until(what: str, test: Any, seconds: float) -> float:
    started = time.monotonic()
    while not test():
        if time.monotonic() - started > seconds:
            raise SystemExit(f"kube-play: FAILED: {what} within {seconds:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except OSError:
        return 0, b""


def metric(ip: str, name: str) -> float:
    _, body = get(f"http://{ip}:9100/metrics")
    lines = body.decode().splitlines()
    return sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith(name))


def ocsp_status(data: Path, cert: str, url: str) -> str:
    done = subprocess.run(
        [
            "openssl", "ocsp", "-issuer", str(data / "ca.pem"), "-cert", str(data / cert),
            "-CAfile", str(data / "ca.pem"), "-no_nonce", "-url", url,
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    if "Response verify OK" not in out:
        return "unverified: " + out.strip().replace("\n", " | ")[-300:]
    return out.split(f"{cert}: ", 1)[1].split()[0] if f"{cert}: " in out else out


def stats() -> dict[str, tuple[float, float]]:
    """container name -> (memory MiB, CPU seconds used so far)."""
    out = json.loads(podman("stats", "--no-stream", "--no-reset", "--format", "json"))
    return {r["name"]: (_bytes(r["mem_usage"]) / 2**20, _seconds(r["cpu_time"])) for r in out}


def _bytes(text: str) -> float:
    """'495.6kB / 25.32GB' -> 495600.0 (podman prints decimal units)."""
    used = text.split("/")[0].strip()
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0)):
        if used.endswith(unit):
            return float(used[: -len(unit)]) * factor
    return 0.0


def _seconds(text: str) -> float:
    """A Go duration ('1m2.5s', '28.9ms') in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(h|ms|m|s|us|µs|ns)", text))


def burst(url: str, body: bytes, count: int) -> float:
    def one(_: int) -> int:
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/ocsp-request"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return int(response.status)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(count)))
    assert codes.count(200) == count, codes
    return count / (time.monotonic() - started)


class Play:
    """The manifests played in ``work``, step by step, and taken down by ``close``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.docs = documents()
        self.played: list[Path] = []
        self.secret_dir = work / "pin"
        # (podman 4.3 reads one ConfigMap from each --configmap file.)
        self.configmaps = [
            str(write(work / f"{d['metadata']['name']}.yaml", [d]))
            for d in self.docs.values()
            if d["kind"] == "ConfigMap"
        ]

    def play(self, name: str, docs: list[dict[str, Any]]) -> None:
        self.played.append(write(self.work / name, docs))
        podman("kube", "play", "--configmap", ",".join(self.configmaps), str(self.played[-1]))

    def base(self) -> str:
        """Claims, the PIN files, Redis; Redis's address."""
        claims = [d for d in self.docs.values() if d["kind"] == "PersistentVolumeClaim"]
        self.play("claims.yaml", claims)
        self.secret_dir.mkdir()
        for key in ("pin", "so-pin"):
            (self.secret_dir / key).write_text(secrets.token_hex(8))
            os.chown(self.secret_dir / key, 10001, 10001)
            (self.secret_dir / key).chmod(0o440)
        os.chown(self.secret_dir, 10001, 10001)
        self.secret_dir.chmod(0o550)
        self.play("redis.yaml", one_per_replica(self.docs["Deployment/hsm-ocsp-redis"]))
        (redis_pod,) = pods_of("hsm-ocsp-redis")
        print(f"kube-play: redis in {redis_pod} at {pod_ip(redis_pod)}")
        return pod_ip(redis_pod)

    def setup(self) -> Path:
        """The set-up Job's pod, demo CA on, to its end; the data claim's directory."""
        template = copy.deepcopy(self.docs["Job/hsm-ocsp-setup"]["spec"]["template"])
        for env in template["spec"]["containers"][0]["env"]:
            if env["name"] == "HSM_OCSP_DEMO_CA":
                env["value"] = "1"
        pin_from(template["spec"], self.secret_dir)
        own_empty_dirs(template["spec"], "hsm-ocsp-setup")
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "hsm-ocsp-setup", "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        }  # fmt: skip
        self.play("setup.yaml", [pod])
        container = "hsm-ocsp-setup-setup"
        code = podman("wait", container, timeout=180).strip()
        logs = subprocess.run(
            ["podman", "logs", container], capture_output=True, text=True, check=False
        )
        print("kube-play: set-up job: " + (logs.stdout + logs.stderr).strip().replace("\n", " | "))
        if code != "0":
            raise SystemExit(f"kube-play: FAILED: the set-up job exited {code}")
        mountpoint = podman("volume", "inspect", "hsm-ocsp-data", "--format", "{{.Mountpoint}}")
        return Path(mountpoint.strip())

    def hosts(self, redis_ip: str, data: Path) -> tuple[str, list[str]]:
        """The signing host and the edges, ready; their addresses."""
        certs = {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hsm-ocsp-certs"},
            "data": {name: (data / name).read_text() for name in ("ca.pem", "ocsp.pem")},
        }  # fmt: skip
        self.configmaps.append(str(write(self.work / "certs.yaml", [certs])))
        hosts = []
        for name in ("Deployment/hsm-ocsp-signing", "Deployment/hsm-ocsp-edge"):
            for deployment in one_per_replica(self.docs[name]):
                spec = deployment["spec"]["template"]["spec"]
                spec["hostAliases"] = [{"ip": redis_ip, "hostnames": ["hsm-ocsp-redis"]}]
                pin_from(spec, self.secret_dir)
                hosts.append(deployment)
        self.play("hosts.yaml", hosts)
        (signing,) = pods_of("hsm-ocsp-signing")
        signing_ip, edge_ips = pod_ip(signing), [pod_ip(e) for e in pods_of("hsm-ocsp-edge")]
        print(f"kube-play: signing host at {signing_ip}; edges at {edge_ips}")
        took = until("the signing host ready", lambda: ready(signing_ip), 120)
        print(f"kube-play: signing host ready after {took:.1f} s")
        took = until("the edges ready", lambda: all(ready(ip) for ip in edge_ips), 120)
        print(f"kube-play: {len(edge_ips)} edges ready after {took:.1f} s")
        return signing_ip, edge_ips

    def close(self) -> None:
        for path in reversed(self.played):
            podman("kube", "down", str(path), check=False)
        for pod in pods_of("hsm-ocsp"):  # what a play that failed half-way left
            podman("pod", "rm", "-f", "-t", "0", pod, check=False)
        for volume in podman("volume", "ls", "--format", "{{.Name}}", check=False).split():
            if volume.startswith("hsm-ocsp-"):  # claims, emptyDirs, ConfigMaps
                podman("volume", "rm", "-f", volume, check=False)
        subprocess.run(["rm", "-rf", str(self.work)], check=False)


def ready(ip: str) -> bool:
    return get(f"http://{ip}:8080/readyz")[0] == 200


def check_answers(data: Path, signing_ip: str, edge_ips: list[str]) -> None:
    """Good and revoked through every edge, signed by the signing host alone; then a
    revocation in the CA's index, until every edge answers it."""
    for ip in edge_ips:
        for cert, want in (("good.pem", "good"), ("revoked.pem", "revoked")):
            got = ocsp_status(data, cert, f"http://{ip}:8080/")
            print(f"kube-play: edge {ip} answers {cert}: {got}")
            if got != want:
                raise SystemExit(f"kube-play: FAILED: {cert} answered {got}, not {want}")
    signed_edges = sum(metric(ip, "hsm_ocsp_answers_signed_total") for ip in edge_ips)
    signed_host = metric(signing_ip, "hsm_ocsp_answers_signed_total")
    print(f"kube-play: signatures made: signing host {signed_host:.0f}, edges {signed_edges:.0f}")
    if signed_edges != 0 or signed_host == 0:
        raise SystemExit("kube-play: FAILED: an edge signed, or the signing host did not")
    revoked_at = time.monotonic()
    podman(
        "run", "--rm", "--network=none", "-v", f"hsm-ocsp-data:{DATA}", "--entrypoint",
        "openssl", "hsm-ocsp:latest", "ca", "-config", f"{DATA}/demo-ca/openssl.cnf",
        "-revoke", f"{DATA}/good.pem", "-crl_reason", "keyCompromise",
    )  # fmt: skip

    def everywhere() -> bool:
        urls = [f"http://{ip}:8080/" for ip in edge_ips]
        return all(ocsp_status(data, "good.pem", url) == "revoked" for url in urls)

    until("the revocation reaching every edge", everywhere, 60)
    took = time.monotonic() - revoked_at
    print(f"kube-play: revocation in the CA's index answered by every edge after {took:.1f} s")


def measure(data: Path, edge_ip: str, idle: dict[str, tuple[float, float]]) -> None:
    """Memory idle and after 3,000 requests through one edge, and CPU per 1,000."""
    der = subprocess.run(
        [
            "openssl", "ocsp", "-issuer", str(data / "ca.pem"), "-cert",
            str(data / "revoked.pem"), "-no_nonce", "-reqout", "/dev/stdout",
        ],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    before = stats()
    rate = burst(f"http://{edge_ip}:8080/", der, 3000)
    after = stats()
    print(f"kube-play: 3000 POSTs through one edge at {rate:.0f}/s")
    print("kube-play: container                          idle MiB  loaded MiB  CPU s/1000 req")
    for name in sorted(after):
        if name.endswith("-infra") or name not in before:
            continue
        cpu = (after[name][1] - before[name][1]) / 3
        mib = idle.get(name, (0.0, 0.0))[0]
        print(f"kube-play: {name:34s} {mib:8.1f}  {after[name][0]:10.1f}  {cpu:14.2f}")


def stop(edge: str) -> None:
    """An edge stopped as the kubelet stops it ends in exit 0 within the grace period."""
    container = f"{edge}-hsm-ocsp"
    started = time.monotonic()
    podman("stop", "-t", "20", container, timeout=60)
    code = podman("inspect", container, "--format", "{{.State.ExitCode}}").strip()
    print(f"kube-play: edge stopped in {time.monotonic() - started:.1f} s, exit code {code}")
    if code != "0":
        raise SystemExit(f"kube-play: FAILED: the edge exited {code} on stop")


def main() -> None:
    play = Play(Path(tempfile.mkdtemp(prefix="hsm-ocsp-kube-play.")))
    try:
        redis_image(play.work)
        redis_ip = play.base()
        data = play.setup()
        signing_ip, edge_ips = play.hosts(redis_ip, data)
        idle = stats()
        check_answers(data, signing_ip, edge_ips)
        measure(data, edge_ips[0], idle)
        stop(pods_of("hsm-ocsp-edge")[0])
        print("kube-play: passed")
    finally:
        play.close()


if __name__ == "__main__":
    main()
