"""The files in cluster/ are checked the way their consumers would check them, without any network.

* `ray up` configs (cluster/aws-gpu.yaml, cluster/gcp-gpu.yaml) go through Ray's own preparation and
  validation (provider defaults merged in, then `ray-schema.json` plus Ray's cross-field rules), and
  their `ray start` lines through the `ray start` command-line parser. Nothing that would call a cloud
  API (provider bootstrap, resource auto-detection) is run.
* KubeRay manifests and the MLflow recipe are parsed with PyYAML and checked for the fields their
  controllers need.
* The security properties the configs are designed for (no Ray port open to the internet, token
  authentication everywhere, dashboard on loopback, private services) are asserted, and every checker
  is shown to fire on a deliberately broken copy, so a passing run means something.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import ipaddress
import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER_CONFIGS = {"aws": CLUSTER / "aws-gpu.yaml", "gcp": CLUSTER / "gcp-gpu.yaml"}
LOCAL_CONFIG = CLUSTER / "local-autoscaling.yaml"
SETUP_SCRIPTS = {"aws": CLUSTER / "aws-setup.sh", "gcp": CLUSTER / "gcp-setup.sh"}
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
MLFLOW_COMPOSE = CLUSTER / "mlflow" / "docker-compose.yaml"
MLFLOW_K8S = CLUSTER / "mlflow" / "k8s.yaml"
IMAGE_DOCKERFILE = CLUSTER / "docker" / "Dockerfile"

# Ports a Ray 2.x cluster listens on by default (GCS, object manager, client server, dashboard,
# dashboard agent, metrics export, runtime-env agent) plus the default worker port range.
RAY_PORTS = {6379, 8076, 8265, 10001, 44217, 52365, 52366}
RAY_WORKER_PORT_RANGE = range(10002, 20000)
WORLD = {"0.0.0.0/0", "::/0"}
SHELL_OPERATORS = re.compile(r"[;&|`<>]|\$\(")


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def the_doc(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def ray_version() -> str:
    import ray

    return ray.__version__


# --------------------------------------------------------------------------------------------------
# `ray up` configs: Ray's own validation
# --------------------------------------------------------------------------------------------------


def ray_validate(config: dict) -> dict:
    """What `ray up` does to a config before it talks to the cloud: merge the provider's
    defaults.yaml, merge setup commands, check the docker section and per-type worker limits
    (`prepare_config`), then validate against ray-schema.json and Ray's cross-field rules
    (`validate_config`). Returns the prepared config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module", params=sorted(LAUNCHER_CONFIGS))
def launcher(request) -> tuple[str, dict]:
    return request.param, load_yaml(LAUNCHER_CONFIGS[request.param])


def test_launcher_config_passes_ray_validation(launcher):
    cloud, config = launcher
    prepared = ray_validate(config)
    assert prepared["provider"]["type"] == cloud
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _drop_worker_resources(c):
    del c["available_node_types"][_gpu_types(c)[0]]["resources"]


def _fractional_gpu_resource(c):
    c["available_node_types"][_gpu_types(c)[0]]["resources"]["GPU"] = 0.5


def _unknown_top_level_key(c):
    c["max_gpus"] = 4


def _missing_head_type(c):
    c["head_node_type"] = "no-such-node-type"


def _min_workers_above_cap(c):
    for name in _gpu_types(c):
        c["available_node_types"][name]["min_workers"] = c["max_workers"] + 1


def _negative_idle_timeout(c):
    c["idle_timeout_minutes"] = -1


