"""Progress bars of training loops."""
from pipeline.runner.log import TrainingProgress


def test_a_time_budgeted_bar_counts_trained_seconds_and_shows_the_step(monkeypatch):
    monkeypatch.setenv("RECON_QUIET", "0")
    monkeypatch.delenv("CI", raising=False)
    bar = TrainingProgress("nerf", max_steps=20000, max_time_s=600, step=100, elapsed=30.0)
    assert bar.bar.total == 600 and bar.bar.n == 30.0  # a resumed run starts at its trained seconds
    bar.update(step=110, elapsed=33.04, loss="0.01")
    bar.update(step=120, elapsed=36.0)  # the loss stays shown until replaced
    assert bar.bar.n == 36.0 and bar.bar.postfix == "step=120, loss=0.01"
    bar.update(step=9000, elapsed=650.0)  # past the budget: the bar stops at its end
    assert bar.bar.n == 600
    bar.close()


def test_a_bar_without_a_time_budget_counts_steps(monkeypatch):
    monkeypatch.setenv("RECON_QUIET", "0")
    monkeypatch.delenv("CI", raising=False)
    bar = TrainingProgress("idr", max_steps=50, step=10)
    bar.update(step=25, elapsed=1.0, psnr="20.0")
    assert (bar.bar.total, bar.bar.n) == (50, 25) and bar.bar.postfix == "psnr=20.0"
    bar.close()
