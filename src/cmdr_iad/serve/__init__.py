"""`cmdr-iad serve`: an inspection service (FastAPI + uvicorn, extra ``[serve]``) on the one
inference path, with an operator web page.

- `uploads` turns a multipart upload into a validated `Sample` (or a 4xx with a one-line error);
- `worker` is the single inference thread behind a bounded queue (the model is not re-entrant);
- `results` is the bounded result store (memory, plus an optional folder, written atomically);
- `app` is the FastAPI application (endpoints, metrics, the page in ``static/``).

Importing this package does not import FastAPI; `app.create_app` does.
"""