BREAKAGES = {
    "worker type without resources": (_drop_worker_resources, "jsonschema"),
    "fractional GPU count": (_fractional_gpu_resource, "jsonschema"),
    "unknown top-level key": (_unknown_top_level_key, "jsonschema"),
    "head type not defined": (_missing_head_type, ValueError),
    "min workers above max_workers": (_min_workers_above_cap, ValueError),
    "negative idle timeout": (_negative_idle_timeout, "jsonschema"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_copy_fails_ray_validation(launcher, breakage):
    import jsonschema

    _, config = launcher
    mutate, expected = BREAKAGES[breakage]
    broken = copy.deepcopy(config)
    mutate(broken)
    expected = jsonschema.ValidationError if expected == "jsonschema" else expected
    with pytest.raises(expected):
        ray_validate(broken)


# --------------------------------------------------------------------------------------------------
# `ray up` configs: cluster shape
# --------------------------------------------------------------------------------------------------


def _gpu_types(config: dict) -> list[str]:
    return sorted(
        name
        for name, node_type in config["available_node_types"].items()
        if node_type.get("resources", {}).get("GPU", 0) >= 1
    )


def _is_spot(node_config: dict) -> bool:
    aws = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling", {})
    gcp = scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True
    return aws or gcp


def test_head_is_cpu_only_and_takes_no_trials(launcher):
    _, config = launcher
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials must not be scheduled on the head"
    assert head["resources"].get("GPU", 0) == 0
    assert not _is_spot(head["node_config"]), "the head (GCS + sweep driver) must not be preemptible"


def test_gpu_workers_autoscale_from_zero_with_spot_and_on_demand(launcher):
    _, config = launcher
    gpu_types = _gpu_types(config)
    spot = [t for t in gpu_types if _is_spot(config["available_node_types"][t]["node_config"])]
    on_demand = [t for t in gpu_types if t not in spot]
    assert spot and on_demand, f"want spot and on-demand GPU worker types, got {gpu_types}"
    for name in gpu_types:
        node_type = config["available_node_types"][name]
        assert node_type.get("min_workers", 0) == 0, f"{name} should scale to zero"
        assert 1 <= node_type["max_workers"] <= config["max_workers"]
        assert node_type["resources"]["CPU"] >= 4, "room for four 0.25-GPU trials with a CPU each"
    # Spot is preferred, on-demand is the fallback (autoscaler v2 orders equal fits by priority).
    types = config["available_node_types"]
    assert min(types[t]["priority"] for t in spot) > max(types[t].get("priority", 0) for t in on_demand)
    assert 5 <= config["idle_timeout_minutes"] <= 30
    assert 1 <= config["max_workers"] <= 64


def test_pinned_ray_version_matches_installed_ray(launcher, ray_version):
    _, config = launcher
    images = {config["docker"]["image"], config["docker"].get("head_image", config["docker"]["image"])}
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray_version}-"), image
    pins = [c for c in config["setup_commands"] if f'"ray[default,tune]=={ray_version}"' in c]
    assert pins, "setup must keep Ray at the launcher's version"


def test_setup_installs_cuda_torch_and_this_project(launcher):
    cloud, config = launcher
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "torch" in setup
    assert "torch.version.cuda" in setup, "setup should refuse a CPU-only torch build"
    assert config["file_mounts"]["~/tinymem"] == ".", "the repository (ray up runs from its root)"
    # From the mount, with the fsspec backend of the cloud's object store (--storage s3:// or gs://).
    extra = {"aws": "s3", "gcp": "gcs"}[cloud]
    assert re.search(rf'pip install [^\n]*"\$HOME/tinymem\[{extra}\]"', setup), \
        f"install the project from the mount with its [{extra}] extra"
    assert ".gitignore" in config["rsync_filter"], "virtualenvs and run folders must not be synced"
    workers = "\n".join(config["worker_setup_commands"])
    assert "torch.cuda.is_available()" in workers, "a worker without a visible GPU must fail setup"


# --------------------------------------------------------------------------------------------------
# `ray up` configs: security
# --------------------------------------------------------------------------------------------------


def _ports_of(permission: dict) -> range:
    if str(permission.get("IpProtocol")) == "-1":
        return range(0, 65536)
    return range(int(permission["FromPort"]), int(permission["ToPort"]) + 1)


def world_open_ray_ports(config: dict) -> list[str]:
    """Inbound rules in the config that let the whole internet reach a Ray port."""
    problems = []
    for permission in config["provider"].get("security_group", {}).get("IpPermissions", []):
        cidrs = {r.get("CidrIp") for r in permission.get("IpRanges", [])}
        cidrs |= {r.get("CidrIpv6") for r in permission.get("Ipv6Ranges", [])}
        if not cidrs & WORLD:
            continue
        ports = _ports_of(permission)
        exposed = sorted(p for p in RAY_PORTS if p in ports)
        if exposed or any(p in ports for p in (RAY_WORKER_PORT_RANGE.start, RAY_WORKER_PORT_RANGE.stop - 1)):
            problems.append(f"{permission} opens Ray ports {exposed or 'worker range'} to {cidrs & WORLD}")
    return problems


def ray_start_invocations(commands: list[str]) -> list[tuple[dict, list[str]]]:
    """(environment assignments, argv after `ray start`) for each `ray start` in the commands."""
    found = []
    for command in commands:
        for segment in command.split(";"):
            words = shlex.split(segment)
            env = {}
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                key, value = words.pop(0).split("=", 1)
                env[key] = value
            if words[:2] == ["ray", "start"]:
                found.append((env, words[2:]))
    return found


def parse_ray_start(argv: list[str]) -> dict:
    """Parse `ray start` arguments with Ray's own command-line definition (no side effects)."""
    from ray.scripts.scripts import start

    return start.make_context("start", list(argv)).params


def token_auth_problems(config: dict) -> list[str]:
    """Ways in which a node of this config could run Ray without token authentication."""
    problems = []
    run_options = " ".join(config.get("docker", {}).get("run_options", []))
    if "RAY_AUTH_MODE=token" not in run_options:
        problems.append("docker.run_options do not set RAY_AUTH_MODE=token for the container")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = ray_start_invocations(config[key])
        if not starts:
            problems.append(f"{key} has no `ray start`")
        for env, _ in starts:
            if env.get("RAY_AUTH_MODE") != "token":
                problems.append(f"{key}: `ray start` without RAY_AUTH_MODE=token")
    setup = "\n".join(config.get("setup_commands", []))
    if not re.search(r"install -m 600 ~/tinymem-secrets/auth_token ~/\.ray/auth_token", setup):
        problems.append("setup_commands do not install the token at ~/.ray/auth_token on every node")
    if config.get("file_mounts", {}).get("~/tinymem-secrets") != "~/.tinymem/ray-secrets":
        problems.append("the token directory is not mounted at ~/tinymem-secrets")
    if "RAY_AUTH_TOKEN=" in yaml.safe_dump(config):
        problems.append("a token value is written into the config")
    return problems


def test_no_ray_port_is_open_to_the_internet(launcher):
    _, config = launcher
    assert world_open_ray_ports(config) == []


def test_world_open_rule_is_detected(launcher):
    _, config = launcher
    for permission in (
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
    ):
        broken = copy.deepcopy(config)
        broken["provider"].setdefault("security_group", {})["IpPermissions"] = [permission]
        assert world_open_ray_ports(broken), permission
    ssh_only = copy.deepcopy(config)
    ssh_only["provider"].setdefault("security_group", {})["IpPermissions"] = [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]}
    ]
    assert world_open_ray_ports(ssh_only) == []


