"""Research tools outside the training core: benchmark, user-activity analysis, plots.

Each module is a library and a command (`python -m vaecf.tools.<name>`, or the
console scripts vaecf-benchmark, vaecf-activity, vaecf-plot). The core never imports
these; they may import anything.
"""
