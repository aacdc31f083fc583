"""train_net.py --dist-timeout: parsed, checked before anything is queued, passed to launch().

No Slurm needed; the two-node tests (test_two_nodes.py) show a hung rank timing out with it.
"""

from datetime import timedelta

import pytest
from detectron2.engine.launch import DEFAULT_TIMEOUT

from iuq_d2.engine import entry
from iuq_d2.engine.slurm.submit import main as submit_main


def _parse(*argv):
    return entry.build_argument_parser().parse_args(list(argv))


def test_default_is_detectron2s():
    assert entry.dist_timeout(_parse()) == DEFAULT_TIMEOUT


def test_seconds_become_the_launch_timeout(monkeypatch):
    seen = {}
    monkeypatch.setattr(entry, "launch", lambda *a, **kw: seen.update(kw))
    entry.run(_parse("--dist-timeout", "12.5", "--num-gpus", "2"))
    assert seen["timeout"] == timedelta(seconds=12.5)


@pytest.mark.parametrize("bad", ["0", "-3", "nan", "soon"])
def test_non_positive_or_not_a_number_is_refused(bad, capsys):
    with pytest.raises(SystemExit):
        _parse("--dist-timeout", bad)
    assert "not a positive number of seconds" in capsys.readouterr().err


def test_submit_refuses_it_before_queueing(capsys):
    with pytest.raises(SystemExit):
        submit_main(["--dry-run", "--", "--dist-timeout", "0", "--config-file", "x.yaml"])
    assert "--dist-timeout" in capsys.readouterr().err


def test_submit_passes_it_to_every_node(capsys):
    submit_main(["--dry-run", "--nodes", "2", "--", "--dist-timeout", "300"])
    out = capsys.readouterr().out
    assert "--dist-timeout 300" in out
    assert '"--kill-on-bad-exit=1"' in out  # and a failed node ends the others