def test_ray_start_lines_parse_and_keep_the_dashboard_on_loopback(launcher):
    _, config = launcher
    (head_env, head_argv), = ray_start_invocations(config["head_start_ray_commands"])
    head = parse_ray_start(head_argv)
    assert head["head"] is True
    assert head["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    assert ipaddress.ip_address(head["dashboard_host"]).is_loopback, head["dashboard_host"]
    (_, worker_argv), = ray_start_invocations(config["worker_start_ray_commands"])
    assert parse_ray_start(worker_argv)["address"] == "$RAY_HEAD_IP:6379"


def test_ray_start_parser_rejects_a_misspelt_flag():
    import click

    with pytest.raises(click.UsageError):
        parse_ray_start(["--head", "--dashbord-host=127.0.0.1"])


def test_token_auth_on_every_node(launcher):
    _, config = launcher
    assert token_auth_problems(config) == []
    prepared = ray_validate(config)
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("~/.ray/auth_token" in c for c in prepared[key]), key


def test_missing_token_auth_is_detected(launcher):
    _, config = launcher
    broken = copy.deepcopy(config)
    broken["worker_start_ray_commands"] = [
        c.replace("RAY_AUTH_MODE=token ", "") for c in broken["worker_start_ray_commands"]
    ]
    broken["docker"]["run_options"] = ["--ulimit nofile=65536:65536"]
    problems = token_auth_problems(broken)
    assert any("worker_start_ray_commands" in p for p in problems)
    assert any("docker.run_options" in p for p in problems)


def test_aws_instances_require_imdsv2_and_encrypt_disks():
    config = load_yaml(LAUNCHER_CONFIGS["aws"])
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        assert node["MetadataOptions"]["HttpTokens"] == "required", name
        assert all(m["Ebs"]["Encrypted"] for m in node["BlockDeviceMappings"]), name
        assert node["IamInstanceProfile"]["Name"].startswith("tinymem-ray-"), name


def test_aws_config_and_setup_script_agree():
    config = load_yaml(LAUNCHER_CONFIGS["aws"])
    script = SETUP_SCRIPTS["aws"].read_text()
    assert f"SG_NAME={config['provider']['security_group']['GroupName']}" in script
    head = config["available_node_types"][config["head_node_type"]]
    assert f"HEAD={head['node_config']['IamInstanceProfile']['Name']}" in script
    for name in _gpu_types(config):
        profile = config["available_node_types"][name]["node_config"]["IamInstanceProfile"]["Name"]
        assert f"WORKER={profile}" in script


def test_gcp_nodes_sit_behind_the_setup_script_firewall():
    config = load_yaml(LAUNCHER_CONFIGS["gcp"])
    script = SETUP_SCRIPTS["gcp"].read_text()
    name = re.search(r"^NAME=(\S+)", script, re.M).group(1)
    for node_name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        assert name in node["tags"]["items"], node_name
        for interface in node["networkInterfaces"]:
            assert interface["subnetwork"].endswith(f"/subnetworks/{name}"), node_name
            assert f"regions/{config['provider']['region']}/" in interface["subnetwork"]
    worker_sa = re.search(r"^WORKER_SA=(\S+)", script, re.M).group(1)
    for node_name in _gpu_types(config):
        emails = [sa["email"] for sa in config["available_node_types"][node_name]["node_config"]["serviceAccounts"]]
        assert all(e.startswith(f"{worker_sa}@") for e in emails), node_name


@pytest.mark.parametrize("cloud", sorted(SETUP_SCRIPTS))
def test_setup_script_is_valid_bash_and_refuses_world_open_ssh(cloud, tmp_path):
    script = SETUP_SCRIPTS[cloud]
    subprocess.run(["bash", "-n", str(script)], check=True)
    # Firewall and security-group rules only ever take their source range from the variable.
    for line in script.read_text().splitlines():
        if "--cidr" in line or "--source-ranges" in line:
            assert "0.0.0.0/0" not in line and "::/0" not in line, line
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_REGION": "us-west-2",
        "GCP_PROJECT": "p",
        "TINYMEM_BUCKET": "b",
        "SSH_SOURCE_CIDR": "0.0.0.0/0",
    }
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "whole internet" in done.stderr


