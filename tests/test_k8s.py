"""The Kubernetes manifests and the TF_CONFIG entry point pods start with.

The operator-free training job is checked against what the pods will really do: for every
pod the Jobs create, `ebr.tfconfig` builds TF_CONFIG from that pod's environment, and the
cluster spec must list exactly those pods. Then manifests are broken on purpose (a probe
dropped, an image unpinned, a TF_CONFIG broken, ...) and `ebr.k8s_check` must say so.
"""
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from ebr import k8s_check, tfconfig

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "k8s" / "overlays"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="kubectl is not installed; `kubectl kustomize` renders the overlays")
try:
    import kubernetes_validate  # noqa: F401
    HAVE_SCHEMAS = True
except ImportError:
    HAVE_SCHEMAS = False
# `make test` runs before `make k8s-check` installs the k8s extra; `make k8s-check` runs this file again with it.
needs_schemas = pytest.mark.skipif(not HAVE_SCHEMAS, reason="kubernetes-validate is not installed; "
                                                              "`make k8s-check` installs it and runs these tests")


def render(overlay: str, app: str) -> list[dict]:
    return k8s_check.render(OVERLAYS / overlay / app)


def created_pods(docs: list[dict]) -> dict[str, str]:
    """DNS name -> role of every pod the training Jobs create (read from the Jobs, not the check)."""
    out = {}
    for d in docs:
        if d["kind"] == "Job" and d["metadata"]["name"].startswith("ebr-train-"):
            spec = d["spec"]
            role = d["metadata"]["name"][len("ebr-train-"):]
            for i in range(spec["completions"]):
                out[f"{d['metadata']['name']}-{i}.{spec['template']['spec']['subdomain']}"] = role
    return out


# -- the TF_CONFIG entry point against the rendered manifests ----------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay, workers, ps", [("dev", 2, 2), ("production", 100, 20)])
def test_tf_config_lists_exactly_the_pods_the_jobs_create(overlay, workers, ps):
    docs = render(overlay, "train-plain")
    report = k8s_check.Report()
    configs = k8s_check.plain_tf_configs(docs, "ns", overlay, report)
    assert report.problems == []
    pods = created_pods(docs)
    assert sorted(configs) == sorted(pods)
    assert sum(r == "worker" for r in pods.values()) == workers
    assert sum(r == "ps" for r in pods.values()) == ps
    cluster = next(iter(configs.values()))["cluster"]
    members = {addr.rsplit(":", 1)[0] for addrs in cluster.values() for addr in addrs}
    assert members == {dns for dns, role in pods.items() if role != "evaluator"}
    assert (len(cluster["chief"]), len(cluster["worker"]), len(cluster["ps"])) == (1, workers, ps)
    for dns, config in configs.items():
        assert config["cluster"] == cluster
        task = config["task"]
        assert task["type"] == pods[dns]
        if task["type"] != "evaluator":
            assert cluster[task["type"]][task["index"]] == f"{dns}:2222"


@needs_kubectl
@pytest.mark.parametrize("app", ["train-plain", "train-tfjob"])
def test_production_backs_up_every_100000_global_steps(app):
    """At the paper cluster's 180 steps/s the default (200) would back up every second."""
    def args(container):
        return [*container.get("command", []), *container.get("args", [])]

    commands = []
    for doc in render("production", app):
        if doc["kind"] == "Job":
            commands.append(args(doc["spec"]["template"]["spec"]["containers"][0]))
        elif doc["kind"] == "TFJob":
            commands += [args(r["template"]["spec"]["containers"][0]) for r in doc["spec"]["tfReplicaSpecs"].values()]
    assert len(commands) == 4  # chief, workers, parameter servers, evaluator
    for command in commands:
        assert command[command.index("--checkpoint-steps") + 1] == "100000", command
    for doc in render("dev", app):
        assert "--checkpoint-steps" not in json.dumps(doc)


