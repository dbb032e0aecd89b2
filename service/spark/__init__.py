"""``--executor spark``: the offline screening on Apache Spark, with the same output files.

``driver`` runs in the ``prescreen`` process (lists the source, ships the rule sets, writes the
outputs); ``tasks`` is what Spark's Python workers run (read, map, evaluate). PySpark is
optional: nothing here imports it at module level.
"""
