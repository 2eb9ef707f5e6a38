"""The Kubernetes manifests: every core object against the Kubernetes API models (required fields, types, no unknown
field), custom resources against their required fields, and names, labels and ports that agree across files."""

import copy
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
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}
CUSTOM = {"gateway.networking.k8s.io/v1", "gateway.envoyproxy.io/v1alpha1", "serving.kserve.io/v1beta1",
          "monitoring.coreos.com/v1"}  # fmt: skip
CLUSTER_SCOPED = {"Namespace", "GatewayClass"}
KUSTOMIZE = ("kustomization.yaml", "kustomizeconfig.yaml")  # kustomize's own files, not objects
IMAGE = "lpbf-defects/serving"  # the placeholder every manifest names; the kustomizations set it


def documents() -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name not in KUSTOMIZE:
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
    if doc["kind"] in CLUSTER_SCOPED:
        assert "namespace" not in doc["metadata"]
    else:
        assert doc["metadata"]["namespace"] == NAMESPACE
    model = MODELS.get((doc["apiVersion"], doc["kind"]))
    if model is None:
        assert doc["apiVersion"] in CUSTOM, doc["apiVersion"]
        return
    client = ApiClient()
    parsed = client._ApiClient__deserialize(doc, model)  # raises on a missing required field or a wrong type
    again = without_nulls(client.sanitize_for_serialization(parsed))
    assert yaml.safe_dump(again, sort_keys=True) == yaml.safe_dump(without_nulls(doc), sort_keys=True), (
        "a field the Kubernetes API does not know (it was dropped on the round trip)"
    )


def primary_variant() -> str:
    """The variant the split route sends most requests to (k8s/gateway.yaml)."""
    [route] = find("HTTPRoute")
    split = next(r for r in route["spec"]["rules"] if r["matches"][0]["path"]["value"] == "/predictions/defect")
    return max(split["backendRefs"], key=lambda b: b["weight"])["name"].removeprefix("defect-")


def test_both_variants_have_deployment_service_autoscaler_and_disruption_budget():
    config = find("ConfigMap", "defect-serving-config")[0]["data"]
    for variant in VARIANTS:
        name = f"defect-{variant}"
        [deployment], [service], [hpa], [budget] = (
            find("Deployment", name),
            find("Service", name),
            find("HorizontalPodAutoscaler", name),
            find("PodDisruptionBudget", name),
        )
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service["spec"]["selector"].items() <= labels.items() and labels["lpbf.io/variant"] == variant
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        [container] = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        props = properties(config[mount["subPath"]])
        assert props["load_models"] == f"defect=defect_{variant}.mar"
        assert int(props["inference_address"].rsplit(":", 1)[1]) == ports["http"]
        assert int(props["metrics_address"].rsplit(":", 1)[1]) == ports["metrics"]
        assert props["management_address"].startswith("http://127.0.0.1:")
        env = {e["name"]: e["value"] for e in container["env"]}
        assert "command" not in container and env["TS_CONFIG"] == mount["mountPath"]  # the image's serve.py