@needs_kubectl
def test_a_pod_started_as_the_manifest_says_gets_its_tf_config():
    """The entry point as the container runs it: the Job's command, the ConfigMap's environment
    and the pod's JOB_COMPLETION_INDEX, in a fresh interpreter; the training command runs with
    TF_CONFIG set."""
    docs = render("production", "train-plain")
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "ebr-train-ps")
    c = job["spec"]["template"]["spec"]["containers"][0]
    cm_name = c["envFrom"][0]["configMapRef"]["name"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name)
    env = dict(os.environ, **cm["data"], JOB_COMPLETION_INDEX="17", HOSTNAME="ebr-train-ps-17")
    argv = c["command"][c["command"].index("ebr.tfconfig") + 1:]
    argv = [a for a in argv if a != "--chief-job" and a != "ebr-train-chief"]  # no API server here
    probe = [sys.executable, "-c", "import os; print(os.environ['TF_CONFIG'])"]
    out = subprocess.run([sys.executable, "-m", "ebr.tfconfig", *argv, *probe], env=env, check=False,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout.strip().splitlines()[-1])
    assert config["task"] == {"type": "ps", "index": 17}
    assert config["cluster"]["ps"][17] == "ebr-train-ps-17.ebr-train:2222"
    assert len(config["cluster"]["worker"]) == 100 and len(config["cluster"]["ps"]) == 20


def test_tf_config_from_a_statefulset_hostname():
    args = tfconfig.build_parser().parse_args(["--task-type", "worker", "--replicas", "chief=1,worker=3,ps=1",
                                               "--job", "t", "--print"])
    config, _ = tfconfig.resolve(args, {"HOSTNAME": "t-worker-2"})
    assert config["task"] == {"type": "worker", "index": 2}
    assert config["cluster"]["worker"][2] == "t-worker-2.t:2222"


@pytest.mark.parametrize("env, message", [
    ({"EBR_REPLICAS": "chief=1,worker=2"}, "at least one ps"),
    ({"EBR_REPLICAS": "chief=1,worker=2,ps=2,gpu=3"}, "'gpu=3' is not ROLE=COUNT"),
    ({"EBR_REPLICAS": "chief=1,worker=two,ps=1"}, "count of worker is not an integer"),
    ({"EBR_REPLICAS": "chief=1,worker=2,ps=1", "JOB_COMPLETION_INDEX": "2"}, "task index 2 out of range for worker"),
    ({"EBR_REPLICAS": "chief=1,worker=2,ps=1", "HOSTNAME": "trainer"}, "no task index"),
])
def test_tf_config_errors_name_the_setting(env, message):
    args = tfconfig.build_parser().parse_args(["--task-type", "worker", "--job", "t"])
    with pytest.raises(ValueError, match=message):
        tfconfig.resolve(args, env)


class _FakeAPI(http.server.BaseHTTPRequestHandler):
    finished_after = 2  # the chief's Job reports Complete from this request on
    seen: ClassVar[list] = []

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        conditions = [{"type": "Complete", "status": "True"}] if len(self.seen) >= self.finished_after else []
        body = json.dumps({"kind": "Job", "status": {"conditions": conditions}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_server_task_exits_when_the_chief_job_has_finished():
    """A ps task serves forever; with --chief-job it is stopped, and exits 0, once the chief's
    Job is Complete (read from a stand-in API server on loopback)."""
    _FakeAPI.seen = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "ebr.tfconfig", "--task-type", "ps", "--task-index", "0",
             "--replicas", "chief=1,worker=1,ps=1", "--job", "t", "--chief-job", "t-chief", "--namespace", "ns",
             "--api-server", f"http://127.0.0.1:{server.server_port}", "--poll-seconds", "0.2", "--",
             sys.executable, "-c", "import time; time.sleep(60)"],
            check=False, capture_output=True, text=True, timeout=50)
        assert out.returncode == 0, out.stderr
        assert time.monotonic() - t0 < 30
        assert "chief job t-chief finished (Complete)" in out.stdout
        assert _FakeAPI.seen[0][0] == "/apis/batch/v1/namespaces/ns/jobs/t-chief"
        assert len(_FakeAPI.seen) >= 2
    finally:
        server.shutdown()


def test_a_server_task_keeps_its_exit_code_when_it_ends_first():
    out = subprocess.run(
        [sys.executable, "-m", "ebr.tfconfig", "--task-type", "worker", "--task-index", "0",
         "--replicas", "chief=1,worker=1,ps=1", "--job", "t", "--chief-job", "t-chief", "--namespace", "ns",
         "--api-server", "http://127.0.0.1:9", "--poll-seconds", "0.2", "--",
         sys.executable, "-c", "import sys; sys.exit(3)"],
        check=False, capture_output=True, text=True, timeout=50)
    assert out.returncode == 3


# -- the whole check, and the check failing on broken manifests ----------------------------------------


