"""Checks of deploy/kubernetes that a schema cannot make (CI runs it after kubernetes-validate).

- every ConfigMap's TOML passes `domicile config check` (the image ships deploy/policies as
  /etc/domicile/policies, so the check reads them from deploy/policies; the gateway's JWKS comes
  from its ConfigMap);
- every region in the gateway's configuration has a node manifest with the same region id and
  countries, and the gateway's endpoint names that node's StatefulSet pod through its headless
  Service on the federation port;
- every node StatefulSet is pinned by required node affinity on topology.kubernetes.io/region,
  takes its keys and certificates from Secrets, serves mutual TLS pinned to the gateway's
  identity (and on its in-country port, mutual TLS with named local principals), and probes
  its federation port;
- every node's NetworkPolicy lets only gateway pods reach the federation port.

Usage: python deploy/kubernetes/check.py path/to/domicile
"""

import glob
import os
import subprocess
import sys
import tempfile
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FEDERATION_PORT = 50061


def fail(message):
    print(f"deploy check: {message}")
    sys.exit(1)


def load():
    docs = []
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/kubernetes/*.yaml"))):
        with open(path) as f:
            docs.extend((os.path.basename(path), d) for d in yaml.safe_load_all(f) if d)
    return docs


def config_check(binary, configs):
    env = dict(os.environ, DOMICILE_NODE_POLICY_DIR=os.path.join(ROOT, "deploy/policies"))
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in configs.items():
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write(text)
            run = subprocess.run([binary, "config", "check", path], env=env, capture_output=True, text=True)
            print(run.stdout.strip().replace(tmp + "/", "ConfigMap "))
            if run.returncode != 0:
                fail(f"ConfigMap {name} fails domicile config check:\n{run.stdout}{run.stderr}")


def main():
    if len(sys.argv) != 2:
        fail("usage: check.py path/to/domicile")
    docs = load()
    by_kind = {}
    for file, d in docs:
        by_kind.setdefault(d["kind"], []).append((file, d))

    configs = {}
    for _, cm in by_kind.get("ConfigMap", []):
        for key, text in cm.get("data", {}).items():
            configs[f"{cm['metadata']['name']}-{key}"] = text
    with tempfile.TemporaryDirectory() as mounted:
        # The gateway's JWKS is mounted from its ConfigMap at /etc/domicile/auth/jwks.json.
        jwks = os.path.join(mounted, "jwks.json")
        with open(jwks, "w") as f:
            f.write(configs.pop("domicile-gateway-auth-jwks.json"))
        checked = {
            name: text.replace("/etc/domicile/auth/jwks.json", jwks)
            for name, text in configs.items()
            if name.endswith(".toml")
        }
        config_check(sys.argv[1], checked)

    gateway = tomllib.loads(configs["domicile-gateway-gateway.toml"])
    nodes = {}
    for name, text in configs.items():
        if name.endswith("node.toml"):
            node = tomllib.loads(text)
            nodes[node["region_id"]] = node
    sets = {s["metadata"]["name"]: s for _, s in by_kind.get("StatefulSet", [])}
    services = {s["metadata"]["name"]: s for _, s in by_kind.get("Service", [])}
    policies = {p["metadata"]["name"]: p for _, p in by_kind.get("NetworkPolicy", [])}

    for region in gateway["regions"]:
        rid = region["id"]
        node = nodes.get(rid) or fail(f"region {rid}: no node ConfigMap with region_id {rid}")
        if sorted(node["countries"]) != sorted(region["countries"]):
            fail(f"region {rid}: the gateway routes {region['countries']}, the node serves {node['countries']}")
        name = f"domicile-node-{rid}"
        sts = sets.get(name) or fail(f"region {rid}: no StatefulSet {name}")
        svc = services.get(name) or fail(f"region {rid}: no Service {name}")
        if sts["spec"]["serviceName"] != name or svc["spec"].get("clusterIP") != "None":
            fail(f"region {rid}: {name} must be served by its own headless Service")
        want = f"https://{name}-0.{name}.domicile.svc.cluster.local:{FEDERATION_PORT}"
        if region["endpoints"] != [want]:
            fail(f"region {rid}: gateway endpoint {region['endpoints']}, expected [{want}]")

        pod = sts["spec"]["template"]["spec"]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        keys = [e["key"] for t in terms for e in t["matchExpressions"]]
        if keys != ["topology.kubernetes.io/region"]:
            fail(f"region {rid}: the StatefulSet must be pinned by topology.kubernetes.io/region, not {keys}")
        secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
        if secrets != [f"{name}-keys", f"{name}-tls", f"{name}-local-tls"]:
            fail(f"region {rid}: keys and certificates must come from {name}-keys, {name}-tls and {name}-local-tls, found {secrets}")
        if "[tls]" not in configs[f"{name}-node.toml"] or node.get("insecure_plaintext"):
            fail(f"region {rid}: the federation listener must use mutual TLS")
        node_toml = tomllib.loads(configs[f"{name}-node.toml"])
        if "local_listen" in node_toml and not (
            node_toml.get("local_tls") and node_toml.get("local_principals")
        ):
            fail(f"region {rid}: the in-country listener needs [local_tls] and [[local_principals]]")
        if node_toml["tls"]["gateway_identity"] != "gateway.domicile":
            fail(f"region {rid}: the node must pin the gateway's identity")
        container = pod["containers"][0]
        for probe in ("readinessProbe", "livenessProbe"):
            # Kubelet's gRPC probes cannot do mutual TLS: a TCP probe on the federation port.
            if container[probe].get("tcpSocket", {}).get("port") != FEDERATION_PORT:
                fail(f"region {rid}: {probe} must probe the federation port {FEDERATION_PORT}")

        policy = policies.get(name) or fail(f"region {rid}: no NetworkPolicy {name}")
        for rule in policy["spec"]["ingress"]:
            ports = [p["port"] for p in rule.get("ports", [])]
            if FEDERATION_PORT in ports:
                sources = rule.get("from", [])
                if sources != [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "domicile-gateway"}}}]:
                    fail(f"region {rid}: the federation port admits {sources}, not only the gateway")
        print(f"region {rid}: node manifest, endpoint, affinity, Secret, probes and NetworkPolicy agree")


if __name__ == "__main__":
    main()
