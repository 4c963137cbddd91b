"""Static checks of the deployment files: docker-compose.yml, the Dockerfiles, .dockerignore,
Prometheus and Grafana provisioning. No Docker engine is needed (or used)."""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from pydantic import BaseModel

from genre.core.config import GenreConfig, load_config
from genre.workers.service import ROLES

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "gpu": DEPLOY / "Dockerfile.gpu"}
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "genre.yml"
GRAFANA_DASHBOARDS = DEPLOY / "grafana" / "dashboards"
CLUSTER_OVERRIDE = DEPLOY / "compose.kafka-cluster.yml"
LLM_OVERRIDE = DEPLOY / "compose.llm.yml"
README = REPO / "README.md"

EXPECTED_SERVICES = {
    "kafka",
    "kafka-init",
    "kafka-1",
    "kafka-2",
    "kafka-3",
    "qdrant",
    "stream",
    "item-encoder",
    "scorer",
    "scorer-gpu",
    "item-encoder-gpu",
    "llm",
    "prometheus",
    "grafana",
    "api",
}
#: What `docker compose up` starts with no profile: the single-node stack, one
#: CPU worker service per role.
DEFAULT_SERVICES = {
    "kafka",
    "kafka-init",
    "qdrant",
    "stream",
    "item-encoder",
    "scorer",
    "prometheus",
    "grafana",
    "api",
}
PROFILES = {
    "gpu": {"scorer-gpu", "item-encoder-gpu"},
    "kafka-cluster": {"kafka-1", "kafka-2", "kafka-3"},
    "llm": {"llm"},
}
CLUSTER_BROKERS = ("kafka-1", "kafka-2", "kafka-3")
#: The documented ways to run the stack: extra compose files and the profiles they need.
VARIANTS = {
    "default": ((), ()),
    "gpu": ((), ("gpu",)),
    "kafka-cluster": ((CLUSTER_OVERRIDE,), ("kafka-cluster",)),
    "llm": ((LLM_OVERRIDE,), ("llm",)),
    "all": ((CLUSTER_OVERRIDE, LLM_OVERRIDE), ("gpu", "kafka-cluster", "llm")),
}
ONE_SHOT = {"kafka-init"}
#: Worker service -> the role its command names (`genre worker --role ROLE`).
WORKER_ROLES = {
    "stream": "stream",
    "item-encoder": "encoder",
    "scorer": "scorer",
    "scorer-gpu": "scorer",
    "item-encoder-gpu": "encoder",
}
WORKERS = tuple(WORKER_ROLES)
GPU_WORKERS = {"scorer-gpu", "item-encoder-gpu"}
#: Image -> the one service that builds it and from which Dockerfile.
IMAGE_BUILDS = {
    "genre-worker:cpu": ("stream", "deploy/Dockerfile"),
    "genre-worker:gpu": ("scorer-gpu", "deploy/Dockerfile.gpu"),
}
#: The Prometheus job that scrapes each role.
ROLE_JOBS = {"stream": "genre-stream", "encoder": "genre-item-encoder", "scorer": "genre-scorer"}
#: kafka.topics whose partitions bound a role's busy replicas (one consumer group per role).
ROLE_TOPICS = {
    "stream": ("clicks", "user_clicks"),
    "encoder": ("items",),
    "scorer": ("score_requests", "profile_requests"),
}
DEPENDS_ON_CONDITIONS = {
    "service_started",
    "service_healthy",
    "service_completed_successfully",
}
TORCH_PIN = "torch==2.13.0"


# ---------------------------------------------------------------------------
# compose helpers
# ---------------------------------------------------------------------------


INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, environ: dict[str, str]) -> Any:
    """Compose's variable interpolation of every string value: ``$$``, ``$VAR``, ``${VAR}``,
    ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = environ.get(name)
        unset = current is None or (current == "" and op in (":-", ":?"))
        if op in ("-", ":-"):
            return arg if unset else current  # type: ignore[return-value]
        if op in ("?", ":?"):
            if unset:
                raise AssertionError(f"${{{name}}} is required: {arg}")
            return current  # type: ignore[return-value]
        return current or ""

    return INTERPOLATION.sub(sub, value)


def merge(base: Any, over: Any) -> Any:
    """Compose's merge of an override file, for what ours use: mappings (services,
    environment, depends_on) merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return over


def load_compose(*overrides: Path, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml plus override files, interpolated as compose would (default: no
    variables set, so every ``${VAR:-default}`` takes its default)."""
    data: dict[str, Any] = {}
    for path in (COMPOSE, *overrides):
        assert path.is_file(), f"{path} is missing"
        part = yaml.safe_load(path.read_text())
        assert isinstance(part, dict), f"{path.name} must be a mapping"
        data = merge(data, part)
    return interpolate(data, environ or {})


def enabled_services(compose: dict[str, Any], profiles: tuple[str, ...]) -> set[str]:
    """The services `docker compose --profile ...` starts (scaled to 0 ones included)."""
    return {
        name
        for name, svc in _services(compose).items()
        if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)
    }


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """(name, merged compose, active profiles) for each documented way to run the stack."""
    overrides, profiles = VARIANTS[request.param]
    return request.param, load_compose(*overrides), profiles


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose.get("services")
    assert isinstance(services, dict) and services, "compose has no services"
    return services


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict of strings (map or KEY=VALUE list form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {
        str(k): "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in env.items()
    }


def depends_on_errors(compose: dict[str, Any]) -> list[str]:
    """Every depends_on must be a mapping naming a known service with a condition."""
    errors = []
    services = compose.get("services") or {}
    for name, svc in services.items():
        deps = svc.get("depends_on")
        if deps is None:
            continue
        if not isinstance(deps, dict):
            errors.append(f"{name}: depends_on is a bare list; give each service a condition")
            continue
        for dep, spec in deps.items():
            if dep not in services:
                errors.append(f"{name}: depends_on unknown service {dep!r}")
            cond = spec.get("condition") if isinstance(spec, dict) else None
            if cond not in DEPENDS_ON_CONDITIONS:
                errors.append(f"{name}: depends_on {dep!r} has no valid condition ({cond!r})")
    return errors


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path for the service's ./relative bind mounts."""
    out = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            source, target = vol.get("source", ""), vol.get("target", "")
        else:
            source, target = [*str(vol).split(":"), ""][:2]
        if source.startswith("."):
            out[target] = (REPO / source).resolve()
    return out


def command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command or []]


