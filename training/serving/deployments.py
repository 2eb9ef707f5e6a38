"""The TorchServe settings of every deployment, derived from the one hand-written config.properties.

The repository's config.properties serves on one machine (`make serve`) and is the source of the others: the
serving image (docker/config.properties) and the cluster's ConfigMap (k8s/serving-config.yaml, one entry per
registered variant). Each deployment declares only what differs from config.properties and why; everything else,
the request and answer limits above all, is copied, so a value changed in config.properties reaches every deployment
when `python -m training deployments` runs, and tests/test_deployments.py fails until it has.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

from training.inference.variants import MODEL_PREFIX, VARIANTS, Variant, model_names
from training.serving.launcher import CONFIG, LISTENERS, ROOT, read_properties

COMMAND = "python -m training deployments"
CONTAINER_FILE = "docker/config.properties"  # the generated files, relative to the repository root
CLUSTER_FILE = "k8s/serving-config.yaml"
IMAGE_HOME = "/home/model-server"  # where docker/Dockerfile puts the archives and handler/metrics.yaml
MODEL_STORE = f"{IMAGE_HOME}/model-store"
CONFIG_MAP = "defect-serving-config"  # the name k8s/defect-<variant>.yaml and k8s/kserve/ mount
NAMESPACE = "lpbf-defects"
CLUSTER_MODEL = MODEL_PREFIX  # each pod serves its variant as "defect"; k8s/gateway.yaml rewrites paths to it
KSERVE_ENTRY = "kserve.properties"  # the ConfigMap entry k8s/kserve/defect.yaml mounts: every variant in one pod
ABOUT = {
    CONTAINER_FILE: "TorchServe settings inside the serving image (docker/Dockerfile copies this file to "
    f"{IMAGE_HOME}/config.properties).",
    CLUSTER_FILE: "TorchServe settings inside the cluster, one entry per registered variant (the image holds every "
    f'archive; each Deployment loads one, under the common model name "{CLUSTER_MODEL}", so the route can split '
    f"/predictions/{CLUSTER_MODEL} between them), and {KSERVE_ENTRY} for KServe's pods, which load every variant.",
}
_WIDTH = 120


@dataclass(frozen=True)
class Change:
    """Settings that differ from config.properties for one reason. Values are as read (`\\` not doubled)."""

    reason: str
    values: Mapping[str, str] = field(default_factory=dict)  # keys config.properties has: their new values
    added: Mapping[str, str] = field(default_factory=dict)  # keys config.properties lacks
    removed: tuple[str, ...] = ()  # keys left to TorchServe's defaults

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.values, *self.added, *self.removed)

    def summary(self) -> str:
        """The keys it touches, for the generated header."""
        parts = [", ".join(self.values), ", ".join(f"added {k}" for k in self.added)]
        parts.append(", ".join(f"no {k}" for k in self.removed))
        return "; ".join(p for p in parts if p)


@dataclass(frozen=True)
class Deployment:
    name: str  # "container", "cluster-fp32", ...
    file: str  # the generated file holding its settings, relative to the repository root
    changes: tuple[Change, ...]
    entry: str = ""  # its key in the cluster's ConfigMap (cluster deployments only)


def container(base: Mapping[str, str]) -> Deployment:
    """The serving image, which loads every registered variant. `base` is config.properties (for its ports)."""
    listeners = Change(
        "the listeners bind to all interfaces of the container, on the same ports, so `docker run -p "
        "127.0.0.1:8080:8080 ...` reaches them (publish them on the host's loopback only); gRPC stays on loopback",
        {f"{name}_address": _rebind(base, name) for name in LISTENERS},
    )
    archives = Change(
        "the archives of the registered variants (training/inference/variants.py)", {"load_models": _every_archive()}
    )
    return Deployment("container", CONTAINER_FILE, (listeners, archives, _image_paths()))


def cluster(base: Mapping[str, str]) -> tuple[Deployment, ...]:
    """One Deployment per registered variant, each with its own ConfigMap entry."""
    listeners = Change(
        "inference and metrics listen on all interfaces of the pod, on the same ports: the Service and Prometheus "
        "must reach them; management and gRPC stay on the pod's loopback",
        {f"{name}_address": _rebind(base, name) for name in ("inference", "metrics")},
    )
    grpc_ports = Change(
        "one TorchServe per pod, so TorchServe's default gRPC ports (7070, 7071) cannot clash",
        removed=("grpc_inference_port", "grpc_management_port"),
    )
    tokens = Change(
        "token authorization off, because TorchServe 0.12 draws random keys per process, which replicas behind one "
        "Service cannot share. Clients authenticate at the gateway instead (k8s/gateway.yaml: an API key from the "
        "defect-api-keys Secret), and k8s/networkpolicy.yaml admits only the gateway to the inference port",
        {"disable_token_authorization": "true"},
        removed=("token_expiration_min",),
    )
    small_pod = Change(
        "a pod has one CPU and one model (k8s/defect-<variant>.yaml): one Netty thread, and a smaller frontend heap "
        "that leaves the pod's memory to the model's worker",
        {"number_of_netty_threads": "1", "vmargs": _with_heap(base, "512m")},
    )
    shared = (listeners, grpc_ports, _image_paths(), tokens, small_pod)
    pods = tuple(
        Deployment(f"cluster-{v.key}", CLUSTER_FILE, (*shared, _one_archive(v)), entry=f"{v.key}.properties")
        for v in VARIANTS
    )
    kserve_tokens = Change(
        "token authorization off, because TorchServe 0.12 draws random keys per process, which the replicas Knative "
        "scales out cannot share. Clients authenticate at the ingress in front of KServe, and "
        "k8s/kserve/networkpolicy.yaml admits only Knative's activator and ingress to the pods",
        {"disable_token_authorization": "true"},
        removed=("token_expiration_min",),
    )
    every_archive = Change(
        "KServe's pods load the archives of every registered variant under their own names, as on one machine, so "
        "the client's pinned variant paths (/predictions/<prefix>_<variant>) exist behind the InferenceService",
        {"load_models": _every_archive()},
    )
    kserve = Deployment(
        "kserve", CLUSTER_FILE, (listeners, grpc_ports, _image_paths(), kserve_tokens, every_archive), KSERVE_ENTRY
    )
    return (*pods, kserve)


def deployments(base: Mapping[str, str]) -> tuple[Deployment, ...]:
    return (container(base), *cluster(base))


def check(deployment: Deployment, base: Mapping[str, str]) -> None:
    """ValueError unless every change has a reason and names keys config.properties has (or lacks, if added), and
    no key is changed twice."""
    seen: set[str] = set()
    for change in deployment.changes:
        if not change.reason.strip():
            raise ValueError(f"{deployment.name}: the change of {change.summary() or 'nothing'} gives no reason")
        if not change.keys:
            raise ValueError(f"{deployment.name}: the change {change.reason[:60]!r}... changes no key")
        unknown = [k for k in (*change.values, *change.removed) if k not in base]
        if unknown:
            raise ValueError(
                f"{deployment.name}: {', '.join(unknown)} not in config.properties (it has: {', '.join(base)}); "
                "fix the name, or declare a new key under `added`"
            )
        present = [k for k in change.added if k in base]
        if present:
            raise ValueError(f"{deployment.name}: {', '.join(present)} already in config.properties; change it there")
        twice = seen.intersection(change.keys)
        if twice:
            raise ValueError(f"{deployment.name}: {', '.join(sorted(twice))} changed by more than one change")
        seen.update(change.keys)


def settings(deployment: Deployment, base: Mapping[str, str]) -> dict[str, str]:
    """config.properties with the deployment's changes, in config.properties's key order (added keys last)."""
    check(deployment, base)
    values = dict(base)
    for change in deployment.changes:
        values.update(change.values)
        for key in change.removed:
            del values[key]
    for change in deployment.changes:
        values.update(change.added)
    return values


def render(config: Path = CONFIG) -> dict[str, str]:
    """{file relative to the repository root: its text} for every generated file, from `config`."""
    base = read_properties(config)
    if not base:
        raise ValueError(f"{config} holds no key=value settings; expected the repository's config.properties")
    image, pods = container(base), cluster(base)
    return {
        CONTAINER_FILE: _header(CONTAINER_FILE, (image,)) + _body(settings(image, base)),
        CLUSTER_FILE: _config_map(pods, base),
    }


def stale(rendered: Mapping[str, str], repo: Path = ROOT) -> list[str]:
    """The files of `rendered` whose text under `repo` differs from it (or that are missing)."""
    return [name for name, text in rendered.items() if not (repo / name).is_file() or (repo / name).read_text() != text]


def _rebind(base: Mapping[str, str], listener: str, host: str = "0.0.0.0") -> str:
    """The listener's URL from config.properties on another host, same scheme and port."""
    url = urlparse(_required(base, f"{listener}_address"))
    return url._replace(netloc=f"{host}:{url.port}" if url.port else host).geturl()