def test_the_autoscaler_owns_the_replica_count_and_the_primary_variant_never_has_fewer_than_two():
    for variant in VARIANTS:
        [deployment], [hpa] = (
            find("Deployment", f"defect-{variant}"),
            find("HorizontalPodAutoscaler", f"defect-{variant}"),
        )
        assert "replicas" not in deployment["spec"]  # an apply would reset what the autoscaler set
        assert hpa["spec"]["minReplicas"] >= (2 if variant == primary_variant() else 1)
        if variant == primary_variant():
            assert find("PodDisruptionBudget", f"defect-{variant}")[0]["spec"]["minAvailable"] >= 1
        strategy = deployment["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0  # a new pod is ready before an old one goes


def test_overload_shows_to_the_autoscaler_no_cpu_limit_hides_it():
    for variant in VARIANTS:
        [container] = find("Deployment", f"defect-{variant}")[0]["spec"]["template"]["spec"]["containers"]
        assert "cpu" in container["resources"]["requests"] and "cpu" not in container["resources"]["limits"]
        assert "memory" in container["resources"]["limits"]
        [metric] = find("HorizontalPodAutoscaler", f"defect-{variant}")[0]["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"


def test_readiness_means_loaded_liveness_stays_cheap_and_a_stop_drains_within_the_grace_period():
    config = find("ConfigMap", "defect-serving-config")[0]["data"]
    for variant in VARIANTS:
        spec = find("Deployment", f"defect-{variant}")[0]["spec"]["template"]["spec"]
        [container] = spec["containers"]
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe]["exec"]["command"] == ["python", "/opt/defects/serve.py", "--check", "ready"]
        assert container["livenessProbe"]["tcpSocket"] == {"port": "http"}
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["python", "/opt/defects/serve.py", "--drain"]
        timeout = int(properties(config[f"{variant}.properties"])["default_response_timeout"])
        assert spec["terminationGracePeriodSeconds"] > 2 * timeout  # the preStop's drain, then serve.py's
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", "/home/model-server/run"} <= mounts  # writable, the root file system read-only
        [spread] = spec["topologySpreadConstraints"]  # replicas on different nodes
        labels = find("Deployment", f"defect-{variant}")[0]["spec"]["template"]["metadata"]["labels"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_the_namespace_enforces_the_restricted_pod_security_profile_which_the_pods_meet():
    [namespace] = find("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for variant in VARIANTS:
        spec = find("Deployment", f"defect-{variant}")[0]["spec"]["template"]["spec"]
        assert (
            spec["securityContext"]["runAsNonRoot"]
            and spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        )
        [container] = spec["containers"]
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]


def test_nothing_leaves_the_serving_pods():
    policies = [p for p in find("NetworkPolicy") if "Egress" in p["spec"]["policyTypes"]]
    assert len(policies) == 1 and not policies[0]["spec"].get("egress")
    assert policies[0]["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "defect-serving"}


def test_prometheus_scrapes_every_serving_service_s_metrics_port():
    [monitor] = find("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for variant in VARIANTS:
        [service] = find("Service", f"defect-{variant}")
        assert selector.items() <= service["metadata"]["labels"].items()
        assert ports <= {p["name"] for p in service["spec"]["ports"]}


def test_the_gateway_class_the_gateway_names_is_shipped():
    [gateway], [gateway_class] = find("Gateway"), find("GatewayClass")
    assert gateway["spec"]["gatewayClassName"] == gateway_class["metadata"]["name"]
    assert gateway_class["spec"]["controllerName"]


def test_each_kustomization_lists_its_manifests_and_sets_the_image_once():
    top = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(top["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml") if p.name not in KUSTOMIZE}
    kserve = yaml.safe_load((K8S / "kserve" / "kustomization.yaml").read_text())
    for kustomization in (top, kserve):
        [image] = kustomization["images"]
        assert image["name"] == IMAGE and image["newName"] and image["newTag"]
    assert kserve["images"] == top["images"]  # the same image on either path
    for resource in kserve["resources"]:
        assert (K8S / "kserve" / resource).resolve().exists(), resource
    for doc in [d for _, d in DOCS if d["kind"] in ("Deployment", "InferenceService")]:
        spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]["predictor"]
        assert {c["image"] for c in spec["containers"]} == {IMAGE}


def test_the_variant_configs_differ_only_in_the_archive_they_load():
    config = find("ConfigMap", "defect-serving-config")[0]["data"]
    a, b = (properties(config[f"{v}.properties"]) for v in VARIANTS)
    assert {k for k in a if a[k] != b.get(k)} == {"load_models"}


def test_pods_without_torchserve_tokens_are_reachable_only_from_the_gateway():
    config = find("ConfigMap", "defect-serving-config")[0]["data"]
    assert all(properties(config[f"{v}.properties"])["disable_token_authorization"] == "true" for v in VARIANTS)
    [policy] = find("NetworkPolicy", "defect-serving-ingress")
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


def json_patch(doc: dict, operations: list[dict]) -> dict:
    """RFC 6902 add and replace, as kustomize applies the canary overlay's patch."""
    doc = copy.deepcopy(doc)
    for op in operations:
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in op["path"].split("/")[1:]]
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        assert op["op"] == "add" or (int(last) < len(target) if isinstance(target, list) else last in target)
        if isinstance(target, list):
            target[int(last)] = op["value"]
        else:
            target[last] = op["value"]
    return doc


def test_kserve_serves_every_variant_on_the_client_s_paths_and_rolls_out_a_release_as_canary():
    from training.inference.variants import model_names
    from training.serving.deployments import KSERVE_ENTRY

    [base] = find("InferenceService")
    config = find("ConfigMap", "defect-serving-config")[0]["data"]
    [policy] = [p for p in find("NetworkPolicy") if p["metadata"]["name"] == "defect-kserve-ingress"]
    predictor = base["spec"]["predictor"]
    [container] = predictor["containers"]
    assert container["ports"][0]["containerPort"] == 8080
    mount = container["volumeMounts"][0]
    assert mount["subPath"] == KSERVE_ENTRY
    assert {e["name"]: e["value"] for e in container["env"]}["TS_CONFIG"] == mount["mountPath"]
    assert predictor["volumes"][0]["configMap"]["name"] == "defect-serving-config"
    settings = properties(config[KSERVE_ENTRY])
    # every variant under its own name, so /predictions/<name> is what the client's --ab and shadow mode call
    assert [name.removesuffix(".mar") for name in settings["load_models"].split(",")] == list(model_names())
    assert settings["disable_token_authorization"] == "true"  # the pods are reached through Knative only
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= predictor["labels"].items()
    port = settings["metrics_address"].rsplit(":", 1)[1]
    assert base["metadata"]["annotations"]["prometheus.kserve.io/port"] == port
    # a worker per variant, each on one thread: a CPU each, and Knative scales out at a few requests a pod
    assert int(container["resources"]["requests"]["cpu"]) >= len(model_names())
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] <= 2
    assert predictor["containerConcurrency"] <= 4
    assert "canaryTrafficPercent" not in predictor
    # the canary overlay: the same InferenceService, another release of the image, a share of the traffic
    overlay = yaml.safe_load((K8S / "kserve" / "canary" / "kustomization.yaml").read_text())
    assert overlay["resources"] == [".."]
    [released] = yaml.safe_load((K8S / "kserve" / "kustomization.yaml").read_text())["images"]
    [image] = overlay["images"]
    assert image["name"] == released["name"] and image["newName"] == released["newName"]
    assert image["newTag"] != released["newTag"]
    [patch] = overlay["patches"]
    assert patch["target"] == {"kind": "InferenceService", "name": base["metadata"]["name"]}
    canary = json_patch(base, yaml.safe_load(patch["patch"]))
    share = canary["spec"]["predictor"].pop("canaryTrafficPercent")
    assert 0 < share < 100 and canary == base  # nothing else changes


def test_every_manifest_is_documented():
    readme = (ROOT / "README.md").read_text()
    for path in sorted(K8S.rglob("*.yaml")):
        assert re.search(re.escape(str(path.relative_to(ROOT))), readme), f"README does not mention {path.name}"
