"""The argon experiment of Ma & Chan (sec. 4): data, training, the MD test and the report.

Modules: :mod:`.config` (settings and presets), :mod:`.run` (the pipeline), :mod:`.md` (the
MD test), :mod:`.report` (figures and ``report.md``), :mod:`.summary` (run labels, earlier
runs' numbers) and :mod:`.published` (the paper's own figures).
"""