# --------------------------------------------------------------------------------------------------
# The local autoscaling config (cluster/local-autoscaling.yaml, Ray's fake_multinode provider)
# --------------------------------------------------------------------------------------------------


def local_validate(config: dict) -> None:
    """What the autoscaler on the head checks: this provider merges no defaults (the monitor reads the file
    as it is, `StandardAutoscaler.reset`), so Ray's schema and cross-field rules on the file itself."""
    from ray.autoscaler._private.util import validate_config

    validate_config(copy.deepcopy(config))


@pytest.fixture(scope="module")
def local_config() -> dict:
    return load_yaml(LOCAL_CONFIG)


def test_local_config_passes_the_autoscalers_validation(local_config):
    local_validate(local_config)
    assert local_config["provider"]["type"] == "fake_multinode"


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_local_copy_fails_validation(local_config, breakage):
    import jsonschema

    mutate, expected = BREAKAGES[breakage]
    broken = copy.deepcopy(local_config)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError if expected == "jsonschema" else expected):
        local_validate(broken)


def test_ray_up_refuses_the_local_provider(local_config):
    """cluster/README.md says so: `ray up` prepares the config with the provider's defaults file, which the
    pip wheel lacks. If this starts to pass, Ray ships it and the README should say `ray up` works."""
    from ray.autoscaler._private.util import prepare_config

    with pytest.raises(FileNotFoundError, match="fake_multi_node"):
        prepare_config(copy.deepcopy(local_config))