def worker_role(service: dict[str, Any]) -> str | None:
    """The role a service's `genre worker` runs (``--role``, else GENRE_WORKER_ROLE, else
    ``all``, as the CLI reads them); None when the service runs no worker."""
    words = command_words(service)
    runs_image_default = not words and str(service.get("image", "")).startswith("genre-worker:")
    if not runs_image_default and (not words or words[0] != "worker"):
        return None
    flags = [w.partition("=")[2] for w in words if w.startswith("--role=")]
    flags += [b for a, b in itertools.pairwise(words) if a == "--role"]
    assert len(flags) <= 1, f"--role given {len(flags)} times: {words}"
    env = environment(service).get("GENRE_WORKER_ROLE")
    if flags and env is not None:
        assert flags[0] == env, f"--role {flags[0]} but GENRE_WORKER_ROLE={env}"
    return flags[0] if flags else env or "all"


def worker_services(compose: dict[str, Any]) -> dict[str, str]:
    """Service name -> role, for every service that runs `genre worker`."""
    return {
        name: role
        for name, svc in _services(compose).items()
        if (role := worker_role(svc)) is not None
    }


def role_partitions(role: str) -> int:
    """The most replicas of a role that get a partition: more sit idle in the group."""
    topics = GenreConfig().kafka.topics
    return max(getattr(topics, t).partitions for t in ROLE_TOPICS[role])


def gpu_scale_commands(text: str) -> list[set[str]]:
    """For each `--profile gpu ... up` command in ``text`` (continuation lines joined), the
    services it scales to 0."""
    joined = text.replace("\\\n", " ")
    return [
        set(re.findall(r"--scale\s+([\w-]+)=0\b", line))
        for line in joined.splitlines()
        if "--profile gpu" in line and re.search(r"\bup\b", line)
    ]


# ---------------------------------------------------------------------------
# config-key helpers
# ---------------------------------------------------------------------------


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for cand in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def env_key_error(name: str) -> str | None:
    """Why GENRE_<SECTION>__<KEY> names no config key, or None when it names one.

    ``load_config`` silently skips unknown single-word names (GENRE_TANSU_BIN...), so a
    misspelt top-level key would pass it; this walk of the model tree does not.
    """
    keys = [k.lower() for k in name.removeprefix("GENRE_").split("__")]
    model: type[BaseModel] | None = GenreConfig
    for i, key in enumerate(keys):
        if model is None:
            return f"{name}: {'.'.join(keys[:i])} has no sub-keys"
        info = model.model_fields.get(key)
        if info is None:
            return f"{name}: no key {key!r} in {'.'.join(keys[:i]) or '<root>'}"
        model = _submodel(info.annotation)
    return None


def check_genre_env(env: dict[str, str], mounts: dict[str, Path]) -> GenreConfig:
    """Validate a container environment the way the worker will read it."""
    genre_vars = {k: v for k, v in env.items() if k.startswith("GENRE_")}
    # The variables load_config honours: GENRE_*, QDRANT_URL/QDRANT_API_KEY, OPENAI_API_KEY.
    environ = {
        k: v for k, v in env.items() if k.startswith(("GENRE_", "QDRANT_")) or k == "OPENAI_API_KEY"
    }
    if "GENRE_CONFIG" in genre_vars:
        # A file path, not a key: it must be a repo file mounted into the container.
        target = genre_vars.pop("GENRE_CONFIG")
        assert target in mounts, f"GENRE_CONFIG={target} is not a bind-mounted file"
        assert mounts[target].is_file(), f"{mounts[target]} (mounted at {target}) missing"
        environ["GENRE_CONFIG"] = str(mounts[target])
    errors = [e for e in map(env_key_error, genre_vars) if e]
    assert not errors, errors
    return load_config(environ=environ)


# ---------------------------------------------------------------------------
# Dockerfile parser
# ---------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    buf: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments (and parser directives) may sit inside continuations too
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(buf)
        buf = []
        instr, _, args = joined.partition(" ")
        out.append((instr.upper(), args.strip()))
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instr, args in dockerfile_instructions(text):
        if instr == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"unreadable FROM {args!r}"
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)",
                lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)),
                words[0],
            )
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert instr == "ARG", f"{instr} before the first FROM"
            key, _, value = args.partition("=")
            global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append((instr, args))
    return global_args, stages


def pip_installs(run_args: str) -> list[list[str]]:
    """The arguments of each `pip install` in a RUN command."""
    installs = []
    for segment in re.split(r"&&|\|\||;|\|", run_args):
        try:
            words = shlex.split(segment)
        except ValueError:
            words = segment.split()
        for i, word in enumerate(words[:-1]):
            if PurePosixPath(word).name in ("pip", "pip3") and words[i + 1] == "install":
                installs.append(words[i + 2 :])
                break
    return installs


def torch_installs(stage: Stage) -> list[str]:
    """Every pip-install argument of the stage that brings in torch or the train extra."""
    found = []
    for run in stage.args_of("RUN"):
        for args in pip_installs(run):
            found += [a for a in args if re.match(r"torch\b", a) or "[train" in a]
    return found


