"""Static checks of the container files (docker/, .dockerignore): no Docker daemon, no network, no build.

The compose file is read with ``yaml.safe_load`` (anchors and ``<<`` merges resolved, ``${VAR}`` left as
text), the Dockerfiles with a small parser that joins continuation lines and drops comments.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# Compose's interpolation grammar (compose-go template.go): `$` must start `$$`, `$NAME` or `${NAME...}`.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[_a-z][_a-z0-9]*)|\{(?P<braced>[_a-z][_a-z0-9]*(?::?[-?][^}]*)?)\}|(?P<invalid>))",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------------------------------- helpers
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict:
    return compose()["services"]


def command(svc: dict) -> list[str]:
    cmd = svc.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def ray_nodes() -> dict:
    nodes = {name: svc for name, svc in services().items() if command(svc)[:2] == ["ray", "start"]}
    assert {"ray-head", "ray-worker"} <= set(nodes), sorted(nodes)
    return nodes


def volume_targets(svc: dict) -> dict[str, str]:
    """Container path -> source (volume name or host path) for every mount of a service."""
    out = {}
    for vol in svc.get("volumes", []):
        if isinstance(vol, dict):
            out[vol["target"]] = vol.get("source", "")
        else:
            # SOURCE:TARGET[:MODE]; a source may itself be `${VAR:-default}`, colon included.
            m = re.fullmatch(r"(?P<src>\$\{[^}]*\}|[^:]+):(?P<dst>[^:]+)(?::(?P<mode>\w+))?", vol)
            assert m, f"cannot parse volume {vol!r}"
            out[m["dst"]] = m["src"]
    return out


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        buf = ""
    assert not buf, f"{path.name} ends inside a continuation line"
    return instructions


def pinned(package: str) -> str:
    for req in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(package)}==([\w.]+)", req.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


def base_image(path: Path) -> str:
    """The FROM image with ARG defaults declared before it substituted."""
    args: dict[str, str] = {}
    for keyword, rest in dockerfile(path):
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name.strip()] = value.strip()
        if keyword == "FROM":
            image = rest.split()[0]
            return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
    raise AssertionError(f"{path.name} has no FROM")


def pip_installs(path: Path) -> list[tuple[int, str]]:
    """(instruction index, RUN arguments) of every RUN that calls pip install."""
    return [(i, rest) for i, (kw, rest) in enumerate(dockerfile(path)) if kw == "RUN" and "pip install" in rest]


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


# ---------------------------------------------------------------------------------------------- compose
def test_compose_parses_and_has_the_cluster_services():
    assert {"mlflow", "ray-head", "ray-worker"} <= set(services())


def test_every_published_port_binds_localhost_only():
    published = []
    for name, svc in services().items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            published.append((name, port))
            assert host_ip == "127.0.0.1", f"{name} publishes {port!r} beyond 127.0.0.1"
    assert {"mlflow", "ray-head"} <= {name for name, _ in published}


def test_ray_token_auth_is_on_for_every_ray_node():
    for name, svc in ray_nodes().items():
        assert environment(svc).get("RAY_AUTH_MODE") == "token", name
    for name, svc in services().items():  # nor switched off anywhere else
        assert environment(svc).get("RAY_AUTH_MODE", "token") == "token", name
        assert not any("RAY_AUTH_MODE=disabled" in text for text in strings(svc)), name


def test_ray_auth_token_is_required_from_the_host_environment():
    for name, svc in ray_nodes().items():
        assert environment(svc).get("RAY_AUTH_TOKEN", "").startswith("${RAY_AUTH_TOKEN:?"), name


def test_ray_nodes_track_to_the_mlflow_service():
    for name, svc in ray_nodes().items():
        assert environment(svc).get("MLFLOW_TRACKING_URI") == "http://mlflow:5000", name


def test_ray_nodes_share_the_runs_volume_at_one_path():
    top_level = compose().get("volumes") or {}
    sources = {name: volume_targets(svc).get("/data/runs") for name, svc in ray_nodes().items()}
    assert None not in sources.values(), sources
    assert len(set(sources.values())) == 1 and next(iter(sources.values())) in top_level, sources


def test_ray_nodes_mount_the_data_root_read_only():
    for name, svc in ray_nodes().items():
        assert environment(svc).get("MID_DATA_ROOT") == "/data/datasets", name
        mount = next(v for v in svc["volumes"] if isinstance(v, str) and ":/data/datasets" in v)
        assert mount.endswith(":ro"), (name, mount)


def test_ray_worker_can_be_scaled():
    worker = services()["ray-worker"]
    assert "container_name" not in worker and not worker.get("ports")
    assert "--address=ray-head:6379" in command(worker) and "--block" in command(worker)


def test_mlflow_server_runs_lean_on_sqlite():
    svc = services()["mlflow"]
    cmd = command(svc)
    assert cmd[:2] == ["mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("sqlite:////mlflow/")
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert environment(svc).get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") == "false"


def test_mlflow_accepts_the_host_name_ray_nodes_use():
    # MLflow 3 rejects unknown Host headers with 403; its default list has no "mlflow:5000".
    cmd = command(services()["mlflow"])
    allowed = cmd[cmd.index("--allowed-hosts") + 1]
    allowed = re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", allowed).split(",")
    assert "mlflow:*" in allowed or "mlflow:5000" in allowed, allowed


def test_compose_interpolation_is_well_formed():
    def check(text: str) -> None:
        for m in INTERPOLATION.finditer(text):
            assert m["invalid"] is None, f"bare `$` in {text!r}: write `$$` for a literal dollar"
            # Compose interpolates a default or error message too (even when the variable is set).
            nested = re.fullmatch(r"[_a-z][_a-z0-9]*(?::?[-?](.*))?", m["braced"] or "", re.IGNORECASE | re.DOTALL)
            if nested and nested.group(1):
                check(nested.group(1))

    for text in strings(compose()):
        check(text)


# ---------------------------------------------------------------------------------------------- Dockerfiles
@pytest.mark.parametrize("package", ["torch", "torchvision"])
@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_pins_torch_like_pyproject(kind, package):
    text = " ".join(rest for _, rest in pip_installs(DOCKERFILES[kind]))
    found = re.findall(rf"(?<![\w-]){re.escape(package)}==([\w.+]+)", text)
    assert found, f"{kind} Dockerfile installs no pinned {package}"
    assert set(found) == {pinned(package)}, found


def test_cpu_dockerfile_takes_torch_from_the_cpu_index():
    torch_runs = [rest for _, rest in pip_installs(DOCKERFILES["cpu"]) if "torch==" in rest]
    assert torch_runs and all("--index-url https://download.pytorch.org/whl/cpu" in r for r in torch_runs)


def test_cpu_dockerfile_installs_the_project():
    steps = dockerfile(DOCKERFILES["cpu"])
    copied = " ".join(rest for kw, rest in steps if kw == "COPY")
    for package in {p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]}:
        assert re.search(rf"(^|\s){package}\b", copied), f"{package} is not copied into the image"
    assert any(re.search(r"pip install (--?[\w-]+ )*\.(\s|$|&)", rest) for _, rest in pip_installs(DOCKERFILES["cpu"]))


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dependencies_are_installed_before_the_source_is_copied(kind):
    steps = dockerfile(DOCKERFILES[kind])
    first_source_copy = min(i for i, (kw, rest) in enumerate(steps) if kw == "COPY" and "pipeline" in rest.split())
    deps_install = [i for i, rest in pip_installs(DOCKERFILES[kind]) if "pyproject.toml" in rest]
    assert deps_install and deps_install[0] < first_source_copy


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_runs_as_non_root(kind):
    users = [rest for kw, rest in dockerfile(DOCKERFILES[kind]) if kw == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_disables_ray_usage_stats_and_keeps_token_auth(kind):
    env = " ".join(rest for kw, rest in dockerfile(DOCKERFILES[kind]) if kw == "ENV")
    assert "RAY_USAGE_STATS_ENABLED=0" in env and "RAY_AUTH_MODE=token" in env


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_has_jobs_and_configs_in_app(kind):
    steps = dockerfile(DOCKERFILES[kind])
    assert ("WORKDIR", "/app") in steps
    copied = [rest.split() for kw, rest in steps if kw == "COPY"]
    assert ["jobs", "./jobs"] in copied and ["configs", "./configs"] in copied


def test_base_images():
    assert base_image(DOCKERFILES["cpu"]) == "python:3.11-slim"
    assert re.fullmatch(r"nvidia/cuda:12\.[\w.-]*runtime[\w.-]*|pytorch/pytorch:[\w.-]+", base_image(DOCKERFILES["cuda"]))


# ---------------------------------------------------------------------------------------------- .dockerignore
def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()} - {""}
    for required in [".venv", "runs", "mlflow.db", ".git", "**/__pycache__", "**/*.zarr"]:
        assert required in patterns, required
