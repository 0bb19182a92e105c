"""Reading a responder's /metrics, one way for every test."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .server import RunningServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_of(where: RunningServer | str) -> str:
    """The text of /metrics of a server, or of a base URL ("http://host:port/")."""
    url = where.url if isinstance(where, RunningServer) else where
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as response:
        return str(response.read().decode())


def metric(where: RunningServer | str, prefix: str) -> float:
    """The sum of every sample whose line starts with ``prefix``: a family's name, or a
    name with the start of its labels (``name{reason="fill"}``)."""
    lines = metrics_of(where).splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def labelled(text: str, name: str, **labels: str) -> float | None:
    """The first sample of ``name`` with these labels (among others) in ``text``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if (line.startswith(f"{name}{{") and all(p in line for p in want)) or (
            not want and line.startswith(f"{name} ")
        ):
            return float(line.rsplit(" ", 1)[1])
    return None


def scrape(url: str) -> tuple[str, Samples]:
    """The text at ``url`` (served as text/plain) and its samples, parsed."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text: str = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample of ``name`` with exactly these labels; 0 if there is none."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def sample(server: RunningServer, name: str, **labels: str) -> float:
    return value(scrape(server.url + "metrics")[1], name, **labels)
