"""Progress in a log (not a terminal): a plain line at most every ``log_every`` seconds and at the end,
with the rate from the segment's start (never "?" once a step is done) and the ETA; a fake clock drives it."""
import io

from longtail.progress import ProgressBar, fmt_rate


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _bar(total=1000, start=0, log_every=30.0, stream=None):
    clock, out = Clock(), stream or io.StringIO()
    return ProgressBar(total, "[s]", start=start, stream=out, log_every=log_every, clock=clock), clock, out


def _steps(lines):
    return [ln.split()[2] for ln in lines]


def test_a_line_at_most_every_interval_and_one_at_the_end():
    bar, clock, out = _bar(total=100)
    for _ in range(100):  # 2 s a step
        clock.t += 2.0
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    # the first step, then each time 30 s have passed since the last line, then the last step (once)
    assert _steps(lines) == ["1/100", "16/100", "31/100", "46/100", "61/100", "76/100", "91/100", "100/100"]
    assert lines[1] == "[s] [###-----------------] 16/100 00:32<02:48 2.00s/it"  # 84 steps left at 0.5 it/s
    assert lines[-1] == "[s] [####################] 100/100 03:20<00:00 2.00s/it"
    assert "\r" not in out.getvalue() and "?" not in out.getvalue()


def test_a_short_stage_gives_its_rate_from_the_first_step():
    bar, clock, out = _bar(total=5)
    for _ in range(5):
        clock.t += 0.1
        bar.update()
    lines = out.getvalue().splitlines()
    assert _steps(lines) == ["1/5", "5/5"]
    assert all(ln.endswith(" 10.00it/s") for ln in lines) and "?" not in out.getvalue()


def test_a_resumed_segment_counts_only_its_own_steps():
    bar, clock, out = _bar(total=17000, start=7991)
    clock.t += 1.2  # the first step after a resume includes warm-up: its rate is what there is
    bar.update()
    assert out.getvalue() == "[s] [#########-----------] 7992/17000 00:01<3:00:09 1.20s/it\n"
    for _ in range(100):
        clock.t += 0.5
        bar.update()
    clock.t += 60
    bar.update()
    # 102 steps of this segment over its own 111.2 s, not the 7991 steps before the resume
    assert out.getvalue().splitlines()[-1].split()[-1] == fmt_rate(102 / 111.2) == "1.09s/it"
    assert "?" not in out.getvalue()


def test_postfix_rides_on_the_next_line_and_close_reports_an_early_end():
    bar, clock, out = _bar(total=100)
    clock.t += 1.0
    bar.update(0, loss=2.5, lr=0.1)  # no step done: no line, and nothing to rate
    assert out.getvalue() == ""
    bar.update()
    clock.t += 5.0
    for _ in range(9):
        bar.update()
    bar.close()  # ended at 10 of 100, well within the interval
    lines = out.getvalue().splitlines()
    assert _steps(lines) == ["1/100", "10/100"]
    assert lines[0].endswith(" 1.00it/s loss 2.5 lr 0.1") and lines[1].endswith(" 1.67it/s loss 2.5 lr 0.1")  # 10 in 6 s


def test_disabled_writes_nothing_and_a_terminal_redraws_in_place():
    bar, clock, out = _bar(total=10)
    bar.enabled = False
    clock.t += 1.0
    bar.update()
    bar.close()
    assert out.getvalue() == ""
    bar, clock, out = _bar(total=10, stream=Terminal())
    for _ in range(10):
        clock.t += 1.0
        bar.update()
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 10
    assert "1/10 00:01<? ?it/s" in text and "10/10 00:10<00:00 1.00it/s" in text  # "?" only over the first 5 s


def test_rate_text():
    assert [fmt_rate(r) for r in (12.345, 1.0, 0.5, 0.01)] == ["12.35it/s", "1.00it/s", "2.00s/it", "100.00s/it"]


def test_a_short_stage_ends_on_a_terminal_with_its_rate_not_a_question_mark():
    # 3 steps of 1 s: shorter than the 5 s of "?", yet the bar left on screen says 1.00it/s (was "<? ?it/s")
    bar, clock, out = _bar(total=3, stream=Terminal())
    for _ in range(3):
        clock.t += 1.0
        bar.update()
    bar.close()
    last = out.getvalue().split("\r")[-1]
    assert last == "[s] [####################] 3/3 00:03<00:00 1.00it/s\n"
