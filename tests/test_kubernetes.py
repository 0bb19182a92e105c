"""deploy/kubernetes/: the schemas, and that the parts of each pod line up.

The manifests run for real in ``make image-test`` (scripts/kube_play.py plays them with
podman: set-up Job, Redis, a signing host, two edges). Here, on every run: each manifest
against the Kubernetes API schemas, and what no schema sees (a config path outside its
mount, a state_dir on a read-only volume, a Service selecting the wrong pods, a
NetworkPolicy letting an edge out).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsm_ocsp.config.section import parse_duration

from .support import ROOT

K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"
Doc = dict[str, Any]


def documents() -> dict[str, Doc]:
    """kind/name -> manifest, for every document in deploy/kubernetes/."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc.get('metadata', {}).get('name', path.name)}"] = doc
    return found


def pod_of(doc: Doc) -> Doc:
    return dict(doc["spec"]["template"]["spec"])


def config_of(docs: dict[str, Doc], pod: Doc) -> dict[str, Any]:
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    text = docs[f"ConfigMap/{volume['configMap']['name']}"]["data"]["config.toml"]
    return tomllib.loads(text)


def mounts_of(container: Doc) -> dict[str, Doc]:
    return {m["name"]: m for m in container["volumeMounts"]}


def under(path: str, mount: Doc) -> bool:
    return path == mount["mountPath"] or path.startswith(mount["mountPath"] + "/")


