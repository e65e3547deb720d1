"""torchrun's restarts: after a worker dies, every process of the run starts again and meets the others in
a store of its own round (pipelines/core/rendezvous.py), then resumes from the last save."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from pipelines.config import Params
from pipelines.engine.checkpoint import load_checkpoint
from tests.conftest import PROJECT_ROOT, run
from tests.test_distributed import two_nodes


@pytest.mark.slow
@pytest.mark.parametrize("launch", [[], ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                         "--max-restarts", "3"]], ids=["launcher", "torchrun-by-hand"])
def test_after_each_restart_the_processes_meet_again_not_at_the_dead_round_s_addresses(launch: list[str]) -> None:
    # torchrun's agent keeps its key-value store across restarts: there, without a key space per round, a
    # restarted process read a dead one's address and its first collective failed ("Connection refused").
    result = run([sys.executable, *launch, "-m", "tests.restart_worker", "3"], PROJECT_ROOT)
    gathered = sorted(re.findall(r"rank (\d) gathered attempts (\[[\d, ]*\])", result.stdout + result.stderr))
    assert gathered == [("0", "[3, 3]"), ("1", "[3, 3]")], result.stderr


@pytest.mark.slow
def test_a_worker_killed_on_one_of_two_nodes_restarts_both_and_the_run_resumes_to_its_end(
    tmp_path: Path, tiny_params: Params
) -> None:
    shared = tmp_path / "shared-resume"
    # a save at every epoch end (null every_minutes), so that the kill after epoch 2 leaves one to resume from
    restartable = {"distributed.max_restarts": 1, "student.train.epochs": 4, "resume.every_minutes": None}
    nodes, results = two_nodes(tmp_path, tiny_params, 29435, {"node0": shared, "node1": shared},
                               changes=(restartable, restartable), kill_after="epoch 2/4")
    outputs = [result.stdout for result in results]
    tails = "\n\n".join(output[-6000:] for output in outputs)
    assert [result.returncode for result in results] == [0, 0], tails
    # The second node's agent saw its workers fail (torchrun names the first by whole-second timestamps: the
    # killed worker, or its peer that its death stopped), and all 4 processes resumed from the last save.
    assert re.search(r"failed \(exitcode: -?\d+\) local_rank: [01] ", outputs[1]), tails
    assert sum(output.count("pipelines.engine.resume.saves INFO resuming from") for output in outputs) == 4, tails
    assert [paths.model("student_baseline").exists() for paths in nodes] == [True, False]
    assert load_checkpoint(nodes[0].model("student_baseline")).metrics["epochs"] == 4
    assert not shared.exists()
