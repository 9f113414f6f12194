"""`segdiff serve`: a local web page to predict with a run and to browse an evaluation (docs/serve.md).

Needs the optional extra: pip install -e ".[serve]" (Starlette, uvicorn, python-multipart).
"""
