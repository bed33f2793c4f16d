"""The trainer tests' shared run: the `test` scale of the default config, trained once."""

import pytest
from trainutil import load_config


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """(workdir, report) of one complete `scale=test` run in this process."""
  from postrain import train

  workdir = str(tmp_path_factory.mktemp("run"))
  report = train.train(load_config(), workdir)
  return workdir, report
