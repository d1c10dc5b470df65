"""The deploy bundle's cross-checks that no single tool makes (called by scripts/check-deploy.sh
with the directory holding the prometheus-operator CRDs; runs in its venv, which has PyYAML and
jsonschema as kubernetes-validate's dependencies)."""
import json
import pathlib
import re
import sys

import jsonschema
import yaml

DEPLOY = pathlib.Path("deploy")
failures = []


def fail(message):
    failures.append(message)


def python_patterns(schema):
    """CRD patterns are Go regexes; Go allows inline flags after `^` (`^(?i)...`), Python only
    at the start. Same meaning, moved."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str) and value.startswith("^(?i)"):
                schema[key] = "(?i)^" + value[len("^(?i)"):]
            else:
                python_patterns(value)
    elif isinstance(schema, list):
        for item in schema:
            python_patterns(item)
    return schema


def crd_schema(path):
    crd = yaml.safe_load(path.read_text())
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return python_patterns(version["schema"]["openAPIV3Schema"])
    raise SystemExit(f"{path}: no v1 schema")


def unknown_fields(value, schema, where):
    """Fields the CRD schema does not declare (the API server would prune or reject them)."""
    if isinstance(value, dict) and "properties" in schema and not schema.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        for key, item in value.items():
            if key not in schema["properties"]:
                fail(f"{where}.{key}: not a field of the CRD schema")
            else:
                unknown_fields(item, schema["properties"][key], f"{where}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            unknown_fields(item, schema["items"], f"{where}[{i}]")


def check_custom_resource(path, crd_dir, crd_file):
    resource = yaml.safe_load(path.read_text())
    schema = crd_schema(crd_dir / crd_file)
    try:
        jsonschema.validate(resource, schema)
    except jsonschema.ValidationError as e:
        fail(f"{path}: {e.message} at {list(e.absolute_path)}")
    unknown_fields(resource, schema, path.name)
    return resource


def main(crd_dir, rendered=None):
    crd_dir = pathlib.Path(crd_dir)
    # The chart rendered with other values (tests/helm/every-option.yaml): its custom resources
    # against the CRD schemas too.
    if rendered:
        rendered = pathlib.Path(rendered)
        check_custom_resource(rendered / "servicemonitor.yaml", crd_dir, "monitoring.coreos.com_servicemonitors.yaml")
        check_custom_resource(rendered / "prometheusrule.yaml", crd_dir, "monitoring.coreos.com_prometheusrules.yaml")
    check_custom_resource(
        DEPLOY / "kubernetes/servicemonitor.yaml",
        crd_dir,
        "monitoring.coreos.com_servicemonitors.yaml",
    )
    rule = check_custom_resource(
        DEPLOY / "kubernetes/prometheusrule.yaml",
        crd_dir,
        "monitoring.coreos.com_prometheusrules.yaml",
    )
    plain = yaml.safe_load((DEPLOY / "prometheus/ackwatch.rules.yml").read_text())
    if rule["spec"]["groups"] != plain["groups"]:
        fail("kubernetes/prometheusrule.yaml's spec.groups differ from prometheus/ackwatch.rules.yml")

    # Every runbook link of a rule names a page (and heading) in deploy/runbooks.
    for group in plain["groups"]:
        for r in group["rules"]:
            url = r.get("annotations", {}).get("runbook_url", "")
            m = re.search(r"/runbooks/([a-z_]+\.md)(?:#([a-z0-9-]+))?$", url)
            if not m:
                fail(f"rule {r['alert']}: runbook_url {url!r} does not name a page of deploy/runbooks")
                continue
            page = DEPLOY / "runbooks" / m.group(1)
            if not page.exists():
                fail(f"rule {r['alert']}: {page} does not exist")
            elif m.group(2):
                anchors = {
                    re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                    for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)
                }
                if m.group(2) not in anchors:
                    fail(f"rule {r['alert']}: {page} has no heading #{m.group(2)}")
    # One runbook page per finding kind (alerts link {kind}.md).
    for kind in ["ack_missing", "activation_gap", "orphan_ack", "sequence_conflict"]:
        if not (DEPLOY / "runbooks" / f"{kind}.md").exists():
            fail(f"no runbook page for finding kind {kind}")

    dashboard = json.loads((DEPLOY / "grafana/ackwatch-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        fail("dashboard panel ids are not unique")
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for v in ["datasource", "job", "namespace", "instance"]:
        if v not in variables:
            fail(f"dashboard has no ${v} variable")
    scope = '{job=~"$job",namespace=~"$namespace",instance=~"$instance"}'
    for p in dashboard["panels"]:
        if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
            fail(f"dashboard panel {p.get('title')!r} has a target without a query")
        # One unit per panel: set once, on the panel's defaults, never overridden per series.
        field = p.get("fieldConfig", {})
        if not field.get("defaults", {}).get("unit"):
            fail(f"dashboard panel {p.get('title')!r} has no unit")
        if any(prop.get("id") == "unit" for o in field.get("overrides", []) for prop in o.get("properties", [])):
            fail(f"dashboard panel {p.get('title')!r} mixes units")
        for t in p.get("targets", []):
            for metric in re.finditer(r"\b((?:ackwatch|controlbus|process)_[a-z_]+)(\{[^}]*\})?", t.get("expr", "")):
                if metric.group(2) != scope:
                    fail(f"dashboard panel {p.get('title')!r}: {metric.group(1)} is not scoped by {scope}")

    if failures:
        for f in failures:
            print(f"check-deploy: {f}", file=sys.stderr)
        raise SystemExit(1)
    print("check-deploy: custom resources, rule copies, runbook links and dashboard ok")


if __name__ == "__main__":
    main(*sys.argv[1:3])