def _with_heap(base: Mapping[str, str], size: str) -> str:
    """config.properties's JVM options with the heap limit replaced (the other options kept)."""
    others = [option for option in _required(base, "vmargs").split() if not option.startswith("-Xmx")]
    return " ".join([f"-Xmx{size}", *others])


def _required(base: Mapping[str, str], key: str) -> str:
    if key not in base:
        raise ValueError(f"config.properties has no {key}, which the deployments derive their own value from")
    return base[key]


def _image_paths() -> Change:
    return Change(
        f"the image's paths (docker/Dockerfile copies the archives to {MODEL_STORE} and handler/metrics.yaml to "
        f"{IMAGE_HOME}); only the registered variants' archives may be loaded",
        {
            "model_store": MODEL_STORE,
            "allowed_urls": f"file://{MODEL_STORE}/{_alternatives(model_names())}\\.mar",
            "metrics_config": f"{IMAGE_HOME}/metrics.yaml",
        },
    )


def _every_archive() -> str:
    return ",".join(v.archive for v in VARIANTS)


def _one_archive(v: Variant) -> Change:
    return Change(
        f'each pod loads the archive of its own variant, under the common model name "{CLUSTER_MODEL}"',
        {"load_models": f"{CLUSTER_MODEL}={v.archive}"},
    )