@needs_kubectl
def test_the_repository_passes_the_project_rules():
    report = k8s_check.run(ROOT, versions=())
    assert report.problems == []
    assert len(report.overlays) == len(k8s_check.find_overlays(ROOT / "k8s")) >= 16


@needs_kubectl
@needs_schemas
def test_the_repository_passes_the_schemas():
    report = k8s_check.run(ROOT, versions=k8s_check.DEFAULT_VERSIONS, dockerfiles=False)
    assert report.problems == []


@pytest.fixture
def tree(tmp_path):
    """A copy of k8s/ and docker/ to break."""
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    shutil.copytree(ROOT / "docker", tmp_path / "docker")
    return tmp_path


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) >= count, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def problems(root: Path, *apps: str, versions=()) -> list[str]:
    return k8s_check.run(root, [root / "k8s" / "overlays" / a for a in apps], versions=versions,
                         dockerfiles=False).problems


@needs_kubectl
def test_a_dropped_readiness_probe_fails(tree):
    edit(tree / "k8s/base/serving/retrieval.yaml", "          readinessProbe:\n            httpGet:\n"
         "              path: /readyz\n              port: http\n            periodSeconds: 5\n"
         "            failureThreshold: 2\n", "")
    found = problems(tree, "dev/serving")
    assert any("Deployment/ebr-retrieval" in p and
               "containers[retrieval] serves on a port but has no readinessProbe" in p for p in found), found


@needs_kubectl
def test_an_unpinned_image_fails(tree):
    edit(tree / "k8s/overlays/production/env/kustomization.yaml",
         "    newName: registry.example.com/mgdspr/ebr-serve\n    newTag: 0.1.0",
         "    newName: registry.example.com/mgdspr/ebr-serve\n    newTag: latest")
    edit(tree / "k8s/base/serving/tf-serving.yaml", "tensorflow/serving:2.20.0", "tensorflow/serving")
    found = problems(tree, "production/serving")
    assert any("image 'registry.example.com/mgdspr/ebr-serve:latest' is not pinned" in p for p in found), found
    assert any("image 'tensorflow/serving' is not pinned" in p for p in found), found


@needs_kubectl
def test_replica_counts_that_disagree_with_the_jobs_break_tf_config(tree):
    edit(tree / "k8s/overlays/production/train-plain/kustomization.yaml",
         "EBR_REPLICAS=chief=1,worker=100,ps=20", "EBR_REPLICAS=chief=1,worker=99,ps=20")
    found = problems(tree, "production/train-plain")
    assert any("Job/ebr-train-worker" in p and "task index 99 out of range for worker" in p for p in found), found


@needs_kubectl
def test_a_task_missing_from_the_cluster_fails(tree):
    """One ps pod more than TF_CONFIG lists is caught, and so is one fewer."""
    edit(tree / "k8s/base/train-plain/kustomization.yaml", "ps=2,", "ps=3,")
    found = problems(tree, "dev/train-plain")
    assert any("cluster address ps:2 ebr-train-ps-2.ebr-train:2222 is served by 0 pods" in p for p in found), found


@needs_kubectl
def test_a_different_training_command_on_one_role_fails(tree):
    path = tree / "k8s/base/train-plain/jobs.yaml"
    text = path.read_text(encoding="utf-8")
    head, sep, tail = text.partition("name: ebr-train-ps\n")
    path.write_text(head + sep + tail.replace('"/store/runs/mgdspr"', '"/store/runs/other"', 1), encoding="utf-8")
    found = problems(tree, "dev/train-plain")
    assert any("every task runs the same command" in p for p in found), found


@needs_kubectl
def test_a_missing_security_context_fails(tree):
    edit(tree / "k8s/base/export/job.yaml", "        runAsNonRoot: true\n", "")
    edit(tree / "k8s/base/export/job.yaml", "            allowPrivilegeEscalation: false\n", "", count=2)
    found = problems(tree, "dev/export")
    assert any("initContainers[export]: runAsNonRoot is not true" in p for p in found), found
    assert any("containers[publish]: securityContext.allowPrivilegeEscalation is not false" in p for p in found), found


