"""A watchdog for the tests under mpiexec (an autouse fixture: ``from mpi_watchdog import watchdog`` in a
test module): a process still in a test after WATCHDOG_SECONDS prints where it is and aborts the whole MPI
job, so that a collective call left waiting fails the run instead of hanging it."""
import faulthandler
import sys
import threading

import pytest

WATCHDOG_SECONDS = 120


@pytest.fixture(autouse=True)
def watchdog(request):
    MPI = pytest.importorskip("mpi4py.MPI")

    capture = request.config.pluginmanager.getplugin("capturemanager")

    def abort():
        comm = MPI.COMM_WORLD
        with capture.global_and_fixture_disabled():  # to the terminal, not to pytest's capture
            sys.stderr.write(f"\nprocess {comm.Get_rank()}: {request.node.nodeid} still running after "
                             f"{WATCHDOG_SECONDS} s; aborting the MPI job\n")
            faulthandler.dump_traceback(all_threads=True)
            sys.stderr.flush()
        comm.Abort(1)

    timer = threading.Timer(WATCHDOG_SECONDS, abort)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()
