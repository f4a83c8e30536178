"""The failure modes of tests/collective_scenarios.py over real MPI processes: every collective call ends on
every process (run with ``mpiexec -n 2 python -m pytest -q tests/mpi``, or -n 3; with plain pytest, a
world of one).  The watchdog of mpi_watchdog.py aborts the job if a process is left waiting."""
import pytest

import collective_scenarios
from mpi_watchdog import watchdog  # noqa: F401 (autouse)

MPI = pytest.importorskip("mpi4py.MPI")
comm = MPI.COMM_WORLD


@pytest.mark.parametrize("scenario", collective_scenarios.SCENARIOS, ids=lambda f: f.__name__)
def test_collective_call_ends_on_every_process(scenario):
    scenario(comm, comm.Get_rank(), comm.Get_size())
    # Every process is at the same point: a process still inside the scenario's calls would be paired
    # with this exchange and fail it (or be caught by the watchdog).
    assert comm.allgather(scenario.__name__) == [scenario.__name__] * comm.Get_size()
