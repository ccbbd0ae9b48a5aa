"""usermeta's own rules for the rendered Kubernetes manifests (deploy/kubernetes/): what a schema cannot say.
Run by scripts/check-kubernetes.sh (which provides PyYAML through kubernetes-validate's venv).

Usage: check_kubernetes_rules.py base|redis RENDERED.yaml
Prints one line per rule; exits 1 when any rule is broken.
"""

import sys

import yaml

failures: list[str] = []

# Env names that would hold a secret if given a value; their *_FILE twins name a mounted file instead.
SECRET_WORDS = ("PAT", "SECRET", "PASSWORD", "TOKEN", "KEY")


def rule(ok: bool, text: str) -> None:
    print(f"   {'ok  ' if ok else 'FAIL'} {text}")
    if not ok:
        failures.append(text)


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o.get("kind") == kind and o.get("metadata", {}).get("name") == name]
    return found[0] if len(found) == 1 else {}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def mount_source(pod: dict, container: dict, path: str) -> dict:
    """The volume (as declared in the pod) that holds `path` in `container`, or {}."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    best = None
    for mount in container.get("volumeMounts") or []:
        target = mount["mountPath"].rstrip("/")
        if path.startswith(target + "/") and (best is None or len(target) > len(best["mountPath"])):
            best = mount
    return volumes.get(best["name"], {}) if best else {}


def check_hardened(pod: dict, what: str) -> None:
    pod_sc = pod.get("securityContext") or {}
    rule(pod_sc.get("runAsNonRoot") is True, f"{what}: pod runAsNonRoot")
    rule((pod_sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{what}: pod seccomp RuntimeDefault")
    rule(pod.get("automountServiceAccountToken") is False, f"{what}: no Kubernetes API token mounted")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        sc = container.get("securityContext") or {}
        name = f"{what}/{container['name']}"
        rule(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
        rule(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
        rule((sc.get("capabilities") or {}).get("drop") == ["ALL"], f"{name}: drops ALL capabilities")
        rule(not (sc.get("capabilities") or {}).get("add"), f"{name}: adds no capabilities")
        rule(sc.get("privileged") in (None, False), f"{name}: not privileged")
        resources = container.get("resources") or {}
        rule(
            {"cpu", "memory"} <= set(resources.get("requests") or {}) and "memory" in (resources.get("limits") or {}),
            f"{name}: cpu and memory requests, a memory limit",
        )
        for env in container.get("env") or []:
            secretish = any(word in env["name"] for word in SECRET_WORDS) and not env["name"].endswith("_FILE")
            if "valueFrom" in env and "secretKeyRef" in env["valueFrom"]:
                rule(False, f"{name}: {env['name']} takes a Secret as an env value (mount it as a file)")
            elif secretish:
                rule(False, f"{name}: {env['name']} holds a secret inline (use its _FILE twin)")


def allowed_sources(policy: dict, port: int) -> list:
    """The `from` lists of the ingress rules admitting `port`; None for a rule that admits any source."""
    sources = []
    for ingress in policy.get("spec", {}).get("ingress") or []:
        ports = [p.get("port") for p in ingress.get("ports") or []]
        if not ports or port in ports:
            sources.append(ingress.get("from"))
    return sources


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()) and bool(selector)


def check_base(objects: list[dict]) -> tuple[dict, dict]:
    deployment = one(objects, "Deployment", "usermeta")
    rule(bool(deployment), "a Deployment usermeta")
    spec = deployment.get("spec", {})
    rule(spec.get("replicas") == 3, "3 replicas")
    pod = spec.get("template", {}).get("spec", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    containers = {c["name"]: c for c in pod.get("containers", [])}
    usermeta = containers.get("usermeta", {})
    rule(bool(usermeta), "a container usermeta")
    env = env_of(usermeta)
    value = lambda name: (env.get(name) or {}).get("value")  # noqa: E731

    readiness = usermeta.get("readinessProbe") or {}
    liveness = usermeta.get("livenessProbe") or {}
    rule(readiness.get("grpc", {}).get("port") == 50051, "readiness probe: grpc on 50051")
    rule(
        readiness.get("grpc", {}).get("service") == "usermeta.v1.UserMetadataService",
        "readiness asks about usermeta.v1.UserMetadataService (NOT_SERVING first on SIGTERM)",
    )
    rule(liveness.get("grpc", {}).get("port") == 50051, "liveness probe: grpc on 50051")
    rule(
        not str(liveness.get("grpc", {}).get("service", "")).startswith("usermeta.zitadel."),
        "liveness does not follow ZITADEL's breakers (a restart would not bring ZITADEL back)",
    )
    grace = pod.get("terminationGracePeriodSeconds", 30)
    rule(grace > 10, "terminationGracePeriodSeconds above USERMETA_SHUTDOWN_GRACE (10s)")
    check_hardened(pod, "usermeta")

    rule(value("USERMETA_LISTEN") == "0.0.0.0:50051", "gRPC on 0.0.0.0:50051")
    rule(value("USERMETA_EXT_AUTHZ") == "true" and value("USERMETA_EXT_AUTHZ_LISTEN") == "0.0.0.0:50052",
         "ext_authz on its own listener, 50052")
    rule(value("USERMETA_WEBHOOK_LISTEN") == "0.0.0.0:8090", "webhook on 8090")
    signing_key = value("USERMETA_WEBHOOK_SIGNING_KEY_FILE") or ""
    rule("secret" in mount_source(pod, usermeta, signing_key),
         "the webhook's signing key (USERMETA_WEBHOOK_SIGNING_KEY_FILE) is a file from a Secret volume")
    rule(value("USERMETA_METRICS_LISTEN") == "0.0.0.0:9090", "metrics on 9090")
    rule(bool(value("USERMETA_ZITADEL_URL")), "USERMETA_ZITADEL_URL is set")
    credential = value("USERMETA_SERVICE_PAT_FILE") or value("USERMETA_SERVICE_KEY_FILE") or ""
    rule("secret" in mount_source(pod, usermeta, credential), "the service credential is a file from a Secret volume")
    policy = value("USERMETA_POLICY_FILE") or ""
    policy_volume = mount_source(pod, usermeta, policy)
    policy_map = one(objects, "ConfigMap", (policy_volume.get("configMap") or {}).get("name", ""))
    rule(
        policy.rsplit("/", 1)[-1] in (policy_map.get("data") or {}),
        "USERMETA_POLICY_FILE is a file of a ConfigMap that exists",
    )

    secrets = [o for o in objects if o.get("kind") == "Secret"]
    rule(all(not o.get("data") and not o.get("stringData") for o in secrets), "no Secret values in the manifests")

    service = one(objects, "Service", "usermeta")
    ports = {p["port"] for p in service.get("spec", {}).get("ports") or []}
    rule({50051, 50052, 8090, 9090} <= ports, "the Service exposes 50051, 50052, 8090 and 9090")
    rule(selects({"matchLabels": service.get("spec", {}).get("selector")}, labels), "the Service selects the pods")

    pdb = one(objects, "PodDisruptionBudget", "usermeta")
    rule(selects(pdb.get("spec", {}).get("selector") or {}, labels), "a PodDisruptionBudget selects the pods")
    rule(pdb.get("spec", {}).get("maxUnavailable") == 1 or pdb.get("spec", {}).get("minAvailable") == 2,
         "the PodDisruptionBudget keeps 2 of 3 pods")
    hpa = one(objects, "HorizontalPodAutoscaler", "usermeta")
    target = hpa.get("spec", {}).get("scaleTargetRef", {})
    rule(target.get("kind") == "Deployment" and target.get("name") == "usermeta", "an HPA scales the Deployment")
    rule(hpa.get("spec", {}).get("minReplicas", 0) >= 3, "the HPA keeps at least 3 replicas")
    # ZITADEL Cloud: 50 requests/s per source IP over a minute, shared by every pod behind the egress IP: the
    # most pods that run at once (the HPA's maximum and the rollout's surge) each send at most burst + 60 × rate.
    surge = spec.get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1)
    pods = hpa.get("spec", {}).get("maxReplicas", 0) + (surge if isinstance(surge, int) else 1)
    rate = float(value("USERMETA_UPSTREAM_RATE_LIMIT") or 40)
    burst = float(value("USERMETA_UPSTREAM_BURST") or max(1, -(-rate // 1)))
    rule(0 < rate and pods * (burst + 60 * rate) <= 60 * 50,
         f"the request budget keeps {pods} pods inside ZITADEL Cloud's 50/s per IP ({pods} x ({burst:g} + 60 x {rate:g}) <= 3000)")

    policies = [o for o in objects if o.get("kind") == "NetworkPolicy" and selects(o["spec"].get("podSelector", {}), labels)]
    rule(bool(policies), "a NetworkPolicy selects the usermeta pods")
    rule(all("Ingress" in p["spec"].get("policyTypes", []) for p in policies), "it restricts ingress")
    for port, who in ((50052, "ext_authz"), (8090, "webhook"), (9090, "metrics")):
        sources = [s for p in policies for s in allowed_sources(p, port)]
        rule(bool(sources) and all(s for s in sources), f"{who} port {port} admits only listed sources")
    gateway = [s for p in policies for s in allowed_sources(p, 50052)]
    rule(any("namespaceSelector" in peer and "podSelector" in peer for s in gateway for peer in s or []),
         "ext_authz: a namespace and pod selector (the gateway)")
    rule(any(s is None for p in policies for s in allowed_sources(p, 50051)), "the public gRPC port is open to all")
    return deployment, usermeta


def check_redis(objects: list[dict]) -> None:
    deployment, usermeta = check_base(objects)
    pod = deployment["spec"]["template"]["spec"]
    env = env_of(usermeta)
    rule((env.get("USERMETA_REDIS_URL") or {}).get("value") == "redis://redis:6379", "USERMETA_REDIS_URL redis://redis:6379")
    password = (env.get("USERMETA_REDIS_PASSWORD_FILE") or {}).get("value", "")
    rule("secret" in mount_source(pod, usermeta, password), "USERMETA_REDIS_PASSWORD_FILE is a file from a Secret volume")
    redis = one(objects, "Deployment", "redis") or one(objects, "StatefulSet", "redis")
    rule(bool(redis), "a Redis Deployment")
    if redis:
        check_hardened(redis["spec"]["template"]["spec"], "redis")
    service = one(objects, "Service", "redis")
    rule(6379 in {p["port"] for p in service.get("spec", {}).get("ports") or []}, "a Service redis on 6379")
    redis_labels = (redis.get("spec", {}).get("template", {}).get("metadata", {}).get("labels")) or {}
    guards = [o for o in objects if o.get("kind") == "NetworkPolicy" and redis_labels
              and selects(o["spec"].get("podSelector", {}), redis_labels)]
    rule(bool(guards) and all(all(s for s in allowed_sources(g, 6379)) for g in guards),
         "a NetworkPolicy admits only listed sources to Redis")


def main() -> int:
    which, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    {"base": check_base, "redis": check_redis}[which](objects)
    if failures:
        print(f"   {len(failures)} rule(s) broken in {path}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
