"""What the tests share besides pytest fixtures (those stay in tests/conftest.py).

- ``cli``: the real ``cgx`` in its own process, and the repository root every subprocess imports.
- ``photos``: small real image files and folders (with one broken file of each kind).
- ``serve``: a served crossgap-small index over real HTTP.
- ``modes``: indexes on which every mode can run, for the mode-engine tests.
- ``pause``: holding a real process at a named point so a test kills it exactly there.
- ``legacy_index``: an index in the first schema, for the migration tests.
- ``living_writer``: another process that keeps removing and re-adding, for the living-collection tests.
"""