def copy_sources(stage: Stage) -> list[str]:
    """Build-context sources of the stage's COPY/ADD lines (COPY --from=... excluded)."""
    sources = []
    for instr, args in stage.instructions:
        if instr not in ("COPY", "ADD"):
            continue
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        assert len(words) >= 2, f"{instr} {args!r} needs a source and a destination"
        sources += words[:-1]
    return sources


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore (plain and **/ patterns, no negation) drops the path."""
    parts = PurePosixPath(path.rstrip("/")).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        pat = pat.strip("/")
        if pat.startswith("**/"):
            if any(fnmatch.fnmatch(p, pat[3:]) for p in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pat) for prefix in prefixes):
            return True
    return False


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[Stage]]:
    path = DOCKERFILES[request.param]
    assert path.is_file(), f"{path} is missing"
    _, stages = parse_dockerfile(path.read_text())
    return request.param, stages


def _stage(stages: list[Stage], name: str) -> Stage:
    named = {s.name: s for s in stages}
    assert name in named, f"no stage named {name!r}; stages: {list(named)}"
    return named[name]


# ---------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------


def test_compose_parses_with_expected_services(compose: dict[str, Any]) -> None:
    assert set(_services(compose)) >= EXPECTED_SERVICES, (
        f"missing services: {EXPECTED_SERVICES - set(_services(compose))}"
    )


def test_every_long_running_service_has_a_healthcheck(variant: Any) -> None:
    _, compose, _ = variant
    for name, svc in _services(compose).items():
        if name in ONE_SHOT:
            continue
        hc = svc.get("healthcheck")
        assert isinstance(hc, dict), f"{name} has no healthcheck"
        assert hc.get("test"), f"{name}: healthcheck without test"
        assert hc.get("interval"), f"{name}: healthcheck without interval"
        assert not hc.get("disable"), f"{name}: healthcheck disabled"


def test_every_service_has_a_restart_policy(variant: Any) -> None:
    _, compose, _ = variant
    for name, svc in _services(compose).items():
        restart = svc.get("restart")
        assert isinstance(restart, str), f"{name}: restart missing (or unquoted no)"
        if name in ONE_SHOT:
            assert restart in ("no", "on-failure") or restart.startswith("on-failure:"), (
                f"{name} is a one-shot job; restart must be 'no' or on-failure, got {restart!r}"
            )
        else:
            assert restart in ("always", "unless-stopped") or restart.startswith("on-failure"), (
                f"{name}: restart {restart!r}"
            )


def test_depends_on_always_has_conditions(compose: dict[str, Any]) -> None:
    assert depends_on_errors(compose) == []
    services = _services(compose)
    for worker in WORKERS:
        deps = services[worker]["depends_on"]
        assert deps["kafka-init"]["condition"] == "service_completed_successfully"
        assert deps["qdrant"]["condition"] == "service_healthy"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_depends_on_validator_rejects_bare_lists_and_missing_conditions() -> None:
    bare = {"services": {"a": {"image": "x"}, "b": {"image": "y", "depends_on": ["a"]}}}
    assert any("bare list" in e for e in depends_on_errors(bare))
    no_cond = {"services": {"a": {}, "b": {"depends_on": {"a": {"required": True}}}}}
    assert any("no valid condition" in e for e in depends_on_errors(no_cond))
    unknown = {"services": {"b": {"depends_on": {"zz": {"condition": "service_healthy"}}}}}
    assert any("unknown service" in e for e in depends_on_errors(unknown))


def test_workers_are_scalable(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert set(worker_services(compose)) == set(WORKERS)
    for worker in WORKERS:
        svc = services[worker]
        assert "container_name" not in svc, f"{worker}: container_name blocks --scale"
        assert not svc.get("ports"), f"{worker}: a fixed host port blocks --scale"
        words = command_words(svc)
        assert words[:1] == ["worker"], f"{worker}: command {words!r}"


def test_each_worker_service_runs_one_split_role(variant: Any) -> None:
    """Every worker service names a role; started together, the services run each split role
    once (the GPU profile swaps CPU services for GPU ones), and never `all` beside them."""
    name, compose, profiles = variant
    workers = worker_services(compose)
    assert workers == WORKER_ROLES, f"{name}: worker services and their roles"
    split_roles = set(ROLES) - {"all"}
    assert split_roles == set(ROLE_JOBS) == set(ROLE_TOPICS), "a role with no service"
    for service, role in workers.items():
        assert role in ROLES, f"{service}: --role {role!r} is not one of {ROLES}"
        assert role != "all", f"{service} runs every agent: beside split roles it scores twice"
    enabled = enabled_services(compose, profiles)
    if "gpu" in profiles:
        # As documented: `--profile gpu up -d --scale scorer=0 --scale item-encoder=0`.
        (zeroed,) = gpu_scale_commands(COMPOSE.read_text())
        enabled -= zeroed
    started = sorted(workers[s] for s in enabled if s in workers)
    assert started == sorted(split_roles), f"{name}: roles started {started}"


def test_gpu_command_swaps_exactly_the_cpu_services_of_the_gpu_roles() -> None:
    gpu_roles = {WORKER_ROLES[w] for w in GPU_WORKERS}
    assert gpu_roles == {"scorer", "encoder"}
    replaced = {w for w in WORKERS if w not in GPU_WORKERS and WORKER_ROLES[w] in gpu_roles}
    for where, text in (
        ("docker-compose.yml", COMPOSE.read_text()),
        ("README", README.read_text()),
    ):
        commands = gpu_scale_commands(text)
        assert commands, f"{where} documents no `--profile gpu up` command"
        for zeroed in commands:
            assert zeroed == replaced, f"{where}: --profile gpu must scale {replaced} to 0"
    assert gpu_scale_commands("docker compose --profile gpu up -d --scale \\\n  scorer=0") == [
        {"scorer"}
    ]


def test_each_worker_image_is_built_by_one_service(variant: Any) -> None:
    """Compose runs one build per service with `build:`, concurrently: two on one tag race.
    So one service builds each image, and the others use it without pulling it."""
    name, compose, profiles = variant
    services = _services(compose)
    builders: dict[str, str] = {}
    for service, svc in services.items():
        if "build" not in svc:
            continue
        image = svc.get("image")
        assert image, f"{service}: a build without `image:` gets a name of its own"
        assert image not in builders, f"{image} is built by both {builders[image]} and {service}"
        builders[image] = service
    assert builders == {image: builder for image, (builder, _) in IMAGE_BUILDS.items()}
    for builder, dockerfile_path in IMAGE_BUILDS.values():
        build = services[builder]["build"]
        assert (REPO / build.get("context", ".")).resolve() == REPO
        assert build["dockerfile"] == dockerfile_path
        assert (REPO / dockerfile_path).is_file()
    enabled = enabled_services(compose, profiles)
    for worker in WORKERS:
        assert services[worker].get("image") in IMAGE_BUILDS, f"{worker}: image"
    for service in sorted(enabled):
        svc = services[service]
        image = svc.get("image")
        if image not in IMAGE_BUILDS or "build" in svc:
            continue
        assert builders[image] in enabled, f"{name}: {service} needs {builders[image]} to build"
        assert svc.get("pull_policy") == "never", f"{service}: {image} is in no registry"


def test_bind_mounted_repo_paths_exist(compose: dict[str, Any]) -> None:
    for name, svc in _services(compose).items():
        for target, host in bind_mounts(svc).items():
            assert host.exists(), f"{name}: mount source {host} for {target} does not exist"


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_environment_maps_to_real_config_keys(compose: dict[str, Any], worker: str) -> None:
    svc = _services(compose)[worker]
    env = environment(svc)
    assert any(k.startswith("GENRE_") for k in env), f"{worker}: no GENRE_* environment"
    cfg = check_genre_env(env, bind_mounts(svc))
    assert cfg.kafka.bootstrap_servers == "kafka:9092"
    assert cfg.qdrant.url == "http://qdrant:6333"
    assert cfg.streams.web_bind == "0.0.0.0"
    assert cfg.streams.web_port == GenreConfig().streams.web_port
    assert cfg.kafka.flavor == "apache" and cfg.kafka.exact_end_offsets is False
    providers = "cuda" if worker in GPU_WORKERS else "cpu"
    assert cfg.encoder.providers == cfg.ranker.providers == providers
    assert Path(cfg.data_dir).is_absolute()
    assert cfg.path(cfg.encoder.dir) == Path("/models/encoder")


def test_every_service_genre_variable_is_a_config_key(compose: dict[str, Any]) -> None:
    for svc in _services(compose).values():
        env = environment(svc)
        if any(k.startswith("GENRE_") for k in env):
            check_genre_env(env, bind_mounts(svc))


def test_env_key_check_rejects_misspelt_keys() -> None:
    assert env_key_error("GENRE_KAFKA__BOOTSTRAP_SERVERS") is None
    assert env_key_error("GENRE_KAFKA__TOPICS__CLICKS__PARTITIONS") is None
    assert env_key_error("GENRE_DATA_DIR") is None
    assert env_key_error("GENRE_KAFKA__BOOTSTRAP_SERVER") is not None
    assert env_key_error("GENRE_DATADIR") is not None  # load_config would ignore this one
    assert env_key_error("GENRE_DATA_DIR__X") is not None


def option_values(words: list[str], option: str) -> list[str]:
    """Every value of a repeatable ``--option value`` (``--config a --config b``)."""
    return [value for flag, value in itertools.pairwise(words) if flag == option]


def kafka_init_creates(command: Any) -> dict[str, list[str]]:
    """Topic -> the words of its kafka-topics.sh --create line, from a command."""
    text = command if isinstance(command, str) else "\n".join(map(str, command))
    creates: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "kafka-topics" not in line or "--create" not in line:
            continue
        words = shlex.split(line)
        opts = dict(itertools.pairwise(words))
        assert "--if-not-exists" in words, f"not idempotent: {line}"
        name, parts = opts.get("--topic"), opts.get("--partitions")
        assert name and parts, f"--create without --topic/--partitions: {line}"
        assert name not in creates, f"{name} created twice"
        creates[name] = words
    return creates


def kafka_init_topics(command: Any) -> dict[str, int]:
    """Topic -> partitions from the kafka-topics.sh --create lines of a command."""
    return {
        name: int(option_values(words, "--partitions")[-1])
        for name, words in kafka_init_creates(command).items()
    }


def kafka_init_configs(command: Any) -> dict[str, list[str]]:
    """Topic -> its --config values, in order, from the --create lines of a command."""
    return {
        name: option_values(words, "--config")
        for name, words in kafka_init_creates(command).items()
    }


def test_kafka_init_creates_every_configured_topic(compose: dict[str, Any]) -> None:
    init = _services(compose)["kafka-init"]
    assert init["image"] == _services(compose)["kafka"]["image"]
    created = kafka_init_topics(init["command"])
    assert created == GenreConfig().kafka.topics.all()
    # The sample genre.yaml the workers mount holds the same topics.
    mounted = load_config(REPO / "genre.yaml", environ={}).kafka.topics
    assert created == mounted.all()
    # Compacted exactly where the config says (genre.item-vectors); min.insync everywhere.
    configs = kafka_init_configs(init["command"])
    compacted = {topic for topic, cfg in configs.items() if "cleanup.policy=compact" in cfg}
    assert compacted == GenreConfig().kafka.topics.compacted() == mounted.compacted()
    assert "genre.item-vectors" in compacted
    min_isr = "min.insync.replicas=$TOPICS_MIN_INSYNC_REPLICAS"
    for topic, cfg in configs.items():
        extra = ["cleanup.policy=compact"] if topic in compacted else []
        assert cfg == [min_isr, *extra], f"{topic}: --config {cfg}"


def test_kafka_init_parser_sees_a_wrong_partition_count() -> None:
    wrong = (
        "kafka-topics.sh --bootstrap-server k:9092 --create --if-not-exists"
        " --topic genre.clicks --partitions 3"
    )
    assert kafka_init_topics(wrong) == {"genre.clicks": 3}
    assert kafka_init_topics(wrong) != GenreConfig().kafka.topics.all()
    with pytest.raises(AssertionError, match="idempotent"):
        kafka_init_topics("kafka-topics.sh --create --topic a --partitions 1")
    # A compacted topic created without cleanup.policy=compact is seen as such.
    plain = (
        "kafka-topics.sh --create --if-not-exists --config min.insync.replicas=1"
        " --topic genre.item-vectors --partitions 2"
    )
    assert kafka_init_configs(plain) == {"genre.item-vectors": ["min.insync.replicas=1"]}
    compact = plain.replace(" --topic", " --config cleanup.policy=compact --topic")
    assert kafka_init_configs(compact)["genre.item-vectors"][-1] == "cleanup.policy=compact"
    assert kafka_init_topics(compact) == {"genre.item-vectors": 2}


def test_kafka_is_kraft_with_a_named_volume(compose: dict[str, Any]) -> None:
    kafka = _services(compose)["kafka"]
    env = environment(kafka)
    roles = env.get("KAFKA_PROCESS_ROLES", env.get("KAFKA_CFG_PROCESS_ROLES", ""))
    assert set(roles.split(",")) == {"broker", "controller"}
    named = set(compose.get("volumes") or {})
    used = {str(v).split(":")[0] for v in kafka.get("volumes") or []}
    assert used & named, "kafka needs a named volume"
    qdrant_used = {str(v).split(":")[0] for v in _services(compose)["qdrant"]["volumes"]}
    assert qdrant_used & named, "qdrant needs a named volume"


def device_reservations(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = ((service.get("deploy") or {}).get("resources") or {}).get("reservations")
    return list((reservations or {}).get("devices") or [])


@pytest.mark.parametrize("worker", WORKERS)
def test_only_gpu_workers_reserve_an_nvidia_gpu(compose: dict[str, Any], worker: str) -> None:
    svc = _services(compose)[worker]
    devices = device_reservations(svc)
    cfg = check_genre_env(environment(svc), bind_mounts(svc))
    if worker in GPU_WORKERS:
        assert svc.get("profiles") == ["gpu"]
        assert svc["image"] == "genre-worker:gpu"
        (gpu,) = devices
        assert gpu.get("driver") == "nvidia" and "gpu" in gpu.get("capabilities", [])
        assert gpu.get("count") == 1
        assert cfg.encoder.providers == cfg.ranker.providers == "cuda"
    else:
        assert not svc.get("profiles"), f"{worker}: the CPU services run by default"
        assert svc["image"] == "genre-worker:cpu"
        assert devices == [], f"{worker}: a CPU service reserves no device"
        assert cfg.encoder.providers == cfg.ranker.providers == "cpu"


# ---------------------------------------------------------------------------
# profiles: the Kafka cluster and the LLM server
# ---------------------------------------------------------------------------


def listeners(spec: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` (KAFKA_LISTENERS / KAFKA_ADVERTISED_LISTENERS) by name."""
    out = {}
    for item in spec.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port of ``[ip:]host:container`` port strings."""
    out = {}
    for spec in service.get("ports") or []:
        *_, host, container = str(spec).split(":")
        out[int(container)] = int(host)
    return out


def cli_options(command: list[str]) -> dict[str, str]:
    """``--key=value`` words of a command list."""
    return dict(w[2:].split("=", 1) for w in command if w.startswith("--") and "=" in w)


def test_profiles_leave_the_default_stack_single_node(compose: dict[str, Any]) -> None:
    assert enabled_services(compose, ()) == DEFAULT_SERVICES
    for profile, services in PROFILES.items():
        assert enabled_services(compose, (profile,)) - DEFAULT_SERVICES == services, profile
    used = {p for svc in _services(compose).values() for p in svc.get("profiles", [])}
    assert used == set(PROFILES)
    # The single node is the default: no profile, replication factor 1 everywhere.
    kafka = environment(_services(compose)["kafka"])
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_every_dependency_is_started_in_each_variant(variant: Any) -> None:
    """Compose refuses to start a service whose dependency sits in an inactive profile."""
    name, compose, profiles = variant
    assert depends_on_errors(compose) == []
    enabled = enabled_services(compose, profiles)
    for service in sorted(enabled):
        for dep in _services(compose)[service].get("depends_on") or {}:
            assert dep in enabled, f"{name}: {service} needs {dep}, which is not started"


def test_kafka_cluster_brokers_form_one_quorum(compose: dict[str, Any]) -> None:
    services = _services(compose)
    named_volumes = set(compose.get("volumes") or {})
    node_ids, cluster_ids, voters, volumes, host_ports = [], set(), set(), [], []
    for name in CLUSTER_BROKERS:
        svc = services[name]
        env = environment(svc)
        assert svc["profiles"] == ["kafka-cluster"]
        assert svc["image"] == services["kafka"]["image"], f"{name}: same image as the single node"
        assert svc.get("hostname", name) == name
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        node_ids.append(int(env["KAFKA_NODE_ID"]))
        cluster_ids.add(env["CLUSTER_ID"])
        voters.add(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
        bound = listeners(env["KAFKA_LISTENERS"])
        advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        assert advertised["PLAINTEXT"] == (name, bound["PLAINTEXT"][1]), name
        assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in bound
        assert "CONTROLLER" not in advertised
        # The host reaches each broker on its own port, advertised as localhost:<port>.
        external = bound["EXTERNAL"][1]
        assert advertised["EXTERNAL"] == ("localhost", external)
        assert published_ports(svc) == {external: external}
        host_ports.append(external)
        # Replication factor 3 for internal topics and defaults; see the compose file for
        # why min.insync.replicas=2 is set per GENRE topic rather than broker-wide.
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == str(len(CLUSTER_BROKERS))
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == str(len(CLUSTER_BROKERS))
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == str(len(CLUSTER_BROKERS))
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env.get("KAFKA_MIN_INSYNC_REPLICAS", "1") == "1"
        (volume,) = [str(v).split(":")[0] for v in svc["volumes"]]
        assert volume in named_volumes, f"{name}: {volume} is not a named volume"
        volumes.append(volume)
    assert len(set(node_ids)) == len(node_ids), f"node ids must differ: {node_ids}"
    assert len(cluster_ids) == 1, "one CLUSTER_ID for the whole cluster"
    assert cluster_ids != {environment(services["kafka"])["CLUSTER_ID"]}
    assert len(voters) == 1, f"every broker must list the same quorum: {voters}"
    quorum = {}
    for voter in voters.pop().split(","):
        node_id, _, address = voter.partition("@")
        host, _, port = address.partition(":")
        quorum[int(node_id)] = (host, int(port))
    assert set(quorum) == set(node_ids)
    for name, node_id in zip(CLUSTER_BROKERS, node_ids, strict=True):
        controller = listeners(environment(services[name])["KAFKA_LISTENERS"])["CONTROLLER"]
        assert quorum[node_id] == (name, controller[1]), f"voter {node_id} is not {name}"
    assert len(set(volumes)) == len(volumes), "each broker needs its own volume"
    assert len(set(host_ports)) == len(host_ports)
    assert not set(host_ports) & set(published_ports(services["kafka"]).values())


def kafka_init_script(compose: dict[str, Any]) -> str:
    command = _services(compose)["kafka-init"]["command"]
    return command if isinstance(command, str) else "\n".join(map(str, command))


def test_kafka_init_takes_its_cluster_from_the_environment(compose: dict[str, Any]) -> None:
    script = kafka_init_script(compose)
    calls = [ln for ln in script.splitlines() if "/opt/kafka/bin/" in ln]
    assert calls
    for line in calls:
        opts = dict(itertools.pairwise(shlex.split(line.split("|")[0])))
        assert opts.get("--bootstrap-server") == "$TOPICS_BOOTSTRAP", line
        if "--create" in line:
            assert opts.get("--replication-factor") == "$TOPICS_REPLICATION_FACTOR", line
            configs = option_values(shlex.split(line), "--config")
            assert "min.insync.replicas=$TOPICS_MIN_INSYNC_REPLICAS" in configs, line
    env = environment(_services(compose)["kafka-init"])
    assert env["TOPICS_BOOTSTRAP"] == "kafka:9092"
    for worker in WORKERS:
        worker_env = environment(_services(compose)[worker])
        assert worker_env["GENRE_KAFKA__BOOTSTRAP_SERVERS"] == env["TOPICS_BOOTSTRAP"], worker
    assert (env["TOPICS_REPLICATION_FACTOR"], env["TOPICS_MIN_INSYNC_REPLICAS"]) == ("1", "1")


def test_kafka_cluster_override_points_topics_and_workers_at_the_brokers() -> None:
    merged = load_compose(CLUSTER_OVERRIDE)
    services = _services(merged)
    brokers = [
        "{}:{}".format(
            *listeners(environment(services[b])["KAFKA_ADVERTISED_LISTENERS"])["PLAINTEXT"]
        )
        for b in CLUSTER_BROKERS
    ]
    assert services["kafka"]["scale"] == 0, "the single node must not run beside the cluster"
    init = services["kafka-init"]
    for broker in CLUSTER_BROKERS:
        assert init["depends_on"][broker]["condition"] == "service_healthy"
    env = environment(init)
    assert env["TOPICS_BOOTSTRAP"].split(",") == brokers
    replication, min_isr = (
        int(env["TOPICS_REPLICATION_FACTOR"]),
        int(env["TOPICS_MIN_INSYNC_REPLICAS"]),
    )
    assert replication == len(CLUSTER_BROKERS) == 3
    assert min_isr == 2 and min_isr < replication, "one broker down must still accept writes"
    assert kafka_init_topics(init["command"]) == GenreConfig().kafka.topics.all()
    for worker in WORKERS:
        svc = services[worker]
        cfg = check_genre_env(environment(svc), bind_mounts(svc))
        assert cfg.kafka.bootstrap_servers.split(",") == brokers, worker
        # Everything else stays as in the single-node stack.
        assert cfg.qdrant.url == "http://qdrant:6333"
        assert cfg.kafka.flavor == "apache" and cfg.kafka.exact_end_offsets is False


def run_kafka_init(
    compose: dict[str, Any], tmp_path: Path, brokers_up: list[int]
) -> list[list[str]]:
    """Run kafka-init's script with stub Kafka tools; the kafka-topics.sh calls it made.

    ``brokers_up``: how many brokers kafka-broker-api-versions.sh reports on each call.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls, counter = tmp_path / "calls", tmp_path / "probes"
    counter.write_text("0")
    seq = " ".join(map(str, brokers_up))
    (bin_dir / "kafka-broker-api-versions.sh").write_text(
        "#!/bin/bash\n"
        f"n=$(cat {counter}); echo $((n + 1)) > {counter}; up=({seq})\n"
        "k=${up[$n]:-${up[-1]}}\n"
        'for i in $(seq 1 "$k"); do echo "kafka-$i:9092 (id: $i rack: null) -> ("; done\n'
    )
    (bin_dir / "kafka-topics.sh").write_text(
        f'#!/bin/bash\nprintf "%s\\x1f" "$@" >> {calls}; echo >> {calls}\n'
    )
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    script = kafka_init_script(compose).replace("/opt/kafka/bin/", f"{bin_dir}/")
    script = script.replace("sleep 5", "sleep 0")
    env = {**os.environ, **environment(_services(compose)["kafka-init"])}
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [ln.split("\x1f")[:-1] for ln in calls.read_text().splitlines()]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("cluster", [False, True], ids=["single-node", "kafka-cluster"])
def test_kafka_init_script_waits_for_brokers_then_creates_topics(
    tmp_path: Path, cluster: bool
) -> None:
    merged = load_compose(CLUSTER_OVERRIDE) if cluster else load_compose()
    env = environment(_services(merged)["kafka-init"])
    calls = run_kafka_init(merged, tmp_path, brokers_up=[0, 1, 2, 3])
    probes = int((tmp_path / "probes").read_text())
    assert probes == int(env["TOPICS_REPLICATION_FACTOR"]) + 1, "waits for RF brokers"
    creates = [c for c in calls if "--create" in c]
    topics = GenreConfig().kafka.topics
    assert {
        dict(itertools.pairwise(c))["--topic"]: int(option_values(c, "--partitions")[0])
        for c in creates
    } == topics.all()
    for c in creates:
        opts = dict(itertools.pairwise(c))
        assert opts["--bootstrap-server"] == env["TOPICS_BOOTSTRAP"]
        assert opts["--replication-factor"] == env["TOPICS_REPLICATION_FACTOR"]
        compact = ["cleanup.policy=compact"] if opts["--topic"] in topics.compacted() else []
        assert option_values(c, "--config") == [
            f"min.insync.replicas={env['TOPICS_MIN_INSYNC_REPLICAS']}",
            *compact,
        ]
    assert "--describe" in calls[-1]


