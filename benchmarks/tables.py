"""Markdown tables, as every benchmark prints its results."""


def print_row(row):
  """One finished row, for progress, before its table."""
  print('  ' + ', '.join(f'{k}: {v}' for k, v in row.items()), flush=True)


def markdown(rows) -> str:
  """Rows (dicts) as one Markdown table, columns in order of first appearance."""
  keys = list(dict.fromkeys(k for row in rows for k in row))
  lines = ['| ' + ' | '.join(keys) + ' |', '|' + '|'.join('---' for _ in keys) + '|']
  lines += ['| ' + ' | '.join(str(row.get(k, '')) for k in keys) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def print_table(rows):
  print(markdown(rows), flush=True)