def test_kubernetes_manifests_pass_the_api_schemas() -> None:
    """Every manifest against Kubernetes 1.30's schemas, strictly (no unknown field); a
    misspelt field is caught, so the check bites."""
    import kubernetes_validate

    docs = documents()
    kinds = {key.split("/")[0] for key in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Job"} <= kinds
    assert "NetworkPolicy" in kinds
    for doc in docs.values():
        if doc["kind"] != "Kustomization":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = yaml.safe_load((K8S / "signing.yaml").read_text())
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    listed = set(docs["Kustomization/kustomization.yaml"]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("role", ["signing", "edge"])
def test_each_host_runs_as_shipped(role: str) -> None:
    """What crashed on a cluster before (state_dir on the read-only data mount) and what
    a rolling update needs, for both kinds of host."""
    docs = documents()
    deployment = docs[f"Deployment/hsm-ocsp-{role}"]
    pod = pod_of(deployment)
    (container,) = pod["containers"]
    config = config_of(docs, pod)
    mounts = mounts_of(container)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    security = pod["securityContext"]
    assert security["runAsNonRoot"] and (security["runAsUser"], security["runAsGroup"]) == (
        10001,
        10001,
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # What serve writes (state_dir, and /tmp) is on a writable mount.
    writable = [m for m in mounts.values() if not m.get("readOnly")]
    for path in (config["server"]["state_dir"], "/tmp/x"):
        assert any(under(path, m) for m in writable), path
    # Every file the config names is on a mount.
    for ca in config["ca"]:
        for key in ("certificate", "index", "responder_certificate"):
            if key in ca:
                assert any(under(ca[key], m) for m in mounts.values()), (key, ca[key])
    # A terminating pod leaves the endpoints (preStop) before it stops listening, and
    # the drain fits in the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = parse_duration(config["server"]["drain_timeout"]).total_seconds()
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + 5
    metrics_port = int(config["server"]["metrics_listen"].rsplit(":", 1)[1])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == metrics_port
    requests = container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests)
    assert "redis" in config["store"]
    if role == "signing":
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two on a state_dir
        assert "persistentVolumeClaim" in volumes[_volume_at(mounts, config["server"]["state_dir"])]
        pin = Path(config["token"]["pin_file"])
        assert str(pin.parent) == mounts["pin"]["mountPath"] and "secret" in volumes["pin"]
        assert not volumes["pin"]["secret"]["defaultMode"] & 0o004  # not world-readable
    else:
        assert "token" not in config and "pin" not in volumes  # no token, no PIN
        assert all("index" not in ca and "key" not in ca for ca in config["ca"])
        assert "emptyDir" in volumes[_volume_at(mounts, config["server"]["state_dir"])]
        assert deployment["spec"]["replicas"] >= 2


def _volume_at(mounts: dict[str, Doc], path: str) -> str:
    (name,) = [name for name, m in mounts.items() if under(path, m)]
    return name


def test_clients_reach_the_edges_and_a_drain_keeps_one() -> None:
    docs = documents()
    edge_labels = docs["Deployment/hsm-ocsp-edge"]["spec"]["selector"]["matchLabels"]
    signing_labels = docs["Deployment/hsm-ocsp-signing"]["spec"]["selector"]["matchLabels"]
    service = docs["Service/hsm-ocsp"]["spec"]["selector"]
    assert service.items() <= edge_labels.items()
    assert not service.items() <= signing_labels.items()  # the Service is the edges only
    pdb = docs["PodDisruptionBudget/hsm-ocsp-edge"]["spec"]
    assert pdb["selector"]["matchLabels"] == edge_labels and pdb["minAvailable"] >= 1
    redis = docs["Service/hsm-ocsp-redis"]
    for role in ("signing", "edge"):
        url = config_of(docs, pod_of(docs[f"Deployment/hsm-ocsp-{role}"]))["store"]["redis"]
        assert url.startswith(
            f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}"
        )


def _egress_ports(policy: Doc) -> set[int]:
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", ())}


def test_network_policies_let_edges_reach_only_redis() -> None:
    docs = documents()
    redis_port = docs["Service/hsm-ocsp-redis"]["spec"]["ports"][0]["port"]
    redis_labels = docs["Deployment/hsm-ocsp-redis"]["spec"]["selector"]["matchLabels"]
    edge = docs["NetworkPolicy/hsm-ocsp-edge"]
    assert (
        edge["spec"]["podSelector"]["matchLabels"]
        == (docs["Deployment/hsm-ocsp-edge"]["spec"]["selector"]["matchLabels"])
    )
    assert set(edge["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert _egress_ports(edge) == {redis_port, 53}
    for rule in edge["spec"]["egress"]:
        if any(p["port"] == redis_port for p in rule["ports"]):
            assert [t["podSelector"]["matchLabels"] for t in rule["to"]] == [redis_labels]
        assert all("ipBlock" not in t for t in rule["to"])  # nowhere else
    signing = docs["NetworkPolicy/hsm-ocsp-signing"]
    assert redis_port in _egress_ports(signing)
    assert any("ipBlock" in t for rule in signing["spec"]["egress"] for t in rule["to"])  # HSM
    setup = docs["NetworkPolicy/hsm-ocsp-setup"]
    assert setup["spec"]["egress"] == [] and "Egress" in setup["spec"]["policyTypes"]
    redis = docs["NetworkPolicy/hsm-ocsp-redis"]
    assert [p["port"] for r in redis["spec"]["ingress"] for p in r["ports"]] == [redis_port]


def test_setup_job_shares_the_signing_hosts_token_data_and_pin() -> None:
    docs = documents()
    job = pod_of(docs["Job/hsm-ocsp-setup"])
    signing = pod_of(docs["Deployment/hsm-ocsp-signing"])
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in job["volumes"]
        if "persistentVolumeClaim" in v
    }
    signing_claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in signing["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {k: signing_claims[k] for k in ("token", "data")}
    (container,) = job["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HSM_OCSP_DEMO_CA"] == "0"  # the demo CA only when asked
    assert not any("PIN" in name for name in env)  # the PINs come from the Secret's files
    pin_file = config_of(docs, signing)["token"]["pin_file"]
    assert f"$(cat {pin_file})" in " ".join(container["args"])
    assert mounts_of(container)["pin"]["mountPath"] == str(Path(pin_file).parent)
    assert mounts_of(container)["data"].get("readOnly") is not True
    assert job["restartPolicy"] == "Never"