def test_llm_server_profile(compose: dict[str, Any]) -> None:
    llm = _services(compose)["llm"]
    assert llm["profiles"] == ["llm"]
    image, _, tag = llm["image"].rpartition(":")
    assert image == "vllm/vllm-openai" and re.fullmatch(r"v\d+\.\d+\.\d+", tag), llm["image"]
    opts = cli_options(llm["command"])
    port = int(opts["port"])
    assert opts["host"] == "0.0.0.0"
    assert opts["served-model-name"] == opts["model"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert published_ports(llm) == {port: port}
    assert str(llm["ports"][0]).startswith("127.0.0.1:"), "host access on loopback only"
    assert f"127.0.0.1:{port}/health" in " ".join(llm["healthcheck"]["test"])
    named = set(compose.get("volumes") or {})
    assert any(str(v).split(":")[0] in named for v in llm["volumes"]), "model cache volume"
    devices = llm["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    env = environment(llm)
    assert env["VLLM_API_KEY"] == "" and env["HF_TOKEN"] == ""


@pytest.mark.parametrize("api_key", [None, "sk-local"])
def test_llm_override_points_workers_at_the_llm_service(api_key: str | None) -> None:
    environ = {"LLM_API_KEY": api_key} if api_key else {}
    merged = load_compose(LLM_OVERRIDE, environ=environ)
    services = _services(merged)
    llm = services["llm"]
    opts = cli_options(llm["command"])
    for worker in WORKERS:
        svc = services[worker]
        cfg = check_genre_env(environment(svc), bind_mounts(svc))
        assert cfg.llm.backend == "openai"
        url = urlparse(cfg.llm.base_url)
        assert (url.hostname, url.port, url.path) == ("llm", int(opts["port"]), "/v1")
        assert cfg.llm.model == opts["served-model-name"]
        assert cfg.llm.items.enabled and cfg.llm.profiles.enabled
        key = cfg.llm.api_key.get_secret_value() if cfg.llm.api_key else None
        assert key == api_key, "OPENAI_API_KEY must carry the server's key"
        assert cfg.kafka.bootstrap_servers == "kafka:9092", "the LLM file leaves Kafka alone"
    assert environment(llm)["VLLM_API_KEY"] == (api_key or "")
    # A different model is served and asked for under the same name.
    other = load_compose(LLM_OVERRIDE, environ={"LLM_MODEL": "org/other-model"})
    served = cli_options(_services(other)["llm"]["command"])["served-model-name"]
    assert served == "org/other-model"
    for worker in WORKERS:
        assert environment(_services(other)[worker])["GENRE_LLM__MODEL"] == served, worker


def test_interpolation_helper() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("$$A ${SET} $SET ${NOPE:-d} ${EMPTY:-d} ${EMPTY-d} ${NOPE}", env) == (
        "$A x x d d  "
    )
    with pytest.raises(AssertionError, match="required"):
        interpolate("${NOPE:?set it}", env)
    assert merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2], "d": 3}}) == {
        "a": {"b": 1, "c": [2], "d": 3}
    }


