"""Consistency checks for the deployment files in cluster/.

Every manifest must parse; every Ray image and ``rayVersion`` must match the ray pin in
pyproject.toml (and so must the Dockerfile's base image); every RayJob must shut its cluster
down and run an entrypoint ``python jobs/<job>.py`` that exists and answers ``--help`` with the
options the manifest passes; token authentication must be on for every Ray container; and the
shared volume must be mounted everywhere. Every KubeRay resource (RayCluster, RayJob,
RayCronJob, also the RayJob inside the nightly ConfigMap) is validated against the operator's
CRD schemas in ``../shared/kuberay-crds`` the way the Kubernetes API server would.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
CRDS = REPO.parent / "shared" / "kuberay-crds"
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
JOBS = ("train", "score", "report", "nightly")
EXPECTED_FILES = (
    "Dockerfile",
    "Dockerfile.dockerignore",
    "README.md",
    "storage.yaml",
    "raycluster.yaml",
    "rayjob-train.yaml",
    "rayjob-score.yaml",
    "rayjob-report.yaml",
    "raycronjob-nightly.yaml",
    "cronjob-nightly.yaml",
    "cluster-launcher.yaml",
)
TOKEN_SECRET = ("medai-ray-token", "auth_token")
SHARED_CLAIM, SHARED_MOUNT = "medai-shared", "/mnt/medai"
# Images that are not Ray images and may appear in the manifests.
OTHER_IMAGES = re.compile(r"^registry\.k8s\.io/kubectl:v\d+\.\d+\.\d+$")
ENTRYPOINT = re.compile(r"^python jobs/(?P<job>\w+)\.py(?:\s|$)")

Doc = dict[str, Any]


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


@cache
def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@cache
def ray_version() -> str:
    """The exact ray version pinned in pyproject.toml (``ray[...]==X``)."""
    for dep in _pyproject()["project"]["dependencies"]:
        match = re.fullmatch(r"\s*ray(?:\[[^\]]*\])?\s*==\s*([\w.]+)\s*", dep)
        if match:
            return match.group(1)
    raise AssertionError("pyproject.toml does not pin ray with ==")


def project_version() -> str:
    return _pyproject()["project"]["version"]


def _yaml_files() -> list[Path]:
    return sorted([*CLUSTER.glob("*.yaml"), *CLUSTER.glob("*.yml")])


@cache
def _docs() -> tuple[tuple[str, Doc], ...]:
    """All YAML documents of cluster/, plus YAML embedded in ConfigMaps, with their origin."""
    found: list[tuple[str, Doc]] = []
    for path in _yaml_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            found.append((path.name, doc))
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")):
                        origin = f"{path.name}:{doc['metadata']['name']}/{key}"
                        found.extend(
                            (origin, sub) for sub in yaml.safe_load_all(text) if sub is not None
                        )
    return tuple(found)


def _k8s_docs(kind: str | None = None) -> list[tuple[str, Doc]]:
    return [
        (origin, doc)
        for origin, doc in _docs()
        if "apiVersion" in doc and (kind is None or doc.get("kind") == kind)
    ]


def _launcher() -> Doc:
    return yaml.safe_load((CLUSTER / "cluster-launcher.yaml").read_text())


def _job_specs() -> list[tuple[str, Doc]]:
    """RayJob specs: of RayJobs and of RayCronJob job templates."""
    specs = [(origin, doc["spec"]) for origin, doc in _k8s_docs("RayJob")]
    for origin, doc in _k8s_docs("RayCronJob"):
        template = doc["spec"]["jobTemplate"]
        specs.append((origin, template.get("spec", template)))  # tolerate a spec: wrapper
    return specs


def _cluster_specs() -> list[tuple[str, Doc]]:
    """RayCluster specs, standalone or inside RayJob specs."""
    specs = [(origin, doc["spec"]) for origin, doc in _k8s_docs("RayCluster")]
    specs += [(origin, spec["rayClusterSpec"]) for origin, spec in _job_specs()]
    return specs


def _pod_templates(cluster: Doc) -> Iterator[tuple[str, Doc]]:
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs") or []:
        yield f"worker group {group['groupName']}", group["template"]


def _walk(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _walk(item)


def _entrypoints() -> list[tuple[str, str]]:
    return [(origin, " ".join(spec["entrypoint"].split())) for origin, spec in _job_specs()]


# ------------------------------------------------------------------------------------------
# Files and versions
# ------------------------------------------------------------------------------------------


def test_expected_files_exist() -> None:
    missing = [name for name in EXPECTED_FILES if not (CLUSTER / name).is_file()]
    assert not missing, f"missing in cluster/: {missing}"


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.name)
def test_manifest_parses(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path.name} is empty"
    if path.name == "cluster-launcher.yaml":
        return
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: {doc}"
        meta = doc["metadata"]
        assert meta.get("name") or meta.get("generateName"), f"{path.name}: unnamed object"


def _check_image(image: str, where: str) -> None:
    ray, proj = ray_version(), project_version()
    repo, _, tag = image.rpartition(":")
    name = repo.rsplit("/", 1)[-1]
    if name == "ray":
        assert repo == "rayproject/ray" and tag in (f"{ray}-py311", f"{ray}-py311-gpu"), (
            f"{where}: {image} is not rayproject/ray:{ray}-py311[-gpu]"
        )
    elif name == "medai":
        expected = (f"{proj}-ray{ray}-py311", f"{proj}-ray{ray}-py311-gpu")
        assert tag in expected, f"{where}: {image} is not medai:{expected[0]}[-gpu]"
    else:
        assert OTHER_IMAGES.match(image), f"{where}: unexpected image {image}"


def test_images_match_ray_pin() -> None:
    images = [
        (origin, value)
        for origin, doc in _k8s_docs()
        for key, value in _walk(doc)
        if key == "image"
    ]
    launcher = _launcher()
    dockers = [launcher.get("docker") or {}] + [
        node.get("docker") or {} for node in launcher["available_node_types"].values()
    ]
    images += [
        ("cluster-launcher.yaml", docker[key])
        for docker in dockers
        for key in ("image", "head_image", "worker_image")
        if key in docker
    ]
    assert len(images) >= 10
    for origin, image in images:
        _check_image(image, origin)


def test_ray_version_fields_match_pin() -> None:
    versions = [
        (origin, value)
        for origin, doc in _k8s_docs()
        for key, value in _walk(doc)
        if key == "rayVersion"
    ]
    assert len(versions) == len(_cluster_specs())
    for origin, value in versions:
        assert str(value) == ray_version(), f"{origin}: rayVersion {value} != {ray_version()}"


def test_gpu_pods_use_gpu_images() -> None:
    for origin, cluster in _cluster_specs():
        for where, template in _pod_templates(cluster):
            for container in template["spec"]["containers"]:
                limits = (container.get("resources") or {}).get("limits") or {}
                wants_gpu = "nvidia.com/gpu" in limits
                assert wants_gpu == container["image"].endswith("-gpu"), (
                    f"{origin} {where}: GPU request and image {container['image']} disagree"
                )


def _dockerfile_from() -> str:
    args: dict[str, str] = {}
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        line = line.strip()
        if line.startswith("ARG ") and "=" in line:
            name, _, default = line[4:].partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif line.startswith("FROM "):
            image = line.split()[1]
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)
    raise AssertionError("cluster/Dockerfile has no FROM")


def test_dockerfile_matches_ray_pin() -> None:
    assert _dockerfile_from() == f"rayproject/ray:{ray_version()}-py311"
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^WORKDIR /app$", text, re.M), "the code must live in /app, the workdir"
    assert "pip install --no-cache-dir ." in text
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


# ------------------------------------------------------------------------------------------
# Jobs
# ------------------------------------------------------------------------------------------


def test_rayjobs_shut_down_and_run_project_jobs() -> None:
    specs = _job_specs()
    assert len(specs) >= 5  # train, score, report, nightly (RayCronJob) and nightly (CronJob)
    for origin, spec in specs:
        assert spec.get("shutdownAfterJobFinishes") is True, origin
        assert "rayClusterSpec" in spec, origin
        entrypoint = " ".join(spec["entrypoint"].split())
        assert ENTRYPOINT.match(entrypoint), f"{origin}: entrypoint {entrypoint!r}"
    for job in ("train", "score", "report"):
        ((origin, spec),) = [(o, s) for o, s in _job_specs() if o == f"rayjob-{job}.yaml"]
        assert ENTRYPOINT.match(spec["entrypoint"]).group("job") == job, origin
    named = {ENTRYPOINT.match(e).group("job") for _, e in _entrypoints()}
    assert named == set(JOBS)


def _help_text(job: str) -> str:
    script = REPO / "jobs" / f"{job}.py"
    assert script.is_file(), f"jobs/{job}.py, named by the cluster manifests, does not exist"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run(
        [sys.executable, f"jobs/{job}.py", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"jobs/{job}.py --help failed:\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.parametrize("job", JOBS)
def test_entrypoint_script_answers_help(job: str) -> None:
    help_text = _help_text(job)
    used = [e for _, e in _entrypoints() if ENTRYPOINT.match(e).group("job") == job]
    assert used, f"no manifest runs jobs/{job}.py"
    for entrypoint in used:
        for option in re.findall(r"(?<!\S)(--[\w-]+)", entrypoint):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), (
                f"jobs/{job}.py --help does not list {option}, which the manifests pass"
            )


# ------------------------------------------------------------------------------------------
# Token authentication and storage
# ------------------------------------------------------------------------------------------


def _has_token_env(env: list[Doc] | None) -> bool:
    by_name = {item["name"]: item for item in env or []}
    mode = by_name.get("RAY_AUTH_MODE", {}).get("value")
    ref = (by_name.get("RAY_AUTH_TOKEN", {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    return mode == "token" and (ref.get("name"), ref.get("key")) == TOKEN_SECRET


def test_token_auth_on_every_ray_container() -> None:
    for origin, cluster in _cluster_specs():
        if (cluster.get("authOptions") or {}).get("mode") == "token":
            continue
        for where, template in _pod_templates(cluster):
            ray_container = template["spec"]["containers"][0]
            assert _has_token_env(ray_container.get("env")), f"{origin} {where}: no token env"
        if cluster.get("enableInTreeAutoscaling"):
            env = (cluster.get("autoscalerOptions") or {}).get("env")
            assert _has_token_env(env), f"{origin}: autoscaler has no token env"
    for origin, spec in _job_specs():
        if (spec["rayClusterSpec"].get("authOptions") or {}).get("mode") == "token":
            continue
        assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode", origin
        submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
        assert _has_token_env(submitter.get("env")), f"{origin}: submitter has no token env"
        _check_image(submitter["image"], origin)

    launcher = _launcher()
    assert "--env RAY_AUTH_MODE=token" in launcher["docker"]["run_options"]
    assert "~/.ray/auth_token" in launcher["file_mounts"]


def test_shared_volume_everywhere() -> None:
    ((_, claim),) = _k8s_docs("PersistentVolumeClaim")
    assert claim["metadata"]["name"] == SHARED_CLAIM
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for origin, cluster in _cluster_specs():
        for where, template in _pod_templates(cluster):
            volumes = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in template["spec"].get("volumes") or []
                if "persistentVolumeClaim" in v
            }
            mounts = {
                m["mountPath"]: m["name"]
                for m in template["spec"]["containers"][0].get("volumeMounts") or []
            }
            assert volumes.get(mounts.get(SHARED_MOUNT)) == SHARED_CLAIM, (
                f"{origin} {where}: {SHARED_CLAIM} not mounted at {SHARED_MOUNT}"
            )


# ------------------------------------------------------------------------------------------
# Autoscaling, scheduling, VMs
# ------------------------------------------------------------------------------------------


def test_raycluster_autoscaling_bounds() -> None:
    ((_, cluster),) = [(o, d["spec"]) for o, d in _k8s_docs("RayCluster")]
    assert cluster["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1
    for origin, spec in _cluster_specs():
        for group in spec.get("workerGroupSpecs") or []:
            low, high = group["minReplicas"], group["maxReplicas"]
            assert 0 <= low <= group.get("replicas", low) <= high and high >= 1, (
                f"{origin} {group['groupName']}: replicas outside [{low}, {high}]"
            )


def test_nightly_schedules() -> None:
    ((origin, cron),) = _k8s_docs("RayCronJob")
    assert cron["apiVersion"] == "ray.io/v1"
    assert len(cron["spec"]["schedule"].split()) == 5, origin

    docs = [doc for o, doc in _k8s_docs() if o == "cronjob-nightly.yaml"]
    kinds = {doc["kind"]: doc for doc in docs}
    job = kinds["CronJob"]
    assert job["apiVersion"] == "batch/v1" and len(job["spec"]["schedule"].split()) == 5
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    assert kinds["ServiceAccount"]["metadata"]["name"] == account
    binding = kinds["RoleBinding"]
    assert {"kind": "ServiceAccount", "name": account} in binding["subjects"]
    role = kinds["Role"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert any(
        "ray.io" in rule["apiGroups"]
        and "rayjobs" in rule["resources"]
        and "create" in rule["verbs"]
        for rule in role["rules"]
    )
    command = " ".join(pod["containers"][0]["command"])
    assert command.startswith("kubectl create -f /etc/medai/")
    (nightly,) = [doc for o, doc in _docs() if o.startswith("cronjob-nightly.yaml:")]
    assert nightly["kind"] == "RayJob" and nightly["metadata"]["generateName"]
    mounted = command.rsplit("/", 1)[1]
    assert mounted in kinds["ConfigMap"]["data"], f"{mounted} is not in the ConfigMap"


def test_cluster_launcher() -> None:
    launcher = _launcher()
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != launcher["head_node_type"]}
    assert len(workers) >= 2
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
    assert sum(node["max_workers"] for node in workers.values()) <= launcher["max_workers"]
    assert any("pip install" in cmd for cmd in launcher["setup_commands"])
    assert any("ray start --head" in cmd for cmd in launcher["head_start_ray_commands"])
    # The dashboard takes job submissions: loopback only, reached through an SSH tunnel.
    (start,) = [cmd for cmd in launcher["head_start_ray_commands"] if "ray start --head" in cmd]
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start


# ------------------------------------------------------------------------------------------
# KubeRay CRD schemas, applied as the API server applies them
# ------------------------------------------------------------------------------------------

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# The CRDs leave the root metadata to the API server, which checks it as an ObjectMeta.
_OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "generateName": {"type": "string", "maxLength": 248},
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_SUBDOMAIN},
        "labels": {
            "type": "object",
            "propertyNames": {"pattern": _LABEL_KEY, "maxLength": 316},
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE},
        },
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
}
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def structural(schema: Any, root: bool = True) -> Any:
    """A CRD ``openAPIV3Schema`` as plain Draft 7 JSON Schema, with the API server's rules.

    * Unknown fields are errors (kubectl's default ``--validate=strict``): every object with
      ``properties`` gets ``additionalProperties: false`` unless it declares
      ``x-kubernetes-preserve-unknown-fields`` or its own ``additionalProperties``.
    * ``x-kubernetes-int-or-string`` accepts an integer or a string; ``nullable`` accepts null.
    * ``x-kubernetes-embedded-resource`` objects accept ``apiVersion``, ``kind``, ``metadata``.
    * The root ``metadata`` is checked as an ObjectMeta (name, labels, annotations...).
    * ``x-kubernetes-list-type`` (map / set) is kept for :func:`crd_validator` to enforce.

    ``x-kubernetes-validations`` (CEL rules) are not evaluated here.
    """
    if isinstance(schema, list):
        return [structural(item, root=False) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        key: structural(value, root=False)
        for key, value in schema.items()
        if key not in ("description", "default", "nullable", "x-kubernetes-validations")
    }
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {
            name: structural(value, root=False) for name, value in schema["properties"].items()
        }
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in schema:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", copy.deepcopy(_OBJECT_META))
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and not preserve and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if root:
        out["properties"]["metadata"] = copy.deepcopy(_OBJECT_META)
        out["properties"]["metadata"]["additionalProperties"] = False
        out["required"] = sorted({*out.get("required", []), "apiVersion", "kind", "metadata"})
    return out


def _list_type(validator, list_type, instance, schema):
    import jsonschema

    if not validator.is_type(instance, "array"):
        return
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for item in instance:
            key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate entry for map keys {keys}: {key}")
            seen.add(key)
    elif list_type == "set":
        dumped = [json.dumps(item, sort_keys=True) for item in instance]
        if len(set(dumped)) != len(dumped):
            yield jsonschema.ValidationError("duplicate entries in a set list")


def _int_format(validator, fmt, instance, schema):
    import jsonschema

    if fmt in _INT_RANGES and validator.is_type(instance, "integer"):
        low, high = _INT_RANGES[fmt]
        if not low <= instance <= high:
            yield jsonschema.ValidationError(f"{instance} is out of the {fmt} range")


@cache
def crd_validator(kind: str):
    """A Draft 7 validator of ``kind`` from ``CRDS/<kind>-v1.json``, with the API server's rules."""
    import jsonschema

    schema = structural(json.loads((CRDS / f"{kind}-v1.json").read_text()))
    schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
    schema["properties"]["kind"] = {"const": kind}
    checker = jsonschema.validators.extend(
        jsonschema.Draft7Validator,
        {"x-kubernetes-list-type": _list_type, "format": _int_format},
    )
    checker.check_schema(schema)
    return checker(schema)


def crd_errors(doc: Doc) -> list[str]:
    """Every way ``doc`` breaks its CRD schema, as ``path: message`` lines."""
    validator = crd_validator(doc["kind"])
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def _kuberay_docs() -> list[tuple[str, Doc]]:
    return [
        (origin, doc)
        for origin, doc in _k8s_docs()
        if str(doc.get("apiVersion", "")).startswith("ray.io/")
    ]


@pytest.fixture(scope="module")
def crds() -> Path:
    pytest.importorskip("jsonschema", reason="jsonschema is in the test extra")
    if not all((CRDS / f"{kind}-v1.json").is_file() for kind in KUBERAY_KINDS):
        pytest.skip(f"KubeRay CRD schemas not found in {CRDS}")
    return CRDS


def test_kuberay_resources_match_the_crd_schemas(crds: Path) -> None:
    docs = _kuberay_docs()
    kinds = sorted(doc["kind"] for _, doc in docs)
    # raycluster, 3 rayjobs, the RayCronJob and the RayJob inside the nightly ConfigMap.
    assert kinds == ["RayCluster", "RayCronJob", "RayJob", "RayJob", "RayJob", "RayJob"], kinds
    problems = {origin: crd_errors(doc) for origin, doc in docs}
    problems = {origin: errors for origin, errors in problems.items() if errors}
    assert not problems, json.dumps(problems, indent=2)


def _broken(doc: Doc, change) -> Doc:
    doc = copy.deepcopy(doc)
    change(doc)
    return doc


def _first_worker(spec: Doc) -> Doc:
    return spec["workerGroupSpecs"][0]


BREAKAGES = {
    "unknown field": (
        lambda d: d["spec"]["headGroupSpec"].__setitem__("rayStartParam", {}),
        "Additional properties are not allowed ('rayStartParam' was unexpected)",
    ),
    "rayStartParams value not a string": (
        lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0),
        "0 is not of type 'string'",
    ),
    "replicas as a string": (
        lambda d: _first_worker(d["spec"]).__setitem__("replicas", "2"),
        "'2' is not of type 'integer'",
    ),
    "unknown container field": (
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].__setitem__(
            "imagePullPolicyy", "Always"
        ),
        "'imagePullPolicyy' was unexpected",
    ),
    "bad quantity": (
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ].__setitem__("memory", "16 GB"),
        "does not match",
    ),
    "duplicate container port": (
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"].append(
            {"containerPort": 6379, "name": "again"}
        ),
        "duplicate entry for map keys",
    ),
    "bad label value": (
        lambda d: d["metadata"]["labels"].__setitem__("medai/job", "not a label value"),
        "does not match",
    ),
    "wrong apiVersion": (lambda d: d.__setitem__("apiVersion", "ray.io/v1alpha1"), "ray.io/v1"),
}


