"""Lesson 15: an OpenAI-compatible API server in front of the engine, and a load generator for it.

    client ──HTTP──► FastAPI handler ──► AsyncEngine inbox ──► engine thread: step(), step(), ...
       ▲                  │                                            │
       └── JSON or SSE ◄──┴──── per-request asyncio.Queue ◄── dispatch ┘

Modules: ``protocol`` (request checking, OpenAI errors, SamplingParams), ``streaming``
(incremental detokenization, SSE chunks), ``async_engine`` (the engine loop),
``metrics`` (Prometheus), ``app`` (the FastAPI routes), ``launcher`` (uvicorn,
in a thread or in the foreground), ``bench`` (``aios bench-serve``).

Importing this package imports nothing heavy; FastAPI and uvicorn load with ``app``
and ``launcher``.
"""