def readme_compose_section() -> str:
    text = README.read_text()
    start = text.index("## Running the stack with Docker Compose")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_documents_the_profiles_ports_and_dashboards(compose: dict[str, Any]) -> None:
    section = readme_compose_section()
    for path in re.findall(r"-f (\S+\.ya?ml)", section):
        assert (REPO / path).is_file(), f"README names {path}, which does not exist"
    for profile in re.findall(r"--profile ([\w-]+)", section):
        assert profile in PROFILES, f"README names unknown profile {profile}"
    for needed in (
        "--profile kafka-cluster",
        "-f deploy/compose.kafka-cluster.yml",
        "--profile llm",
        "-f deploy/compose.llm.yml",
        "--scale stream=3 --scale scorer=2",
        "--profile gpu up -d --scale scorer=0 --scale item-encoder=0",
        "genre.item-vectors",
        "GENRE_KAFKA__BOOTSTRAP_SERVERS",
        "GENRE_LLM__BACKEND",
        "GENRE_LLM__BASE_URL",
        "GENRE_LLM__MODEL",
        "OPENAI_API_KEY",
    ):
        assert needed in section, f"README compose section does not mention {needed}"
    port = int(cli_options(_services(compose)["llm"]["command"])["port"])
    assert f"http://llm:{port}/v1" in section
    assert f"http://localhost:{port}/v1" in section
    assert set(re.findall(r"http://llm:(\d+)", section)) == {str(port)}
    for broker in CLUSTER_BROKERS:
        external = listeners(environment(_services(compose)[broker])["KAFKA_LISTENERS"])
        assert f"localhost:{external['EXTERNAL'][1]}" in section
    grafana = published_ports(_services(compose)["grafana"])
    assert f"http://localhost:{grafana[3000]}" in section
    for dashboard in GRAFANA_DASHBOARDS.glob("*.json"):
        title = json.loads(dashboard.read_text())["title"].removeprefix("GENRE / ")
        assert f"**{title}**" in section, f"README does not name the {title} dashboard"
    # Every worker service, role and Prometheus job is named; every --scale names a worker
    # service and asks for no more replicas than its role has partitions.
    for worker, role in WORKER_ROLES.items():
        assert f"`{worker}`" in section, f"README does not name the {worker} service"
        assert f"`{ROLE_JOBS[role]}`" in section, f"README does not name {ROLE_JOBS[role]}"
    scales = re.findall(r"--scale ([\w-]+)=(\d+)", section)
    assert scales
    for service, replicas in scales:
        assert service in WORKER_ROLES, f"README scales {service}, which is no worker service"
        assert int(replicas) <= role_partitions(WORKER_ROLES[service]), (service, replicas)


