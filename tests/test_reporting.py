"""metrics.jsonl: one record per step, even when its eval comes after its checkpoint, and
a resumed run's file reads as one uninterrupted run."""

import json

from md4 import reporting


def _lines(path):
  return [json.loads(l) for l in path.read_text().splitlines()]


def test_a_steps_parts_merge_into_one_record_and_resume_drops_later_ones(tmp_path):
  writer = reporting.JsonlWriter(str(tmp_path))
  writer.write(2, {'loss': 3.0})
  writer.write(4, {'loss': 2.5})
  writer.write(4, {'valid_loss': 2.75})  # the eval of step 4, after its checkpoint
  writer.write(6, {'loss': 2.0})
  path = tmp_path / 'metrics.jsonl'
  assert _lines(path) == [{'step': 2, 'loss': 3.0},
                          {'step': 4, 'loss': 2.5, 'valid_loss': 2.75},
                          {'step': 6, 'loss': 2.0}]
  with open(path, 'a') as f:
    f.write('{"step": 8, "lo')  # a line cut short by a killed process
  resumed = reporting.JsonlWriter(str(tmp_path), start_step=4)
  assert [r['step'] for r in _lines(path)] == [2, 4]
  assert resumed.logged(4) == {'step': 4, 'loss': 2.5, 'valid_loss': 2.75}
  assert resumed.logged(6) == {}
  resumed.write(5, {'loss': 2.2})
  assert [r['step'] for r in _lines(path)] == [2, 4, 5]
