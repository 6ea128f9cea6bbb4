"""The trust split: learner code runs in a worker process, verdicts in the test process.

* :mod:`grader.remote.protocol`: the wire (pickles towards the worker, JSON and raw
  tensor bytes back: never a pickle from the worker);
* :mod:`grader.remote.worker`: the worker (``python -I grader/remote/worker.py``), which
  imports the learner's ``aios`` and only computes;
* :mod:`grader.remote.client`: the trusted side, whose import hook gives the tests proxy
  ``aios`` modules.

docs/classroom.md ("Trust model: the learner worker") explains the design.
"""