# ---------------------------------------------------------------------------
# Prometheus and Grafana
# ---------------------------------------------------------------------------


def prometheus_dns_targets() -> dict[str, tuple[str, int]]:
    """DNS name scraped -> (job name, port), from deploy/prometheus/prometheus.yml."""
    prom = yaml.safe_load(PROMETHEUS.read_text())
    targets: dict[str, tuple[str, int]] = {}
    for job in prom["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd.get("type", "SRV") == "A", f"{job['job_name']}: compose DNS serves A records"
            for name in sd["names"]:
                assert name not in targets, f"{name} is scraped twice"
                targets[name] = (job["job_name"], sd["port"])
    return targets


def test_prometheus_scrapes_every_worker_on_the_web_port(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load(PROMETHEUS.read_text())
    web_port = GenreConfig().streams.web_port
    assert web_port == 6066
    targets = prometheus_dns_targets()
    workers = worker_services(compose)
    # The pull API (`genre api`) is its own job, on api.port.
    assert targets.pop("api") == ("genre-api", GenreConfig().api.port)
    assert command_words(_services(compose)["api"]) == ["api"]
    assert set(targets) == set(workers), "every worker service and the API, nothing else"
    for service, role in workers.items():
        assert targets[service] == (ROLE_JOBS[role], web_port), service
    for job in prom["scrape_configs"]:
        if job.get("dns_sd_configs"):
            # The compose service (scorer or scorer-gpu...) each target came from, as a label.
            relabel = {"source_labels": ["__meta_dns_name"], "target_label": "service"}
            assert relabel in job.get("relabel_configs", []), job["job_name"]
    mounts = bind_mounts(_services(compose)["prometheus"])
    assert mounts.get("/etc/prometheus/prometheus.yml") == PROMETHEUS.resolve()


def dashboard_exprs(node: Any) -> Iterator[str]:
    """Every PromQL ``expr`` of a dashboard's JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def test_dashboards_filter_on_the_scraped_worker_jobs() -> None:
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    matched = []
    for dashboard in sorted(GRAFANA_DASHBOARDS.glob("*.json")):
        for expr in dashboard_exprs(json.loads(dashboard.read_text())):
            for op, value in re.findall(r'\bjob\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
                names = set(value.split("|")) if "~" in op else {value}
                assert names <= jobs, f"{dashboard.name}: {expr} names jobs Prometheus lacks"
                matched.append(names)
    assert set(ROLE_JOBS.values()) in matched, "no panel shows the health of every worker job"


def test_grafana_provisioning_points_at_prometheus(compose: dict[str, Any]) -> None:
    services = _services(compose)
    ds = yaml.safe_load(GRAFANA_DATASOURCE.read_text())
    (source,) = [d for d in ds["datasources"] if d["type"] == "prometheus"]
    url = urlparse(source["url"])
    assert url.hostname == "prometheus" and url.hostname in services
    assert url.port == 9090

    provider = yaml.safe_load(GRAFANA_DASHBOARDS_PROVIDER.read_text())
    (prov,) = provider["providers"]
    mounts = bind_mounts(services["grafana"])
    assert mounts.get(prov["options"]["path"]) == GRAFANA_DASHBOARDS.resolve()
    assert mounts.get("/etc/grafana/provisioning") == (DEPLOY / "grafana" / "provisioning")
    assert (GRAFANA_DASHBOARDS / "README.md").is_file()
    for dashboard in GRAFANA_DASHBOARDS.glob("*.json"):
        json.loads(dashboard.read_text())


# ---------------------------------------------------------------------------
# Dockerfiles and .dockerignore
# ---------------------------------------------------------------------------


def test_dockerfile_stages(dockerfile: tuple[str, list[Stage]]) -> None:
    kind, stages = dockerfile
    assert [s.name for s in stages] == ["export", "runtime"]
    assert stages[0].base.startswith("python:3.11")
    if kind == "cpu":
        assert stages[1].base.startswith("python:3.11")
    else:
        assert stages[1].base.startswith("nvidia/cuda:") and "cudnn" in stages[1].base
        assert "runtime" in stages[1].base


def test_torch_is_pinned_in_the_export_stage_only(dockerfile: tuple[str, list[Stage]]) -> None:
    _, stages = dockerfile
    export, runtime = _stage(stages, "export"), _stage(stages, "runtime")
    runs = [args for run in export.args_of("RUN") for args in pip_installs(run)]
    torch_runs = [args for args in runs if TORCH_PIN in args]
    assert torch_runs, f"export stage must pip install {TORCH_PIN}"
    assert any("https://download.pytorch.org/whl/cpu" in args for args in torch_runs)
    assert any(a.startswith(".[") and "train" in a for args in runs for a in args)
    assert any("genre export encoder" in run for run in export.args_of("RUN"))
    assert torch_installs(runtime) == [], "the runtime stage must not install torch"


def test_runtime_stage_serves_the_worker(dockerfile: tuple[str, list[Stage]]) -> None:
    kind, stages = dockerfile
    runtime = _stage(stages, "runtime")
    installs = [a for run in runtime.args_of("RUN") for args in pip_installs(run) for a in args]
    assert (".[gpu]" if kind == "gpu" else ".[cpu]") in installs
    assert any(
        "--from=export" in args and "/export/models/encoder" in args and "/models/encoder" in args
        for args in runtime.args_of("COPY")
    )
    env = " ".join(runtime.args_of("ENV"))
    assert "GENRE_ENCODER__DIR=/models/encoder" in env
    users = runtime.args_of("USER")
    assert users and users[-1] not in ("root", "0"), "the runtime must run as a non-root user"
    assert "6066" in " ".join(runtime.args_of("EXPOSE")).split()
    assert [json.loads(a) for a in runtime.args_of("ENTRYPOINT")][-1] == ["genre"]
    assert [json.loads(a) for a in runtime.args_of("CMD")][-1] == ["worker"]
    # The cpu and gpu extras are exclusive: the runtime installs exactly one of them.
    other = ".[cpu]" if kind == "gpu" else ".[gpu]"
    assert other not in installs and not any("onnxruntime" in a for a in installs)


def test_dockerfile_env_names_config_keys(dockerfile: tuple[str, list[Stage]]) -> None:
    _, stages = dockerfile
    env = {}
    for args in _stage(stages, "runtime").args_of("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    env.pop("GENRE_CONFIG", None)  # the file path; compose mounts genre.yaml there
    errors = [e for e in map(env_key_error, (k for k in env if k.startswith("GENRE_"))) if e]
    assert not errors, errors
    load_config(environ={k: v for k, v in env.items() if k.startswith("GENRE_")})


def test_copy_sources_exist_and_are_not_ignored(dockerfile: tuple[str, list[Stage]]) -> None:
    _, stages = dockerfile
    patterns = dockerignore_patterns()
    names = {s.name for s in stages}
    for stage in stages:
        for instr, args in stage.instructions:
            if instr == "COPY" and "--from=" in args:
                src = re.search(r"--from=(\S+)", args).group(1)  # type: ignore[union-attr]
                assert src in names, f"COPY --from={src} names no earlier stage"
        for src in copy_sources(stage):
            assert (REPO / src).exists(), f"COPY source {src} does not exist in the repo"
            assert not ignored(src, patterns), f"COPY source {src} is excluded by .dockerignore"


def test_dockerfile_checks_catch_torch_in_the_runtime() -> None:
    bad = (
        "FROM python:3.11-slim AS export\nRUN pip install torch==2.13.0\n"
        "FROM python:3.11-slim AS runtime\n"
        "RUN apt-get update \\\n  # a comment inside a continuation\n"
        "  && pip install --no-cache-dir '.[train]' torch\n"
    )
    _, stages = parse_dockerfile(bad)
    assert torch_installs(stages[0]) == [TORCH_PIN]
    assert torch_installs(stages[1]) == [".[train]", "torch"]
    assert ignored("tests/unit/x.py", ["tests"])
    assert ignored("core/__pycache__/a.pyc", ["**/__pycache__"])
    assert not ignored("core/config.py", ["tests", "**/__pycache__"])


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv", ".cache", ".git", "tests", "bench", "core/__pycache__"):
        assert ignored(path, patterns), f".dockerignore must exclude {path}"
