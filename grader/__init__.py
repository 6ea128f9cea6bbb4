"""The AIOS grader: curriculum, stub generator, test runner, progress board and honesty checks.

Run ``python -m grader --help``; ``python -m grader.stubgen --help`` for the stub generator.
"""
