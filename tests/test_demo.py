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
