"""The trainer's numbers are kept: short fixed-seed runs of every algorithm config, OPD, MOPD,
SCRL+SMEPO, F-TIS and the main job reproduce `golden_metrics.json` (see `golden.py`; regenerate
with `PYTHONPATH=$PWD python tests/train/golden.py --update` only for an intended change)."""

import json

import golden
import pytest

with open(golden.GOLDEN) as _f:
  EXPECTED = json.load(_f)


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ftis") / "foreign.npz")
  golden.write_rollouts(path)
  return path


def test_every_run_is_recorded():
  assert sorted(EXPECTED["runs"]) == sorted(golden.RUNS)


def test_main_job_report_and_metrics_are_unchanged(trained_run):
  workdir, _ = trained_run
  golden.assert_close(golden.main_job_result(workdir), EXPECTED["main_job"], "main_job")


@pytest.mark.parametrize("name", sorted(golden.RUNS))
def test_run_metrics_are_unchanged(name, trained_run, rollouts, tmp_path):
  teacher, _ = trained_run
  got = golden.run(name, teacher, str(tmp_path / name), rollouts)
  golden.assert_close(got, EXPECTED["runs"][name], name)