def _alternatives(names: Iterable[str]) -> str:
    """A regular expression matching exactly these names: their common prefix, then the rest as alternatives."""
    names = list(names)
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    rest = "|".join(re.escape(name[len(prefix) :]) for name in names)
    return f"{re.escape(prefix)}({rest})"


def _header(file: str, chosen: Iterable[Deployment]) -> str:
    """Comment lines: generated by which command from what, what the file is for, and each change's reason once."""
    lines = [
        f"Generated by `{COMMAND}` from config.properties; do not edit by hand: change config.properties (or the "
        "differences declared in training/serving/deployments.py) and run the command again.",
        ABOUT[file],
        "Differences from config.properties, and why:",
    ]
    out = [line for text in lines for line in _comment(text, "# ", "# ")]
    chosen = tuple(chosen)
    told: dict[tuple[str, str], list[str]] = {}  # each change once, with the entries it applies to
    for deployment in chosen:
        for change in deployment.changes:
            told.setdefault((change.summary(), change.reason), []).append(deployment.entry)
    for (summary, reason), entries in told.items():
        where = f" ({', '.join(entries)})" if len(entries) < len(chosen) else ""
        out += _comment(f"{summary}{where}: {reason}", "# - ", "#   ")
    return "\n".join(out) + "\n"


def _comment(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(
        text, _WIDTH, initial_indent=first, subsequent_indent=rest, break_long_words=False, break_on_hyphens=False
    )


def _body(values: Mapping[str, str]) -> str:
    """key=value lines, with `\\` doubled as a properties file needs."""
    return "".join(f"{key}={_escape(value)}\n" for key, value in values.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\")


def _config_map(pods: tuple[Deployment, ...], base: Mapping[str, str]) -> str:
    """The ConfigMap with one `<variant>.properties` entry per pod, as a literal block each."""
    data = {pod.entry: _body(settings(pod, base)) for pod in pods}
    lines = [
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        f"  name: {CONFIG_MAP}",
        f"  namespace: {NAMESPACE}",
        "  labels:",
        f"    app.kubernetes.io/part-of: {NAMESPACE}",
        "data:",
    ]
    for entry, body in data.items():
        lines += [f"  {entry}: |", *(f"    {line}" for line in body.splitlines())]
    text = _header(CLUSTER_FILE, pods) + "\n".join(lines) + "\n"
    if yaml.safe_load(text)["data"] != data:  # a value a YAML literal block cannot carry as it is
        raise ValueError(
            f"a setting of {', '.join(data)} does not survive as YAML; check its value in config.properties"
        )
    return text
