"""The report of an experiment, from its ``results.json`` alone (``preftune report RUN_DIR``).

Nothing in the report is typed in by hand: every number is a ``<span class="num" data-key=...>``
that formats the value at that path of ``results.json`` (a test checks each one against the
file), and every sentence that states a comparison chooses its words from a 95% interval — the
seed-level one when the run has several seeds (:func:`.results.verdict_interval`).

* :mod:`.results` — reading and judging ``results.json``: titles, :func:`~.results.lookup`, intervals.
* :mod:`.writers` — how a number gets into HTML (:class:`~.writers.Html`) or Markdown (:class:`~.writers.Text`).
* :mod:`.findings` — every sentence that states a result.
* :mod:`.sections` — the page's sections, one function each; :mod:`.figures` — its plots.
* :mod:`.page` — ``report.html`` (:func:`~.page.render`); :mod:`.markdown` — the README's results
  (``--markdown``) and the terminal's table.
"""
