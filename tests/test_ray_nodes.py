"""executor=ray against real node sizes: Ray's own multi-node test cluster on this machine (a head without
GPUs, nodes with 1 and 2 logical GPUs; one cluster for the module, ~30 s to start here). A task runs on one
node, so a step is refused when no single node has its GPUs, even where the cluster has as many in all."""

import mlflow
import pytest

from distill import DistillError
from distill.phases.select import SelectParams
from distill.pipeline import MainParams, executors, planner

pytestmark = pytest.mark.slow  # a Ray cluster of three nodes in processes


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    one, two = c.add_node(num_cpus=1, num_gpus=1), c.add_node(num_cpus=1, num_gpus=2)
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield ray, {"one": one.node_id, "two": two.node_id, "head": c.head_node.node_id}
    finally:
        ray.shutdown()
        c.shutdown()


def test_step_larger_than_any_node_refused(cluster, tracking):
    """A step larger than every node is refused before the grid starts."""
    ray, _ = cluster
    assert executors.node_gpus(ray) == [2, 1, 0]
    p = MainParams(preset="offline", executor="ray", students=["qwen2.5-0.5b"])
    grid = planner.resolve_grid(p)
    steps = planner.plan(p, grid)
    steps[0].gpus = 3  # the translator on 3 GPUs: the cluster has 3 in all, but 2 at most on one node
    with pytest.raises(DistillError, match=r"^step translate needs 3 GPUs on one node and the Ray cluster's nodes "
                                           r"have 2, 1, 0 GPUs \(3 in all\)"):
        executors.run_concurrent(p, grid, steps)
    # with steps that fit: a local store served on 127.0.0.1 is refused, the other nodes could not reach it
    with pytest.raises(DistillError, match="on a Ray cluster of 3 nodes needs a tracking server every node reaches"):
        executors.run_concurrent(p, grid, planner.plan(p, grid))
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []  # nothing started


def test_step_sees_only_its_node_gpus(cluster, tmp_path):
    """A step lands on a node with its GPUs and sees only those."""
    ray, nodes = cluster
    remote = executors.remote_functions(ray)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    probe = SelectParams(teacher_runs="0" * 32)  # a real phase that stops at once: the task reports where it ran
    refs = {n: executors.submit(remote, planner.Step(f"probe {n}", "select", probe, gpus=n), probe, env)
            for n in (2, 1, 0)}
    seen = {n: ray.get(ref, timeout=300) for n, ref in refs.items()}
    assert all("no MLflow run with id '000" in r["error"] for r in seen.values())
    assert seen[2]["node_id"] == nodes["two"] and seen[2]["cuda_visible_devices"] == "0,1"
    assert seen[1]["node_id"] in (nodes["one"], nodes["two"]) and len(seen[1]["cuda_visible_devices"].split(",")) == 1
    assert seen[0]["cuda_visible_devices"] == ""  # Ray leaves a task without GPUs every GPU of its node: not ours
