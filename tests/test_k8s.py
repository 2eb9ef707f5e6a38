"""The Kubernetes manifests: every core object against the Kubernetes API models (required fields, types, no unknown
field), custom resources against their required fields, and names, labels and ports that agree across files."""

import re
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
NAMESPACE = "lpbf-defects"
VARIANTS = ("fp32", "int8")
MODELS = {  # apiVersion/kind -> the Kubernetes client model that describes it
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}


def documents() -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


DOCS = documents()


def find(kind: str, name: str | None = None) -> list[dict]:
    return [d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def properties(text: str) -> dict[str, str]:
    lines = [line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in lines}


def without_nulls(value):
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def int_or_str(value):
    return str(value) if isinstance(value, int) else value


@pytest.mark.parametrize(
    "path_doc", DOCS, ids=[f"{p.relative_to(K8S)}:{d['kind']}:{d['metadata']['name']}" for p, d in DOCS]
)
def test_every_object_is_well_formed(path_doc):
    _, doc = path_doc
    assert {"apiVersion", "kind", "metadata"} <= set(doc)
    if doc["kind"] != "Namespace":
        assert doc["metadata"]["namespace"] == NAMESPACE
    model = MODELS.get((doc["apiVersion"], doc["kind"]))
    if model is None:
        assert doc["apiVersion"] in {"gateway.networking.k8s.io/v1", "gateway.envoyproxy.io/v1alpha1",
                                     "serving.kserve.io/v1beta1"}, doc["apiVersion"]  # fmt: skip
        return
    client = ApiClient()
    parsed = client._ApiClient__deserialize(doc, model)  # raises on a missing required field or a wrong type
    again = without_nulls(client.sanitize_for_serialization(parsed))
    assert yaml.safe_dump(again, sort_keys=True) == yaml.safe_dump(without_nulls(doc), sort_keys=True), (
        "a field the Kubernetes API does not know (it was dropped on the round trip)"
    )


def test_both_variants_have_deployment_service_and_autoscaler():
    config = find("ConfigMap", "defect-serving-config")[0]["data"]
    for variant in VARIANTS:
        name = f"defect-{variant}"
        [deployment], [service], [hpa] = (
            find("Deployment", name),
            find("Service", name),
            find("HorizontalPodAutoscaler", name),
        )
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service["spec"]["selector"].items() <= labels.items() and labels["lpbf.io/variant"] == variant
        [container] = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/ping", "port": "http"}
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(container["resources"]["limits"])
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        props = properties(config[mount["subPath"]])
        assert props["load_models"] == f"defect=defect_{variant}.mar"
        assert int(props["inference_address"].rsplit(":", 1)[1]) == ports["http"]
        assert int(props["metrics_address"].rsplit(":", 1)[1]) == ports["metrics"]
        assert props["management_address"].startswith("http://127.0.0.1:")


def test_the_variant_configs_differ_only_in_the_archive_they_load():
    config = find("ConfigMap", "defect-serving-config")[0]["data"]
    a, b = (properties(config[f"{v}.properties"]) for v in VARIANTS)
    assert {k for k in a if a[k] != b.get(k)} == {"load_models"}


def test_pods_without_torchserve_tokens_are_reachable_only_from_the_gateway():
    config = find("ConfigMap", "defect-serving-config")[0]["data"]
    assert all(properties(config[f"{v}.properties"])["disable_token_authorization"] == "true" for v in VARIANTS)
    [policy] = find("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "defect-serving"}
    inference = [rule for rule in policy["spec"]["ingress"] if {"protocol": "TCP", "port": 8080} in rule["ports"]]
    assert len(inference) == 1 and inference[0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "envoy-gateway-system"
    }
    [security] = find("SecurityPolicy")
    [route] = find("HTTPRoute")
    assert security["spec"]["targetRefs"][0]["name"] == route["metadata"]["name"]
    secret = security["spec"]["apiKeyAuth"]["credentialRefs"][0]["name"]
    assert re.search(rf"kubectl .*create secret generic {secret} ", (ROOT / "README.md").read_text())


def test_the_route_splits_by_weight_and_pins_the_variant_paths():
    [route] = find("HTTPRoute")
    [gateway] = find("Gateway")
    assert route["spec"]["parentRefs"][0]["name"] == gateway["metadata"]["name"]
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in find("Service")}
    by_path = {r["matches"][0]["path"]["value"]: r for r in route["spec"]["rules"]}
    split = by_path["/predictions/defect"]["backendRefs"]
    assert {b["name"]: b["weight"] for b in split} == {"defect-fp32": 90, "defect-int8": 10}
    for variant in VARIANTS:
        rule = by_path[f"/predictions/defect_{variant}"]
        assert [b["name"] for b in rule["backendRefs"]] == [f"defect-{variant}"]
        assert rule["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] == "/predictions/defect"
    for rule in route["spec"]["rules"]:
        for backend in rule["backendRefs"]:
            assert backend["port"] in services[backend["name"]]


def test_kserve_runs_the_same_image_and_configs_with_an_int8_canary():
    services = find("InferenceService")
    assert len(services) == 2 and {s["metadata"]["name"] for s in services} == {"defect"}
    image = find("Deployment", "defect-fp32")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    config = find("ConfigMap", "defect-serving-config")[0]["data"]
    canaries = [s for s in services if "canaryTrafficPercent" in s["spec"]["predictor"]]
    assert len(canaries) == 1 and 0 < canaries[0]["spec"]["predictor"]["canaryTrafficPercent"] < 100
    for service in services:
        predictor = service["spec"]["predictor"]
        [container] = predictor["containers"]
        assert container["image"] == image
        assert container["ports"][0]["containerPort"] == 8080
        assert container["volumeMounts"][0]["subPath"] in config
        assert predictor["volumes"][0]["configMap"]["name"] == "defect-serving-config"
    assert "int8" in canaries[0]["spec"]["predictor"]["containers"][0]["volumeMounts"][0]["subPath"]


def test_every_manifest_is_documented():
    readme = (ROOT / "README.md").read_text()
    for path in sorted(K8S.rglob("*.yaml")):
        assert re.search(re.escape(str(path.relative_to(ROOT))), readme), f"README does not mention {path.name}"