@pytest.mark.parametrize("name", list(BREAKAGES))
def test_crd_check_catches_what_the_api_server_rejects(crds: Path, name: str) -> None:
    ((_, cluster),) = [(o, d) for o, d in _kuberay_docs() if d["kind"] == "RayCluster"]
    assert crd_errors(cluster) == []
    change, message = BREAKAGES[name]
    errors = crd_errors(_broken(cluster, change))
    assert any(message in error for error in errors), errors


def test_structural_schema_rules() -> None:
    schema = structural(
        {
            "type": "object",
            "properties": {
                "metadata": {"type": "object"},
                "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "size": {"x-kubernetes-int-or-string": True},
                "maybe": {"type": "string", "nullable": True},
            },
        }
    )
    assert schema["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["open"]
    assert schema["properties"]["size"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert schema["properties"]["maybe"]["type"] == ["string", "null"]
    assert schema["properties"]["metadata"]["properties"]["labels"]["additionalProperties"]


def test_dicomweb_credentials_come_from_a_secret_on_head_and_workers() -> None:
    """Scoring, nightly and training jobs see MEDAI_DICOMWEB_* from the Secret medai-dicomweb on
    the head (listing, SRs) and every worker (retrieval); no manifest spells a credential out."""
    for origin, spec in _job_specs():
        if not origin.startswith(("rayjob-score", "raycronjob-nightly", "rayjob-train")):
            continue
        cluster = spec["rayClusterSpec"]
        groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
        for group in groups:
            for container in group["template"]["spec"]["containers"]:
                refs = [e.get("secretRef", {}) for e in container.get("envFrom", [])]
                assert {"name": "medai-dicomweb", "optional": True} in refs, (origin, container)
    for path in _yaml_files():
        text = path.read_text()
        assert "MEDAI_DICOMWEB_PASSWORD=" not in text.replace("MEDAI_DICOMWEB_PASSWORD='...'", "")