@needs_kubectl
def test_fewer_parameter_servers_in_production_fail(tree):
    edit(tree / "k8s/overlays/production/train-tfjob/kustomization.yaml",
         "path: /spec/tfReplicaSpecs/PS/replicas\n        value: 20",
         "path: /spec/tfReplicaSpecs/PS/replicas\n        value: 19")
    found = problems(tree, "production/train-tfjob")
    assert any("production has 20 PS replicas (the paper's), got 19" in p for p in found), found


@needs_kubectl
def test_horovod_ranks_that_do_not_match_the_workers_fail(tree):
    edit(tree / "k8s/base/train-horovod/kustomization.yaml", "EBR_RANKS=2", "EBR_RANKS=3")
    found = problems(tree, "dev/train-horovod")
    assert any("horovodrun -np 3 != Worker replicas 2 x slotsPerWorker 1" in p for p in found), found


@needs_kubectl
def test_one_model_version_in_tf_serving_fails(tree):
    edit(tree / "k8s/base/serving/tf-serving/models.config", "num_versions: 2", "num_versions: 1")
    found = problems(tree, "dev/serving")
    assert any("model_version_policy { latest { num_versions: 2 } }" in p for p in found), found


@needs_kubectl
def test_tf_serving_open_to_everyone_fails(tree):
    edit(tree / "k8s/base/serving/networkpolicy.yaml",
         "    - from:\n        - podSelector:\n            matchLabels:\n"
         "              app.kubernetes.io/name: ebr-retrieval\n",
         "    - from:\n        - namespaceSelector: {}\n")
    found = problems(tree, "dev/serving")
    assert any("NetworkPolicy/ebr-tf-serving" in p and "admits more than the retrieval service" in p
               for p in found), found


@needs_kubectl
def test_an_overlapping_refresh_fails(tree):
    edit(tree / "k8s/base/serving/refresh-cronjob.yaml", "concurrencyPolicy: Forbid", "concurrencyPolicy: Allow")
    found = problems(tree, "dev/serving")
    assert any("CronJob/ebr-refresh" in p and "concurrencyPolicy must be Forbid" in p for p in found), found


@needs_kubectl
@needs_schemas
def test_a_field_the_api_does_not_have_fails_the_schemas(tree):
    edit(tree / "k8s/base/serving/retrieval.yaml", "  minReplicas: 1", "  minReplica: 1")
    edit(tree / "k8s/base/train-tfjob/tfjob.yaml", "cleanPodPolicy: Running", "cleanPodPolicy: Sometimes")
    found = problems(tree, "dev/serving", "dev/train-tfjob", versions=("1.31",))
    assert any("HorizontalPodAutoscaler/ebr-retrieval" in p and "'minReplica' was unexpected" in p
               for p in found), found
    assert any("TFJob/ebr-train" in p and "spec.runPolicy.cleanPodPolicy: 'Sometimes' is not one of" in p
               for p in found), found


def test_dockerfiles_pass_and_a_root_or_unpinned_one_fails(tree):
    report = k8s_check.Report()
    for f in sorted((ROOT / "docker").glob("*.Dockerfile")):
        k8s_check.check_dockerfile(f, report)
    assert report.problems == []
    path = tree / "docker/serve.Dockerfile"
    edit(path, "USER 10001\n", "", count=1)
    edit(path, "FROM python:3.11.13-slim-bookworm\n", "FROM python:3.11-slim\n")
    edit(path, "RUN useradd", "RUN apt-get install -y --no-install-recommends gcc && useradd")
    report = k8s_check.Report()
    k8s_check.check_dockerfile(path, report)
    text = "\n".join(report.problems)
    assert "FROM python:3.11-slim is not pinned" in text
    assert "the final stage runs as root (no USER)" in text
    assert "the final stage installs build tools: gcc" in text


@needs_kubectl
def test_submitting_renders_the_chosen_overlay_without_a_cluster():
    out = subprocess.run(["bash", str(ROOT / "tools/k8s_submit.sh"), "train", "production", "tfjob"],
                         env=dict(os.environ, DRY_RUN="1"), check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "namespace ebr " in out.stdout and "TFJob/ebr-train" in out.stdout
    assert "needs the custom resource tfjobs.kubeflow.org" in out.stdout
    assert "app.kubernetes.io/component=chief" in out.stdout
    bad = subprocess.run(["bash", str(ROOT / "tools/k8s_submit.sh"), "preprocess", "dev", "spark"],
                         env=dict(os.environ, DRY_RUN="1"), check=False, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "RUNNER=spark: one of flink, dataflow" in bad.stderr
