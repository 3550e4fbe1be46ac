"""compose.yml cannot run here (no Docker engine), so check it against the project by construction:
every hotpath command is a real subcommand, every HOTPATH_* variable is a known setting, every
image that is built comes from the repo's Dockerfile, and what the Dockerfile copies exists; and no secret
is written in it: each comes from the environment as a required variable, named in the README."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import typer.main
import yaml

from hotpath.cli import app
from hotpath.settings import DEV_JWT_SECRET, describe_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yml").read_text())
KNOWN_VARS = {row["name"] for row in describe_settings()}


def _argv(cmd) -> list[str]:
    return cmd if isinstance(cmd, list) else cmd.split()


def _resolve(argv: list[str]):
    """Walk the click tree of `hotpath` along argv; fail if a subcommand does not exist."""
    cmd = typer.main.get_command(app)
    args = list(argv)
    while hasattr(cmd, "list_commands") and args:  # a group (typer's own group class in typer >= 0.20)
        name = args.pop(0)
        sub = cmd.get_command(cmd.make_context(cmd.name, [], resilient_parsing=True), name)
        assert sub is not None, f"`hotpath {' '.join(argv)}`: no subcommand {name!r}"
        cmd = sub
    # the remaining args must parse for this command
    cmd.make_context(cmd.name, args, resilient_parsing=False)
    return cmd


def _hotpath_services():
    return {n: s for n, s in COMPOSE["services"].items() if s.get("image", "").startswith("hotpath") or "build" in s}


def test_every_hotpath_service_runs_a_real_subcommand():
    services = _hotpath_services()
    assert {"api", "index-worker", "thumb-worker", "origin-init"} <= set(services)
    for name, svc in services.items():
        argv = _argv(svc["command"])
        assert argv[0] == "hotpath", f"{name}: command must be the hotpath CLI, got {argv}"
        _resolve(argv[1:])


def test_unknown_subcommand_is_caught_by_the_check():
    with pytest.raises(AssertionError):
        _resolve(["worker-of-nothing"])


def test_every_hotpath_variable_is_a_known_setting():
    seen = set()
    for name, svc in COMPOSE["services"].items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for var in env:
            if var.startswith("HOTPATH_"):
                seen.add(var)
                assert var in KNOWN_VARS, f"service {name}: {var} is not a hotpath setting"
    assert {"HOTPATH_REDIS_URL", "HOTPATH_ORIGIN_URL", "HOTPATH_MILVUS_URI", "HOTPATH_S3_ENDPOINT"} <= seen


def test_healthchecks_reference_real_things():
    for name, svc in _hotpath_services().items():
        test = (svc.get("healthcheck") or {}).get("test")
        if not test:
            continue
        argv = test[1:] if test[0] in ("CMD", "CMD-SHELL") else test
        if argv[0] == "arq":
            module, attr = argv[-1].rsplit(".", 1)
            assert hasattr(importlib.import_module(module), "build_worker_settings"), name
            assert attr == "WorkerSettings"
        elif argv[0] == "hotpath":
            _resolve(argv[1:])
        else:
            assert argv[0] == "python", f"{name}: unexpected healthcheck {test}"
            assert "/readyz" in argv[-1]


def test_required_backing_services_use_official_images():
    images = {n: s.get("image", "") for n, s in COMPOSE["services"].items()}
    assert images["redis"].startswith("redis:")
    assert images["etcd"].startswith("quay.io/coreos/etcd:")
    assert images["milvus"].startswith("milvusdb/milvus:")
    assert images["minio"].startswith("minio/minio:")
    assert images["postgres"].startswith("postgres:")
    for name, svc in COMPOSE["services"].items():
        for dep in svc.get("depends_on") or {}:
            assert dep in COMPOSE["services"], f"{name} depends on unknown service {dep}"


def test_dockerfile_builds_what_compose_runs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY\s+(\S+)", dockerfile, flags=re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies {part}, which is not in the repo"
    for pkg in ("hotpath", "cacheman", "taskkit", "index_worker", "thumb_worker"):
        assert f"COPY {pkg} " in dockerfile, f"Dockerfile does not copy package {pkg}"
    assert "torch==2.13.0" in dockerfile
    for name, svc in _hotpath_services().items():
        if "build" in svc:
            ctx = svc["build"] if isinstance(svc["build"], str) else svc["build"].get("context", ".")
            assert (ROOT / ctx / "Dockerfile").exists(), name


# --- secrets: every one comes from the environment, in compose's required form ------------------------

SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|ROOT_USER")
REQUIRED_VAR = re.compile(r"\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}")
URL_PASSWORD = re.compile(r"://[^/:@\s]+:(?P<password>[^@\s]*)@")
KNOWN_DEFAULT_SECRETS = ("minioadmin", DEV_JWT_SECRET)


def _environments(compose: dict):
    for name, svc in (compose.get("services") or {}).items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        yield name, env


def literal_secrets(compose: dict) -> list[str]:
    """Environment entries that hold a secret other than as `${VAR:?message}` (a required variable)."""
    found = []
    for name, env in _environments(compose):
        for var, value in env.items():
            value = "" if value is None else str(value)
            if SECRET_NAME.search(var) and not REQUIRED_VAR.fullmatch(value):
                found.append(f"{name}: {var}={value!r}")
            m = URL_PASSWORD.search(value)
            if m and not REQUIRED_VAR.fullmatch(m.group("password")):
                found.append(f"{name}: {var} has a literal password in its URL")
    return found


def test_no_secret_has_a_literal_value():
    assert literal_secrets(COMPOSE) == []


def test_the_secret_check_catches_literals():
    bad = {"services": {
        "a": {"environment": {"HOTPATH_JWT_KEYS": '{"k": "literal"}', "MINIO_ROOT_USER": "admin"}},
        "b": {"environment": ["POSTGRES_PASSWORD=hotpath", "HOTPATH_S3_SECRET_KEY=${S3_SECRET}"]},  # no :? → optional
        "c": {"environment": {"HOTPATH_ORIGIN_URL": "postgresql+asyncpg://u:pw@db/x"}},
    }}
    assert len(literal_secrets(bad)) == 5, literal_secrets(bad)
    good = {"services": {"a": {"environment": {"HOTPATH_JWT_KEYS": "${HOTPATH_JWT_KEYS:?set it}",
                                               "HOTPATH_ORIGIN_URL": "postgresql+asyncpg://u:${PG:?set PG}@db/x"}}}}
    assert literal_secrets(good) == []


def test_no_known_default_secret_appears_anywhere():
    text = (ROOT / "compose.yml").read_text()
    for secret in KNOWN_DEFAULT_SECRETS:
        assert secret not in text, f"compose.yml contains the default secret {secret!r}"


def test_readme_names_every_required_variable():
    required = set(REQUIRED_VAR.findall((ROOT / "compose.yml").read_text()))
    assert {"HOTPATH_JWT_KEYS", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD"} <= required, required
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Secrets", 1)[1].split("\n## ", 1)[0] if "## Secrets" in readme else ""
    for var in required:
        assert f"`{var}`" in section, f"README's Secrets section does not say to set {var}"


def test_minio_posts_its_events_to_the_storage_event_route_with_the_api_token():
    from thumb_worker.intake import PATH

    minio, api = COMPOSE["services"]["minio"]["environment"], COMPOSE["services"]["api"]["environment"]
    target = "hotpath"
    assert minio[f"MINIO_NOTIFY_WEBHOOK_ENABLE_{target}"] == "on"
    assert minio[f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{target}"] == f"http://api:{api['HOTPATH_PORT']}{PATH}"
    token = minio[f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{target}"]
    assert token == api["HOTPATH_STORAGE_WEBHOOK_TOKEN"] and REQUIRED_VAR.fullmatch(token)
    queue_dir = minio[f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{target}"]  # events survive a restart: on a volume
    assert any(v.split(":")[1] == queue_dir for v in COMPOSE["services"]["minio"]["volumes"])
    buckets = " ".join(COMPOSE["services"]["minio-buckets"]["command"])
    assert f"mc event add --ignore-existing local/uploads arn:minio:sqs::{target}:webhook --event put,delete" in buckets
    assert COMPOSE["services"]["thumb-worker"]["environment"]["MALLOC_ARENA_MAX"] == "2"


# --- compose.cluster.yml: the scaled-out topology, merged over compose.yml ------------------------------

CLUSTER = yaml.safe_load((ROOT / "compose.cluster.yml").read_text())


def merged(base: dict, override: dict) -> dict:
    """`docker compose -f base -f override` for what these tests read: services' mappings (environment,
    depends_on) merge key by key, other fields are replaced."""
    services = {name: dict(svc) for name, svc in base["services"].items()}
    for name, svc in override["services"].items():
        into = services.setdefault(name, {})
        for key, value in svc.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                into[key] = {**into[key], **value}
            else:
                into[key] = value
    return {"services": services, "volumes": {**(base.get("volumes") or {}), **(override.get("volumes") or {})}}


MERGED = merged(COMPOSE, CLUSTER)


def test_cluster_file_overrides_only_known_services_and_variables():
    for name, svc in CLUSTER["services"].items():
        if "image" not in svc:  # an override of a compose.yml service
            assert name in COMPOSE["services"], f"compose.cluster.yml overrides {name}, which compose.yml lacks"
        for var in svc.get("environment") or {}:
            if var.startswith("HOTPATH_"):
                assert var in KNOWN_VARS, f"compose.cluster.yml, service {name}: {var} is not a hotpath setting"
        for dep in svc.get("depends_on") or {}:
            assert dep in MERGED["services"], f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0]
            assert src.startswith(".") or src in MERGED["volumes"], f"{name}: undeclared volume {src}"
    assert literal_secrets(CLUSTER) == []
    for name in _hotpath_services():  # the merged hotpath services still run real subcommands
        _resolve(_argv(MERGED["services"][name]["command"])[1:])


def test_cluster_topology_is_three_masters_with_a_replica_each():
    nodes = {n: s for n, s in MERGED["services"].items() if "--cluster-enabled" in _argv(s.get("command", []))}
    assert len(nodes) == 6, sorted(nodes)
    for name, svc in nodes.items():
        argv = _argv(svc["command"])
        assert argv[argv.index("--cluster-enabled") + 1] == "yes", name
        assert argv[argv.index("--cluster-require-full-coverage") + 1] == "no", name  # docs/cluster.md
    create = " ".join(_argv(MERGED["services"]["redis-cluster-init"]["command"]))
    listed = re.findall(r"(redis-node-\d+):6379", create.split("--cluster create", 1)[1])
    assert sorted(listed) == sorted(nodes) and "--cluster-replicas 1" in create  # 6 nodes, 1 replica each: 3 masters
    assert set(nodes) <= set(MERGED["services"]["redis-cluster-init"]["depends_on"])


def test_cluster_deployment_keeps_the_queues_off_the_cluster_behind_sentinels():
    from hotpath.settings import ApiSettings
    from taskkit.connection import parse_sentinels

    for name in ("api", "index-worker", "thumb-worker"):
        env = MERGED["services"][name]["environment"]
        assert env["HOTPATH_REDIS_CLUSTER"] == "true"
        seeds = {u.split("//")[1].split(":")[0] for u in env["HOTPATH_REDIS_URL"].split(",")}
        assert seeds <= set(MERGED["services"]), seeds
        # the settings accept it, and the queues resolve to the Sentinels' master, not to the cluster
        s = ApiSettings(redis_url=env["HOTPATH_REDIS_URL"], redis_cluster=True,
                        queue_redis_url=env["HOTPATH_QUEUE_REDIS_URL"], queue_sentinels=env["HOTPATH_QUEUE_SENTINELS"],
                        queue_sentinel_master=env["HOTPATH_QUEUE_SENTINEL_MASTER"],
                        queue_wait_replicas=int(env["HOTPATH_QUEUE_WAIT_REPLICAS"]), jwt_keys={"k": "k" * 40})
        queue = s.queue_redis_config()
        assert queue.sentinel and queue.sentinel_master == env["HOTPATH_QUEUE_SENTINEL_MASTER"]
        sentinels = {h for h, _ in parse_sentinels(env["HOTPATH_QUEUE_SENTINELS"])}
        assert sentinels <= set(MERGED["services"]) and not sentinels & seeds
        for sentinel in sentinels:  # each monitors the queues' master by that name, on the single-node `redis`
            script = " ".join(_argv(MERGED["services"][sentinel]["command"]))
            assert f"sentinel monitor {queue.sentinel_master} redis 6379" in script, sentinel
    replica = _argv(MERGED["services"]["redis-queue-replica"]["command"])
    assert replica[replica.index("--replicaof") + 1:replica.index("--replicaof") + 3] == ["redis", "6379"]
    assert "--cluster-enabled" not in _argv(MERGED["services"]["redis"]["command"])
    assert int(MERGED["services"]["api"]["environment"]["HOTPATH_API_WORKERS"]) >= 2


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with a key given twice (compose would take the last silently)."""


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        assert key not in seen, f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping"
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


@pytest.mark.parametrize("name", ["compose.yml", "compose.cluster.yml"])
def test_no_key_is_given_twice(name):
    yaml.load((ROOT / name).read_text(), Loader=_UniqueKeyLoader)


def test_the_duplicate_check_catches_a_duplicate():
    with pytest.raises(AssertionError, match="appears twice"):
        yaml.load("a:\n  x: 1\n  x: 2\n", Loader=_UniqueKeyLoader)