def local_config_problems(config: dict, aws: dict) -> list[str]:
    """Ways in which the local config would not try out aws-gpu.yaml's node types, or would leave loopback."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

    problems = []
    types = config["available_node_types"]
    if config["head_node_type"] != FAKE_HEAD_NODE_TYPE:  # the provider gives the head this type
        problems.append(f"head_node_type {config['head_node_type']!r} is not {FAKE_HEAD_NODE_TYPE!r}")
    head = types.get(config["head_node_type"], {}).get("resources", {})
    aws_head = aws["available_node_types"][aws["head_node_type"]]["resources"]
    if (head.get("CPU"), head.get("GPU", 0)) != (aws_head["CPU"], aws_head.get("GPU", 0)):
        problems.append(f"head resources {head} differ from aws-gpu.yaml's {aws_head}")

    def shape(node_type: dict) -> tuple:
        return node_type["resources"].get("CPU"), node_type["resources"].get("GPU")

    workers = _gpu_types(config)
    aws_shapes = {shape(aws["available_node_types"][t]) for t in _gpu_types(aws)}
    if not workers or {shape(types[t]) for t in workers} != aws_shapes:
        problems.append(f"GPU worker types {[shape(types[t]) for t in workers]} differ from aws-gpu.yaml's "
                        f"{aws_shapes}")
    others = sorted(set(types) - {config["head_node_type"], *workers})
    if others:
        problems.append(f"node types besides the head and GPU workers: {others}")
    for t in workers:
        if types[t].get("min_workers", 0) != 0 or not 1 <= types[t]["max_workers"] <= config["max_workers"]:
            problems.append(f"{t} does not scale from 0 up to at most max_workers")
    provider = config["provider"]
    host = provider.get("gcs_address", "").rsplit(":", 1)[0]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        problems.append(f"provider.gcs_address {provider.get('gcs_address')!r} is not on loopback")
    # Nodes share one IP (told apart by node id); no SSH setup, no launch-config comparison.
    for key in ("use_node_id_as_ip", "disable_node_updaters", "disable_launch_config_check"):
        if provider.get(key) is not True:
            problems.append(f"provider.{key} is not true")
    return problems


def _gcs_off_loopback(c):
    c["provider"]["gcs_address"] = "192.0.2.2:6379"


def _head_takes_trials(c):
    c["available_node_types"][c["head_node_type"]]["resources"]["CPU"] = 2


def _two_gpu_workers(c):
    c["available_node_types"][_gpu_types(c)[0]]["resources"]["GPU"] = 2


def _node_updaters_on(c):
    c["provider"]["disable_node_updaters"] = False


def _cpu_worker_type(c):
    c["available_node_types"]["ray.worker.cpu"] = {"resources": {"CPU": 4}, "node_config": {}, "max_workers": 1}


LOCAL_BREAKAGES = {"GCS address off loopback": _gcs_off_loopback, "head with CPUs": _head_takes_trials,
                   "worker shape unlike AWS": _two_gpu_workers, "node updaters on": _node_updaters_on,
                   "extra CPU worker type": _cpu_worker_type}


def test_local_config_tries_the_aws_node_types_on_loopback(local_config):
    assert local_config_problems(local_config, load_yaml(LAUNCHER_CONFIGS["aws"])) == []


@pytest.mark.parametrize("breakage", sorted(LOCAL_BREAKAGES))
def test_local_config_check_fires(local_config, breakage):
    broken = copy.deepcopy(local_config)
    LOCAL_BREAKAGES[breakage](broken)
    assert local_config_problems(broken, load_yaml(LAUNCHER_CONFIGS["aws"])), breakage


def local_start_commands(text: str) -> tuple[dict[str, str], dict, list[str]]:
    """From shell text (README block, YAML comment): the `export`ed variables, the parsed `ray start`
    arguments, and the argv of `python sweeps/run.py` if present."""
    text = text.replace("\\\n", " ")
    env: dict[str, str] = {}
    start, sweep = None, []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            env.update(w.split("=", 1) for w in words[1:])
        elif words[:2] == ["ray", "start"]:
            start = parse_ray_start(words[2:])
        elif words[:2] == ["python", "sweeps/run.py"]:
            sweep = words[2:]
    assert start is not None, f"no `ray start` line in:\n{text}"
    return env, start, sweep


def _readme_local_block() -> str:
    readme = (CLUSTER / "README.md").read_text()
    section = readme.split("## Try a cluster config locally\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def _config_header() -> str:
    comments = [line[1:] for line in LOCAL_CONFIG.read_text().splitlines() if line.startswith("#")]
    return "\n".join(c for c in comments if c.strip().startswith(("export ", "ray start", "--")) or
                     c.rstrip().endswith("\\"))


def test_local_start_line_agrees_with_the_config_and_the_test(local_config):
    """The README's and the config's own start lines name this config, the head's real resources (as its
    node type declares) and the address that provider.gcs_address gives the workers; the integration test
    (tests/cluster/local_autoscaler.py) starts the head from the same environment."""
    from tests.cluster.local_autoscaler import README_ENV

    host, port = local_config["provider"]["gcs_address"].rsplit(":", 1)
    head = local_config["available_node_types"][local_config["head_node_type"]]["resources"]
    readme = local_start_commands(_readme_local_block())
    config_header = local_start_commands(_config_header())
    for env, start, _ in (readme, config_header):
        assert env == {**README_ENV, "RAY_AUTH_MODE": "token"}, env
        assert start["head"] is True and start["autoscaling_config"] == "cluster/local-autoscaling.yaml"
        assert (start["node_ip_address"], start["port"]) == (host, int(port))
        assert (start["num_cpus"], start["num_gpus"]) == (head["CPU"], head.get("GPU", 0))
    sweep = readme[2]
    assert sweep[sweep.index("--address") + 1] == f"{host}:{port}"
    assert 0 < float(sweep[sweep.index("--gpus-per-trial") + 1]) < 1, "fractional GPUs, as the config is tried for"


# --------------------------------------------------------------------------------------------------
# KubeRay manifests
# --------------------------------------------------------------------------------------------------


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def raycluster_problems(spec: dict) -> list[str]:
    """Fields KubeRay needs for an autoscaling, token-authenticated GPU RayCluster spec."""
    problems = []
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling is not true")
    if not isinstance(spec.get("autoscalerOptions", {}).get("idleTimeoutSeconds"), int):
        problems.append("autoscalerOptions.idleTimeoutSeconds missing")
    if spec.get("authOptions", {}).get("mode") != "token":
        problems.append("authOptions.mode is not token")
    head = spec.get("headGroupSpec", {})
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append(f"head Service type {head.get('serviceType')} exposes Ray outside the cluster")
    groups = [("headGroupSpec", head)] + [
        (f"workerGroupSpecs[{g.get('groupName')}]", g) for g in spec.get("workerGroupSpecs", [])
    ]
    for where, group in groups:
        params = group.get("rayStartParams")
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            problems.append(f"{where}.rayStartParams must map to strings: {params}")
        if not _containers(group.get("template", {"spec": {"containers": []}})):
            problems.append(f"{where}.template has no container")
    if head.get("rayStartParams", {}).get("num-cpus") != "0":
        problems.append('head rayStartParams num-cpus is not "0"')
    if not spec.get("workerGroupSpecs"):
        problems.append("no workerGroupSpecs")
    for group in spec.get("workerGroupSpecs", []):
        name = group.get("groupName")
        for field in ("groupName", "minReplicas", "maxReplicas", "template"):
            if field not in group:
                problems.append(f"worker group {name}: {field} missing")
        if group.get("minReplicas") != 0 or not group.get("maxReplicas", 0) >= 1:
            problems.append(f"worker group {name}: want minReplicas 0 and maxReplicas >= 1")
        if not group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 0):
            problems.append(f"worker group {name}: replicas outside [minReplicas, maxReplicas]")
        for container in _containers(group.get("template", {"spec": {"containers": []}})):
            limits = container.get("resources", {}).get("limits", {})
            requests = container.get("resources", {}).get("requests", {})
            gpus = limits.get("nvidia.com/gpu")
            if not (isinstance(gpus, str) and gpus.isdigit() and int(gpus) >= 1):
                problems.append(f"worker group {name}: no nvidia.com/gpu limit")
            if requests.get("nvidia.com/gpu", gpus) != gpus:
                problems.append(f"worker group {name}: GPU request differs from limit")
    return problems


@pytest.fixture(scope="module")
def raycluster_docs() -> list[dict]:
    return load_docs(RAYCLUSTER)


@pytest.fixture(scope="module")
def raycluster(raycluster_docs) -> dict:
    return the_doc(raycluster_docs, "RayCluster")


def test_raycluster_has_the_fields_kuberay_needs(raycluster, raycluster_docs, ray_version):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["metadata"]["name"]
    spec = raycluster["spec"]
    assert raycluster_problems(spec) == []
    assert spec["rayVersion"] == ray_version
    images = {c["image"] for c in _containers(spec["headGroupSpec"]["template"])}
    for group in spec["workerGroupSpecs"]:
        images |= {c["image"] for c in _containers(group["template"])}
    assert len(images) == 1, f"head and workers must run one image: {images}"
    accounts = {spec["headGroupSpec"]["template"]["spec"]["serviceAccountName"]}
    accounts |= {g["template"]["spec"]["serviceAccountName"] for g in spec["workerGroupSpecs"]}
    for account in accounts:
        the_doc(raycluster_docs, "ServiceAccount", account)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu"),
        (lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "rayStartParams"),
        (lambda s: s["headGroupSpec"].update({"serviceType": "LoadBalancer"}), "LoadBalancer"),
        (lambda s: s.pop("authOptions"), "authOptions"),
        (lambda s: s.update({"enableInTreeAutoscaling": False}), "enableInTreeAutoscaling"),
        (lambda s: s["workerGroupSpecs"][0].pop("maxReplicas"), "maxReplicas"),
    ],
    ids=["no-gpu-limit", "int-start-param", "load-balancer", "no-auth", "no-autoscaling", "no-max"],
)
def test_broken_raycluster_is_detected(raycluster, mutate, message):
    spec = copy.deepcopy(raycluster["spec"])
    mutate(spec)
    assert any(message in p for p in raycluster_problems(spec)), raycluster_problems(spec)


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return the_doc(load_docs(RAYJOB), "RayJob")


def entrypoint_flags(entrypoint: str) -> tuple[list[str], dict[str, str]]:
    words = shlex.split(entrypoint)
    flags = {}
    i = next(i for i, w in enumerate(words) if w.startswith("--"))
    for flag, value in zip(words[i::2], words[i + 1 :: 2]):
        flags[flag] = value
    return words[:i], flags


def test_rayjob_runs_one_sweep_on_the_cluster(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    entrypoint = spec["entrypoint"]
    # KubeRay pastes the entrypoint into the submitter pod's shell command line.
    assert not SHELL_OPERATORS.search(entrypoint), entrypoint
    command, flags = entrypoint_flags(entrypoint)
    assert command[0] == "python" and command[1].endswith("/sweeps/run.py")
    assert command[1].startswith("/"), "the driver's working directory is not the checkout"
    assert flags["--method"] == "balanced_subnet"
    assert flags["--address"] == "auto"
    assert urlparse(flags["--storage"]).scheme in {"s3", "gs"}
    assert 0 < float(flags["--gpus-per-trial"]) <= 1
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec)
    if "rayClusterSpec" in spec:
        assert spec["shutdownAfterJobFinishes"] is True
        assert raycluster_problems(spec["rayClusterSpec"]) == []


def test_rayjob_cluster_matches_raycluster(rayjob, raycluster):
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"], (
        "kuberay/rayjob.yaml and kuberay/raycluster.yaml describe the same cluster; keep them in sync"
    )


def test_rayjob_flags_exist_in_the_sweep_cli(rayjob):
    run_py = REPO / "sweeps" / "run.py"
    if not run_py.exists():
        pytest.skip("sweeps/run.py is not written yet")
    source = "\n".join(p.read_text() for p in (REPO / "sweeps").rglob("*.py"))
    _, flags = entrypoint_flags(rayjob["spec"]["entrypoint"])
    missing = [f for f in flags if f'"{f}"' not in source and f"'{f}'" not in source]
    assert missing == [], f"the RayJob passes flags that sweeps/ does not define: {missing}"


# --------------------------------------------------------------------------------------------------
# MLflow recipe
# --------------------------------------------------------------------------------------------------


def _click_option_names(call: ast.Call) -> list[str]:
    names = []
    for arg in call.args:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            names += [n for n in arg.value.split("/") if n.startswith("--")]
    return names


def _is_click_option(node) -> bool:
    return isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "option"


@functools.cache
def mlflow_server_options() -> frozenset[str]:
    """Option names of the installed `mlflow server` command, read from the decorators in MLflow's
    own CLI source with `ast` (importing mlflow.cli takes longer than this whole file may)."""
    package = Path(importlib.util.find_spec("mlflow").submodule_search_locations[0])
    shared = {}  # mlflow/utils/cli_args.py: NAME = click.option("--flag", ...)
    for node in ast.parse((package / "utils" / "cli_args.py").read_text()).body:
        if isinstance(node, ast.Assign) and _is_click_option(node.value):
            for target in node.targets:
                shared[target.id] = _click_option_names(node.value)
    tree = ast.parse((package / "cli" / "__init__.py").read_text())
    (server,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "server"]
    names = set()
    for decorator in server.decorator_list:
        if _is_click_option(decorator):
            names.update(_click_option_names(decorator))
        elif isinstance(decorator, ast.Attribute) and getattr(decorator.value, "id", None) == "cli_args":
            names.update(shared[decorator.attr])
    assert {"--backend-store-uri", "--host"} <= names, "MLflow's CLI layout changed; update this reader"
    return frozenset(names)


def check_mlflow_server_args(args: list[str]) -> dict[str, str]:
    known = mlflow_server_options()
    options = {}
    for flag, value in zip(args[::2], args[1::2]):
        assert flag in known, f"`mlflow server` has no option {flag}"
        options[flag] = str(value)
    return options


def test_mlflow_option_check_rejects_unknown_flags():
    with pytest.raises(AssertionError, match="--artifact-destination"):
        check_mlflow_server_args(["--artifact-destination", "s3://b"])


def test_compose_recipe_is_private_and_complete():
    compose = load_yaml(MLFLOW_COMPOSE)
    services = compose["services"]
    assert "ports" not in services["postgres"], "Postgres must only be reachable by MLflow"
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?"), "no default or literal password"
    options = check_mlflow_server_args(services["mlflow"]["command"])
    assert options["--backend-store-uri"].startswith("postgresql://")
    assert options["--artifacts-destination"].startswith("${MLFLOW_ARTIFACTS_DESTINATION")
    (published,) = services["mlflow"]["ports"]
    assert published.startswith("${MLFLOW_BIND_ADDRESS:-127.0.0.1}:"), published
    example = (CLUSTER / "mlflow" / "env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, re.M), "env.example must not ship a password"


def test_compose_secrets_file_is_git_ignored():
    done = subprocess.run(
        ["git", "check-ignore", "-q", "cluster/mlflow/.env"], cwd=REPO, capture_output=True
    )
    assert done.returncode == 0, "cluster/mlflow/.env (the filled-in password) must be git-ignored"


@pytest.fixture(scope="module")
def mlflow_k8s() -> list[dict]:
    return load_docs(MLFLOW_K8S)


def test_k8s_recipe_serves_the_tracking_uri_of_the_rayjob(mlflow_k8s, rayjob):
    _, flags = entrypoint_flags(rayjob["spec"]["entrypoint"])
    uri = urlparse(flags["--tracking-uri"])
    service_name, namespace = uri.hostname.split(".")[:2]
    assert uri.scheme == "http" and uri.hostname == f"{service_name}.{namespace}.svc.cluster.local"
    service = the_doc(mlflow_k8s, "Service", service_name)
    assert service["metadata"]["namespace"] == namespace
    assert uri.port in {p["port"] for p in service["spec"]["ports"]}

    deployment = the_doc(mlflow_k8s, "Deployment", service_name)
    (container,) = _containers(deployment["spec"]["template"])
    options = check_mlflow_server_args(container["args"])
    assert options["--backend-store-uri"].startswith("postgresql://")
    assert "$(MLFLOW_DB_PASSWORD)" in options["--backend-store-uri"]
    assert options["--artifacts-destination"] == "$(MLFLOW_ARTIFACTS_DESTINATION)"
    # MLflow 3 answers 403 to Host headers outside --allowed-hosts.
    assert f"{uri.hostname}:{uri.port}" in options["--allowed-hosts"].split(",")
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["MLFLOW_DB_PASSWORD"]["valueFrom"]
    destination = the_doc(mlflow_k8s, "ConfigMap")["data"]["MLFLOW_ARTIFACTS_DESTINATION"]
    assert urlparse(destination).scheme in {"s3", "gs"}


def test_k8s_recipe_stays_inside_the_cluster(mlflow_k8s, raycluster):
    assert not [d for d in mlflow_k8s if d["kind"] in {"Ingress", "Route", "Gateway"}]
    for service in (d for d in mlflow_k8s if d["kind"] == "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
    for workload in (d for d in mlflow_k8s if d["kind"] in {"Deployment", "StatefulSet"}):
        for container in _containers(workload["spec"]["template"]):
            for var in container.get("env", []):
                if "PASSWORD" in var["name"]:
                    assert "valueFrom" in var and "value" not in var, var["name"]
    policies = {d["metadata"]["name"]: d for d in mlflow_k8s if d["kind"] == "NetworkPolicy"}
    assert set(policies) == {"mlflow-server", "mlflow-postgres"}
    # The MLflow policy admits exactly the label that the Ray pods carry.
    (rule,) = policies["mlflow-server"]["spec"]["ingress"]
    (peer,) = rule["from"]
    client_labels = peer["podSelector"]["matchLabels"]
    spec = raycluster["spec"]
    for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
        labels = template["metadata"]["labels"]
        assert client_labels.items() <= labels.items(), labels


# --------------------------------------------------------------------------------------------------
# Image and docs
# --------------------------------------------------------------------------------------------------


def test_kuberay_image_dockerfile_matches_the_launcher_image(ray_version):
    dockerfile = IMAGE_DOCKERFILE.read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", dockerfile, re.M).group(1)
    assert base == load_yaml(LAUNCHER_CONFIGS["aws"])["docker"]["image"]
    assert f'"ray[default,tune]=={ray_version}"' in dockerfile
    assert "torch.version.cuda" in dockerfile
    assert "COPY --chown=1000:100 . /home/ray/tinymem" in dockerfile
    ignored = (IMAGE_DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "**/auth_token"} <= set(ignored)


def test_readme_has_the_promised_sections():
    readme = (CLUSTER / "README.md").read_text()
    headings = re.findall(r"^#+ (.+)$", readme, re.M)
    for heading in ("At 100 GPUs and 10,000 trials", "Measured: scale_sim", "Try a cluster config locally"):
        assert heading in headings, heading
    assert "bench/scale_sim.py" in readme
