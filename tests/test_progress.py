"""The progress bar in logs (not a terminal): when it writes a line and what rate it claims."""
import io

from longtail.progress import ProgressBar


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _bar(total=1000, start=0, log_every=60.0):
    clock, out = Clock(), io.StringIO()
    return ProgressBar(total, "[s]", start=start, stream=out, log_every=log_every, clock=clock), clock, out


def test_log_lines_at_deciles_and_every_minute():
    bar, clock, out = _bar()
    for _ in range(50):  # 5 % of the stage over 5 minutes: no decile crossed after the first line
        clock.t += 6.0
        bar.update()
    lines = out.getvalue().splitlines()
    # the first update (at 6 s), then one each time 60 s have passed since the last line
    assert [ln.split()[2] for ln in lines] == ["1/1000", "11/1000", "21/1000", "31/1000", "41/1000"]
    assert lines[-1].startswith("[s] [--------------------] 41/1000 04:06<1:35:54 0.17it/s")


def test_decile_line_even_within_the_minute():
    bar, clock, out = _bar(total=100)
    for _ in range(25):
        clock.t += 0.1
        bar.update()
    assert [ln.split()[2] for ln in out.getvalue().splitlines()] == ["1/100", "10/100", "20/100"]


def test_no_rate_before_five_seconds_of_a_resumed_segment():
    bar, clock, out = _bar(total=17000, start=7991)
    clock.t += 1.2  # the first step after a resume includes warm-up
    bar.update()
    assert out.getvalue().strip() == "[s] [#########-----------] 7992/17000 00:01<? ?it/s"
    for _ in range(100):
        clock.t += 0.5
        bar.update()
    clock.t += 60
    bar.update()
    # the rate counts this segment's 102 steps over its own 111.2 s, not the steps before the resume
    assert out.getvalue().splitlines()[-1].split()[-1] == f"{102 / 111.2:.2f}it/s"
