"""The labelling web app: a FastAPI server (:mod:`.app`) over a SQLite store (:mod:`.store`).

The commands that run it, ``preftune label serve | export | stats``, are in :mod:`preftune.commands.label`.
"""
