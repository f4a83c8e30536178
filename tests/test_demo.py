import io

from fastnorm._demo import run


def test_demo_trains_and_eval_mode_keeps_the_accuracy():
    out = io.StringIO()
    result = run(out=out)
    text = out.getvalue()
    assert text.count("epoch") >= 40 and "held-out" in text
    assert result["batch_accuracy"] > 0.95
    # The running statistics converge to the exact statistics of the training set...
    assert result["stats_gap"] < 0.2
    # ...so eval mode on held-out data reaches the accuracy training reached.
    assert result["test_accuracy"] > result["batch_accuracy"] - 0.03


def test_demo_runs_on_one_thread_and_gives_the_setting_back():
    import fastnorm
    from fastnorm._demo import one_thread

    with fastnorm.threads(2):
        with one_thread():
            assert fastnorm.get_num_threads() == 1
            try:
                from threadpoolctl import threadpool_info
            except ImportError:
                pass
            else:  # NumPy's BLAS too: its threads would wait on each other over (128, 64) arrays
                assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
        assert fastnorm.get_num_threads() == 2
