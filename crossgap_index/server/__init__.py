"""`cgx serve`: an HTTP search service over one loaded CrossGapIndex (FastAPI + uvicorn).

A thin layer: requests are parsed and checked here, the library does the searching; queries
that need inversion are micro-batched into one ``search_batch`` call. Entry point:
``crossgap_index.server.app.create_app(index, ServeSettings(...))``.
"""
