"""`python -m vaecf.serving ...`: the recommend command (vaecf/serving/cli.py)."""
from vaecf.serving.cli import run

if __name__ == '__main__':
  run()
