"""The trainer's reward: config.task.extract chooses the answer, config.task.format_reward pays
marked wrong answers during training only."""

import numpy as np

from postrain import tasks
from postrain.train import _data, _rollout

_PROBLEMS = [
  tasks.Problem(f"p/{i}", q, a, {}, "basic_arithmetic")
  for i, (q, a) in enumerate([("3 + 4 =", "7"), ("6 * 2 =", "12"), ("5 + 5 =", "10")])
]
# SmolLM2-135M-Instruct style: the right number in prose, a marked wrong answer, a wrong number.
_TEXTS = ["3 + 4 = 7, so the sum is 7.", "6 * 2 = 14\n\nanswer: 14", "It is 11."]


def _data_with(**kw):
  task = tasks.get_task("basic_arithmetic")
  return _data.TaskData(task=task, train=[], test=[], tokenizer=None, chat_template=None, **kw)


def test_training_reward_and_evaluation_accuracy():
  data = _data_with(extract="any", format_reward=0.1)
  rewards, stats = _rollout.score(data, _PROBLEMS, _TEXTS, 1, None)
  np.testing.assert_allclose(rewards, [1.0, 0.1, 0.0])
  assert (stats.scored, stats.marked) == (3, 1)
  np.testing.assert_array_equal(_rollout._accuracy(data, _PROBLEMS, _TEXTS, 1, None), [1, 0, 0])


def test_marked_only_by_default():
  rewards, stats = _rollout.score(_data_with(), _PROBLEMS, _TEXTS, 1, None)
  np.testing.assert_array_equal(rewards, [0, 0, 0])
  assert stats.no_answer == 2
